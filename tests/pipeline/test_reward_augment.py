"""Reward-augmented pairs: the paper's two-goal construction from the judges' scores."""

from pipeline import schemas
from pipeline.pair import check_pairs
from pipeline.reward_augment import augment


def _pairs():
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": f"good {i}"}],
             "rejected": [{"role": "assistant", "content": f"bad {i}"}], "prompt_id": f"p{i}", "chosen_id": f"p{i}-a",
             "rejected_id": f"p{i}-b", "chosen_score": 4.5, "rejected_score": 2.0 + i / 10, "margin": 2.5 - i / 10,
             "pair_strategy": "best_vs_worst", "chosen_len": 10, "rejected_len": 20} for i in range(3)]
    return schemas.from_rows(rows, "pairs")


def test_each_pair_becomes_a_high_goal_and_a_low_goal_pair():
    out, entry = augment(_pairs(), aggregate="mean", keep_original=False)
    rows = out.to_pylist()
    assert len(rows) == 6 and (entry["rows_in"], entry["rows_out"]) == (3, 6)
    high, low = rows[0], rows[1]
    assert high["pair_strategy"] == "reward_augmented:high:best_vs_worst"
    assert high["prompt"][0] == {"role": "system", "content": high["prompt"][0]["content"]}
    assert "4.50 on a 1-5 scale" in high["prompt"][0]["content"] and high["prompt"][1]["content"] == "q0"
    assert high["chosen"][0]["content"] == "good 0" and high["rejected"][0]["content"] == "bad 0"
    # at the rejected's score, the rejected answer is the right one: roles swap, with ids, scores and lengths
    assert "2.00 on a 1-5 scale" in low["prompt"][0]["content"]
    assert (low["chosen"][0]["content"], low["rejected"][0]["content"]) == ("bad 0", "good 0")
    assert (low["chosen_id"], low["chosen_score"], low["chosen_len"]) == ("p0-b", 2.0, 20)
    assert "Goal score 2.00" in low["rationale"] and "rated 2.00" in low["rationale"]
    check_pairs(out)  # low-goal rows are labelled by construction, not by score order


def test_keep_original_and_an_existing_system_prompt():
    pairs = _pairs().to_pylist()
    pairs[0]["prompt"] = [{"role": "system", "content": "Be brief."}, *pairs[0]["prompt"]]
    out, _ = augment(schemas.from_rows(pairs, "pairs"), aggregate="bradley_terry", keep_original=True)
    rows = out.to_pylist()
    assert len(rows) == 9 and rows[0]["pair_strategy"] == "best_vs_worst"
    system = rows[1]["prompt"][0]["content"]
    assert system.endswith("\n\nBe brief.") and "bradley_terry scale" in system and len(rows[1]["prompt"]) == 2
    check_pairs(out)  # the original and its high-goal copy share ids but not strategy
