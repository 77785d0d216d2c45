"""judge.aggregate learned: judge weights fitted on verified candidate pairs (pipeline/curation/aggregate.py).

Synthetic runs, no models: a seeded-random absolute judge (uniform noise), a reward model whose score
follows the verifier's verdict, and verifier rows (kind "verifier", score 1.0 / 0.0, ok false when the
answer could not be checked) as the verifier judges write them.
"""

import hashlib
import random

import numpy as np
import pyarrow.compute as pc
import pytest

from judges.agreement import logistic_fit
from pipeline.config import PairConfig, load_config
from pipeline.core import schemas
from pipeline.curation.aggregate import MIN_FIT_PAIRS, SCORE_KINDS, aggregate_scores, candidate_scores, fit_learned
from pipeline.curation.reward_augment import augment
from pipeline.errors import ConfigError
from pipeline.stages.pair import aggregated_candidates, make_pairs
from pipeline.stages.pair import run as run_pair_stage

SEED = 7


def judgment(pid, cid, judge, kind, score, ok=True, consistent=None):
    return {"prompt_id": pid, "candidate_id": cid, "judge": judge, "kind": kind, "aspect": "overall",
            "score": score if ok else None, "ok": ok, "position_consistent": consistent}


def synthetic(seed=0, n_prompts=60, n_candidates=4):
    """(prompts, candidates, judgments, {prompt_id: candidate ids}) of a run with a noise judge, an aligned judge,
    a pairwise judge and a verifier; a few verdicts and scores are not ok."""
    rng = random.Random(seed)
    prompts, cands, rows, ids = [], [], [], {}
    for p in range(n_prompts):
        pid = f"q{p:03d}"
        prompts.append({"prompt_id": pid, "messages": [{"role": "user", "content": f"what is {p} + {p}?"}]})
        for k in range(n_candidates):
            cid = f"{pid}-{k}"
            ids.setdefault(pid, []).append(cid)
            passes = rng.random() < 0.5
            cands.append({"prompt_id": pid, "candidate_id": cid, "generator": "g", "text": f"answer {k} to {p}",
                          "n_tokens": 4, "finish_reason": "stop"})
            rows.append(judgment(pid, cid, "noise-1to5", "absolute", rng.uniform(1, 5), ok=rng.random() > 0.05))
            rows.append(judgment(pid, cid, "aligned-rm", "reward_model", float(passes) + rng.gauss(0, 0.6)))
            rows.append(judgment(pid, cid, "verifier-v1", "verifier", float(passes), ok=rng.random() > 0.05))
        rows.append(judgment(pid, f"{pid}-0|{pid}-1", "pairwise-ab-v1", "pairwise", rng.random(), consistent=True))
    return (schemas.from_rows(prompts, "prompts"), schemas.from_rows(cands, "candidates"),
            schemas.from_rows(rows, "judgments"), ids)


def own_z(rows):
    """{(judge, candidate_id): z-score} over each score judge's ok scores (population sd), written out here."""
    out = {}
    for judge in {r["judge"] for r in rows if r["kind"] in SCORE_KINDS}:
        mine = [r for r in rows if r["judge"] == judge and r["ok"]]
        v = np.array([r["score"] for r in mine])
        z = (v - v.mean()) / v.std()
        out.update({(judge, r["candidate_id"]): float(x) for r, x in zip(mine, z)})
    return out


def own_heldout_pairs(rows, ids, seed):
    """(passing, failing) candidate pairs of the held-out prompts, from the documented split and pair rule."""
    verdict = {r["candidate_id"]: r["score"] == 1.0 for r in rows if r["kind"] == "verifier" and r["ok"]}
    scored = {r["candidate_id"] for r in rows if r["kind"] in SCORE_KINDS and r["ok"]}
    out = []
    for pid, cands in ids.items():
        digest = hashlib.sha256(f"{seed}\0{pid}".encode()).digest()
        if int.from_bytes(digest[:8], "big") / 2**64 < 0.7:
            continue
        known = [c for c in cands if c in verdict and c in scored]
        out += [(a, b) for a in known for b in known if verdict[a] and not verdict[b]]
    return out


def share_won(score, pairs):
    return sum(1.0 if score(a) > score(b) else 0.5 if score(a) == score(b) else 0.0 for a, b in pairs) / len(pairs)


def test_learned_beats_mean_normalised_and_weights_the_aligned_judge():
    """The acceptance test: noise vs a verifier-aligned judge, 60 prompts x 4 candidates."""
    _, _, judgments, ids = synthetic()
    fit = fit_learned(judgments, ids, seed=SEED)
    rep = fit.report
    acc = rep["heldout_accuracy"]
    assert rep["fit_pairs"] >= MIN_FIT_PAIRS and rep["heldout_pairs"] >= 20
    assert acc["learned"] >= acc["mean_normalised"]
    assert fit.weights["aligned-rm"] > fit.weights["noise-1to5"]
    assert fit.weights["aligned-rm"] > 1.0 and abs(fit.weights["noise-1to5"]) < 0.5 * fit.weights["aligned-rm"]
    assert acc["learned"] > acc["judges"]["noise-1to5"]
    assert rep["weights"] == fit.weights
    assert rep["left_out_judges"] == ["pairwise-ab-v1"]  # pairwise judges give no per-candidate score
    # every candidate a score judge scored gets sum_j w_j z_j, verified or not
    assert set(fit.scores) == {r["candidate_id"] for r in judgments.to_pylist() if r["kind"] in SCORE_KINDS}
    assert candidate_scores(judgments, ids, "learned", seed=SEED) == fit.scores
    assert aggregate_scores(judgments, ids, "learned", seed=SEED) == (fit.scores, rep)
    assert aggregate_scores(judgments, ids, "mean_normalised", seed=SEED)[1] is None


