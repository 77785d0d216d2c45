"""`prefsynth eval`: the win rate equals this test's own count from the kept judgments, the length-controlled
win rate follows the length, and a missing model fails in one line before anything loads."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from pipeline.loop.evaluate import lc_win_rate
from tests.conftest import TINY, cli_in_process, run_cli

MODEL = "bundled:smollm2-135m-instruct"


def own_wins(judgments: list[dict]) -> dict[str, float]:
    """Per prompt, from the absolute judge's scores of the two answers: 1, 0.5 or 0 for A (the tiny config has one
    judge, so its scores are the combined scores)."""
    scores = {r["candidate_id"]: r["score"] for r in judgments if r["ok"]}
    out = {}
    for pid in {r["prompt_id"] for r in judgments}:
        a, b = scores.get(f"{pid}-model"), scores.get(f"{pid}-baseline")
        if a is not None and b is not None:
            out[pid] = 1.0 if a > b else 0.5 if a == b else 0.0
    return out


@pytest.mark.slow
def test_eval_cli_win_rate_is_the_count_of_the_judgments(perturbed_model, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("eval", "--model", str(perturbed_model), "--config", str(TINY), "--out", str(out),
                   "--set", "eval.limit=4", "--set", "eval.max_new_tokens=12", "--set", "eval.top_k=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    judgments = pq.read_table(out / "eval_judgments.parquet").to_pylist()
    summary = pq.read_table(out / "eval_summary.parquet").to_pylist()[0]
    answers = {r["prompt_id"]: r for r in pq.read_table(out / "eval_answers.parquet").to_pylist()}
    mine = own_wins(judgments)
    assert len(answers) == 4 and summary["n"] == len(mine) > 0
    assert summary["win_rate"] == pytest.approx(sum(mine.values()) / len(mine))
    assert [summary[k] for k in ("wins", "ties", "losses")] == [sum(w == x for w in mine.values()) for x in (1, .5, 0)]
    assert {p: r["win"] for p, r in answers.items()} == mine
    assert any(r["model_text"] != r["baseline_text"] for r in answers.values())  # the models differ, the seeds not
    assert summary["win_low"] <= summary["win_rate"] <= summary["win_high"]
    assert 0 < summary["model_topk_mass"] <= 1 and 0 < summary["baseline_topk_entropy"] <= math.log(5) + 1e-6
    assert summary["model_mean_tokens"] == pytest.approx(sum(r["model_tokens"] for r in answers.values()) / 4)
    assert "win rate" in proc.stdout and "Dubois" in (out / "report.md").read_text()


def test_lc_win_rate_removes_a_length_effect():
    # A is mostly the longer answer and the longer answer mostly wins: raw win rate 0.75, at equal length
    # (the intercept) much nearer parity
    diffs = [10, 20, 30, 40, -10, -20, 15, 25] * 3
    wins = [1.0 if d > 0 else 0.0 for d in diffs]
    wins[0], wins[4] = 0.0, 1.0  # one upset each way: not separable
    lc, coef = lc_win_rate(wins, diffs)
    assert sum(wins) / len(wins) == 0.75 and coef > 1 and abs(lc - 0.5) < 0.1
    assert lc_win_rate([1.0, 0.5, 0.0], [0, 0, 0])[0] == pytest.approx(0.5, abs=1e-6)  # no length spread: the mean


def test_eval_missing_model_fails_in_one_line(tmp_path):
    proc = cli_in_process("eval", "--model", str(tmp_path / "nope"), "--config", str(TINY),
                          "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--model" in proc.stderr and "fix:" in proc.stderr


def test_lc_win_rate_recovers_the_length_neutral_win_rate_and_matches_a_reference_fit():
    # wins drawn from a known logistic model with a length effect: P(A wins) = sigmoid(theta + phi tanh(d / sd));
    # the length-neutral win rate is sigmoid(theta) = 0.6, the raw one higher because A is mostly longer
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    theta, phi = math.log(0.6 / 0.4), 1.5
    diffs = rng.normal(40, 60, 4000)
    feature = np.tanh(diffs / diffs.std(ddof=1))
    wins = (rng.random(4000) < 1 / (1 + np.exp(-(theta + phi * feature)))).astype(float)
    wins[rng.random(4000) < 0.1] = 0.5  # some ties, soft labels
    lc, coef = lc_win_rate(wins.tolist(), diffs.tolist())
    assert wins.mean() > 0.65 and lc == pytest.approx(0.6, abs=0.03) and coef == pytest.approx(phi, abs=0.25)
    # an independent fit of the same objective: mean logistic loss with soft labels + (1e-3 / 2) |w|^2
    x = np.column_stack([np.ones_like(feature), feature])

    def loss(w):
        m = x @ w
        return np.mean(np.logaddexp(0, m) - wins * m) + 1e-3 / 2 * w @ w

    ref = optimize.minimize(loss, np.zeros(2), method="BFGS", options={"gtol": 1e-12}).x
    assert lc == pytest.approx(1 / (1 + math.exp(-ref[0])), abs=1e-6) and coef == pytest.approx(ref[1], abs=1e-6)
