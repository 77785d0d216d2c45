"""The checkers behind judges/constraints.py: one `(response, kwargs) -> bool` per IFEval-style constraint type,
plus the text helpers they share (words, sentences, capital words). Pure stdlib; the semantics, and where they
differ from IFEval's, are documented in judges/constraints.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

Kwargs = Mapping[str, Any]

RELATIONS = ("less than", "at least")
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")

_WORD = re.compile(r"\w+")  # nltk RegexpTokenizer(r"\w+"), IFEval's count_words
_CAPITAL_TOKEN = re.compile(r"\w+(?:-\w+)*")  # hyphenated words are one token, as in nltk.word_tokenize
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e inc ltd co no fig approx capt lt gen dept est".split())
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")  # "J" of "J. Smith", "U.S" of "U.S. law"


def compare(actual: int, relation: str, threshold: int) -> bool:
    """IFEval's two relations: 'less than' is actual < threshold, 'at least' is actual >= threshold."""
    if relation == "less than":
        return actual < threshold
    if relation == "at least":
        return actual >= threshold
    raise ValueError(f"relation {relation!r} is not one of {RELATIONS}")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _no_break(before: str, terminator: str, after: str) -> bool:
    """An abbreviation or initial before a single '.', or an ellipsis before a lowercase word, ends no sentence."""
    if terminator.startswith("..") and after.lstrip()[:1].islower():
        return True
    if terminator != ".":
        return False
    token = before.rsplit(None, 1)[-1].lstrip("([\"'“‘") if before.strip() else ""
    return token.lower() in _ABBREVIATIONS or bool(_INITIALS.fullmatch(token))


def split_sentences(text: str) -> list[str]:
    """Sentences end at a run of . ! ? (with closing quotes/brackets) before whitespace or the end of the text,
    except after a known abbreviation or an initial, or at an ellipsis before a lowercase word; pieces without a
    word character are dropped."""
    sentences, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if _no_break(text[start:match.start()], match.group(), text[match.end():match.end() + 8]):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if _WORD.search(s)]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_capital_words(text: str) -> int:
    return sum(token.isupper() for token in _CAPITAL_TOKEN.findall(text))


# keywords:*

def keywords_existence(response: str, kw: Kwargs) -> bool:
    return all(re.search(re.escape(word), response, re.IGNORECASE) for word in kw["keywords"])


def keywords_forbidden(response: str, kw: Kwargs) -> bool:
    return not any(re.search(rf"\b{re.escape(word)}\b", response, re.IGNORECASE) for word in kw["forbidden_words"])


def keywords_frequency(response: str, kw: Kwargs) -> bool:
    found = len(re.findall(re.escape(kw["keyword"].strip()), response, re.IGNORECASE))
    return compare(found, kw["relation"], kw["frequency"])


def letter_frequency(response: str, kw: Kwargs) -> bool:
    return compare(response.lower().count(kw["letter"].strip().lower()), kw["let_relation"], kw["let_frequency"])


# length_constraints:*

def number_words(response: str, kw: Kwargs) -> bool:
    return compare(count_words(response), kw["relation"], kw["num_words"])


def number_sentences(response: str, kw: Kwargs) -> bool:
    return compare(count_sentences(response), kw["relation"], kw["num_sentences"])


def number_paragraphs(response: str, kw: Kwargs) -> bool:
    """Paragraphs between `***` dividers; a blank one counts as none at either end and fails the check inside."""
    parts = re.split(r"\s?\*\*\*\s?", response)
    blank = [i for i, part in enumerate(parts) if not part.strip()]
    if any(0 < i < len(parts) - 1 for i in blank):
        return False
    return len(parts) - len(blank) == kw["num_paragraphs"]


def _first_word(paragraph: str) -> str:
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    return re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()


def nth_paragraph_first_word(response: str, kw: Kwargs) -> bool:
    """Paragraphs split on '\\n\\n'; blank ones are not counted, but (as in IFEval) the nth is indexed among all."""
    parts = response.split("\n\n")
    count = sum(1 for part in parts if part.strip())
    nth = kw["nth_paragraph"]
    if nth > count or not parts[nth - 1].strip():
        return False
    return count == kw["num_paragraphs"] and _first_word(parts[nth - 1].strip()) == kw["first_word"].lower()


# change_case:*, punctuation:*

def english_lowercase(response: str, kw: Kwargs) -> bool:
    return response.islower()


def english_capital(response: str, kw: Kwargs) -> bool:
    return response.isupper()


def capital_word_frequency(response: str, kw: Kwargs) -> bool:
    return compare(count_capital_words(response), kw["capital_relation"], kw["capital_frequency"])


def no_comma(response: str, kw: Kwargs) -> bool:
    return "," not in response


# startend:*

def end_checker(response: str, kw: Kwargs) -> bool:
    return response.strip().strip('"').lower().endswith(kw["end_phrase"].strip().lower())


def start_checker(response: str, kw: Kwargs) -> bool:
    return response.strip().strip('"').lower().startswith(kw["start_phrase"].strip().lower())


def quotation(response: str, kw: Kwargs) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


# detectable_format:*

def number_bullet_lists(response: str, kw: Kwargs) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == kw["num_bullets"]


def number_highlighted_sections(response: str, kw: Kwargs) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= kw["num_highlights"]


def multiple_sections(response: str, kw: Kwargs) -> bool:
    pattern = r"\s?" + re.escape(kw["section_spliter"].strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= kw["num_sections"]


def title(response: str, kw: Kwargs) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def json_format(response: str, kw: Kwargs) -> bool:
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def constrained_response(response: str, kw: Kwargs) -> bool:
    return any(option in response.strip() for option in CONSTRAINED_OPTIONS)


# detectable_content:*, combination:*

def number_placeholders(response: str, kw: Kwargs) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= kw["num_placeholders"]


def postscript(response: str, kw: Kwargs) -> bool:
    """The marker anywhere on a line, case-insensitive (IFEval's pattern has no ^ anchor); P.S. and P.P.S allow a
    space after each dot."""
    marker = kw["postscript_marker"].strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return bool(re.search(pattern, response.lower(), flags=re.MULTILINE))


def repeat_prompt(response: str, kw: Kwargs) -> bool:
    return response.strip().lower().startswith(kw["prompt_to_repeat"].strip().lower())


def two_responses(response: str, kw: Kwargs) -> bool:
    parts = response.split("******")
    valid = []
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part.strip())
        elif 0 < i < len(parts) - 1:
            return False
    return len(valid) == 2 and valid[0] != valid[1]
