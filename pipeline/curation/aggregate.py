"""From the judgments table to one score per candidate, plus agreement figures (judge ensembles).

Score judges (kind absolute or reward_model) give one number per candidate; pairwise judges give
an outcome per candidate pair (candidate_id "x|y", score = P(x better), 0 outcome when
position-inconsistent). Only ok judgments count. Methods (`judge.aggregate`):
  mean             mean of the raw scores (judges on one scale, e.g. several 1-5 templates)
  mean_normalised  mean of per-judge z-scores over the run (mixes reward models and LLM judges)
  median           median of per-judge z-scores
  majority         per candidate pair the majority outcome over all judges (score judges vote by
                   comparing their scores); a candidate's score is (wins - losses) / (n - 1)
  bradley_terry    Bradley-Terry log-strengths over every judge's pairwise outcome of the prompt
                   (a fit that misses its tolerance raises ConvergenceError naming the prompt)
  learned          sum_j w_j z_j over the score judges' z-scores, w fitted on the run's verified
                   pairs (below; `fit_learned`)
`learned` is supervised by verifier judgments (kind "verifier": score 1.0 verified correct, 0.0
wrong, ok false when the answer could not be checked), which are no score judge: no other method
reads them. A verified pair is two candidates of one prompt (among the candidates the pair stage
may pair), both with an ok verdict and an ok score from some score judge, that the verifier passes
one of and fails the other. With x_j = z_j(a) - z_j(b), the
difference of judge j's z-scores (as mean_normalised; a judge that did not score a candidate
contributes z = 0, its run mean, both in the fit and when scoring), the model is
    P(a passes, b fails | one of them passes) = sigmoid(w . x)        (logistic regression, Cox 1958)
i.e. Bradley-Terry (Bradley & Terry 1952) with strengths linear in the judges' z-scores, as reward
models are fitted to preferences. No intercept (swapping a and b flips the label); L2 penalty
LEARNED_L2 / 2 |w|^2 on the mean log-loss, solved by Newton steps (judges/agreement.py
`logistic_fit`, numpy, deterministic). Prompts, not pairs, are split (a prompt is held out when
sha256(seed, prompt_id) falls in the top HELD_OUT of [0, 1)), so a held-out pair never shares a
prompt with a fitted one. Pairwise judges are left out of the features (they give no score per
candidate; the report lists them). Fewer than MIN_FIT_PAIRS fitted pairs is a ConfigError. The
report (pair stage meta `aggregate_fit`) gives the weights, the pair counts and the held-out pairwise
accuracy (share of held-out verified pairs whose passing candidate scores higher, a tie counting
half) of learned, mean_normalised and each judge alone (its z-score, 0 where missing).
A pairwise judgment is a win for the candidate with P > 0.5, a tie at exactly 0.5 (within 1e-9)
or when position-inconsistent. Agreement (judges/agreement.py): per prompt, Krippendorff's alpha
(interval) over its candidates x score judges on per-judge z-scores (not raw scores: a 1-5 judge
and a reward model are comparable only after standardising), which becomes the pair's
`judge_agreement` (None for a prompt with fewer than two candidates that two judges scored);
overall alpha; mean Kendall tau-b per pair of score judges on the same z-scores; position-
consistency rate and failure rate per judge; and the prompts whose comparison graph is
disconnected (Bradley-Terry orders its components only through the prior; judges/agreement.py).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import pyarrow as pa
import pyarrow.compute as pc

from judges.agreement import (
    bradley_terry_fit,
    components,
    kendall_tau_b,
    krippendorff_alpha_interval,
    logistic_fit,
    majority,
    median,
    outcome,
    zscore,
)
from pipeline.errors import ConfigError, ConvergenceError

SCORE_KINDS = ("absolute", "reward_model")
# the methods that need nothing but the judges; `learned` also needs verifier judgments
METHODS = ("mean", "mean_normalised", "median", "majority", "bradley_terry")
LEARNED = "learned"
VERIFIER_KIND = "verifier"
LEARNED_L2 = 0.01  # on the mean log-loss: small, so it only keeps separable data finite
HELD_OUT = 0.3  # share of prompts whose verified pairs are held out of the fit
MIN_FIT_PAIRS = 10


def _rows(judgments: pa.Table) -> list[dict]:
    return judgments.select(
        ["prompt_id", "candidate_id", "judge", "kind", "score", "ok", "position_consistent"]
    ).to_pylist()


def _normalised(rows: list[dict]) -> dict[tuple[str, str], float]:
    """{(judge, candidate_id): z-score of that judge's ok score over the run}."""
    by_judge: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["ok"] and r["kind"] in SCORE_KINDS:
            by_judge[r["judge"]].append(r)
    out = {}
    for judge, items in by_judge.items():
        for r, z in zip(items, zscore([r["score"] for r in items])):
            out[(judge, r["candidate_id"])] = z
    return out


def _pair_votes(rows: list[dict], candidates: dict[str, list[str]]) -> dict[str, list[tuple[int, int, int]]]:
    """Per prompt: (i, j, outcome) games, one per judge and candidate pair, indices into candidates[prompt]."""
    index = {p: {c: k for k, c in enumerate(cs)} for p, cs in candidates.items()}
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    games: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for r in rows:
        if not r["ok"] or r["prompt_id"] not in index:
            continue
        if r["kind"] in SCORE_KINDS:
            scores[(r["prompt_id"], r["judge"])][r["candidate_id"]] = r["score"]
        elif r["kind"] == "pairwise":
            x, y = r["candidate_id"].split("|")
            idx = index[r["prompt_id"]]
            if x in idx and y in idx:
                result = 0 if not r["position_consistent"] else outcome(r["score"], 0.5)
                games[r["prompt_id"]].append((idx[x], idx[y], result))
    for (prompt, _), by_cand in scores.items():
        idx = index[prompt]
        for x, y in combinations(sorted(by_cand), 2):
            if x in idx and y in idx:
                games[prompt].append((idx[x], idx[y], outcome(by_cand[x], by_cand[y])))
    return games


def aggregate_scores(judgments: pa.Table, candidate_ids: dict[str, list[str]], method: str, *,
                     seed: int = 0) -> tuple[dict[str, float], dict | None]:
    """({candidate_id: aggregated score}, the fit report of `learned` or None for the other methods)."""
    if method == LEARNED:
        fit = fit_learned(judgments, candidate_ids, seed=seed)
        return fit.scores, fit.report
    return candidate_scores(judgments, candidate_ids, method), None


def candidate_scores(judgments: pa.Table, candidate_ids: dict[str, list[str]], method: str, *,
                     seed: int = 0) -> dict[str, float]:
    """{candidate_id: aggregated score} for candidates with at least one ok judgment (of a score judge for the
    pointwise methods); `seed` splits the prompts of `learned` only."""
    if method == LEARNED:
        return fit_learned(judgments, candidate_ids, seed=seed).scores
    rows = _rows(judgments)
    if method in ("mean", "mean_normalised", "median"):
        values: dict[str, list[float]] = defaultdict(list)
        norm = _normalised(rows)
        for r in rows:
            if r["ok"] and r["kind"] in SCORE_KINDS:
                values[r["candidate_id"]].append(
                    r["score"] if method == "mean" else norm[(r["judge"], r["candidate_id"])]
                )
        agg = median if method == "median" else (lambda v: sum(v) / len(v))
        return {c: agg(v) for c, v in values.items()}
    out = {}
    for prompt, games in _pair_votes(rows, candidate_ids).items():
        cands = candidate_ids[prompt]
        if method == "bradley_terry":
            fit = bradley_terry_fit(len(cands), games)
            if not fit.converged:
                raise ConvergenceError(
                    f"judge.aggregate bradley_terry: the fit for prompt_id {prompt} did not converge "
                    f"({fit.iterations} Newton steps, last step {fit.step:.3g}); this is a bug, "
                    "please report it with the run's judge table"
                )
            strengths = fit.log_strengths
            played = {i for g in games for i in g[:2]}
            out.update({cands[i]: strengths[i] for i in played})
            continue
        by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, j, r in games:
            by_pair[(i, j)].append(r)
        net: dict[int, int] = defaultdict(int)
        for (i, j), votes in by_pair.items():
            m = majority(votes)
            net[i] += m
            net[j] -= m
        out.update({cands[i]: net[i] / max(len(cands) - 1, 1) for i in {k for pair in by_pair for k in pair}})
    return out


@dataclass(frozen=True)
class LearnedFit:
    """`learned`: the judges' weights, every scored candidate's score and the report for the pair stage's meta."""
    weights: dict[str, float]
    scores: dict[str, float]
    report: dict


def held_out(prompt_id: str, seed: int) -> bool:
    """The seeded prompt split of `learned`: about HELD_OUT of the prompts are held out."""
    digest = hashlib.sha256(f"{seed}\0{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 >= 1 - HELD_OUT


def verifier_judgments(judgments: pa.Table) -> pa.Table:
    """The verifier's ok judgments (it could check the candidate)."""
    return judgments.filter(pc.and_(pc.equal(judgments.column("kind"), VERIFIER_KIND), judgments.column("ok")))


def verifier_scores(judgments: pa.Table) -> dict[str, tuple[str, float]]:
    """{candidate_id: (prompt_id, score)} of the candidates the verifier could check (its ok judgments: 1.0 pass,
    0.0 fail; for instruction constraints the fraction that pass). A candidate whose ok verifier judgments
    disagree has none. Only verifier rows are turned into Python objects."""
    mine = verifier_judgments(judgments)
    seen: dict[str, tuple[str, set[float]]] = {}
    for r in mine.select(["prompt_id", "candidate_id", "score"]).to_pylist():
        seen.setdefault(r["candidate_id"], (r["prompt_id"], set()))[1].add(r["score"])
    return {c: (p, next(iter(v))) for c, (p, v) in seen.items() if len(v) == 1}


def verdicts(judgments: pa.Table) -> dict[str, tuple[str, bool]]:
    """{candidate_id: (prompt_id, passed)}: `verifier_scores`, passed when the score is full (every check holds)."""
    return {c: (p, s >= 1.0) for c, (p, s) in verifier_scores(judgments).items()}


def verified_pairs(judgments: pa.Table, candidate_ids: dict[str, list[str]]) -> list[tuple[str, str, str, int]]:
    """(prompt_id, a, b, label) per verified pair of candidates some score judge scored, a before b in
    candidate_ids order, label 1 when a passes (`verdicts`)."""
    passed = {c: ok for c, (_, ok) in verdicts(judgments).items()}
    scored = {r["candidate_id"] for r in _rows(judgments) if r["ok"] and r["kind"] in SCORE_KINDS}
    out = []
    for prompt, cands in candidate_ids.items():
        known = [c for c in cands if c in scored and c in passed]
        out += [(prompt, a, b, int(passed[a])) for a, b in combinations(known, 2) if passed[a] != passed[b]]
    return out


def pairwise_accuracy(scores: dict[str, float], pairs: list[tuple[str, str, str, int]]) -> float | None:
    """Share of verified pairs whose passing candidate scores higher (a tie within 1e-9 counts half)."""
    if not pairs:
        return None
    won = 0.0
    for _, a, b, label in pairs:
        good, bad = (a, b) if label else (b, a)
        won += (outcome(scores[good], scores[bad]) + 1) / 2
    return won / len(pairs)


def fit_learned(judgments: pa.Table, candidate_ids: dict[str, list[str]], *, seed: int) -> LearnedFit:
    """Weights of the score judges fitted on the verified pairs of the fit prompts (see the module docstring)."""
    rows = _rows(judgments)
    norm = _normalised(rows)
    judges = sorted({j for j, _ in norm})
    if not judges:
        raise ConfigError("judge.aggregate learned: no ok score from an absolute judge or reward model to weight; "
                          "fix: add judge.templates or judge.reward_models")
    pairs = verified_pairs(judgments, candidate_ids)
    fit = [p for p in pairs if not held_out(p[0], seed)]
    test = [p for p in pairs if held_out(p[0], seed)]
    if len(fit) < MIN_FIT_PAIRS:
        raise ConfigError(
            f"judge.aggregate learned: {len(fit)} verified candidate pairs to fit on ({len(pairs)} in all, "
            f"{int(HELD_OUT * 100)}% of prompts held out), at least {MIN_FIT_PAIRS} needed (two candidates of a "
            "prompt that the verifier passes and fails); fix: use judge.aggregate mean_normalised, or add "
            "verifiable prompts"
        )

    def z(judge: str, cid: str) -> float:
        return norm.get((judge, cid), 0.0)  # a judge that did not score the candidate: its run mean

    x = [[z(j, a) - z(j, b) for j in judges] for _, a, b, _ in fit]
    solved = logistic_fit(x, [label for *_, label in fit], l2=LEARNED_L2)
    if not solved.converged:
        raise ConvergenceError(
            f"judge.aggregate learned: the logistic fit over {len(fit)} pairs did not converge ({solved.iterations} "
            f"Newton steps, last step {solved.step:.3g}); this is a bug, please report it with the run's judge table"
        )
    weights = dict(zip(judges, solved.weights))
    candidates = sorted({c for _, c in norm})
    scores = {c: sum(w * z(j, c) for j, w in weights.items()) for c in candidates}
    single = {j: pairwise_accuracy({c: z(j, c) for c in candidates}, test) for j in judges}
    report = {
        "method": LEARNED,
        "model": "logistic regression without intercept on per-judge z-score differences of verified pairs",
        "weights": weights,
        "l2": LEARNED_L2,
        "iterations": solved.iterations,
        "seed": seed,
        "heldout_fraction": HELD_OUT,
        "fit_prompts": len({p[0] for p in fit}),
        "heldout_prompts": len({p[0] for p in test}),
        "fit_pairs": len(fit),
        "heldout_pairs": len(test),
        "fit_accuracy": pairwise_accuracy(scores, fit),
        "heldout_accuracy": {
            LEARNED: pairwise_accuracy(scores, test),
            "mean_normalised": pairwise_accuracy(candidate_scores(judgments, candidate_ids, "mean_normalised"), test),
            "judges": single,
        },
        "left_out_judges": sorted({r["judge"] for r in rows if r["kind"] == "pairwise"}),
    }
    return LearnedFit(weights, scores, report)


def _compared(rows: list[dict]) -> dict[str, list[str]]:
    """{prompt_id: candidate ids that any ok judgment compares}, in first-seen order."""
    out: dict[str, dict[str, None]] = defaultdict(dict)
    for r in rows:
        if r["ok"]:
            for c in r["candidate_id"].split("|") if r["kind"] == "pairwise" else [r["candidate_id"]]:
                out[r["prompt_id"]][c] = None
    return {p: list(cs) for p, cs in out.items()}


def agreement(judgments: pa.Table) -> tuple[dict[str, float | None], dict]:
    """({prompt_id: Krippendorff alpha or None}, run-level figures for the manifest)."""
    rows = _rows(judgments)
    norm = _normalised(rows)
    judges = sorted({r["judge"] for r in rows})
    score_judges = sorted({j for j, _ in norm})
    cands_by_prompt: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["kind"] in SCORE_KINDS and r["candidate_id"] not in cands_by_prompt[r["prompt_id"]]:
            cands_by_prompt[r["prompt_id"]].append(r["candidate_id"])
    units_by_prompt = {p: [[norm.get((j, c)) for j in score_judges] for c in cs] for p, cs in cands_by_prompt.items()}
    per_prompt = {
        p: (krippendorff_alpha_interval(u) if len(score_judges) > 1 else None) for p, u in units_by_prompt.items()
    }
    taus = {}
    for a, b in combinations(score_judges, 2):
        vals = []
        for cs in cands_by_prompt.values():
            both = [c for c in cs if (a, c) in norm and (b, c) in norm]
            tau = kendall_tau_b([norm[(a, c)] for c in both], [norm[(b, c)] for c in both]) if len(both) > 1 else None
            if tau is not None:
                vals.append(tau)
        taus[f"{a} ~ {b}"] = round(sum(vals) / len(vals), 4) if vals else None
    everything = [u for units in units_by_prompt.values() for u in units]
    graphs = _pair_votes(rows, _compared(rows))
    disconnected = sorted(p for p, games in graphs.items() if components([g[:2] for g in games]) > 1)
    overall = krippendorff_alpha_interval(everything) if len(score_judges) > 1 else None
    per_judge = {}
    for j in judges:
        mine = [r for r in rows if r["judge"] == j]
        pairwise = [r for r in mine if r["kind"] == "pairwise" and r["ok"]]
        per_judge[j] = {
            "kind": mine[0]["kind"],
            "judgments": len(mine),
            "failure_rate": round(sum(not r["ok"] for r in mine) / len(mine), 4),
            "position_consistency": (
                round(sum(bool(r["position_consistent"]) for r in pairwise) / len(pairwise), 4) if pairwise else None
            ),
        }
    figures = {
        "krippendorff_alpha": None if overall is None else round(overall, 4),
        "kendall_tau": taus,
        "judges": per_judge,
        "disconnected_prompts": len(disconnected),
        "disconnected_prompt_ids": disconnected[:20],
    }
    return per_prompt, figures


def judge_preferences(pairs: dict[str, tuple[str, str]], judgments: pa.Table) -> dict[str, dict[str, str]]:
    """{judge: {pair_id: "chosen" | "rejected" | "tie"}} for `pairs` = {pair_id: (chosen_id, rejected_id)}:
    a score judge compares its ok scores of the two, a pairwise judge gives its verdict (a
    position-inconsistent one is a tie). Pairs a judge did not score both sides of are left out."""
    wanted = {c for ids in pairs.values() for c in ids}
    keys = wanted | {f"{c}|{r}" for c, r in pairs.values()} | {f"{r}|{c}" for c, r in pairs.values()}
    judgments = judgments.filter(pc.is_in(judgments.column("candidate_id"),
                                          value_set=pa.array(sorted(keys), pa.string())))
    scores: dict[tuple[str, str], float] = {}
    verdicts: dict[tuple[str, str, str], int] = {}
    for r in judgments.select(["candidate_id", "judge", "kind", "score", "ok", "position_consistent"]).to_pylist():
        if not r["ok"] or r["score"] is None:
            continue
        if r["kind"] in SCORE_KINDS and r["candidate_id"] in wanted:
            scores[(r["judge"], r["candidate_id"])] = r["score"]
        elif r["kind"] == "pairwise":
            x, _, y = r["candidate_id"].partition("|")
            if x in wanted and y in wanted:
                verdicts[(r["judge"], x, y)] = outcome(r["score"], 0.5) if r["position_consistent"] else 0
    judges = {j for j, _ in scores} | {k[0] for k in verdicts}
    names = {1: "chosen", -1: "rejected", 0: "tie"}
    out: dict[str, dict[str, str]] = {}
    for judge in sorted(judges):
        mine = out.setdefault(judge, {})
        for pid, (c, r) in pairs.items():
            if (judge, c) in scores and (judge, r) in scores:
                mine[pid] = names[outcome(scores[(judge, c)], scores[(judge, r)])]
            elif (judge, c, r) in verdicts:
                mine[pid] = names[verdicts[(judge, c, r)]]
            elif (judge, r, c) in verdicts:
                mine[pid] = names[-verdicts[(judge, r, c)]]
    return out
