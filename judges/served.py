"""LLM judges on an OpenAI-compatible endpoint (backend 'openai'): the same templates, two scoring modes.

- `logprobs`: one call per judgment, max_tokens 1, temperature 0, `logprobs` with `top_logprobs`
  at the verdict position (the templates ask for the verdict token first). Where the judge's
  tokenizer is local, the call also names the answer tokens in vLLM's `logprob_token_ids`, so a
  vLLM server returns exactly their log-probs (a server that refuses the parameter is asked
  without it from then on). The score is the expectation over the score tokens, renormalised
  over them, with `judge.min_score_mass` applied as in process (judges/parsing.py); a pairwise
  order's P(A) is renormalised over {A, B}. A verdict's probability is the sum over every returned
  entry that spells it, with or without a leading space (judges/parsing.py verdict_logprobs says
  which count); answer tokens outside the returned top-k count as 0. The mass found, how many
  answer tokens were found and how many entries counted are in `raw`.
- `sampled`: for endpoints that give no log-probs, `judge.samples` verdicts in one call (n) at
  `judge.sample_temperature`, constrained by a JSON schema through `response_format` where the
  server accepts it, else parsed leniently (judges/parsing.py parse_verdict). The score is the
  mean of the parsed verdicts (a pairwise order's P(A) the share of A among them); parse failures
  are counted in `raw`; no parsed verdict is ok=false, never a default.
`auto` mode is decided per endpoint by its first answer: a logprobs call answered without
log-probs (or a refused `logprobs`) switches that endpoint to sampled for the rest of the run.
Every judgment records its `score_mode`. Calls go through the stage's request log (keyed by the
judge's label, the call kind and the request body, never the endpoint), so a resumed stage sends
nothing that was answered, and a judgment is a function of the logged answers alone.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

from judges.absolute import Judgment
from judges.pairwise import PairJudgment, combine
from judges.parsing import expected_score, parse_verdict, verdict_logprobs, verdict_schema
from judges.templates import ABSOLUTE, PAIRWISE, special_strings
from pipeline.backends.base import Reply, Skipped
from pipeline.backends.openai_backend import ChatCall
from pipeline.backends.request_log import call_key, logged_calls
from pipeline.config import fingerprint
from pipeline.errors import ConfigError


class Endpoint:
    """One judge model behind one OpenAI-compatible endpoint: its backend, log, scoring mode and options."""

    def __init__(self, backend, log, *, score_mode: str, samples: int, temperature: float, max_tokens: int,
                 top_logprobs: int):
        self.backend, self.log = backend, log
        self.mode = None if score_mode == "auto" else score_mode
        self.samples, self.temperature = samples, temperature
        self.max_tokens, self.top_logprobs = max_tokens, top_logprobs
        self.hits = 0

    def _run(self, kind: str, calls: list[ChatCall]) -> list[Reply]:
        keys = [call_key(self.backend.label, kind, {"messages": c.messages, **c.params}) for c in calls]
        replies, hits = logged_calls(
            self.log, self.backend, keys,
            lambda todo, on_result: self.backend.chat([calls[i] for i in todo], on_result=on_result))
        self.hits += hits
        return replies

    def logprob_calls(self, messages: list[list[dict]], answer_ids: list[int] | None) -> list[Reply]:
        params = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_logprobs}
        if answer_ids:
            params["extra_body"] = {"logprob_token_ids": list(answer_ids)}
        return self._run("logprobs", [ChatCall(m, params) for m in messages])

    def sampled_calls(self, messages: list[list[dict]], schema: dict) -> list[Reply]:
        params = {"max_tokens": self.max_tokens, "temperature": self.temperature, "n": self.samples,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema,
                                                                             "strict": True}}}
        # seeded by the prompt: reproducible, and no two judgments share one random stream
        return self._run("sampled", [ChatCall(m, {**params, "seed": int(fingerprint("verdict-seed", m), 16) % 2**31})
                                     for m in messages])

    def answers(self, messages: list[list[dict]], alphabet: Sequence[str], answer_ids,
                key: str) -> list[tuple[str, Reply]]:
        """(score_mode, reply) per judge prompt. In auto mode the first answered logprobs call decides the endpoint's
        mode; a prompt whose logprobs answer lacks log-probs is asked again in sampled mode."""
        out: list[tuple[str, Reply] | None] = [None] * len(messages)
        if self.mode in (None, "logprobs"):
            start = 0
            # probe one call at a time until one is answered (in batch mode a probe would cost a batch round: all go)
            while self.mode is None and start < len(messages) and self.backend.mode != "batch":
                (reply,) = self.logprob_calls([messages[start]], answer_ids)
                out[start] = ("logprobs", reply)
                if not isinstance(reply.result, Skipped):
                    self.mode = "logprobs" if _tops(reply) is not None else "sampled"
                start += 1
            rest = [i for i in range(len(messages)) if out[i] is None] if self.mode != "sampled" else []
            for i, reply in zip(rest, self.logprob_calls([messages[i] for i in rest], answer_ids)):
                out[i] = ("logprobs", reply)
            answered = [o[1] for o in out if o is not None and not isinstance(o[1].result, Skipped)]
            if self.mode is None and answered:
                self.mode = "logprobs" if any(_tops(r) is not None for r in answered) else "sampled"
        redo = [i for i, o in enumerate(out)
                if o is None or (not isinstance(o[1].result, Skipped) and _tops(o[1]) is None)]
        schema = verdict_schema(key, alphabet)
        for i, reply in zip(redo, self.sampled_calls([messages[i] for i in redo], schema)):
            out[i] = ("sampled", reply)
        return out  # type: ignore[return-value]


def _tops(reply: Reply) -> list[tuple[str, float]] | None:
    """The (token text, log-prob) entries at the verdict position, every one kept (equal texts included)."""
    tops = (reply.payload or {}).get("top_logprobs") or [None]
    return None if tops[0] is None else [(tok, lp) for tok, lp in tops[0]]


def _sampled(reply: Reply, alphabet: Sequence[str], key: str) -> tuple[list[int | None], dict]:
    verdicts = [parse_verdict(c.text, alphabet, key) for c in reply.result]
    info = {"mode": "sampled", "samples": len(verdicts), "failures": sum(v is None for v in verdicts),
            "verdicts": [None if v is None else alphabet[v] for v in verdicts],
            "structured": bool((reply.payload or {}).get("structured"))}
    return verdicts, info


class _ServedBase:
    def __init__(self, endpoint: Endpoint, label: str, *, tokenizer, min_mass: float, max_input_tokens: int):
        self.endpoint, self.tokenizer = endpoint, tokenizer
        self.specials = special_strings(tokenizer)
        self.min_mass, self.max_input_tokens = min_mass, max_input_tokens
        self.label = label

    def _answer_ids(self, tokens: Sequence[str]) -> list[int] | None:
        if self.tokenizer is None:
            return None
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in tokens]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    def _too_long(self, messages: list[dict]) -> int | None:
        """The input's token count when it is over judge.max_input_tokens (known only with a local tokenizer)."""
        if self.tokenizer is None:
            return None
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if len(text.encode()) < self.max_input_tokens:  # a token spans a byte of the text at least: not over, and
            return None  # the encoding, 80% of this check's CPU and serial before the chunk's requests, is skipped
        n = len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False))
        return n if n > self.max_input_tokens else None


