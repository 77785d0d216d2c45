"""RunConfig: the whole run (input, every stage's section, distribution), and each stage's fingerprint fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import _Section
from pipeline.config.curation import CurateConfig, PairConfig, PublishConfig, RationaleConfig
from pipeline.config.generation import GenerateConfig, OpenAIConfig
from pipeline.config.judging import (
    BudgetConfig,
    JudgeConfig,
    LLMJudgeConfig,
    PriceConfig,
    RewardModelConfig,
)
from pipeline.config.loop import EvalConfig, IterateConfig
from pipeline.config.sources import SourcesConfig
from pipeline.config.synth import SynthConfig


class InputConfig(_Section):
    path: str = Field(
        "bundled:prompts/seed.jsonl",
        description="Prompt source: a .jsonl or .parquet file, a folder saved with datasets' "
        "save_to_disk, 'hf:NAME' for a Hub dataset, 'bundled:prompts/seed.jsonl', or 'synth:' to synthesise "
        "the prompts with a model (input.synth).",
    )
    split: str = Field("train", description="Split to read when the source is a dataset.")
    limit: int | None = Field(None, ge=1, description="Use at most this many prompts (after shuffling).")
    shuffle: bool = Field(True, description="Shuffle prompts with `seed` before applying `limit`.")
    skip_invalid: bool = Field(
        False, description="Skip and count invalid rows instead of stopping at the first one."
    )
    synth: SynthConfig = Field(
        default_factory=SynthConfig, description="Prompt synthesis, used when path is 'synth:'."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _synth_from_yaml(cls, value):
        # YAML reads an unquoted `synth:` (e.g. --set input.path=synth:) as the mapping {synth: null}
        return "synth:" if value == {"synth": None} else value

    @property
    def synthesised(self) -> bool:
        return self.path.strip() == "synth:"


class DistributedConfig(_Section):
    """Where stage work runs; operational, never fingerprinted (a Ray run writes the rows a local one does)."""

    runner: Literal["local", "ray"] = Field(
        "local",
        description="'local': every stage runs in this process; 'ray': the prompt filter's embeddings, "
        "generate, judge, self-critique, CHES and rationale run as `shards` Prefect tasks each on a Ray cluster "
        "(prefect-ray's RayTaskRunner).",
    )
    shards: int = Field(
        2,
        ge=1,
        le=4096,
        description="With runner 'ray': prompt shards (tasks) per stage; shard i "
        "does chunks i, i+shards, ... of publish.chunk_prompts prompts (curate.dedup.chunk_prompts for "
        "embeddings); each task loads its own models.",
    )
    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://HEAD:10001'); null starts a "
        "local Ray instance for the run. OUT and the model cache must be on storage every node sees.",
    )
    num_cpus: int | None = Field(
        None,
        ge=1,
        description="CPUs of the local Ray instance (null: all of them); with "
        "cpus_per_task it bounds how many shard tasks run at once.",
    )
    cpus_per_task: float = Field(
        1.0,
        gt=0,
        description="CPUs each shard task reserves; Ray sets the task's "
        "OMP_NUM_THREADS (torch's thread count) to it unless the environment sets one.",
    )
    gpus_per_task: float = Field(
        0.0, ge=0, description="GPUs each shard task reserves (1 for vLLM or CHES on a GPU node)."
    )

    @model_validator(mode="after")
    def _ray_options_need_ray(self):
        if self.runner == "local" and self.address is not None:
            raise ValueError(
                f"distributed.address is {self.address!r} but distributed.runner is 'local'; "
                "fix: set distributed.runner=ray (or drop the address)"
            )
        return self


class RunConfig(_Section):
    seed: int = Field(0, description="Seed for shuffling and sampling; same seed, same candidates.")
    name: str = Field("prefsynth-run", description="Run name shown in the manifest and card.")
    input: InputConfig = InputConfig()
    generate: GenerateConfig = GenerateConfig()
    judge: JudgeConfig = JudgeConfig()
    pair: PairConfig = PairConfig()
    curate: CurateConfig = CurateConfig()
    rationale: RationaleConfig = RationaleConfig()
    publish: PublishConfig = PublishConfig()
    sources: SourcesConfig = SourcesConfig()
    distributed: DistributedConfig = DistributedConfig()
    prices: dict[str, PriceConfig] = Field(
        {},
        description="USD per million input/output tokens per model, keyed by the model as the config names it "
        "(generate.model, a judge's model) or by its served_model; turns the manifest's token counts into dollars. "
        "Operational.",
    )
    budget: BudgetConfig = BudgetConfig()
    eval: EvalConfig = EvalConfig()
    iterate: IterateConfig = IterateConfig()

    @model_validator(mode="after")
    def _budget_has_prices(self):
        if self.budget.usd is not None and not self.prices:
            raise ValueError(
                f"budget.usd is {self.budget.usd} but no prices are set, so no cost can be counted; fix: "
                "set prices.MODEL.input and prices.MODEL.output (USD per million tokens) for each served "
                "model, or unset budget.usd"
            )
        return self

    @model_validator(mode="after")
    def _mixture_fits(self):
        """iterate.mixture becomes a generate.pool of exactly generate.n members (pipeline/loop/iterate.py
        `mixture_pool`): it needs at least one candidate from the base and one from the policy, and no pool."""
        m, g = self.iterate.mixture, self.generate
        if not m:
            return self
        if g.pool:
            raise ValueError("iterate.mixture is set together with generate.pool; fix: drop one (the mixture makes "
                             "the pool: the base and policy r)")
        k = round(m * g.n)
        if not 1 <= k <= g.n - 1:
            raise ValueError(f"iterate.mixture={m}: round({m} * generate.n={g.n}) = {k} base candidates per prompt, "
                             f"not between 1 and {g.n - 1}; fix: raise generate.n or pick a share that gives at "
                             "least one candidate from each model")
        return self

    @model_validator(mode="after")
    def _verified_pairs_need_the_verifier(self):
        for name, value, wants in (("pair.strategy", self.pair.strategy, "verified"),
                                   ("judge.aggregate", self.judge.aggregate, "learned")):
            if value == wants and self.judge.verifiers == "off":
                raise ValueError(
                    f"{name} '{wants}' needs the verifier judge, but judge.verifiers is 'off'; fix: set "
                    "judge.verifiers to auto (or on) and give prompts a verify spec"
                )
        return self

    @model_validator(mode="after")
    def _critique_has_a_reward_model(self):
        sc = self.sources.self_critique
        if sc.enabled and not (sc.reward_model or self.judge.reward_models):
            raise ValueError(
                "sources.self_critique needs an external reward model to score original and revision; "
                "fix: set sources.self_critique.reward_model (or judge.reward_models)"
            )
        return self

    def model_refs(self) -> dict[str, str]:
        """{config key: model reference} of every model the run will load (for preflight checks)."""
        refs = {
            "generate.model": self.generate.model,
            "curate.ches.model": self.ches_model,
            "curate.dedup.model": self.curate.dedup.model,
        }
        if self.input.synthesised:
            refs["input.synth.model"] = self.input.synth.model or self.generate.model
        if self.sources.conversation.enabled:
            refs["sources.conversation.simulator"] = self.sources.conversation.simulator or self.generate.model
        if self.generate.backend != "openai":  # a served generator is checked at its endpoint (preflight)
            refs.update({f"generate.pool[{i}].model": m.model for i, m in enumerate(self.generate.pool)})
        specs = self.llm_judge_specs()
        in_process = [s for _, s in specs if s.backend != "openai"]
        if in_process or (self.rationale.enabled and self.judge.backend != "openai"):
            refs["judge.model"] = self.judge_model
        refs.update(
            {f"judge.templates[{s.template}].model": s.model for s in in_process if s.model != self.judge_model}
        )
        refs.update(
            {
                f"judge.reward_models[{i}]": r.model
                for i, r in enumerate(self.reward_model_specs())
                if r.backend != "openai"
            }
        )
        if self.sources.self_critique.enabled:
            refs["sources.self_critique.reward_model"] = self.critique_reward_model
            refs["sources.self_critique.model"] = self.sources.self_critique.model or self.generate.model
        return refs

    @property
    def critique_reward_model(self) -> str | None:
        specs = self.reward_model_specs()
        return self.sources.self_critique.reward_model or (specs[0].model if specs else None)

    def _full_judge(self, item) -> LLMJudgeConfig:
        spec = LLMJudgeConfig(template=item) if isinstance(item, str) else item
        return spec.model_copy(
            update={
                "model": spec.model or self.judge_model,
                "backend": spec.backend or self.judge.backend,
                "openai": spec.openai or self.judge.openai,
            }
        )

    def llm_judge_specs(self) -> list[tuple[str, LLMJudgeConfig]]:
        """(kind, spec with model, backend and endpoint filled in) of every LLM judge, absolute ones first."""
        j = self.judge
        return [("absolute", self._full_judge(t)) for t in j.templates] + [
            ("pairwise", self._full_judge(t)) for t in j.pairwise_templates
        ]

    def reward_model_specs(self) -> list[RewardModelConfig]:
        """Every reward model as a spec with its endpoint filled in."""
        return [
            (RewardModelConfig(model=r) if isinstance(r, str) else r).model_copy(
                update={"openai": self.judge.openai if isinstance(r, str) else (r.openai or self.judge.openai)}
            )
            for r in self.judge.reward_models
        ]

    def served_models(self) -> list[tuple[str, str, OpenAIConfig]]:
        """(config key of the endpoint, model, endpoint) of every model the run reaches over an OpenAI-compatible
        endpoint: the generator (and prompt synthesis's model), LLM judges, reward models, and rationales written
        on judge.backend 'openai'."""
        j, out = self.judge, []
        if self.generate.backend == "openai":
            out += [
                ("generate.openai", m, self.generate.openai)
                for m in [self.generate.model] * (not self.generate.pool or self.generate.verbalized_k > 0)
                + [p.model for p in self.generate.pool]
            ]
            if self.input.synthesised and self.input.synth.model not in (None, self.generate.model):
                out.append(("generate.openai", self.input.synth.model, self.generate.openai))  # synthesis's own model
        for name, items in (("templates", j.templates), ("pairwise_templates", j.pairwise_templates)):
            for i, item in enumerate(items):
                spec = self._full_judge(item)
                if spec.backend == "openai":
                    own = not isinstance(item, str) and item.openai is not None
                    out.append((f"judge.{name}[{i}].openai" if own else "judge.openai", spec.model, spec.openai))
        for i, (item, spec) in enumerate(zip(j.reward_models, self.reward_model_specs())):
            if spec.backend == "openai":
                own = not isinstance(item, str) and item.openai is not None
                out.append((f"judge.reward_models[{i}].openai" if own else "judge.openai", spec.model, spec.openai))
        if j.backend == "openai" and (self.rationale.enabled or j.rationales):
            out.append(("judge.openai", self.judge_model, j.openai))
        return out

    @property
    def judge_model(self) -> str:
        return self.judge.model or self.generate.model

    @property
    def ches_model(self) -> str:
        return self.curate.ches.model or self.generate.model
