"""Deterministic instruction-following constraints in the style of IFEval (Zhou et al. 2023, "Instruction-Following
Evaluation for Large Language Models", google-research/instruction_following_eval): each constraint type renders
an instruction ("Answer with less than 50 words.") and checks a response by program. Pure stdlib: no model, no
network, no nltk or langdetect. The checkers are in judges/constraint_checks.py.

Spec format: a list of `{"id": "<group>:<name>", "kwargs": {...}}` with IFEval's ids and kwarg names, e.g.
`{"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 50}}`. Relations are
"less than" (actual < n) or "at least" (actual >= n). A kwarg given as None counts as absent (the Hugging Face
copy of IFEval's data lists every kwarg name, None where unused). API: `validate(constraints)` raises ValueError
naming the id, kwarg, bad value and fix; `describe(constraints)` renders the instruction text; `check_all(
constraints, response, prompt)` returns `[{"id", "strict", "loose"}]`; `CONSTRAINTS` maps id -> Constraint.

Strict and loose, as IFEval's evaluation_lib defines them: strict passes when the response is not blank and its
checker passes. Loose passes when any of eight variants is not blank and passes: the response, with its first
line removed, its last line removed, or both (those three stripped), and each of these four with every `*`
removed. Loose forgives a preamble ("Sure, here is my answer:"), a sign-off, and markdown emphasis.

Differences from IFEval:
- language:response_language is left out (it needs langdetect); change_case:english_lowercase and
  english_capital check only response.islower() / response.isupper(), not that the language is English.
- length_constraints:number_sentences uses a regex splitter, not nltk's punkt model: a sentence ends at a run of
  . ! ? (with closing quotes or brackets) before whitespace or the end, except after a short list of
  abbreviations (Mr. Dr. e.g. i.e. etc. vs. ...) or an initial ("J.", "U.S."), or at an ellipsis before a
  lowercase word. Punkt learned its abbreviations and collocations from data, so counts can differ on unusual
  abbreviations, initials that end a sentence ("Plan A." joins the next sentence here) and text without final
  punctuation. As in punkt, a newline alone ends no sentence.
- change_case:capital_word_frequency tokenizes with `\\w+(?:-\\w+)*` instead of nltk.word_tokenize: hyphenated
  words stay one token as there, but contractions split at the apostrophe ("DON'T" is DON + T, nltk's DO + N'T;
  both count two capital words) and tokens such as "U.S." are split at the dots.
- Keywords, phrases and markers are matched literally (re.escape); IFEval passes them to re unescaped, so a
  keyword such as "c++" or "3.5" is a regex there. Matching is otherwise IFEval's: case-insensitive substring for
  keywords:existence and keywords:frequency ("cat" matches "category"), whole word (\\b) for forbidden_words.
- No random defaults: IFEval's build_description draws a missing kwarg at random; here it is a validate error.
  Counts must be non-negative ints, nth_paragraph must be 1..num_paragraphs, letter a single letter.
- combination:repeat_prompt takes `prompt_to_repeat` from its kwargs or, when absent, from check_all's `prompt`.
- startend:start_checker is a prefsynth extra (IFEval has none): the response, stripped of whitespace and double
  quotes, starts with `start_phrase`, case-insensitive (end_checker's rules at the other end). IFEval's disabled
  multi-turn:constrained_start instead accepts the phrase at the start of any line.
- Unknown kwargs are a validate error instead of a TypeError from build_description.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from judges import constraint_checks as cc

# kwarg kinds: a predicate on the value and the fix shown when it fails
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative int, e.g. 3"),
    "text": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "words": (lambda v: isinstance(v, list | tuple) and bool(v) and all(isinstance(w, str) and w.strip() for w in v),
              "a non-empty list of non-empty strings, e.g. [\"apple\", \"river\"]"),
    "relation": (lambda v: v in cc.RELATIONS, "one of 'less than', 'at least'"),
    "letter": (lambda v: isinstance(v, str) and len(v.strip()) == 1 and v.strip().isalpha(),
               "a single letter, e.g. 'e'"),
}


@dataclass(frozen=True)
class Constraint:
    """One constraint type: its IFEval id, kwargs schema (name -> kind), instruction renderer and checker."""

    id: str
    kwargs: dict[str, str]
    render: Callable[[Mapping[str, Any]], str]
    check: Callable[[str, Mapping[str, Any]], bool]
    optional: frozenset[str] = field(default_factory=frozenset)


def _quoted(words: list[str]) -> str:
    return ", ".join(f'"{w}"' for w in sorted(words))


_BULLETS = "Your answer must contain exactly {} bullet points. Use the markdown bullet points such as:\n" \
           "* This is point 1. \n* This is point 2"
_SECTIONS = "Your response must have {n} sections. Mark the beginning of each section with {s} X, such as:\n" \
            "{s} 1\n[content of section 1]\n{s} 2\n[content of section 2]"
_NTH = "There should be {} paragraphs. Paragraphs and only paragraphs are separated with each other by two new " \
       "lines as if it was '\\n\\n' in python. Paragraph {} must start with word {}."
_REPEAT = "First repeat the request word for word without change, then give your answer (1. do not say any words " \
          "or characters before repeating the request; 2. the request you need to repeat does not include this " \
          "sentence)"

_TABLE: list[tuple[str, dict[str, str], Callable[[Mapping[str, Any]], str], Callable[[str, Mapping], bool]]] = [
    ("keywords:existence", {"keywords": "words"},
     lambda k: f"Include keywords {_quoted(k['keywords'])} in the response.", cc.keywords_existence),
    ("keywords:forbidden_words", {"forbidden_words": "words"},
     lambda k: f"Do not include keywords {_quoted(k['forbidden_words'])} in the response.", cc.keywords_forbidden),
    ("keywords:frequency", {"keyword": "text", "frequency": "count", "relation": "relation"},
     lambda k: f"In your response, the word {k['keyword'].strip()} should appear {k['relation']} {k['frequency']} "
               "times.", cc.keywords_frequency),
    ("keywords:letter_frequency", {"letter": "letter", "let_frequency": "count", "let_relation": "relation"},
     lambda k: f"In your response, the letter {k['letter'].strip().lower()} should appear {k['let_relation']} "
               f"{k['let_frequency']} times.", cc.letter_frequency),
    ("length_constraints:number_words", {"num_words": "count", "relation": "relation"},
     lambda k: f"Answer with {k['relation']} {k['num_words']} words.", cc.number_words),
    ("length_constraints:number_sentences", {"num_sentences": "count", "relation": "relation"},
     lambda k: f"Your response should contain {k['relation']} {k['num_sentences']} sentences.", cc.number_sentences),
    ("length_constraints:number_paragraphs", {"num_paragraphs": "count"},
     lambda k: f"There should be {k['num_paragraphs']} paragraphs. Paragraphs are separated with the markdown "
               "divider: ***", cc.number_paragraphs),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": "count", "nth_paragraph": "count",
                                                     "first_word": "text"},
     lambda k: _NTH.format(k["num_paragraphs"], k["nth_paragraph"], k["first_word"].lower()),
     cc.nth_paragraph_first_word),
    ("change_case:english_lowercase", {},
     lambda k: "Your entire response should be in English, and in all lowercase letters. No capital letters are "
               "allowed.", cc.english_lowercase),
    ("change_case:english_capital", {},
     lambda k: "Your entire response should be in English, and in all capital letters.", cc.english_capital),
    ("change_case:capital_word_frequency", {"capital_frequency": "count", "capital_relation": "relation"},
     lambda k: f"In your response, words with all capital letters should appear {k['capital_relation']} "
               f"{k['capital_frequency']} times.", cc.capital_word_frequency),
    ("startend:end_checker", {"end_phrase": "text"},
     lambda k: f"Finish your response with this exact phrase {k['end_phrase'].strip()}. No other words should "
               "follow this phrase.", cc.end_checker),
    ("startend:start_checker", {"start_phrase": "text"},
     lambda k: f"Start your response with this exact phrase {k['start_phrase'].strip()}. No other words should "
               "come before this phrase.", cc.start_checker),
    ("startend:quotation", {},
     lambda k: "Wrap your entire response with double quotation marks.", cc.quotation),
    ("punctuation:no_comma", {},
     lambda k: "In your entire response, refrain from the use of any commas.", cc.no_comma),
    ("detectable_format:number_bullet_lists", {"num_bullets": "count"},
     lambda k: _BULLETS.format(k["num_bullets"]), cc.number_bullet_lists),
    ("detectable_format:number_highlighted_sections", {"num_highlights": "count"},
     lambda k: f"Highlight at least {k['num_highlights']} sections in your answer with markdown, i.e. "
               "*highlighted section*.", cc.number_highlighted_sections),
    ("detectable_format:multiple_sections", {"section_spliter": "text", "num_sections": "count"},
     lambda k: _SECTIONS.format(n=k["num_sections"], s=k["section_spliter"].strip()), cc.multiple_sections),
    ("detectable_format:title", {},
     lambda k: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
     cc.title),
    ("detectable_format:json_format", {},
     lambda k: "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
     cc.json_format),
    ("detectable_format:constrained_response", {},
     lambda k: f"Answer with one of the following options: {_quoted(list(cc.CONSTRAINED_OPTIONS))}",
     cc.constrained_response),
    ("detectable_content:number_placeholders", {"num_placeholders": "count"},
     lambda k: f"The response must contain at least {k['num_placeholders']} placeholders represented by square "
               "brackets, such as [address].", cc.number_placeholders),
    ("detectable_content:postscript", {"postscript_marker": "text"},
     lambda k: "At the end of your response, please explicitly add a postscript starting with "
               f"{k['postscript_marker'].strip()}", cc.postscript),
    ("combination:repeat_prompt", {"prompt_to_repeat": "text"}, lambda k: _REPEAT, cc.repeat_prompt),
    ("combination:two_responses", {},
     lambda k: "Give two different responses. Responses and only responses should be separated by 6 asterisk "
               "symbols: ******.", cc.two_responses),
]

_OPTIONAL = {"combination:repeat_prompt": frozenset({"prompt_to_repeat"})}

CONSTRAINTS: dict[str, Constraint] = {
    cid: Constraint(cid, schema, render, check, _OPTIONAL.get(cid, frozenset()))
    for cid, schema, render, check in _TABLE
}


def _kwargs_of(index: int, spec: Any) -> tuple[Constraint, dict[str, Any]]:
    """The registered type and the kwargs (None values dropped) of one spec entry, or ValueError."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("id"), str):
        raise ValueError(f"constraint #{index} = {spec!r:.80} is not a dict with a string 'id'; "
                         "fix: write {\"id\": \"keywords:existence\", \"kwargs\": {...}}")
    cid = spec["id"]
    if cid not in CONSTRAINTS:
        close = difflib.get_close_matches(cid, CONSTRAINTS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "see judges.constraints.CONSTRAINTS"
        raise ValueError(f"unknown constraint id {cid!r} (constraint #{index}); fix: use a registered id, {hint}")
    raw = spec.get("kwargs") or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"constraint {cid!r}: kwargs = {raw!r:.80} is not a dict; fix: pass a dict of kwargs")
    return CONSTRAINTS[cid], {k: v for k, v in raw.items() if v is not None}


