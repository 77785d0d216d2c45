"""The shapes of chat calls and of their answers, shared by the online and batch paths of the openai backend.

A `ChatCall` is messages plus chat.completions parameters (vLLM's extra parameters under `extra_body`);
`reply_of` turns a ChatCompletion into a `Reply`: completions, the top log-probs at each choice's first
generated position (what a logprobs judge reads), and the request's token usage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipeline.backends.base import Completion, Reply
from pipeline.errors import BackendError

CONTEXT_ERROR = re.compile(r"context length|maximum context|too long|max_model_len|prompt is too long", re.I)
# a 400 that names one of these parameters means the server does not take it (sent again without it)
OPTIONAL = {"n": re.compile(r"\bn\b"), "logprob_token_ids": re.compile(r"logprob_token_ids"),
            "response_format": re.compile(r"response_format|json_schema|structured|guided", re.I),
            "continue_final_message": re.compile(r"continue_final_message|add_generation_prompt", re.I),
            "logprobs": re.compile(r"logprobs", re.I)}


@dataclass(frozen=True)
class ChatCall:
    messages: list[dict]
    params: dict  # chat.completions parameters: max_tokens, temperature, seed, n, logprobs, response_format, ...


def input_bound(messages) -> int:
    """A bound on a request's input tokens: UTF-8 bytes of its messages (a byte-level BPE token is at least one
    byte) plus 16 per message for the chat template."""
    return sum(len((m.get("content") or "").encode()) for m in messages) + 16 * len(messages)


def sum_usage(usages) -> dict | None:
    usages = [u for u in usages if u]
    if not usages:
        return None
    return {k: sum(u.get(k) or 0 for u in usages) for k in ("input_tokens", "output_tokens")}


def usage_of(resp) -> dict | None:
    u = getattr(resp, "usage", None)
    return None if u is None else {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def not_an_api(field: str, base_url: str, what: str) -> BackendError:
    """The error of an endpoint whose answer is not an OpenAI-compatible one (a proxy's HTML page, a body that is
    not JSON, a reply of another shape): one line naming the key and the fix, never a parser's traceback."""
    return BackendError(f"{field}.base_url {base_url!r} answered {what[:300]}, not an OpenAI-compatible reply; fix: "
                        f"point {field}.base_url at the server's OpenAI API (e.g. http://HOST:8000/v1 of `vllm "
                        "serve`), or fix the proxy in front of it"
                        + (", or set judge.score_mode=sampled (log-probs not read)" if "top_logprobs" in what else ""))


def _top(entry) -> list:
    """[token, log-prob] of one top_logprobs entry; a ValueError for any other shape (a judge would read it)."""
    token, logprob = getattr(entry, "token", None), getattr(entry, "logprob", None)
    if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, (int, float)) \
            or math.isnan(logprob) or logprob > 1e-6:
        raise ValueError(f"a top_logprobs entry {entry!r} that is not a token with its log-prob")
    return [token, float(logprob)]


def reply_of(resp, n: int, *, structured: bool) -> Reply:
    """Completions (chat or completions endpoint), the top log-probs at each choice's first generated position,
    and usage; a ValueError naming what is wrong when the reply has another shape."""
    try:
        return _reply_of(resp, n, structured=structured)
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"a reply of another shape ({type(exc).__name__}: {str(exc)[:120]})") from None


def _reply_of(resp, n: int, *, structured: bool) -> Reply:
    if isinstance(resp, (str, bytes)):
        raise ValueError(f"a page, not JSON ({str(resp)[:80]!r})")
    choices = sorted(resp.choices, key=lambda c: c.index)
    out, tops = [], []
    for c in choices:
        text = (c.message.content if hasattr(c, "message") else c.text) or ""  # a chat or a completions choice
        content = getattr(c.logprobs, "content", None) if c.logprobs is not None else None
        if n == 1 and resp.usage is not None:
            tokens = resp.usage.completion_tokens
        elif content is not None:
            tokens = len(content)  # exact per-choice count; usage only sums over choices
        else:
            tokens = (resp.usage.completion_tokens // max(n, 1)) if resp.usage else 0
        out.append(Completion(text.strip(), int(tokens), c.finish_reason or "length"))
        top = content[0].top_logprobs if content else None
        if top and not isinstance(top, list):
            raise ValueError(f"top_logprobs {top!r:.60} that is not a list of tokens with their log-probs")
        tops.append([_top(t) for t in top] if top else None)
    return Reply(out, {"top_logprobs": tops, "structured": structured}, usage_of(resp))
