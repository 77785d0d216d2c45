"""Reward-augmented pairs: the paper's two-goal construction from the judges' scores."""

import random
from itertools import combinations

import pytest

from judges.templates import ABSOLUTE
from pipeline.config import PairConfig
from pipeline.core import schemas
from pipeline.curation.aggregate import METHODS
from pipeline.curation.reward_augment import SCALES, augment
from pipeline.errors import ConfigError
from pipeline.stages.pair import check_pairs, make_pairs


def _pairs():
    rows = [
        {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": [{"role": "assistant", "content": f"good {i}"}],
            "rejected": [{"role": "assistant", "content": f"bad {i}"}],
            "prompt_id": f"p{i}",
            "chosen_id": f"p{i}-a",
            "rejected_id": f"p{i}-b",
            "chosen_score": 4.5,
            "rejected_score": 2.0 + i / 10,
            "margin": 2.5 - i / 10,
            "pair_strategy": "best_vs_worst",
            "chosen_len": 10,
            "rejected_len": 20,
        }
        for i in range(3)
    ]
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
    assert system.endswith("\n\nBe brief.") and "Bradley-Terry log-strength" in system and len(rows[1]["prompt"]) == 2
    check_pairs(out)  # the original and its high-goal copy share ids but not strategy


def _judged(with_other_kinds: bool):
    """Three prompts x four candidates judged by two 1-5 LLM judges (+ a reward model and a pairwise judge)."""
    rng = random.Random(7)
    prompts, cands, rows = [], [], []
    for p in range(3):
        pid = f"p{p}"
        prompts.append({"prompt_id": pid, "messages": [{"role": "user", "content": f"question {p}"}]})
        ids = [f"{pid}-{k}" for k in range(4)]
        for k, cid in enumerate(ids):
            cands.append(
                {
                    "prompt_id": pid,
                    "candidate_id": cid,
                    "generator": "g",
                    "text": f"answer {p} {k} " * (k + 1),
                    "n_tokens": 3 * (k + 1),
                    "finish_reason": "stop",
                }
            )
            for judge in ("A", "B"):
                rows.append(
                    {
                        "prompt_id": pid,
                        "candidate_id": cid,
                        "judge": judge,
                        "kind": "absolute",
                        "aspect": "o",
                        "score": min(5.0, max(1.0, 1 + k + rng.uniform(-0.8, 0.8))),
                        "ok": True,
                    }
                )
            if with_other_kinds:
                rows.append(
                    {
                        "prompt_id": pid,
                        "candidate_id": cid,
                        "judge": "R",
                        "kind": "reward_model",
                        "aspect": "o",
                        "score": 3.0 * k - 4 + rng.uniform(-1, 1),
                        "ok": True,
                    }
                )
        if with_other_kinds:
            for a, b in combinations(ids, 2):
                rows.append(
                    {
                        "prompt_id": pid,
                        "candidate_id": f"{a}|{b}",
                        "judge": "P",
                        "kind": "pairwise",
                        "aspect": "pairwise",
                        "score": rng.choice([0.2, 0.5, 0.8]),
                        "ok": True,
                        "position_consistent": rng.random() < 0.8,
                    }
                )
    return (
        schemas.from_rows(prompts, "prompts"),
        schemas.from_rows(cands, "candidates"),
        schemas.from_rows(rows, "judgments"),
    )


@pytest.mark.parametrize("method", METHODS)
def test_the_goal_names_the_scale_the_scores_are_on(method):
    """Under every judge.aggregate the goal states the scale of the actual aggregated scores."""
    prompts, cands, judgments = _judged(with_other_kinds=method != "mean")  # 'mean' refuses reward models
    pairs, _ = make_pairs(
        prompts, cands, judgments, PairConfig(strategy="all_above_margin", min_margin=0), method=method
    )
    assert pairs.num_rows >= 6
    out, _ = augment(pairs, aggregate=method, keep_original=False)
    wording, low, high = SCALES[method]
    scores = pairs.column("chosen_score").to_pylist() + pairs.column("rejected_score").to_pylist()
    assert all((low is None or s >= low) and (high is None or s <= high) for s in scores)
    if low is None:  # unbounded scales must not be described as a bounded rating
        assert "1-5" not in wording and "-1 to 1" not in wording
    if method in ("mean_normalised", "median", "bradley_terry"):
        assert min(scores) < 0  # the audit's case: negative scores, which no 1-5 wording could describe
    for row in out.to_pylist():
        goal = row["prompt"][0]["content"]
        assert f"quality score is {row['chosen_score']:.2f} {wording}." in goal
        assert wording in row["rationale"]


def test_one_to_five_wording_matches_the_templates():
    """'mean' is described as a 1-5 scale: true while every absolute template scores 1..5."""
    for template in ABSOLUTE.values():
        assert template.score_tokens == ("1", "2", "3", "4", "5"), template.id
    prompts, cands, judgments = _judged(with_other_kinds=False)
    scores = make_pairs(prompts, cands, judgments, PairConfig(min_margin=0), method="median")[0]
    with pytest.raises(ConfigError, match="judge.aggregate 'z' has no score scale"):
        augment(scores, aggregate="z", keep_original=False)
