"""openai backend: any OpenAI-compatible server (vllm serve, SGLang, TGI, OpenAI) through the async client.

Generation sends one request per candidate seed (or one with n samples where the server takes n),
on the completions endpoint for raw text to continue (prompt synthesis's `Request.prefix`);
judges send arbitrary chat calls (`chat`: max_tokens 1 with top_logprobs for a score, n sampled
verdicts with a JSON schema) and reward models `classify` calls (vLLM's /classify route). One retry
loop serves all three: 429, 5xx, timeouts and dropped connections are retried with exponential
backoff and full jitter; a prompt over the server's context is a `Skipped`, never a crash; a
request parameter the server refuses (`n`, `response_format`, `logprobs`, vLLM's
`continue_final_message`) is dropped for this endpoint from then on and the request is resent
without it, so a judge learns what an endpoint supports from its answers. Replies carry the
server's `usage` (input/output tokens) for the request log and the run's accounting; a `meter`
(pipeline/core/accounting.py) is asked before each request whether the budget allows it, and once it
says no, requests already in flight finish (and are logged) before the stop is raised.

Limits across processes (Ray workers, several runs, a schedule) come from Prefect's global
concurrency limits: with `prefect_concurrency_limit` every request holds a slot of that limit while
in flight, with `prefect_rate_limit` it first takes a slot of a decaying limit (a rate). Both are
strict: a limit that does not exist is a ConfigError, never a silently unlimited run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import ssl
import threading
from typing import Sequence

from pipeline.backends import batch, chat  # chat.not_an_api: an answer that is not an OpenAI one
from pipeline.backends.base import Reply, Request, Result, SamplingParams, Skipped
from pipeline.backends.chat import CONTEXT_ERROR, OPTIONAL, ChatCall, input_bound, reply_of, sum_usage, usage_of
from pipeline.backends.model_ref import resolve
from pipeline.errors import BackendError, BudgetExceeded, ConfigError, ModelNotFoundError, TransientBackendError


class OpenAIBackend:
    def __init__(self, model: str, *, base_url: str | None, served_model: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, timeout_s: float = 120.0,
                 max_retries: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 30.0, use_n: bool = False,
                 label: str | None = None, prefect_concurrency_limit: str | None = None,
                 prefect_rate_limit: str | None = None, field: str = "generate.openai", tokenizer=None, meter=None,
                 mode: str = "online", batch_command: list[str] | None = None, batch_rounds: int = 3,
                 batch_dir: str | None = None):
        try:
            import openai
        except ImportError as exc:
            raise ConfigError(f"{field}: backend 'openai' needs the openai package; fix: pip install openai") from exc
        if not base_url and mode != "batch":
            raise ConfigError(f"{field}.base_url: empty; fix: set it to the server, e.g. http://127.0.0.1:8000/v1")
        if mode == "batch" and not batch_dir:
            raise ConfigError(f"{field}.mode: 'batch' needs a folder for its batch files (the stage's "
                              "requests/batches)")
        self.openai, self.field = openai, field
        self.model = served_model or model
        self.ref = model
        self.label = label or model
        self.base_url, self.api_key_env = base_url, api_key_env
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.prefect_concurrency_limit, self.prefect_rate_limit = prefect_concurrency_limit, prefect_rate_limit
        self.mode, self.batch_command, self.batch_rounds, self.batch_dir = mode, batch_command, batch_rounds, batch_dir
        self.tokenizer, self.meter = tokenizer, meter
        self.unsupported: set[str] = set() if use_n else {"n"}
        self.in_flight = 0
        self.retries = 0
        self.requests = 0  # requests answered by the server (not retries)
        self._ssl, self._chat_type = None, openai.types.chat.ChatCompletion

    @property
    def use_n(self) -> bool:
        return "n" not in self.unsupported

    def _client(self):
        # "EMPTY" is what vllm serve accepts without --api-key; the key itself is never logged or stored.
        key = os.environ.get(self.api_key_env) or "EMPTY"
        self._ssl = self._ssl or ssl.create_default_context()  # the CA store loads in 10-60 ms: once, not per chunk
        return self.openai.AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout_s,
                                       http_client=self.openai.DefaultAsyncHttpxClient(verify=self._ssl))

    def _run_sync(self, coro_fn):
        """Runs an async batch on a private event loop (callers may already be inside one, e.g. Prefect)."""
        box: dict = {}

        def target():
            try:
                box["out"] = asyncio.run(coro_fn())
            except BaseException as exc:  # re-raised in the caller's thread
                box["err"] = exc

        # daemon: a Ctrl-C in the caller must not wait at exit for requests still in flight
        t = threading.Thread(target=target, name="prefsynth-openai", daemon=True)
        t.start()
        t.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    async def _gather(self, jobs):
        """Every job runs to its end (answers in flight are kept and logged), then the first error is raised."""
        sem = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:
            out = await asyncio.gather(*(job(client, sem) for job in jobs), return_exceptions=True)
        errors = [o for o in out if isinstance(o, BaseException)]
        budget = [e for e in errors if isinstance(e, BudgetExceeded)]
        if errors:
            raise (budget or errors)[0]
        return out

    # -- generation (the GeneratorBackend interface) ------------------------------------------------
    def generate(self, requests: Sequence[Request], *, sampling: SamplingParams, max_prompt_tokens: int, progress=None,
                 on_result=None) -> list[Result]:
        if self.mode == "batch":
            return batch.run_generate(self, requests, sampling, progress=progress, on_result=on_result)
        def job(i: int, req: Request):
            async def run(client, sem):
                result, usage = await self._request(client, sem, req, sampling)
                if on_result is not None:
                    on_result(i, result, usage)
                if progress is not None:
                    progress(1, 0 if isinstance(result, Skipped) else sum(c.n_tokens for c in result))
                return result
            return run

        return self._run_sync(lambda: self._gather([job(i, r) for i, r in enumerate(requests)]))

    async def _request(self, client, sem, req: Request, sampling: SamplingParams) -> tuple[Result, dict | None]:
        base = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p}
        if req.prefix is not None:  # raw text to continue: the completions endpoint, one request per seed
            replies = await asyncio.gather(*(self._complete(client, sem, req.prefix, {**base, "seed": s})
                                             for s in req.seeds))
            skipped = [r.result for r in replies if isinstance(r.result, Skipped)]
            usage = sum_usage(r.usage for r in replies)
            return (skipped[0] if skipped else [c for r in replies for c in r.result]), usage
        if self.use_n and len(req.seeds) > 1:
            params = {**base, "n": len(req.seeds), "seed": req.seeds[0], "logprobs": True}
            reply = await self._chat(client, sem, ChatCall(req.messages, params))
            if reply is not None:
                return reply.result, reply.usage
        replies = await asyncio.gather(*(self._chat(client, sem, ChatCall(req.messages, {**base, "seed": s}))
                                         for s in req.seeds))
        skipped = [r.result for r in replies if isinstance(r.result, Skipped)]
        usage = sum_usage(r.usage for r in replies)
        return (skipped[0] if skipped else [c for r in replies for c in r.result]), usage

    # -- judges: any chat call, and reward models' /classify ------------------------------------------
    def chat(self, calls: Sequence[ChatCall], *, on_result=None, progress=None) -> list[Reply]:
        """One Reply per call, same order; `on_result(i, reply)` as each completes."""
        if self.mode == "batch":
            return batch.run_calls(self, calls, on_result=on_result, progress=progress)
        def job(i: int, call: ChatCall):
            async def run(client, sem):
                reply = await self._chat(client, sem, call)
                if reply is None:  # n refused: the caller's n samples as separate seeded requests
                    n, p = call.params.get("n", 1), {k: v for k, v in call.params.items() if k != "n"}
                    parts = await asyncio.gather(*(self._chat(client, sem, ChatCall(call.messages, {**p, "seed": p.get(
                        "seed", 0) + k})) for k in range(n)))
                    skipped = [r.result for r in parts if isinstance(r.result, Skipped)]
                    tops = [t for r in parts for t in (r.payload or {}).get("top_logprobs", [])]
                    reply = Reply(skipped[0] if skipped else [c for r in parts for c in r.result],
                                  {**(parts[0].payload or {}), "top_logprobs": tops},
                                  sum_usage(r.usage for r in parts))
                if on_result is not None:
                    on_result(i, reply)
                if progress is not None:
                    progress(1)
                return reply

            return run

        return self._run_sync(lambda: self._gather([job(i, c) for i, c in enumerate(calls)]))

    def classify(self, conversations: Sequence[list[dict]], *, on_result=None, progress=None) -> list[Reply]:
        """The raw reward (vLLM /classify, use_activation false) of each chat-templated conversation."""
        url = re.sub(r"/v1/?$", "", self.base_url.rstrip("/")) + "/classify"

        def job(i: int, conv: list[dict]):
            async def run(client, sem):
                body = {"model": self.model, "messages": conv, "use_activation": False}
                resp = await self._send(
                    client,
                    sem,
                    lambda: client.post(url, cast_to=object, body=body),
                    chars=input_bound(conv),
                    max_out=0,
                    usage_fn=_classify_usage,
                    sent=set(),
                )
                if isinstance(resp, Skipped):
                    reply = Reply(resp)
                else:
                    try:
                        probs = [float(p) for p in resp["data"][0]["probs"]]
                    except (TypeError, KeyError, IndexError, ValueError):
                        raise chat.not_an_api(self.field, url, f"a /classify reply {resp!r:.80}") from None
                    if len(probs) != 1:
                        raise BackendError(
                            f"{self.field}: {self.model!r} at {url} has {len(probs)} classes; a reward "
                            "model has exactly 1 (serve it with --runner pooling --convert classify)"
                        )
                    reply = Reply([], {"reward": float(probs[0])}, _classify_usage(resp))
                if on_result is not None:
                    on_result(i, reply)
                if progress is not None:
                    progress(1)
                return reply

            return run

        return self._run_sync(lambda: self._gather([job(i, c) for i, c in enumerate(conversations)]))

    def _params(self, call: ChatCall) -> tuple[dict, dict]:
        """(chat.completions parameters, vLLM extra body) of a call, without what this endpoint refused."""
        params = {k: v for k, v in call.params.items() if k not in self.unsupported}
        extra = {k: v for k, v in params.pop("extra_body", {}).items() if k not in self.unsupported}
        if "logprobs" in self.unsupported:
            params.pop("top_logprobs", None)
            extra.pop("logprob_token_ids", None)
        if call.messages[-1]["role"] == "assistant" and "continue_final_message" not in self.unsupported:
            extra |= {"continue_final_message": True, "add_generation_prompt": False}  # vLLM: continue the turn
        return params, extra

    async def _chat(self, client, sem, call: ChatCall) -> Reply | None:
        """A Reply, or None when the call asked for n > 1 and the server takes no n (the caller splits it)."""
        while True:
            params, extra = self._params(call)
            if "n" in self.unsupported and call.params.get("n", 1) > 1:
                return None
            n = params.get("n", 1)
            try:
                resp = await self._send(
                    client,
                    sem,
                    # the client's post: `create` walks the parameters' TypedDicts first, ~10% of a request's CPU
                    lambda: client.post("/chat/completions", cast_to=self._chat_type,
                                        body={"model": self.model, "messages": call.messages, **params, **extra}),
                    chars=input_bound(call.messages),
                    max_out=n * params.get("max_tokens", 256),
                    usage_fn=usage_of,
                    sent={*params, *extra} - ({"n"} if n == 1 else set()),
                )
            except _Refused as refused:
                self.unsupported.add(refused.feature)
                continue
            if isinstance(resp, Skipped):
                return Reply(resp)
            return self._reply(resp, n, structured="response_format" in params)

    async def _complete(self, client, sem, prompt: str, params: dict) -> Reply:
        """One completions-endpoint answer for raw text to continue (prompt synthesis), n = 1."""
        resp = await self._send(
            client,
            sem,
            lambda: client.completions.create(model=self.model, prompt=prompt, n=1, **params),
            chars=len(prompt.encode()),
            max_out=params["max_tokens"],
            usage_fn=usage_of,
            sent=set(),
        )
        return Reply(resp) if isinstance(resp, Skipped) else self._reply(resp, 1, structured=False)

    def _reply(self, resp, n: int, *, structured: bool) -> Reply:
        try:
            return reply_of(resp, n, structured=structured)
        except ValueError as exc:  # a reply of another shape (a top_logprobs entry that is no log-prob, ...)
            raise chat.not_an_api(self.field, self.base_url, str(exc)) from None

    async def _send(self, client, sem, make_call, *, chars: int, max_out: int, usage_fn, sent: set[str]):
        """The server's answer to `make_call()`, retried on transient errors; a Skipped for a context error.
        The meter reserves the request's most possible cost before it is sent and books its usage on answer."""
        o = self.openai
        for attempt in range(self.max_retries + 1):
            try:
                async with sem, self._prefect_slot():
                    ticket = self.meter.reserve(self, chars=chars, max_out=max_out) if self.meter else None
                    self.in_flight += 1
                    resp = None
                    try:
                        resp = await make_call()
                    finally:
                        self.in_flight -= 1
                        if ticket is not None:
                            self.meter.release(ticket, None if resp is None else usage_fn(resp))
                self.requests += 1
                if isinstance(resp, str):  # a 200 that is not JSON (text/html): the client hands back its text
                    raise chat.not_an_api(self.field, self.base_url, f"a page ({resp[:80]!r})")
                return resp
            except o.BadRequestError as exc:
                msg = _message(exc)
                if CONTEXT_ERROR.search(msg):
                    return Skipped(f"server rejected the prompt for its context: {msg[:300]}")
                for feature, pattern in OPTIONAL.items():  # a parameter this request sent, named in the refusal
                    if feature in sent and pattern.search(msg):
                        raise _Refused(feature) from exc
                raise BackendError(f"{self.field}: {self.base_url} rejected the request: {msg[:300]}") from exc
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError) as exc:
                if attempt == self.max_retries:
                    raise TransientBackendError(
                        f"{self.field}: {self.base_url} still failing after {self.max_retries} "
                        f"retries: {type(exc).__name__}: {_message(exc)[:200]}; fix: start or repair the server at "
                        f"{self.field}.base_url (a proxy's 502/503: the server behind it is down), then rerun"
                    ) from exc
                self.retries += 1
                await asyncio.sleep(random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt)))
            except o.APIStatusError as exc:
                raise BackendError(
                    f"{self.field}: {self.base_url} answered {exc.status_code}: {_message(exc)[:300]}"
                ) from exc
            except ValueError as exc:  # a body that is not JSON (json.JSONDecodeError), after a 200
                raise chat.not_an_api(self.field, self.base_url, f"a body that is not JSON ({exc})") from None
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def _prefect_slot(self):
        """A slot of the configured Prefect limits (rate first, then concurrency), or nothing."""
        if not (self.prefect_rate_limit or self.prefect_concurrency_limit):
            yield
            return
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency, rate_limit

        name = "prefect_rate_limit"
        try:
            if self.prefect_rate_limit:
                await rate_limit(self.prefect_rate_limit, occupy=1, strict=True)
            name = "prefect_concurrency_limit"
            slot = (
                concurrency(self.prefect_concurrency_limit, occupy=1, strict=True)
                if self.prefect_concurrency_limit
                else contextlib.nullcontext()
            )
            async with slot:
                yield
        except ConcurrencySlotAcquisitionError as exc:
            limit = getattr(self, name)
            raise ConfigError(
                f"{self.field}.{name}: Prefect has no usable global concurrency limit {limit!r} ({exc}); "
                f"fix: `prefect gcl create {limit} --limit N` (a rate limit also needs "
                "--slot-decay-per-second), or unset the key"
            ) from exc


