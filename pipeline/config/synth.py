"""Config of prompt synthesis (`input.synth`, used when `input.path` is `synth:`), beside its code
in pipeline/stages/synth.py. Each field is documented once, here; `prefsynth run --help` lists them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config.base import operational

EVOL_OPERATIONS = ("constraints", "deepen", "concretize", "reasoning", "breadth")


class SynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    mode: Literal["magpie", "evol", "topics"] = Field(
        "magpie",
        description="How prompts are made: 'magpie' (the model writes user queries from its chat template's "
        "pre-query text), 'evol' (Evol-Instruct rewrites of seed prompts), 'topics' (a topic x task x "
        "difficulty grid).",
    )
    n: int = Field(64, ge=1, le=10_000_000, description="Synthesis requests (before the filters drop any).")
    model: str | None = Field(None, description="Model that writes the prompts; null means generate.model.")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="Sampling temperature of synthesis requests.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus mass of synthesis requests.")
    max_new_tokens: int = Field(
        64,
        ge=4,
        le=4096,
        description="Token cap of one synthesised prompt; a prompt that hits it is truncated and dropped.",
    )
    min_words: int = Field(3, ge=1, description="Prompts with fewer words are dropped (too_short).")
    system_prompt: str | None = Field(
        None,
        description="magpie: a system message (persona or goal) before the "
        "user turn the model writes; null keeps the chat template's default.",
    )
    seeds: str = Field("bundled:prompts/seed.jsonl", description="evol: seed prompts (any input.path source).")
    operations: list[Literal["constraints", "deepen", "concretize", "reasoning", "breadth"]] = Field(
        list(EVOL_OPERATIONS),
        min_length=1,
        description="evol: rewrites used in turn (in-depth: constraints, "
        "deepen, concretize, reasoning; in-breadth: breadth).",
    )
    topics: list[str] = Field(
        ["cooking", "personal finance", "astronomy", "travel", "programming", "history", "health", "gardening"],
        min_length=1,
        description="topics: the topic axis of the grid.",
    )
    task_types: list[str] = Field(
        ["question", "how-to request", "writing task", "comparison", "explanation request"],
        min_length=1,
        description="topics: the task-type axis of the grid.",
    )
    difficulties: list[str] = Field(
        ["simple", "detailed", "expert-level"], min_length=1, description="topics: the difficulty axis of the grid."
    )
    batch_size: int = operational(16, ge=1, description="Requests per generate() call.")
    chunk_requests: int = operational(32, ge=1, description="Requests per checkpointed part.")

    @model_validator(mode="after")
    def _words(self):
        for name in ("topics", "task_types", "difficulties"):
            if any(not str(v).strip() for v in getattr(self, name)):
                raise ValueError(f"input.synth.{name} has an empty entry; fix: remove it")
        return self

    def output_fields(self) -> dict:
        """The fields that change what is synthesised (the fingerprint): not batch or chunk sizes, and only
        the fields of the chosen mode."""
        used = {
            "magpie": {"system_prompt"},
            "evol": {"seeds", "operations"},
            "topics": {"topics", "task_types", "difficulties"},
        }[self.mode]
        common = {"mode", "n", "model", "temperature", "top_p", "max_new_tokens", "min_words"}
        return self.model_dump(include=common | used)