def _validate_one(index: int, spec: Any) -> tuple[Constraint, dict[str, Any]]:
    constraint, kwargs = _kwargs_of(index, spec)
    cid, schema = constraint.id, constraint.kwargs
    for name in kwargs:
        if name not in schema:
            accepted = ", ".join(schema) or "none"
            raise ValueError(f"constraint {cid!r}: unknown kwarg {name!r} = {kwargs[name]!r:.80}; fix: remove it "
                             f"(accepted kwargs: {accepted})")
    for name, kind in schema.items():
        ok, fix = _KINDS[kind]
        if name not in kwargs:
            if name in constraint.optional:
                continue
            raise ValueError(f"constraint {cid!r}: missing kwarg {name!r}; fix: add {name!r}: {fix}")
        if not ok(kwargs[name]):
            raise ValueError(f"constraint {cid!r}: kwarg {name!r} = {kwargs[name]!r:.80} is invalid; fix: use {fix}")
    if cid == "length_constraints:nth_paragraph_first_word":
        nth, num = kwargs["nth_paragraph"], kwargs["num_paragraphs"]
        if not 1 <= nth <= num:
            raise ValueError(f"constraint {cid!r}: kwarg 'nth_paragraph' = {nth} is outside 1..num_paragraphs "
                             f"({num}); fix: use an int from 1 to {num}")
    return constraint, kwargs


