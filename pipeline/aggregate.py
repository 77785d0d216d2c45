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

from collections import defaultdict
from itertools import combinations

import pyarrow as pa
import pyarrow.compute as pc

from judges.agreement import (
    bradley_terry_fit,
    components,
    kendall_tau_b,
    krippendorff_alpha_interval,
    majority,
    median,
    outcome,
    zscore,
)
from pipeline.errors import ConvergenceError

SCORE_KINDS = ("absolute", "reward_model")
METHODS = ("mean", "mean_normalised", "median", "majority", "bradley_terry")


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


def candidate_scores(judgments: pa.Table, candidate_ids: dict[str, list[str]], method: str) -> dict[str, float]:
    """{candidate_id: aggregated score} for candidates with at least one ok judgment."""
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
