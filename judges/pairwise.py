"""Pairwise LLM judge, always run in both orders (A/B and B/A) and mapped back.

LLM judges favour a position (Zheng et al. 2023, "Judging LLM-as-a-judge"). Each candidate pair
(x, y) is judged twice: x in slot A, then y in slot A. The slot verdict of each order is read from
the answer-token probabilities (p(A) vs p(B) at the answer position, as in judges/absolute.py) and
mapped back to the candidates by `to_candidates`. If the two orders disagree the pair is
position-inconsistent and counts as a tie; an order with P(A) exactly 0.5 has no verdict, so it is
consistent only with another 0.5 (a tie either way: before, 0.5 counted as a win for slot B, which
made a pair and its mirror image disagree). `p_first_wins` averages P(x better) over both orders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Sequence

from judges.absolute import next_token_logprobs
from judges.parsing import single_token_ids
from judges.templates import PAIRWISE, PairwiseTemplate, special_strings
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class PairJudgment:
    outcome: int  # +1 first candidate better, -1 second better, 0 tie (position-inconsistent)
    p_first_wins: float | None
    position_consistent: bool | None
    ok: bool
    raw: str


def to_candidates(slot_a_wins: bool, first_in_slot_a: bool) -> int:
    """Map a slot verdict back: +1 if the FIRST candidate of the pair won, else -1."""
    return 1 if slot_a_wins == first_in_slot_a else -1


def _verdict(p_slot_a: float, first_in_slot_a: bool) -> int:
    """+1 / -1 for the first candidate, 0 when the order has no preference (P(A) exactly 0.5)."""
    return 0 if p_slot_a == 0.5 else to_candidates(p_slot_a > 0.5, first_in_slot_a)


def combine(p_a_first: float, p_a_swapped: float) -> tuple[int, float, bool]:
    """From P(slot A wins) in the (x, y) order and in the (y, x) order: (outcome, P(x wins), consistent).
    Consistent means both orders give the same verdict; an order at exactly 0.5 gives none (a tie),
    so (0.6, 0.5) and its mirror (0.4, 0.5) are both inconsistent ties, not a win and a tie."""
    v1, v2 = _verdict(p_a_first, True), _verdict(p_a_swapped, False)
    consistent = v1 == v2
    return (v1 if consistent else 0), (p_a_first + (1 - p_a_swapped)) / 2, consistent


class PairwiseJudge:
    kind = "pairwise"

    def __init__(self, model, tokenizer, label: str, *, template_id: str, min_mass: float, max_input_tokens: int,
                 batch_size: int):
        if template_id not in PAIRWISE:
            raise ConfigError(f"judge.pairwise_templates: {template_id!r} is unknown; fix: use one of {sorted(PAIRWISE)}")
        self.template: PairwiseTemplate = PAIRWISE[template_id]
        self.model, self.tokenizer = model, tokenizer
        self.id = f"{label}#{self.template.id}"
        self.aspect = "pairwise"
        self.min_mass, self.max_input_tokens, self.batch_size = min_mass, max_input_tokens, batch_size
        self.specials = special_strings(tokenizer)
        self.answer_ids = single_token_ids(tokenizer, self.template.answer_tokens, "answer token")

    def _p_slot_a(self, items: list[tuple[list[dict], str, str]]) -> list[tuple[float | None, float]]:
        """(P(A) renormalised over {A, B} or None when too long, mass on {A, B}) per item."""
        encoded = [self.tokenizer.apply_chat_template(self.template.messages(c, a, b, self.specials),
                                                      add_generation_prompt=True, tokenize=True, return_dict=False)
                   for c, a, b in items]
        out: list[tuple[float | None, float]] = [(None, 0.0)] * len(items)
        todo = sorted((i for i, ids in enumerate(encoded) if len(ids) <= self.max_input_tokens), key=lambda i: len(encoded[i]))
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            for i, lps in zip(batch, next_token_logprobs(self.model, self.tokenizer, [encoded[i] for i in batch], self.answer_ids)):
                pa_, pb = math.exp(lps[0]), math.exp(lps[1])
                out[i] = (pa_ / (pa_ + pb) if pa_ + pb > 0 else None, pa_ + pb)
        return out

    def judge(self, items: Sequence[tuple[list[dict], str, str]]) -> list[PairJudgment]:
        """`items` are (conversation, first text, second text); both orders are judged."""
        forward = self._p_slot_a([(c, x, y) for c, x, y in items])
        swapped = self._p_slot_a([(c, y, x) for c, x, y in items])
        results = []
        for (p1, m1), (p2, m2) in zip(forward, swapped):
            raw = {"p_a_first_order": p1, "p_a_swapped_order": p2, "mass": [m1, m2]}
            if p1 is None or p2 is None or min(m1, m2) < self.min_mass:
                raw["error"] = f"answer tokens carry {min(m1, m2):.3g} < judge.min_score_mass={self.min_mass} or input too long"
                results.append(PairJudgment(0, None, None, False, json.dumps(raw)))
                continue
            outcome, p_first, consistent = combine(p1, p2)
            results.append(PairJudgment(outcome, p_first, consistent, True, json.dumps(raw)))
        return results