def _parse(constraints: list[dict]) -> list[tuple[Constraint, dict[str, Any]]]:
    if not isinstance(constraints, list | tuple) or not constraints:
        raise ValueError(f"constraints = {constraints!r:.80} is not a non-empty list; fix: pass a list of "
                         "{\"id\": ..., \"kwargs\": {...}} dicts")
    return [_validate_one(index, spec) for index, spec in enumerate(constraints)]


def validate(constraints: list[dict]) -> None:
    """Raise ValueError (one line: id, kwarg, bad value, fix) at the first malformed constraint."""
    _parse(constraints)


def describe(constraints: list[dict]) -> str:
    """The instruction text of each constraint, one per line, in order."""
    return "\n".join(constraint.render(kwargs) for constraint, kwargs in _parse(constraints))


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants: as is, without the first line, the last line, or both, each with and
    without asterisks."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [variant.replace("*", "") for variant in base]


def _passes(constraint: Constraint, response: str, kwargs: Mapping[str, Any]) -> bool:
    return bool(response.strip()) and constraint.check(response, kwargs)


def check_all(constraints: list[dict], response: str, prompt: str | None = None) -> list[dict]:
    """Check `response` against each constraint: [{"id", "strict", "loose"}] in the constraints' order."""
    variants = loose_variants(response)
    results = []
    for constraint, kwargs in _parse(constraints):
        if constraint.id == "combination:repeat_prompt" and "prompt_to_repeat" not in kwargs:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"constraint {constraint.id!r}: no kwarg 'prompt_to_repeat' and no prompt given; "
                                 "fix: pass check_all(..., prompt=...) or kwargs {'prompt_to_repeat': ...}")
            kwargs["prompt_to_repeat"] = prompt
        strict = _passes(constraint, response, kwargs)
        loose = strict or any(_passes(constraint, variant, kwargs) for variant in variants)
        results.append({"id": constraint.id, "strict": strict, "loose": loose})
    return results


def verdict(spec: dict, response: str) -> tuple[bool | None, float | None, str, list[dict]]:
    """A `verify` spec of kind 'constraints' ({"kind": "constraints", "constraints": [...], optional "prompt"})
    against a response: (all pass strict, or None for a bad spec; the fraction that pass strict; a reason; the
    per-constraint results of `check_all`). The fraction is what lets a pair prefer the answer that follows more."""
    try:
        validate(spec.get("constraints"))
        results = check_all(spec["constraints"], response, prompt=spec.get("prompt"))
    except ValueError as exc:
        return None, None, f"bad spec: {exc}", []
    strict = sum(r["strict"] for r in results)
    return strict == len(results), strict / len(results), f"{strict}/{len(results)} constraints pass (strict)", results
