"""Verbalized sampling: k distinct responses with verbalized probabilities in one reply.

Zhang et al. 2025, "Verbalized Sampling: How to Mitigate Mode Collapse and Unlock LLM Diversity":
instead of sampling one response n times (which collapses onto the mode of an aligned model), ask
for a distribution: k responses, each with the probability the model assigns it. The request is
one chat turn (template `verbalized-v2`: a numbered list, each answer followed by
"(probability: P)"; the bundled 135M model follows this now and then, the paper's tags never); the reply is
parsed leniently: `<response>` blocks with `<text>` and `<probability>` (the paper's format), a JSON
list / object with `responses` of {text, probability}, or the numbered list. A reply with no
parseable response gives no candidates and is counted.
"""

from __future__ import annotations

import json
import re

from pipeline.backends.base import Request, SamplingParams, Skipped
from pipeline.sampling.candidate import candidate_row, candidate_seed, with_system

TEMPLATE_ID = "verbalized-v2"
INSTRUCTION = (
    "List {k} different answers to this request, sampled from the full range of good answers rather than only "
    "the most typical one, numbered 1. to {k}, each followed by (probability: P) where P between 0 and 1 is how "
    "likely you would be to give it: {request}"
)
_ITEM = re.compile(
    r"(?m)^[ \t]*(?:\*\*)?(?:\d{1,2}|[A-Za-z])[.)](?:\*\*)?[ \t]+(.*?)"
    r"(?=^[ \t]*(?:\*\*)?(?:\d{1,2}|[A-Za-z])[.)][ \t]|\Z)",
    re.S,
)
_INLINE_PROB = re.compile(r"[-\s]*\(?[^()]*?probability\s*[:=]?\s*([0-9]*\.?[0-9]+)\s*(%?)[^()]*\)?\s*$", re.I | re.S)
_BLOCK = re.compile(r"<response>(.*?)(?:</response>|(?=<response>)|\Z)", re.S)
_TEXT = re.compile(r"<text>(.*?)(?:</text>|(?=<probability>)|\Z)", re.S)
_PROB = re.compile(r"<probability>\s*([0-9]*\.?[0-9]+)")


def request_messages(messages: list[dict], k: int) -> list[dict]:
    """The conversation with its last user turn rewritten into the verbalized-sampling request."""
    *head, last = messages
    return [*head, {"role": "user", "content": INSTRUCTION.format(k=k, request=last["content"])}]


def _clip(p) -> float | None:
    try:
        p = float(p)
    except (TypeError, ValueError):
        return None
    return p if 0.0 <= p <= 1.0 else None


def parse(reply: str, k: int) -> list[tuple[str, float | None]]:
    """Up to k distinct (text, verbalized probability) from a reply, in reply order."""
    found: list[tuple[str, float | None]] = []
    for block in _BLOCK.findall(reply):
        text = _TEXT.search(block)
        body = (text.group(1) if text else re.sub(r"<probability>.*", "", block, flags=re.S)).strip()
        prob = _PROB.search(block)
        found.append((body, _clip(prob.group(1)) if prob else None))
    if not found:
        start = min((i for i in (reply.find("["), reply.find("{")) if i >= 0), default=-1)
        try:
            data = json.loads(reply[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            data = None
        items = data.get("responses", []) if isinstance(data, dict) else data if isinstance(data, list) else []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                found.append((item["text"].strip(), _clip(item.get("probability"))))
    if not found:
        for body in _ITEM.findall(reply):
            body = re.sub(r"^(?:\d{1,2}[.)]\s+)+", "", body.strip())  # "1. 1. text": a repeated number
            m = _INLINE_PROB.search(body)
            prob = None
            if m:
                prob = _clip(float(m.group(1)) / (100 if m.group(2) else 1))
                body = body[: m.start()].strip()
            found.append((body, prob))
    out, seen = [], set()
    for text, prob in found:
        if text and text not in seen:
            seen.add(text)
            out.append((text, prob))
    return out[:k]


def verbalized_candidates(
    rows: list[dict], cfg, backend, *, seed: int, skipped: dict[str, str], progress=None
) -> list[dict]:
    """Candidate rows (mode 'verbalized') for prompts not in `skipped`: one seeded request each."""
    todo = [r for r in rows if r["prompt_id"] not in skipped]
    requests = [
        Request(
            request_messages(with_system(r["messages"], cfg.system_prompt), cfg.verbalized_k),
            (candidate_seed(seed, r["prompt_id"], 1000),),
        )
        for r in todo
    ]
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.verbalized_max_new_tokens)
    results = backend.generate(requests, sampling=sampling, max_prompt_tokens=cfg.max_prompt_tokens, progress=progress)
    out = []
    for row, req, result in zip(todo, requests, results):
        if isinstance(result, Skipped):
            continue
        reply = result[0]
        for j, (text, prob) in enumerate(parse(reply.text, cfg.verbalized_k)):
            # the reply's tokens shared out by characters: a backend need not expose its tokenizer
            n_tokens = max(1, round(reply.n_tokens * len(text) / max(len(reply.text), 1)))
            out.append(
                candidate_row(
                    row["prompt_id"],
                    f"{row['prompt_id']}-v{j:02d}",
                    backend.label,
                    text=text,
                    n_tokens=n_tokens,
                    finish_reason=reply.finish_reason,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_new_tokens=cfg.verbalized_max_new_tokens,
                    seed=req.seeds[0],
                    mode="verbalized",
                    verbalized_probability=prob,
                )
            )
    return out
