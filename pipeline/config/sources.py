"""Config of the extra sources: self-critique revisions, reward-augmented rewrites and simulated conversations."""

from __future__ import annotations

from pydantic import Field

from pipeline.config.base import _Section, operational


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
    batch_size: int = operational(8, ge=1, description="Requests per generate() call.")


class RewardAugmentedConfig(_Section):
    enabled: bool = Field(
        False,
        description="Rewrite each judged pair into reward-conditioned pairs (Zhang et al. "
        "2024): the prompt states a target score; at the chosen's score chosen wins, at the "
        "rejected's score rejected wins.",
    )
    keep_original: bool = Field(False, description="Also keep the unconditioned pair (the paper replaces it).")


class ConversationConfig(_Section):
    """Simulated follow-ups (pipeline/stages/conversation.py): each input prompt grows into a conversation."""

    enabled: bool = Field(
        False,
        description="Grow each input prompt into a conversation before the prompts stage: the policy "
        "(generate.model, generate's sampling) answers, a user simulator writes the next user turn, until "
        "`user_turns`; the prompts stage then branches the conversations at generate.turns.",
    )
    user_turns: int = Field(3, ge=2, le=16, description="User turns per conversation, the input's own included.")
    simulator: str | None = Field(
        None, description="The user simulator's model (any backend); null is generate.model."
    )
    persona: str = Field(
        "a curious person with little background in the topic",
        min_length=1,
        description="Who the simulated user is; goes into the simulator's system prompt (simulate.SIMULATOR_SYSTEM).",
    )
    goal: str = Field(
        "understand the answer well enough to act on it, asking one short follow-up question at a time",
        min_length=1,
        description="What the simulated user wants from the conversation; goes into the same system prompt.",
    )
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="The simulator's sampling temperature.")
    max_new_tokens: int = Field(48, ge=4, le=1024, description="Token cap of each simulated user turn.")
    batch_size: int = operational(8, ge=1, description="Requests per generate() call.")


class SourcesConfig(_Section):
    self_critique: SelfCritiqueConfig = SelfCritiqueConfig()
    reward_augmented: RewardAugmentedConfig = RewardAugmentedConfig()
    conversation: ConversationConfig = Field(
        default_factory=ConversationConfig, description="Simulated multi-turn conversations as the prompts."
    )
