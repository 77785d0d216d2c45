"""`prefsynth judge-eval`: accuracy and intervals recomputed from the per-pair table, position consistency counted,
bad label files rejected in one line by the real CLI."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.loop.judge_eval import OVERALL, judge_pairs, load_labels, run_judge_eval, summarise
from tests.conftest import TINY, cli_in_process, write_jsonl

MODEL = "bundled:smollm2-135m-instruct"
LABELS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Berlin.", "category": "facts"},
    {"prompt": "Name a primary colour.", "chosen": "Red.", "rejected": "Banana.", "category": "facts"},
    {"prompt": "Which planet is largest?", "chosen": "Jupiter.", "rejected": "Mars, I think.", "category": "facts"},
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "chosen": [{"role": "assistant", "content": "4"}],
     "rejected": "5", "category": "math", "id": "m1"},
    {"prompt": "What is 3 times 3?", "chosen": "9", "rejected": "It is 12.", "category": "math"},
    {"prompt": "Is 7 prime?", "chosen": "Yes, 7 is prime.", "rejected": "No.", "category": "math"},
    {"prompt": "Say hello.", "chosen": "Hello!", "rejected": "Go away."},
]
LONG = {"prompt": "Tell me a story.", "chosen": "Once upon a time " * 40, "rejected": "No.", "category": "facts"}


def _expected(rows: list[dict]) -> tuple[int, int, float | None]:
    """(judged, failed, accuracy) computed here from the per-pair scores, not from the `correct` column."""
    judged = [r for r in rows if r["score_chosen"] is not None and r["score_rejected"] is not None]
    wins = [1.0 if r["score_chosen"] > r["score_rejected"] else 0.5 if r["score_chosen"] == r["score_rejected"]
            else 0.0 for r in judged]
    return len(judged), len(rows) - len(judged), (sum(wins) / len(wins) if wins else None)


def _check_summary(summary: list[dict], pairs: list[dict]) -> int:
    """Every summary row against the test's own count from the per-pair table; returns the rows checked."""
    for row in summary:
        mine = [r for r in pairs if r["judge"] == row["judge"] and row["category"] in (OVERALL, r["category"])]
        n, failed, accuracy = _expected(mine)
        assert (row["n"], row["failed"]) == (n, failed)
        assert row["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert row["low"] <= row["accuracy"] <= row["high"]
    return len(summary)


@pytest.mark.slow
def test_reward_model_accuracy_and_interval_match_the_per_pair_scores(seeded_rm, tmp_path):
    from judges.reward_model import RewardModelJudge

    rm = seeded_rm
    labels = write_jsonl(tmp_path / "labels.jsonl", [*LABELS, LONG])
    cfg = load_config(TINY, ["judge.templates=[]", f"judge.reward_models=[{rm}]", "judge.aggregate=mean_normalised",
                             "judge.max_input_tokens=64"])
    summary = run_judge_eval(cfg, labels, tmp_path / "out").to_pylist()
    pairs = pq.read_table(tmp_path / "out" / "judge_eval_pairs.parquet").to_pylist()
    assert pq.read_table(tmp_path / "out" / "judge_eval.parquet").to_pylist() == summary
    assert _check_summary(summary, pairs) == 3  # all, facts, math (the uncategorised pair counts only in 'all')
    overall = summary[0]
    assert overall["category"] == OVERALL and overall["position_consistency"] is None
    assert (overall["n"], overall["failed"]) == (len(LABELS), 1)  # LONG is over judge.max_input_tokens
    # the scores are the reward model's own
    first = next(r for r in pairs if r["id"] == "row-0")
    direct = RewardModelJudge(rm).score([([{"role": "user", "content": LABELS[0]["prompt"]}], "Paris.")])[0]
    assert first["score_chosen"] == pytest.approx(direct.score, abs=1e-5)
    report = (tmp_path / "out" / "judge_eval.md").read_text()
    assert f"## {first['judge']}" in report and "judge fingerprint `" in report


class _Fixed:
    """A score judge that gives set scores (None: not ok), enough for the ensemble arithmetic."""

    kind, aspect = "absolute", "overall"

    def __init__(self, name: str, scores: dict[str, float | None]):
        self.id, self.scores = name, scores

    def score(self, items, progress=None, references=None):
        from judges.absolute import Judgment

        return [Judgment(self.scores[text], self.scores[text] is not None, "{}") for _, text in items]


def test_ensemble_ties_and_failures_follow_the_per_pair_scores(tmp_path):
    pairs = load_labels(write_jsonl(tmp_path / "l.jsonl", [LABELS[0], LABELS[1], LABELS[4], LABELS[6]]))
    a = _Fixed("a", {"Paris.": 4, "Berlin.": 2, "Red.": 3, "Banana.": 3, "9": 1, "It is 12.": 5, "Hello!": None,
                     "Go away.": 1})
    b = _Fixed("b", {"Paris.": 2, "Berlin.": 3, "Red.": 5, "Banana.": 1, "9": 2, "It is 12.": 4, "Hello!": 5,
                     "Go away.": 1})
    table = judge_pairs(pairs, [a, b], aggregate="mean").to_pylist()
    ens = [r for r in table if r["judge"] == "ensemble (mean)"]
    # means: (3, 2.5) right, (4, 2) right, (1.5, 4.5) wrong, (5, 1) right: a's failure leaves b's score
    assert [(r["score_chosen"], r["score_rejected"]) for r in ens] == [(3, 2.5), (4, 2), (1.5, 4.5), (5, 1)]
    assert [r["correct"] for r in table if r["judge"] == "a"] == [1.0, 0.5, 0.0, None]  # a tie counts 0.5
    summary = summarise(pa.Table.from_pylist(table), seed=1).to_pylist()
    assert _check_summary(summary, table) == 3 * 3
    assert next(r for r in summary if r["judge"] == "a" and r["category"] == OVERALL)["failed"] == 1


@pytest.mark.slow
def test_pairwise_position_consistency_is_the_share_of_agreeing_orders(tmp_path):
    labels = write_jsonl(tmp_path / "labels.jsonl", LABELS[:4])
    cfg = load_config(TINY, [f"judge.model={MODEL}", "judge.templates=[]", "judge.pairwise_templates=[pairwise-ab-v1]",
                             "judge.aggregate=majority"])
    summary = run_judge_eval(cfg, labels, tmp_path / "out").to_pylist()
    pairs = pq.read_table(tmp_path / "out" / "judge_eval_pairs.parquet").to_pylist()
    assert len({r["judge"] for r in pairs}) == 1 and pairs[0]["judge"].endswith("#pairwise-ab-v1")  # no ensemble
    judged = [r for r in pairs if r["ok"]]
    assert judged and all(r["score_rejected"] == pytest.approx(1 - r["score_chosen"]) for r in judged)
    overall = next(r for r in summary if r["category"] == OVERALL)
    assert overall["position_consistency"] == sum(r["position_consistent"] for r in judged) / len(judged)
    wins = [1.0 if r["score_chosen"] > 0.5 else 0.5 if r["score_chosen"] == 0.5 else 0.0 for r in judged]
    assert overall["accuracy"] == pytest.approx(sum(wins) / len(wins))
    assert overall["low"] <= overall["accuracy"] <= overall["high"]


def test_labels_in_parquet_with_message_lists(tmp_path):
    msgs = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    table = pa.Table.from_pylist([{"prompt": msgs("user", "Hi?"), "chosen": msgs("assistant", "Hello."),
                                   "rejected": msgs("assistant", "Bye."), "category": None, "id": 7}])
    pq.write_table(table, tmp_path / "l.parquet")
    (pair,) = load_labels(tmp_path / "l.parquet")
    assert (pair.id, pair.category, pair.prompt, pair.chosen, pair.rejected) == ("7", None, msgs("user", "Hi?"),
                                                                                 "Hello.", "Bye.")


@pytest.mark.parametrize(
    "name, rows, needle",
    [
        ("missing.jsonl", [LABELS[0], {"prompt": "Hi", "rejected": "No."}], ":2: missing 'chosen'; fix: add"),
        ("empty.jsonl", [], "no labelled pairs in the file; fix:"),
        ("labels.csv", [LABELS[0]], "unknown format '.csv'; fix: use .jsonl or .parquet"),
    ],
)
def test_bad_labels_fail_in_one_line_without_traceback(tmp_path, name, rows, needle):
    labels = write_jsonl(tmp_path / name, rows)
    proc = cli_in_process("judge-eval", "--labels", str(labels), "--out", str(tmp_path / "out"))
    errors = [x for x in proc.stderr.splitlines() if x.startswith("prefsynth: error")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in errors[0] and not (tmp_path / "out").exists()