class ServedScoreJudge(_ServedBase):
    """An absolute judge (template from judges/templates.py ABSOLUTE) on an endpoint; see the module docstring."""

    kind = "absolute"

    def __init__(self, endpoint: Endpoint, label: str, *, template_id: str, **kw):
        if template_id not in ABSOLUTE:
            raise ConfigError(f"judge.templates: {template_id!r} is unknown; fix: use one of {sorted(ABSOLUTE)}")
        super().__init__(endpoint, label, **kw)
        self.template = ABSOLUTE[template_id]
        self.id, self.aspect = f"{label}#{self.template.id}", self.template.aspect

    def score(self, items: Sequence[tuple[list[dict], str]], progress=None,
              references: Sequence[str | None] | None = None) -> list[Judgment]:
        refs = references or [None] * len(items)
        messages = [self.template.messages(c, r, self.specials, ref) for (c, r), ref in zip(items, refs)]
        out: list[Judgment | None] = [None] * len(items)
        for i, m in enumerate(messages):
            if (n := self._too_long(m)) is not None:
                error = f"judge input has {n} tokens > judge.max_input_tokens={self.max_input_tokens}"
                out[i] = Judgment(None, False, json.dumps({"error": error}), self.endpoint.mode)
        todo = [i for i in range(len(items)) if out[i] is None]
        tokens = self.template.score_tokens
        answers = self.endpoint.answers([messages[i] for i in todo], tokens, self._answer_ids(tokens), "score")
        for i, (mode, reply) in zip(todo, answers):
            out[i] = self._judgment(mode, reply)
        return out  # type: ignore[return-value]

    def _judgment(self, mode: str, reply: Reply) -> Judgment:
        if isinstance(reply.result, Skipped):
            return Judgment(None, False, json.dumps({"error": reply.result.reason, "mode": mode}), mode)
        tokens = self.template.score_tokens
        if mode == "logprobs":
            logprobs, counted = verdict_logprobs(_tops(reply) or [], tokens)
            parsed = expected_score(logprobs, min_mass=self.min_mass)
            raw = {**json.loads(parsed.raw), "mode": mode, "found": sum(lp > -math.inf for lp in logprobs),
                   "entries": counted}
            return Judgment(parsed.score, parsed.ok, json.dumps(raw), mode)
        verdicts, info = _sampled(reply, tokens, "score")
        got = [v + 1 for v in verdicts if v is not None]  # score k is score_tokens[k-1]
        if not got:
            return Judgment(None, False, json.dumps({**info, "error": "no sampled verdict parsed"}), mode)
        return Judgment(sum(got) / len(got), True, json.dumps(info), mode)