def test_reported_heldout_accuracy_is_the_count_over_heldout_pairs():
    _, _, judgments, ids = synthetic(seed=3)
    rows = judgments.to_pylist()
    rep = fit_learned(judgments, ids, seed=SEED).report
    z = own_z(rows)
    pairs = own_heldout_pairs(rows, ids, SEED)
    assert rep["heldout_pairs"] == len(pairs)
    w = rep["weights"]

    def learned(c):
        return sum(wj * z.get((j, c), 0.0) for j, wj in w.items())  # a missing judge contributes its mean, 0

    def mean_normalised(c):
        present = [v for (j, cid), v in z.items() if cid == c]
        return sum(present) / len(present)

    assert rep["heldout_accuracy"]["learned"] == pytest.approx(share_won(learned, pairs), abs=1e-12)
    assert rep["heldout_accuracy"]["mean_normalised"] == pytest.approx(share_won(mean_normalised, pairs), abs=1e-12)
    for judge in w:
        got = rep["heldout_accuracy"]["judges"][judge]
        assert got == pytest.approx(share_won(lambda c: z.get((judge, c), 0.0), pairs), abs=1e-12)


@pytest.mark.parametrize("n_prompts, verifier", [(6, True), (60, False)])
def test_too_few_verified_pairs_is_a_clear_error(n_prompts, verifier):
    _, _, judgments, ids = synthetic(n_prompts=n_prompts)
    if not verifier:
        judgments = judgments.filter(pc.not_equal(judgments.column("kind"), "verifier"))
    with pytest.raises(ConfigError, match=r"judge\.aggregate learned: \d+ verified candidate pairs to fit on") as err:
        fit_learned(judgments, ids, seed=SEED)
    message = str(err.value)
    assert "\n" not in message and f"at least {MIN_FIT_PAIRS}" in message
    assert "fix: use judge.aggregate mean_normalised, or add verifiable prompts" in message
    if not verifier:
        assert message.startswith("judge.aggregate learned: 0 verified")


def test_same_seed_same_weights():
    _, _, judgments, ids = synthetic(seed=5)
    first = fit_learned(judgments, ids, seed=SEED)
    again = fit_learned(judgments, ids, seed=SEED)
    assert again.weights == first.weights and again.report == first.report and again.scores == first.scores
    # the split is by prompt hash, not by row order: shuffled rows give the same fit (up to float summation order)
    order = list(range(judgments.num_rows))
    random.Random(1).shuffle(order)
    shuffled = fit_learned(judgments.take(order), ids, seed=SEED)
    assert shuffled.report["fit_pairs"] == first.report["fit_pairs"]
    assert shuffled.weights == pytest.approx(first.weights, rel=1e-9)
    other = fit_learned(judgments, ids, seed=SEED + 1)
    assert other.report["fit_prompts"] != first.report["fit_prompts"] or other.weights != first.weights


def test_logistic_fit_reaches_the_penalised_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x @ np.array([2.0, -1.0, 0.0]) + rng.normal(size=200) > 0).astype(int)
    fit = logistic_fit(x.tolist(), y.tolist(), l2=0.01)
    w = np.array(fit.weights)
    p = 1 / (1 + np.exp(-(x @ w)))
    assert fit.converged and np.max(np.abs(x.T @ (p - y) / len(y) + 0.01 * w)) < 1e-9
    separable = logistic_fit([[1.0], [2.0], [0.5]], [1, 1, 1], l2=0.01)  # finite thanks to the penalty
    assert separable.converged and 0 < separable.weights[0] < 100


def test_config_accepts_learned_only_with_a_score_judge():
    cfg = load_config(None, ["judge.aggregate=learned", "judge.reward_models=[rm]"])
    assert cfg.judge.aggregate == "learned"
    with pytest.raises(ConfigError, match="judge.aggregate 'learned' needs an absolute template or a reward model"):
        load_config(None, ["judge.aggregate=learned", "judge.templates=[]",
                           "judge.pairwise_templates=[pairwise-ab-v1]"])


def test_pair_stage_scores_with_the_fit_and_reports_it(tmp_path):
    prompts, cands, judgments, ids = synthetic(seed=2)
    scored, fit = aggregated_candidates(cands, judgments, "learned", seed=SEED)
    expected = fit_learned(judgments, ids, seed=SEED)
    assert fit == expected.report
    got = dict(zip(scored["candidate_id"], scored["score"]))
    assert got == {c: expected.scores[c] for c in got}
    pairs, _ = make_pairs(prompts, cands, judgments, PairConfig(min_margin=0), seed=SEED, method="learned")
    assert pairs.num_rows > 0
    assert all(expected.scores[r["chosen_id"]] == r["chosen_score"] for r in pairs.to_pylist())
    augmented, _ = augment(pairs, aggregate="learned", keep_original=False)  # the goal has a scale for it
    assert "z-scores" in augmented.column("prompt").to_pylist()[0][0]["content"]
    for stage, table, name in (("prompts", prompts, "prompts"), ("generate", cands, "candidates"),
                               ("judge", judgments, "judgments")):
        schemas.write_table(table, tmp_path / "tables" / f"{stage}.parquet", name)
    cfg = load_config(None, ["judge.aggregate=learned", "judge.reward_models=[rm]", f"seed={SEED}"])
    meta = run_pair_stage(tmp_path, cfg, "judge-fp", log=lambda *_: None)
    assert meta["aggregate"] == "learned"
    assert meta["aggregate_fit"]["weights"] == pytest.approx(expected.weights)
    assert meta["aggregate_fit"]["heldout_pairs"] == expected.report["heldout_pairs"]
