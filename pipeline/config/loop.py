"""Config of the closed loop: `eval` (a trained policy against a baseline) and `iterate` (rounds of generate ->
judge -> curate -> train -> eval), beside pipeline/loop/evaluate.py and pipeline/loop/iterate.py which they drive.

Kept out of pipeline/config/ so the stage sections stay as they are; RunConfig imports these two sections.
Neither enters a stage fingerprint: eval and iterate run stages, they change no stage's output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.config.base import _Section


class EvalConfig(_Section):
    prompts: str | None = Field(
        None,
        description="Held-out prompts for `prefsynth eval` (same forms as input.path); null: input.path. `iterate` "
        "holds out the first eval.limit prompts of its source instead and never trains on them.",
    )
    limit: int = Field(32, ge=1, description="Held-out prompts evaluated (after shuffling with `seed`).")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Answer length cap of the eval generations; null: generate.max_new_tokens."
    )
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples of the win rate's 95% interval.")
    top_k: int = Field(
        10, ge=0, description="k of the top-k entropy / mass indicators on the held-out answers; 0 turns them off."
    )


class IterateConfig(_Section):
    rounds: int = Field(2, ge=1, description="Rounds of `prefsynth iterate` (--rounds overrides).")
    prompts: Literal["fresh", "fixed"] = Field(
        "fresh",
        description="Training prompts per round: 'fresh' takes the next input.limit prompts of the shuffled "
        "source each round, 'fixed' reuses round 0's prompts every round.",
    )
    mixture: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each prompt's generate.n candidates that the base model (generate.model) writes in "
        "rounds after the first, the rest coming from policy r: the sampling mixture of IPO-MD (Calandriello et "
        "al. 2024, 'Human Alignment of Large Language Models through Online Preference Optimisation'). "
        "round(mixture * n) must be between 1 and n - 1 when set; 0: every candidate from policy r.",
    )
    reference: Literal["previous", "base"] = Field(
        "previous",
        description="DPO reference of round r's training: 'previous' (policy r, the model training starts from; "
        "iterative DPO as Xu et al. 2023) or 'base' (generate.model in every round, train.reference: the KL anchor "
        "stays at the base, as online IPO / IPO-MD, Calandriello et al. 2024).",
    )
    early_stop: bool = Field(
        False,
        description="Stop after a round whose trained policy does not beat the previous one on the held-out prompts "
        "(win rate vs previous <= 0.5) or whose training's over-optimisation watch fired (pipeline/train/metrics.py).",
    )
    train: dict[str, Any] = Field(
        {},
        description="Trainer keys (pipeline/train/config.py) for every round, e.g. {steps: 20, batch_size: 8}; "
        "`model` is set per round. Validated when iterate starts.",
    )