class ServedPairwiseJudge(_ServedBase):
    """A pairwise judge (judges/templates.py PAIRWISE) on an endpoint, both orders, mapped back
    (judges/pairwise.py)."""

    kind = "pairwise"

    def __init__(self, endpoint: Endpoint, label: str, *, template_id: str, **kw):
        if template_id not in PAIRWISE:
            raise ConfigError(
                f"judge.pairwise_templates: {template_id!r} is unknown; fix: use one of {sorted(PAIRWISE)}"
            )
        super().__init__(endpoint, label, **kw)
        self.template = PAIRWISE[template_id]
        self.id, self.aspect = f"{label}#{self.template.id}", "pairwise"

    def _p_slot_a(self, items: list[tuple[list[dict], str, str]]) -> list[tuple[float | None, float, str, dict]]:
        """(P(A) or None, mass on {A, B} (logprobs) or parsed share (sampled), mode, raw info) per item."""
        messages = [self.template.messages(c, a, b, self.specials) for c, a, b in items]
        out: list = [
            (None, 0.0, self.endpoint.mode, {"error": "input too long"}) if self._too_long(m) else None
            for m in messages
        ]
        todo = [i for i in range(len(items)) if out[i] is None]
        tokens = self.template.answer_tokens
        for i, (mode, reply) in zip(
            todo, self.endpoint.answers([messages[i] for i in todo], tokens, self._answer_ids(tokens), "verdict")
        ):
            if isinstance(reply.result, Skipped):
                out[i] = (None, 0.0, mode, {"error": reply.result.reason})
            elif mode == "logprobs":
                pa_, pb = (math.exp(lp) for lp in verdict_logprobs(_tops(reply) or [], tokens)[0])
                out[i] = (pa_ / (pa_ + pb) if pa_ + pb > 0 else None, pa_ + pb, mode, {})
            else:
                verdicts, info = _sampled(reply, tokens, "verdict")
                got = [v for v in verdicts if v is not None]
                out[i] = (
                    (sum(v == 0 for v in got) / len(got)) if got else None,
                    len(got) / max(len(verdicts), 1),
                    mode,
                    info,
                )
        return out

    def judge(self, items: Sequence[tuple[list[dict], str, str]]) -> list[PairJudgment]:
        """`items` are (conversation, first text, second text); both orders are judged."""
        both = self._p_slot_a([(c, x, y) for c, x, y in items] + [(c, y, x) for c, x, y in items])  # one batch
        forward, swapped = both[: len(items)], both[len(items) :]
        results = []
        for (p1, m1, mode1, i1), (p2, m2, mode2, i2) in zip(forward, swapped):
            mode = "sampled" if "sampled" in (mode1, mode2) else mode1
            raw = {"p_a_first_order": p1, "p_a_swapped_order": p2, "mass": [m1, m2], "mode": mode}
            if mode == "sampled":
                raw |= {
                    "samples": i1.get("samples", 0) + i2.get("samples", 0),
                    "failures": i1.get("failures", 0) + i2.get("failures", 0),
                    "verdicts": [i1.get("verdicts"), i2.get("verdicts")],
                }
            errors = [e for e in (i1.get("error"), i2.get("error")) if e]
            low = mode == "logprobs" and min(m1, m2) < self.min_mass
            if p1 is None or p2 is None or low:
                raw["error"] = "; ".join(errors) or (
                    f"answer tokens carry {min(m1, m2):.3g} < judge.min_score_mass={self.min_mass}"
                    if low
                    else "no sampled verdict parsed"
                )
                results.append(PairJudgment(0, None, None, False, json.dumps(raw), mode))
                continue
            outcome, p_first, consistent = combine(p1, p2)
            results.append(PairJudgment(outcome, p_first, consistent, True, json.dumps(raw), mode))
        return results
