"""Config of the judges: LLM judges and reward models (in process or served), prices and budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import _Section, operational
from pipeline.config.generation import OpenAIConfig

SCORING_FIELDS = {"score_mode", "samples", "sample_temperature", "sample_max_tokens", "top_logprobs"}


class JudgeOpenAIConfig(OpenAIConfig):
    """The endpoint of served or hosted judges and reward models (judge.openai, or per judge); operational."""

    base_url: str | None = Field(None, description="Judge server URL including /v1 (vllm serve on a GPU node, "
                                 "a hosted API); required when a judge uses backend 'openai'.")
    concurrency: int = Field(8, ge=1, le=1024, description="Judge requests in flight at most.")
    use_n: bool = Field(True, description="Sampled verdicts as one request with n choices; a server without n gets "
                        "separate seeded requests.")


class LLMJudgeConfig(_Section):
    """One LLM judge given as a mapping instead of a template id: its own model, backend or endpoint."""

    template: str = Field(..., description="Template id (judges/templates.py).")
    model: str | None = Field(None, description="Judge model; null is judge.model. On backend 'openai' any name the "
                              "server serves (a local folder or bundled model also gives a tokenizer and a revision).")
    backend: Literal["transformers", "vllm", "openai"] | None = Field(None, description="null is judge.backend.")
    openai: JudgeOpenAIConfig | None = operational(None, description="This judge's endpoint; null is judge.openai.")


class RewardModelConfig(_Section):
    """One reward model given as a mapping instead of a model reference: where it runs."""

    model: str = Field(..., description="Sequence-classification reward model (local folder, bundled or Hub id; on "
                       "'openai' the name the server serves).")
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="'transformers' in process; 'vllm' an in-process vLLM pooling runner "
        "(runner=pooling, convert=classify; engine options from generate.vllm); 'openai' a `vllm serve --runner "
        "pooling --convert classify` endpoint (its /classify route, use_activation false: the raw reward).")
    openai: JudgeOpenAIConfig | None = operational(
        None, description="This reward model's endpoint; null is judge.openai.")


class PriceConfig(_Section):
    input: float = Field(..., ge=0, description="USD per million input (prompt) tokens.")
    output: float = Field(..., ge=0, description="USD per million output (completion) tokens.")


class BudgetConfig(_Section):
    usd: float | None = operational(None, gt=0, description="Stop the run cleanly before its requests to "
                                    "OpenAI-compatible endpoints would cost more than this (USD, at `prices`); "
                                    "finished work is kept and a rerun with a larger budget continues.")


class JudgeConfig(_Section):
    model: str | None = Field(
        None,
        description="LLM judge model (absolute and pairwise templates, rationales); null means the generator model.",
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="Where the LLM judges, judgment rationales and pair rationales run: transformers; "
        "an in-process vLLM engine with generate.vllm's options (shared with generation when it uses the same model); "
        "or 'openai', any OpenAI-compatible endpoint (judge.openai). A judge given as a mapping may override it.",
    )
    openai: JudgeOpenAIConfig = operational(
        default_factory=JudgeOpenAIConfig, description="Endpoint of judges on backend 'openai'."
    )
    templates: list[str | LLMJudgeConfig] = Field(
        ["absolute-1to5-v1"],
        description="Absolute LLM-judge templates, each a judge (ids in judges/templates.py), "
        "or mappings {template, model, backend, openai} to mix in-process, served and hosted judges.",
    )
    pairwise_templates: list[str | LLMJudgeConfig] = Field(
        [],
        description="Pairwise LLM-judge templates, run on every candidate pair in both orders "
        "(e.g. pairwise-ab-v1); items as in judge.templates.",
    )
    reward_models: list[str | RewardModelConfig] = Field(
        [],
        description="Sequence-classification reward models (local folders or Hub ids), each a judge, or mappings "
        "{model, backend, openai} to run one on vLLM or behind `vllm serve`.",
    )
    score_mode: Literal["auto", "logprobs", "sampled"] = Field(
        "auto",
        description="How judges on backend 'openai' score: 'logprobs' reads the verdict token's top_logprobs "
        "(the score is their expectation, as in process); 'sampled' parses `samples` sampled verdicts (JSON schema "
        "where the server accepts response_format) and averages them; 'auto' uses logprobs where the endpoint returns "
        "them and sampled where it does not. Each judgment records its score_mode.",
    )
    samples: int = Field(5, ge=1, le=64, description="Sampled verdicts per judgment in sampled mode.")
    sample_temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature of sampled verdicts.")
    sample_max_tokens: int = Field(24, ge=1, le=1024, description="Token cap of one sampled verdict.")
    top_logprobs: int = Field(
        20,
        ge=1,
        le=20,
        description="top_logprobs asked for at the verdict position in logprobs "
        "mode (OpenAI and vLLM allow at most 20); score tokens outside them count as 0.",
    )
    aggregate: Literal["mean", "mean_normalised", "median", "majority", "bradley_terry", "learned"] = Field(
        "mean",
        description="How judges combine into one score per candidate (see pipeline/curation/aggregate.py); "
        "'mean' averages raw scores and suits judges on one scale; 'learned' weights each absolute judge's and "
        "reward model's z-score by a logistic regression fitted on the run's verified candidate pairs (a verifier "
        "passes one, fails the other; about 70% of prompts fit, 30% held out), and needs at least 10 such pairs "
        "to fit on; the pair stage's meta `aggregate_fit` reports the weights and held-out accuracy.",
    )
    min_agreement: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Drop prompts whose score judges agree less than this: Krippendorff alpha (interval) on "
        "per-judge z-scores, not raw scores; a prompt with no alpha (fewer than two candidates scored by two "
        "judges) is kept; null keeps all.",
    )
    rationales: bool = Field(
        False,
        description="Give every absolute LLM judgment a short rationale (one greedy generation per candidate "
        "and template: slow on CPU). Pair rationales (rationale.*) are written either way.",
    )
    rationale_tokens: int = Field(32, ge=1, le=512, description="Token cap of a judgment rationale.")
    min_score_mass: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A judgment is ok only if the score tokens carry at least this probability mass "
        "at the answer position; below it the judge did not answer with a score and the row is ok=false.",
    )
    max_input_tokens: int = Field(2048, ge=64, description="Judge inputs longer than this are ok=false.")
    verifiers: Literal["auto", "on", "off"] = Field(
        "auto",
        description="The verifier judge (judges/verifier.py): checks each candidate against its prompt's `verify` "
        "spec (numeric or exact answer, or python tests in a sandbox) and scores 1 or 0 (ok=false when it cannot "
        "check). 'auto' runs it when any prompt has a spec. Verdicts are not averaged into scores; they give the "
        "card's label quality and the 'verified' pair strategy.",
    )
    verifier_timeout_s: float = Field(5.0, gt=0, le=120, description="Time limit of one sandboxed code check.")
    verifier_memory_mb: int = Field(512, ge=64, le=16384, description="Address-space limit of one code check.")
    batch_size: int = operational(8, ge=1, description="Judge inputs per forward pass.")

    @field_validator("verifiers", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):  # YAML 1.1 reads a bare on/off as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _judges_make_sense(self):
        from judges.templates import ABSOLUTE, PAIRWISE

        for name, known, specs in (
            ("templates", ABSOLUTE, self.templates),
            ("pairwise_templates", PAIRWISE, self.pairwise_templates),
        ):
            unknown = [t for t in (s if isinstance(s, str) else s.template for s in specs) if t not in known]
            if unknown:
                raise ValueError(f"judge.{name} has unknown ids {unknown}; fix: use ids from {sorted(known)}")
        if not (self.templates or self.pairwise_templates or self.reward_models):
            raise ValueError(
                "no judge configured; fix: set judge.templates, judge.pairwise_templates or judge.reward_models"
            )
        if self.aggregate in ("mean", "mean_normalised", "median", "learned") and not (
            self.templates or self.reward_models
        ):
            raise ValueError(
                f"judge.aggregate '{self.aggregate}' needs an absolute template or a reward model; "
                "fix: use majority or bradley_terry with pairwise judges only"
            )
        if self.aggregate == "mean" and self.reward_models:
            raise ValueError(
                "judge.aggregate 'mean' averages raw scores, but reward models have another scale; "
                "fix: use mean_normalised, median, majority or bradley_terry"
            )
        return self
