"""OpenAI-compatible backend: `vllm serve`, SGLang, TGI or OpenAI through `openai.AsyncOpenAI`.

Requests run concurrently under a semaphore (`generate.openai.concurrency`), each with its own
timeout; 429, 5xx, timeouts and dropped connections are retried with exponential backoff and
full jitter (AWS architecture blog, "Exponential Backoff and Jitter"), other errors fail fast.
By default every candidate is its own request (n=1, its own seed), so a candidate depends on its
seed only, as with the local backends. With `use_n` one request asks for all samples (`n`,
seeded with the first seed); a server that rejects `n` gets separate requests instead. A prompt
the server rejects for its context length is skipped with the server's reason. The API key is
read from the environment variable named in config and never logged or stored.

The semaphore bounds one process. Limits across processes (Ray workers, several runs, a schedule)
come from Prefect's global concurrency limits: with `prefect_concurrency_limit` every request
holds a slot of that limit while in flight, with `prefect_rate_limit` it first takes a slot of a
decaying limit (a rate). Both are strict: a limit that does not exist is a ConfigError, never a
silently unlimited run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import threading
from typing import Sequence

from pipeline.backends.base import Completion, Request, Result, SamplingParams, Skipped
from pipeline.errors import BackendError, ConfigError, TransientBackendError

CONTEXT_ERROR = re.compile(r"context length|maximum context|too long|max_model_len|prompt is too long", re.I)


class OpenAIBackend:
    def __init__(self, model: str, *, base_url: str, served_model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, use_n: bool = False, label: str | None = None,
                 prefect_concurrency_limit: str | None = None, prefect_rate_limit: str | None = None):
        try:
            import openai
        except ImportError as exc:
            raise ConfigError("generate.backend: 'openai' needs the openai package; fix: pip install openai") from exc
        if not base_url:
            raise ConfigError("generate.openai.base_url: empty; fix: set it to the server, e.g. http://127.0.0.1:8000/v1")
        self.openai = openai
        self.model = served_model or model
        self.label = label or model
        self.base_url, self.api_key_env = base_url, api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.use_n = use_n
        self.prefect_concurrency_limit, self.prefect_rate_limit = prefect_concurrency_limit, prefect_rate_limit
        self.in_flight = 0
        self.retries = 0

    def _client(self):
        # "EMPTY" is what vllm serve accepts without --api-key; the key itself is never logged.
        key = os.environ.get(self.api_key_env) or "EMPTY"
        return self.openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout_s)

    def generate(self, requests: Sequence[Request], *, sampling: SamplingParams, max_prompt_tokens: int, progress=None,
                 on_result=None) -> list[Result]:
        """Runs the async batch on a private event loop (callers may already be inside one, e.g. Prefect)."""
        box: dict = {}

        def target():
            try:
                box["out"] = asyncio.run(self._run(requests, sampling, progress, on_result))
            except BaseException as exc:  # re-raised in the caller's thread
                box["err"] = exc

        # daemon: a Ctrl-C in the caller must not wait at exit for requests still in flight
        t = threading.Thread(target=target, name="prefsynth-openai", daemon=True)
        t.start()
        t.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def _run(self, requests, sampling, progress, on_result) -> list[Result]:
        sem = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            async def one(i: int, req: Request) -> Result:
                result = await self._request(client, sem, req, sampling)
                if on_result is not None:
                    on_result(i, result)
                if progress is not None:
                    progress(1, 0 if isinstance(result, Skipped) else sum(c.n_tokens for c in result))
                return result

            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    async def _request(self, client, sem, req: Request, sampling: SamplingParams) -> Result:
        if req.prefix is not None:  # raw text to continue: the completions endpoint, one request per seed
            parts = await asyncio.gather(*(self._call(client, sem, req.prefix, sampling, s, 1, raw=True) for s in req.seeds))
            skipped = [p for p in parts if isinstance(p, Skipped)]
            return skipped[0] if skipped else [c for p in parts for c in p]
        if self.use_n and len(req.seeds) > 1:
            try:
                return await self._call(client, sem, req.messages, sampling, req.seeds[0], len(req.seeds))
            except _NRejected:
                self.use_n = False  # this server has no n: separate requests from now on
        parts = await asyncio.gather(*(self._call(client, sem, req.messages, sampling, s, 1) for s in req.seeds))
        skipped = [p for p in parts if isinstance(p, Skipped)]
        return skipped[0] if skipped else [c for p in parts for c in p]

    async def _call(self, client, sem, messages, sampling: SamplingParams, seed: int, n: int, *, raw: bool = False) -> Result:
        o = self.openai
        for attempt in range(self.max_retries + 1):
            try:
                async with sem, self._prefect_slot():
                    self.in_flight += 1
                    try:
                        if raw:  # `messages` is the text to continue
                            resp = await client.completions.create(
                                model=self.model, prompt=messages, n=1, seed=seed, max_tokens=sampling.max_new_tokens,
                                temperature=sampling.temperature, top_p=sampling.top_p)
                        else:
                            resp = await client.chat.completions.create(
                                model=self.model, messages=messages, n=n, seed=seed, max_tokens=sampling.max_new_tokens,
                                temperature=sampling.temperature, top_p=sampling.top_p, logprobs=n > 1 or None)
                    finally:
                        self.in_flight -= 1
                return _completions(resp, n)
            except o.BadRequestError as exc:
                msg = _message(exc)
                if CONTEXT_ERROR.search(msg):
                    return Skipped(f"server rejected the prompt for its context: {msg[:300]}")
                if n > 1 and re.search(r"\bn\b", msg):
                    raise _NRejected() from exc
                raise BackendError(f"generate: {self.base_url} rejected the request: {msg[:300]}") from exc
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError) as exc:
                if attempt == self.max_retries:
                    raise TransientBackendError(f"generate: {self.base_url} still failing after {self.max_retries} "
                                                f"retries: {type(exc).__name__}: {_message(exc)[:200]}") from exc
                self.retries += 1
                await asyncio.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** attempt)))
            except o.APIStatusError as exc:
                raise BackendError(f"generate: {self.base_url} answered {exc.status_code}: {_message(exc)[:300]}") from exc
        raise AssertionError("unreachable")


    @contextlib.asynccontextmanager
    async def _prefect_slot(self):
        """A slot of the configured Prefect limits (rate first, then concurrency), or nothing."""
        if not (self.prefect_rate_limit or self.prefect_concurrency_limit):
            yield
            return
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit

        field = "generate.openai.prefect_rate_limit"
        try:
            if self.prefect_rate_limit:
                await rate_limit(self.prefect_rate_limit, occupy=1, strict=True)
            field = "generate.openai.prefect_concurrency_limit"
            slot = (concurrency(self.prefect_concurrency_limit, occupy=1, strict=True)
                    if self.prefect_concurrency_limit else contextlib.nullcontext())
            async with slot:
                yield
        except ConcurrencySlotAcquisitionError as exc:
            name = getattr(self, field.rsplit(".", 1)[1])
            raise ConfigError(f"{field}: Prefect has no usable global concurrency limit {name!r} ({exc}); fix: "
                              f"`prefect gcl create {name} --limit N` (a rate limit also needs "
                              "--slot-decay-per-second), or unset the key") from exc


class _NRejected(Exception):
    pass


def _message(exc) -> str:
    return str(getattr(exc, "message", None) or exc)


def _completions(resp, n: int) -> list[Completion]:
    choices = sorted(resp.choices, key=lambda c: c.index)
    out = []
    for c in choices:
        text = (c.message.content if hasattr(c, "message") else c.text) or ""  # chat or completions choice
        if n == 1 and resp.usage is not None:
            tokens = resp.usage.completion_tokens
        elif getattr(c, "logprobs", None) is not None and getattr(c.logprobs, "content", None) is not None:
            tokens = len(c.logprobs.content)  # exact per-choice count; usage only sums over choices
        else:
            tokens = (resp.usage.completion_tokens // max(n, 1)) if resp.usage else 0
        out.append(Completion(text.strip(), tokens, c.finish_reason or "length"))
    return out
