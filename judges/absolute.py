"""Absolute LLM judge scored from score-token probabilities (see judges/parsing.py).

One forward pass per (conversation, response), batched and left-padded; only the last position's
logits are computed (`logits_to_keep=1`), so a batch never materialises a sequence x vocab tensor.
On a vLLM engine (judge.backend 'vllm') the same log-probs come from one decoding step that
returns exactly the score tokens' log-probs, normalised over the whole vocabulary.
Inputs longer than `max_input_tokens` are `ok=false`: truncating them would grade another text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from judges.parsing import ParsedScore, expected_score, single_token_ids
from judges.templates import ABSOLUTE, AbsoluteTemplate, special_strings
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Judgment:
    score: float | None
    ok: bool
    raw: str
    mode: str | None = None  # score_mode: "logprobs" (score-token expectation) or "sampled"; None for reward models


class ScoreTokenJudge:
    kind = "absolute"

    def __init__(
        self,
        model,
        tokenizer,
        label: str,
        *,
        template_id: str,
        min_mass: float,
        max_input_tokens: int,
        batch_size: int,
    ):
        if template_id not in ABSOLUTE:
            raise ConfigError(f"judge.templates: {template_id!r} is unknown; fix: use one of {sorted(ABSOLUTE)}")
        self.template: AbsoluteTemplate = ABSOLUTE[template_id]
        self.model, self.tokenizer = model, tokenizer
        self.id = f"{label}#{self.template.id}"
        self.aspect = self.template.aspect
        self.min_mass, self.max_input_tokens, self.batch_size = min_mass, max_input_tokens, batch_size
        self.specials = special_strings(tokenizer)
        self.score_ids = single_token_ids(tokenizer, self.template.score_tokens, "score token")

    def score(
        self, items: Sequence[tuple[list[dict], str]], progress=None, references: Sequence[str | None] | None = None
    ) -> list[Judgment]:
        """`items` are (conversation, response) pairs; one Judgment each, same order. `references` (one per
        item) are shown to templates with a reference slot."""
        refs = references or [None] * len(items)
        encoded = [
            self.tokenizer.apply_chat_template(
                self.template.messages(conv, resp, self.specials, ref),
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
            for (conv, resp), ref in zip(items, refs)
        ]
        out: list[Judgment | None] = [None] * len(items)
        todo = []
        for i, ids in enumerate(encoded):
            if len(ids) > self.max_input_tokens:
                out[i] = Judgment(
                    None,
                    False,
                    f'{{"error": "judge input has {len(ids)} tokens > '
                    f'judge.max_input_tokens={self.max_input_tokens}"}}',
                    "logprobs",
                )
            else:
                todo.append(i)
        todo.sort(key=lambda i: len(encoded[i]))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            for i, parsed in zip(batch, self._forward([encoded[i] for i in batch])):
                out[i] = Judgment(parsed.score, parsed.ok, parsed.raw, "logprobs")
            if progress is not None:
                progress(len(batch))
        return out  # type: ignore[return-value]

    def _forward(self, rows: list[list[int]]) -> list[ParsedScore]:
        logprobs = next_token_logprobs(self.model, self.tokenizer, rows, self.score_ids)
        return [expected_score(lp, min_mass=self.min_mass) for lp in logprobs]


def explain(
    judge: ScoreTokenJudge,
    items: Sequence[tuple[list[dict], str]],
    judgments: Sequence[Judgment],
    backend,
    *,
    max_new_tokens: int,
    references: Sequence[str | None] | None = None,
) -> list[str | None]:
    """A short rationale per ok judgment: the judge model continues "Score: k. Reason:" greedily
    after its own judging prompt (k = the rounded expected score). None where the judgment is not ok."""
    from pipeline.backends.base import Request, SamplingParams, Skipped

    refs = references or [None] * len(items)
    todo = [i for i, j in enumerate(judgments) if j.ok]
    requests = [
        Request(
            [
                *judge.template.messages(items[i][0], items[i][1], judge.specials, refs[i]),
                {"role": "assistant", "content": f"Score: {round(judgments[i].score)}. Reason:"},
            ],
            (0,),
        )
        for i in todo
    ]
    results = backend.generate(
        requests, sampling=SamplingParams(0.0, 1.0, max_new_tokens), max_prompt_tokens=judge.max_input_tokens + 16
    )
    out: list[str | None] = [None] * len(items)
    for i, r in zip(todo, results):
        out[i] = None if isinstance(r, Skipped) or not r[0].text else r[0].text
    return out


def next_token_logprobs(model, tokenizer, rows: list[list[int]], token_ids: list[int]) -> list[list[float]]:
    """log p(token | row) at the answer position for each of `token_ids`, from a transformers causal LM
    or from a vLLM engine (a VllmBackend, judge.backend 'vllm': it has `last_position_logprobs`)."""
    if hasattr(model, "last_position_logprobs"):
        return model.last_position_logprobs(rows, token_ids)
    return last_position_logprobs(model, tokenizer, rows, token_ids)


@torch.inference_mode()
def last_position_logprobs(model, tokenizer, rows: list[list[int]], token_ids: list[int]) -> list[list[float]]:
    """log p(token | row) at the answer position for each of `token_ids`, batched and left-padded."""
    pad = tokenizer.pad_token_id
    width = max(len(r) for r in rows)
    device = model.device
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = (
        model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits[:, -1, :].float()
    )
    return torch.log_softmax(logits, dim=-1)[:, token_ids].tolist()