def served_label(ref: str) -> str:
    """model@revision for a model the config can resolve (bundled, a folder, a Hub id), else `ref@served` (a name
    only the server knows, e.g. a hosted model)."""
    try:
        return resolve(ref, field="model").label
    except ModelNotFoundError:
        return f"{ref}@served"


def local_tokenizer(ref: str):
    """The served model's tokenizer where it is on this machine (bundled, a folder, a cached Hub id), else None."""
    try:
        path = resolve(ref, field="model").path
    except ModelNotFoundError:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):  # a Hub id not in the local cache
        return None


def endpoint_backend(ref: str, opts, *, field: str, meter=None, batch_dir=None) -> OpenAIBackend:
    """The backend of a served or hosted judge model or reward model (`opts`: a JudgeOpenAIConfig). The API key
    stays in the environment variable it names."""
    if not opts.base_url and opts.mode != "batch":
        raise ConfigError(
            f"{field}.base_url: not set, but a judge uses backend 'openai'; fix: set it to the server's "
            f"URL including /v1, e.g. --set {field}.base_url=http://HOST:8000/v1"
        )
    return OpenAIBackend(
        ref,
        label=served_label(ref),
        tokenizer=local_tokenizer(ref),
        field=field,
        meter=meter,
        batch_dir=None if batch_dir is None else str(batch_dir),
        **opts.model_dump(),
    )


class _Refused(Exception):
    def __init__(self, feature: str):
        super().__init__(feature)
        self.feature = feature


def _message(exc) -> str:
    return str(getattr(exc, "message", None) or exc)


def _classify_usage(resp) -> dict | None:
    if not isinstance(resp, dict):  # a reply of another shape, refused by the caller
        return None
    return {"input_tokens": (resp.get("usage") or {}).get("prompt_tokens"), "output_tokens": 0}
