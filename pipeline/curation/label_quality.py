"""Label quality: how often each judge, and the ensemble, prefers the answer a verifier found correct.

Agreement between judges is not accuracy (two judges can agree and both be wrong). Where prompts
carry a machine-checkable spec (`verify`, pipeline/verifiable/spec.py), the verifier judge
(judges/verifier.py) marks each candidate pass or fail. Every pair of candidates of one prompt
where one passes and the other fails is a verified pair; a judge is right on it when it prefers
the passing candidate, and a tie counts half (pairwise accuracy on chosen/rejected pairs, as
RewardBench, Lambert et al. 2024, scores reward models). A score judge compares its two ok scores,
a pairwise judge gives its verdict (position-inconsistent: a tie), the ensemble compares the run's
aggregated scores (`judge.aggregate`). Pairs a judge did not score on both sides are left out of
its count.

Intervals: percentile bootstrap with prompts as the resampling unit (the pairs of one prompt share
its candidates, so they are not independent), 1000 resamples, seeded by the run seed. Reported
overall (`category` "all") and per prompt family (the prompt's `category`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import product

import numpy as np
import pyarrow as pa

from judges.agreement import outcome
from pipeline.curation.aggregate import judge_preferences, verdicts, verifier_judgments

ENSEMBLE = "ensemble"
CREDIT = {"chosen": 1.0, "tie": 0.5, "rejected": 0.0}
SIDE = {1: "chosen", 0: "tie", -1: "rejected"}
RESAMPLES = 1000


def verified_pairs(judgments: pa.Table) -> dict[str, tuple[str, str]]:
    """{pair_id: (passing candidate_id, failing candidate_id)} over every prompt with both kinds."""
    by_prompt: dict[str, dict[bool, list[str]]] = defaultdict(lambda: {True: [], False: []})
    for cid, (pid, passed) in verdicts(judgments).items():
        by_prompt[pid][passed].append(cid)
    return {f"{a}>{b}": (a, b) for sides in by_prompt.values() for a, b in product(sides[True], sides[False])}


def preferences(pairs: dict[str, tuple[str, str]], judgments: pa.Table, ensemble: dict[str, float]) -> dict:
    """{judge: {pair_id: "chosen" | "rejected" | "tie"}} with "chosen" the passing side; plus the ensemble."""
    out = judge_preferences(pairs, judgments)
    mine = {}
    for pid, (good, bad) in pairs.items():
        if good in ensemble and bad in ensemble:  # the tie rule of every judge (judges/agreement.py `outcome`)
            mine[pid] = SIDE[outcome(ensemble[good], ensemble[bad])]
    out[ENSEMBLE] = mine
    return out


def bootstrap_accuracy(credits_by_prompt: dict[str, list[float]], *, seed: int) -> tuple[float, float, float]:
    """(accuracy, 2.5th, 97.5th percentile) with prompts resampled with replacement."""
    sums = np.array([sum(v) for v in credits_by_prompt.values()], dtype=float)
    counts = np.array([len(v) for v in credits_by_prompt.values()], dtype=float)
    accuracy = float(sums.sum() / counts.sum())
    draw = np.random.default_rng(seed).integers(0, len(sums), size=(RESAMPLES, len(sums)))
    resampled = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return accuracy, float(low), float(high)


def label_quality(judgments: pa.Table, ensemble: dict[str, float], categories: dict[str, str | None], *,
                  seed: int) -> dict | None:
    """The run's label-quality report, or None when no candidate was verified. `ensemble`: the aggregated
    score per candidate_id; `categories`: prompt_id -> family."""
    checked = verdicts(judgments)
    if not checked:
        return None
    pairs = verified_pairs(judgments)
    prompt_of = {pid: checked[good][0] for pid, (good, _) in pairs.items()}
    rows = []
    for judge, prefs in sorted(preferences(pairs, judgments, ensemble).items()):
        by_family: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for pair_id, pref in prefs.items():
            prompt = prompt_of[pair_id]
            for family in ("all", categories.get(prompt) or "uncategorised"):
                by_family[family][prompt].append(CREDIT[pref])
        for family, credits in sorted(by_family.items(), key=lambda kv: (kv[0] != "all", kv[0])):
            acc, low, high = bootstrap_accuracy(credits, seed=seed)
            rows.append({
                "judge": judge,
                "category": family,
                "pairs": sum(len(v) for v in credits.values()),
                "prompts": len(credits),
                "accuracy": round(acc, 4),
                "low": round(low, 4),
                "high": round(high, 4),
            })
    passed = sum(p for _, p in checked.values())
    return {
        "verified_candidates": len(checked),
        "passed": passed,
        "verified_pairs": len(pairs),
        "prompts_with_pairs": len(set(prompt_of.values())),
        "table": rows,
        "constraints": constraint_pass_rates(judgments),
    }


def constraint_pass_rates(judgments: pa.Table) -> list[dict]:
    """Per instruction-constraint type (judges/constraints.py): the candidates checked against it and how many
    pass strict and loose, read from the verifier's per-constraint verdicts in `raw`; [] when none."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for raw in verifier_judgments(judgments).column("raw").to_pylist():
        for r in (json.loads(raw) if raw else {}).get("constraints", []):
            c = counts[r["id"]]
            c[0], c[1], c[2] = c[0] + 1, c[1] + bool(r["strict"]), c[2] + bool(r["loose"])
    return [{"constraint": k, "checked": n, "strict": s, "loose": lo, "strict_rate": round(s / n, 4),
             "loose_rate": round(lo / n, 4)} for k, (n, s, lo) in sorted(counts.items())]
