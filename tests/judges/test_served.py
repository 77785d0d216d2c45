"""Served judges' logprobs scoring without a server: replies as an OpenAI-compatible endpoint returns them (the
`top_logprobs` entries at the verdict position, by token text), through ServedScoreJudge / ServedPairwiseJudge.

A verdict may come with a leading space (" 5"), in both forms, or as two token ids decoding to the same text; the
probability of every entry spelling the verdict counts (judges/parsing.py verdict_logprobs), anything else none.
"""

import json
import math

import pytest

from judges.served import ServedPairwiseJudge, ServedScoreJudge
from pipeline.backends.base import Completion, Reply

CONVERSATION = [{"role": "user", "content": "q"}]


class FakeEndpoint:
    """Answers every prompt in logprobs mode with the next of the given top-logprobs lists (probabilities)."""

    mode = "logprobs"

    def __init__(self, *tops: list[tuple[str, float]]):
        self.tops = list(tops)

    def answers(self, messages, alphabet, answer_ids, key):
        assert len(messages) == len(self.tops)
        return [("logprobs", Reply([Completion(t[0][0], 1, "length")],
                                   {"top_logprobs": [[[tok, math.log(p)] for tok, p in t]]}))
                for t in self.tops]


def score(*tops, min_mass=0.5):
    judge = ServedScoreJudge(FakeEndpoint(*tops), "served", template_id="absolute-1to5-v1", tokenizer=None,
                             min_mass=min_mass, max_input_tokens=4096)
    return judge.score([(CONVERSATION, "response")] * len(tops))


def test_a_verdict_with_a_leading_space_only_is_read():
    (j,) = score([(" 5", 0.95), (" 4", 0.03), ("\n", 0.02)])
    raw = json.loads(j.raw)
    assert j.ok and j.score == pytest.approx((5 * 0.95 + 4 * 0.03) / 0.98, abs=1e-12)
    assert raw["mass"] == pytest.approx(0.98) and raw["found"] == 2 and raw["entries"] == 2


def test_a_verdict_split_between_both_forms_is_summed_before_renormalising():
    # "5" and " 5" at 0.45 each and "3" at 0.08: E = (5 * 0.9 + 3 * 0.08) / 0.98, not (5 * 0.45 + 3 * 0.08) / 0.53
    (j,) = score([("5", 0.45), (" 5", 0.45), ("3", 0.08), ("The", 0.02)])
    raw = json.loads(j.raw)
    assert j.ok and j.score == pytest.approx(4.74 / 0.98, abs=1e-12)
    assert raw["mass"] == pytest.approx(0.98) and raw["p"][4] == pytest.approx(0.9 / 0.98, abs=1e-6)
    assert raw["found"] == 2 and raw["entries"] == 3


def test_an_entry_listed_twice_is_summed_not_overwritten():
    # two token ids decoding to "4" (0.4 and 0.3): mass 0.71, ok; keeping the last one alone gave 0.31, not ok
    (j,) = score([("4", 0.4), ("4", 0.3), ("5", 0.01), ("I", 0.29)])
    assert j.ok and json.loads(j.raw)["mass"] == pytest.approx(0.71)
    assert j.score == pytest.approx((4 * 0.7 + 5 * 0.01) / 0.71, abs=1e-12)


def test_other_answers_do_not_count():
    # "10", "5." and "５" are not the verdict "5": the score tokens carry 0.05 < min_mass, so no score is invented
    (j,) = score([("10", 0.4), ("5.", 0.3), ("\uff15", 0.2), ("2", 0.05)])
    raw = json.loads(j.raw)
    assert not j.ok and j.score is None and raw["mass"] == pytest.approx(0.05) and "min_score_mass" in raw["error"]
    (j,) = score([("10", 0.4), ("5.", 0.3), ("2", 0.3)], min_mass=0.2)  # the one score token is the whole score
    assert j.ok and j.score == pytest.approx(2.0) and json.loads(j.raw)["entries"] == 1


def test_pairwise_verdicts_with_leading_spaces_and_both_forms():
    # forward order: " A" 0.5 + "A" 0.2 vs " B" 0.2 -> P(A) 7/9; swapped: " B" 0.9 ("b" is not B) -> P(A) 0
    judge = ServedPairwiseJudge(FakeEndpoint([(" A", 0.5), ("A", 0.2), (" B", 0.2), ("a", 0.1)],
                                             [(" B", 0.9), ("b", 0.1)]),
                                "served", template_id="pairwise-ab-v1", tokenizer=None, min_mass=0.5,
                                max_input_tokens=4096)
    (j,) = judge.judge([(CONVERSATION, "x", "y")])
    raw = json.loads(j.raw)
    assert j.ok and raw["p_a_first_order"] == pytest.approx(7 / 9) and raw["p_a_swapped_order"] == 0.0
    assert raw["mass"] == [pytest.approx(0.9), pytest.approx(0.9)] and j.outcome == 1 and j.position_consistent
    assert j.p_first_wins == pytest.approx((7 / 9 + 1) / 2)


def test_too_long_inputs_are_counted_by_the_tokenizer_and_short_ones_skip_the_encoding():
    from pipeline.backends.openai_backend import local_tokenizer

    tokenizer = local_tokenizer("bundled:smollm2-135m-instruct")  # a tokenizer, no weights
    encoded = []
    real = tokenizer.apply_chat_template

    def counting(messages, **kw):
        encoded.append(kw.get("tokenize"))
        return real(messages, **kw)

    tokenizer.apply_chat_template = counting
    judge = ServedScoreJudge(FakeEndpoint([("5", 0.9)]), "served", template_id="absolute-1to5-v1",
                             tokenizer=tokenizer, min_mass=0.5, max_input_tokens=512)
    short, long = judge.score([(CONVERSATION, "fine"), (CONVERSATION, "word " * 600)])
    assert short.ok and not long.ok and "judge.max_input_tokens=512" in long.raw
    assert int(json.loads(long.raw)["error"].split()[3]) > 512  # the count is the tokenizer's, over the limit
    assert encoded.count(True) == 1  # only the input whose text bytes could be over was encoded
