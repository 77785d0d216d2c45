"""Turning judge model outputs into scores, without ever inventing one.

Score-token expectation (the G-Eval idea): at the answer position, take the model's probability
of each score token, renormalise over the score alphabet and report E[k] = sum_k k * p(k). Even a
135M judge thus gives a graded score rather than a coin-flip digit. If the score tokens carry less
than `min_mass` of the full next-token distribution, the judge was not answering with a score:
the judgment is `ok=false` with `score=None`, never a default.

Verdict tokens in a served judge's `top_logprobs` (judges/served.py, `verdict_logprobs`): the endpoint names
each entry by its text, and tokenizers spell one verdict several ways ("5", " 5", "5\n"; a server that
returns raw pieces, "▁5" or "Ġ5"). An entry counts for a verdict when its text, with surrounding whitespace
and one leading word-boundary marker (SentencePiece "▁", byte-level BPE "Ġ") removed, equals the verdict
token exactly; the probability of every entry that counts for one verdict is summed (entries are distinct
token ids, so two equal strings are two ids decoding alike: their mass adds). Nothing else is normalised:
"10", "5.", "５" are other answers, and case is kept, since a lowercase "a" at the verdict position is as
likely the article as the verdict and folding it would add that mass to A alone.

Sampled verdicts (a served judge without log-probs, judges/served.py): `verdict_schema` is the
JSON schema a server's structured output constrains them to, and `parse_verdict` reads one back:
the JSON object, else the first answer token standing alone in free text; anything else is a
parse failure, counted, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Sequence


def single_token_ids(tokenizer, tokens, what: str) -> list[int]:
    """The id of each answer token; a token the judge's tokenizer splits cannot be read as one answer."""
    from pipeline.errors import ConfigError

    out = []
    for tok in tokens:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"judge model tokenises {what} {tok!r} as {ids}; it must be one token")
        out.append(ids[0])
    return out


@dataclass(frozen=True)
class ParsedScore:
    score: float | None
    ok: bool
    raw: str  # JSON with the score-token distribution and its mass


def expected_score(score_logprobs: Sequence[float], *, min_mass: float) -> ParsedScore:
    """`score_logprobs[k-1]` is log p(score token k) under the full-vocabulary distribution."""
    probs = [math.exp(lp) for lp in score_logprobs]
    mass = sum(probs)
    raw = {"mass": round(mass, 6), "p": [round(p / mass, 6) if mass > 0 else 0.0 for p in probs]}
    if not mass > 0 or mass < min_mass:
        raw["error"] = f"score tokens carry {mass:.3g} of the probability mass < judge.min_score_mass={min_mass}"
        return ParsedScore(None, False, json.dumps(raw))
    score = sum((k + 1) * p for k, p in enumerate(probs)) / mass
    return ParsedScore(score, True, json.dumps(raw))


WORD_MARKERS = "\u2581\u0120"  # SentencePiece "▁" and byte-level BPE "Ġ": a space before the token


def verdict_text(token: str) -> str:
    """The verdict a top-logprobs entry spells: its text without surrounding whitespace and one leading marker."""
    text = token.strip()
    return text[1:].strip() if text[:1] and text[0] in WORD_MARKERS else text


def verdict_logprobs(tops: Sequence[tuple[str, float]], alphabet: Sequence[str]) -> tuple[list[float], int]:
    """log of the summed probability of the entries counting for each alphabet token (-inf where none does),
    and how many entries counted; see the module docstring for which count."""
    mass = dict.fromkeys(alphabet, 0.0)
    counted = 0
    for token, logprob in tops:
        if (verdict := verdict_text(token)) in mass:
            mass[verdict] += math.exp(logprob)
            counted += 1
    return [math.log(m) if m > 0 else -math.inf for m in mass.values()], counted


def verdict_schema(key: str, alphabet: Sequence[str]) -> dict:
    """The JSON schema a sampled verdict is constrained to (response_format): {key: one of the alphabet}."""
    if all(a.isdigit() for a in alphabet):
        prop = {"type": "integer", "enum": [int(a) for a in alphabet]}
    else:
        prop = {"type": "string", "enum": list(alphabet)}
    return {"type": "object", "properties": {key: prop}, "required": [key], "additionalProperties": False}


def parse_verdict(text: str, alphabet: Sequence[str], key: str) -> int | None:
    """Index in `alphabet` of a sampled verdict, or None: the JSON object {key: v} the schema asks for, else
    (a server without structured output) the first alphabet token standing alone in the text."""
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and str(obj.get(key)) in alphabet:
            return list(alphabet).index(str(obj[key]))
    except ValueError:
        pass
    match = re.search(r"(?<![\w.])(" + "|".join(map(re.escape, alphabet)) + r")(?!\w|\.\d)", text)
    return list(alphabet).index(match.group(1)) if match else None
