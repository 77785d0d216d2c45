"""The one small interface every generation backend implements (docs/architecture.md rule 5: batch in, batch
out, same order).

A backend turns chat requests into completions. It applies the model's chat template itself, so
callers pass messages, never strings; the one exception is a request with a raw `prefix` (prompt
synthesis, pipeline/stages/synth.py), which the model continues as text (OpenAI-compatible servers: the
completions endpoint). Each sample of a request carries its own seed: a backend
that can honour per-sample seeds (transformers here, vLLM's per-request seed) makes a candidate
depend only on (model, messages, sampling, seed), not on how requests were batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    seeds: tuple[int, ...]  # one per sample; n = len(seeds)
    # raw text for the model to continue instead of a chat turn (Magpie's pre-query template, which
    # ends where a user message would start); `messages` then only documents the request
    prefix: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, counting the end-of-sequence token when emitted
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_new_tokens)


@dataclass(frozen=True)
class Skipped:
    reason: str  # why no completion was attempted, e.g. the prompt exceeds the context


Result = list[Completion] | Skipped


@dataclass(frozen=True)
class Reply:
    """A server's answer to one judge call: completions (or why none), what a judge reads beyond the text
    (`payload`: top log-probs at the verdict position, a reward), and the request's token `usage`."""

    result: Result
    payload: dict | None = None
    usage: dict | None = None  # {"input_tokens", "output_tokens"}


class GeneratorBackend(Protocol):
    label: str  # model id and revision, written into `candidates.generator`

    def generate(
        self, requests: Sequence[Request], *, sampling: SamplingParams, max_prompt_tokens: int, progress=None,
        on_result=None,
    ) -> list[Result]:
        """One result per request, in request order. `progress(n_requests, n_tokens)`, when given, is
        called as batches finish; `on_result(index, completions[, usage])` as each request completes
        (backends that know the request's token usage pass it)."""
        ...
