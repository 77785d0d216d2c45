"""Reward-augmented pairs (Zhang et al. 2024, "Reward-Augmented Data Enhances Direct Preference
Alignment of LLMs"), built from the judges' scores.

The paper conditions the policy on a target reward and relabels each pair for two goals. For a
judged pair (x, y+, y-) with aggregated scores s+ > s-:
    x_goal(s+): "... answer that would be rated s+"  ->  chosen y+, rejected y-
    x_goal(s-): "... answer that would be rated s-"  ->  chosen y-, rejected y+
so the model learns what a response of each quality looks like instead of only pushing y- down.
The goal is a system message (prepended to an existing one). By default the augmented pairs
replace the originals (the paper's construction); `keep_original` keeps both.

Rows keep the judges' scores of their texts: in the low-goal row chosen_score < rejected_score
by construction (chosen is the response whose score matches the stated goal), and the rationale
states the goal and both ratings (a judge's "why chosen is better" would be wrong there). pair_strategy is
`reward_augmented:high:<strategy>` / `reward_augmented:low:<strategy>`; the goal template id is
`reward-goal-v2`.

The goal names the scale the scores are on, which depends on `judge.aggregate` (SCALES): the
paper's judges give 1-10 ratings, but here a score is a mean of 1-5 ratings only under `mean`;
under `median` / `mean_normalised` it is a z-score and under `bradley_terry` a log-strength, so
"rate -0.18 on a 1-5 scale" (v1's wording for `median`) told the model nonsense.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.errors import ConfigError

TEMPLATE_ID = "reward-goal-v2"
GOAL = ("Write the answer whose quality score is {score:.2f} {scale}. Match that quality level: no better and "
        "no worse.")

# What chosen_score / rejected_score hold under each judge.aggregate (pipeline/curation/aggregate.py):
# (wording for the goal, lowest and highest possible score; None where unbounded).
SCALES: dict[str, tuple[str, float | None, float | None]] = {
    "mean": ("on a 1-5 scale, the mean of the judges' 1-5 ratings (5 is best)", 1.0, 5.0),
    "mean_normalised": ("in standard deviations from the average answer of this dataset, the mean over judges "
                        "of each judge's z-score (0 is average, higher is better)", None, None),
    "median": ("in standard deviations from the average answer of this dataset, the median over judges of "
               "each judge's z-score (0 is average, higher is better)", None, None),
    "majority": ("on a -1 to 1 scale: the share of the other answers to this prompt that it beats by majority "
                 "vote minus the share it loses to (1 beats every other answer)", -1.0, 1.0),
    "bradley_terry": ("as a Bradley-Terry log-strength among the answers to this prompt (0 is their average; "
                      "each +1 multiplies the odds of beating another answer by e)", None, None),
    "learned": ("as a weighted sum of the judges' z-scores, weighted so that answers verified correct outscore "
                "wrong ones (0 is average, higher is better)", None, None),
}


def scale_of(aggregate: str) -> str:
    if aggregate not in SCALES:
        raise ConfigError(f"judge.aggregate {aggregate!r} has no score scale for reward-augmented goals; "
                          f"fix: use one of {sorted(SCALES)}")
    return SCALES[aggregate][0]


def with_goal(prompt: list[dict], score: float, scale: str) -> list[dict]:
    goal = GOAL.format(score=score, scale=scale)
    if prompt and prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{goal}\n\n{prompt[0]['content']}"}, *prompt[1:]]
    return [{"role": "system", "content": goal}, *prompt]


def augment(pairs: pa.Table, *, aggregate: str, keep_original: bool) -> tuple[pa.Table, dict]:
    """Reward-conditioned pairs for every row; returns (table, funnel entry)."""
    scale = scale_of(aggregate)
    out = []
    for row in pairs.to_pylist():
        if keep_original:
            out.append(row)
        why = "Goal score {goal:.2f} {scale}: the chosen answer was rated {c:.2f}, the rejected one {r:.2f}."
        high = {
            **row,
            "prompt": with_goal(row["prompt"], row["chosen_score"], scale),
            "pair_strategy": f"reward_augmented:high:{row['pair_strategy']}",
            "rationale": why.format(
                goal=row["chosen_score"], scale=scale, c=row["chosen_score"], r=row["rejected_score"]
            ),
        }
        low = {
            **row,
            "prompt": with_goal(row["prompt"], row["rejected_score"], scale),
            "chosen": row["rejected"],
            "rejected": row["chosen"],
            "chosen_id": row["rejected_id"],
            "rejected_id": row["chosen_id"],
            "chosen_score": row["rejected_score"],
            "rejected_score": row["chosen_score"],
            "chosen_len": row["rejected_len"],
            "rejected_len": row["chosen_len"],
            "pair_strategy": f"reward_augmented:low:{row['pair_strategy']}",
            "rationale": why.format(
                goal=row["rejected_score"], scale=scale, c=row["rejected_score"], r=row["chosen_score"]
            ),
        }
        out += [high, low]
    entry = step(
        "pair",
        "reward_augmented",
        pairs.num_rows,
        len(out),
        f"each pair rewritten for its two score goals ({TEMPLATE_ID})"
        + ("; originals kept" if keep_original else "; originals replaced"),
        unit="pairs",
    )
    return schemas.from_rows(out, "pairs"), entry
