"""Config of the extra pair sources: self-critique revisions and reward-augmented rewrites."""

from __future__ import annotations

from pydantic import Field

from pipeline.config.base import _Section


class PrincipleConfig(_Section):
    name: str = Field(..., min_length=1, description="Short name recorded in pair_strategy and the rationale.")
    critique: str = Field(..., min_length=1, description="The critique request shown to the teacher after its answer.")
    revision: str = Field(..., min_length=1, description="The revision request shown after its critique.")


class SelfCritiqueConfig(_Section):
    enabled: bool = Field(
        False,
        description="Add self-critique revision pairs (rDPO, Gallego 2024): the teacher answers, "
        "critiques its answer against a principle, revises; revision is chosen, original rejected.",
    )
    model: str | None = Field(None, description="Teacher model; null means the generator model.")
    principles: list[str | PrincipleConfig] = Field(
        ["safety"],
        min_length=1,
        description="Built-in principles (safety, honesty, roleplay) or {name, critique, "
        "revision} mappings; prompts cycle through them in order.",
    )
    reward_model: str | None = Field(
        None,
        description="External sequence-classification reward model that scores "
        "original and revision; null means judge.reward_models[0].",
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of the teacher's first answer.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Token cap of each of answer, critique and revision.")
    drop_disagreeing: bool = Field(
        False,
        description="Drop pairs the reward model prefers the other way "
        "(label_confidence < 0.5); they are always counted in the manifest.",
    )
    batch_size: int = Field(8, ge=1, description="Requests per generate() call (operational).")


class RewardAugmentedConfig(_Section):
    enabled: bool = Field(
        False,
        description="Rewrite each judged pair into reward-conditioned pairs (Zhang et al. "
        "2024): the prompt states a target score; at the chosen's score chosen wins, at the "
        "rejected's score rejected wins.",
    )
    keep_original: bool = Field(False, description="Also keep the unconditioned pair (the paper replaces it).")


class SourcesConfig(_Section):
    self_critique: SelfCritiqueConfig = SelfCritiqueConfig()
    reward_augmented: RewardAugmentedConfig = RewardAugmentedConfig()
