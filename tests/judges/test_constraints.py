"""judges/constraints.py: each IFEval-style constraint type on hand-written responses (a pass and a fail each,
and a strict-fail / loose-pass case where loose can differ), the spec API's errors, and the text helpers."""

from __future__ import annotations

import dataclasses

import pytest

from judges import constraint_checks as cc
from judges.constraints import CONSTRAINTS, Constraint, check_all, describe, loose_variants, validate

LESS, AT_LEAST = "less than", "at least"
PROMPT = "Write a haiku about rain."

# (id, kwargs, response, strict, loose)
CASES: list[tuple[str, dict, str, bool, bool]] = [
    ("keywords:existence", {"keywords": ["sunset", "river"]}, "We watched the Sunset by the river.", True, True),
    ("keywords:existence", {"keywords": ["sunset", "river"]}, "We watched the sunrise by the river.", False, False),
    ("keywords:existence", {"keywords": ["sunset", "river"]}, "We saw the **sun**set by the river.", False, True),
    ("keywords:existence", {"keywords": ["cat"]}, "A category error.", True, True),  # substring, as IFEval
    ("keywords:existence", {"keywords": ["c++"]}, "I write C++ daily.", True, True),  # literal, not a regex
    ("keywords:forbidden_words", {"forbidden_words": ["cheap", "deal"]}, "A fair price, an ideal one.", True, True),
    ("keywords:forbidden_words", {"forbidden_words": ["cheap", "deal"]}, "This is a Cheap option.", False, False),
    ("keywords:forbidden_words", {"forbidden_words": ["cheap"]}, "I won't say cheap.\nA fine price.", False, True),
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": AT_LEAST},
     "Data in, data out, data everywhere.", True, True),
    ("keywords:frequency", {"keyword": "data", "frequency": 3, "relation": AT_LEAST}, "Data in, data out.",
     False, False),
    ("keywords:frequency", {"keyword": "very", "frequency": 2, "relation": LESS}, "It is very good.", True, True),
    ("keywords:frequency", {"keyword": "very", "frequency": 2, "relation": LESS},
     "Very well, here goes:\nIt is very good.", False, True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": AT_LEAST}, "Zebras doze.",
     True, True),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": AT_LEAST}, "Zebras sleep.",
     False, False),
    ("keywords:letter_frequency", {"letter": "E", "let_frequency": 5, "let_relation": LESS},
     "Here we are, see below:\nA tiny cat.", False, True),
    ("length_constraints:number_words", {"num_words": 5, "relation": LESS}, "Short and sweet.", True, True),
    ("length_constraints:number_words", {"num_words": 5, "relation": LESS}, "This answer has far too many words.",
     False, False),
    ("length_constraints:number_words", {"num_words": 5, "relation": LESS},
     "Sure, here is my short answer:\nShort and sweet.", False, True),
    ("length_constraints:number_words", {"num_words": 5, "relation": AT_LEAST}, "Don't stop me now", True, True),
    ("length_constraints:number_words", {"num_words": 4, "relation": AT_LEAST}, "Two words", False, False),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": AT_LEAST},
     "Dr. Smith arrived. He sat down! Was he tired?", True, True),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": AT_LEAST},
     "One sentence only, e.g. this one.", False, False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": LESS},
     "Sure. Here it is.\nJust one sentence here.", False, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part.", True, True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nFirst part.\n***\nSecond part.\n***",
     True, True),  # blank at either end: not counted
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "First.\n***\n\n***\nSecond.", False, False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Only one paragraph.", False, False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Intro line\n***\nP1\n***\nP2", False, True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "Cats are great.\n\n\"However,\" dogs are loyal.", True, True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
     "Cats are great.\n\nBut dogs are loyal.", False, False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "However"},
     "Cats are great.\n\nHowever, dogs are loyal.\n\nThanks!", False, True),
    ("change_case:english_lowercase", {}, "all lowercase here, **even bold**.", True, True),
    ("change_case:english_lowercase", {}, "Not lowercase.", False, False),
    ("change_case:english_lowercase", {}, "Sure, here is my answer:\nall lowercase here.", False, True),
    ("change_case:english_capital", {}, "ALL CAPS HERE.", True, True),
    ("change_case:english_capital", {}, "ALL CAPS except this.", False, False),
    ("change_case:english_capital", {}, "Sure! Here it is:\nALL CAPS HERE.", False, True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AT_LEAST},
     "This is VERY IMPORTANT.", True, True),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": AT_LEAST},
     "The STATE-OF-THE-ART design.", False, False),  # a hyphenated word is one token
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": LESS},
     "NOTE: READ THIS\nIt is OK.", False, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Here is the plan. Any other questions?",
     True, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Done. any other questions?"', True, True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False, False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Here is the plan. Any other questions?\n*Generated answer*", False, True),
    ("startend:start_checker", {"start_phrase": "In my opinion"}, "in my opinion, cats rule.", True, True),
    ("startend:start_checker", {"start_phrase": "In my opinion"}, "I think cats rule.", False, False),
    ("startend:start_checker", {"start_phrase": "In my opinion"}, "Sure!\nIn my opinion, cats rule.", False, True),
    ("startend:start_checker", {"start_phrase": "In my opinion"}, "**In my opinion**, cats rule.", False, True),
    ("startend:quotation", {}, '"Hello world."', True, True),
    ("startend:quotation", {}, 'Hello "world"', False, False),
    ("startend:quotation", {}, '"', False, False),
    ("startend:quotation", {}, 'Here you go:\n"Hello world."', False, True),
    ("punctuation:no_comma", {}, "No commas here.", True, True),
    ("punctuation:no_comma", {}, "Yes, commas.", False, False),
    ("punctuation:no_comma", {}, "Sure, here it is:\nNo commas here.", False, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**Bold** is no bullet\n- one\n  - two", True, True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\nand no other bullet", False, False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "Points:\n* one\n* two\n- Let me know if you want more.", False, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", True, True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and * * and ****", False, False),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nIntro.\nSection 2\nBody.", True, True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "SECTION 1\nIntro.\nSECTION 2\nBody.", False, False),  # case-sensitive, as IFEval
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "**Section** 1\nIntro.\n**Section** 2\nBody.", False, True),
    ("detectable_format:title", {}, "<<My Poem>>\nRoses are red.", True, True),
    ("detectable_format:title", {}, "<< >>\nNo title, just <<\nbrackets>>.", False, False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True, True),
    ("detectable_format:json_format", {}, '{"a": 1', False, False),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": [1, 2]}', False, True),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True, True),
    ("detectable_format:constrained_response", {}, "Yes.", False, False),
    ("detectable_format:constrained_response", {}, "My answer is **maybe**.", False, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address].", True, True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name].", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Thanks.\n\nP.S. See you soon.", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Thanks.\np. s. later", True, True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Thanks. PS see you.", False, False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Body.\nP.P.S Also this.", True, True),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Body.\nnote: more.", True, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": PROMPT}, "Write a haiku about rain. Drops fall.", True, True),
    ("combination:repeat_prompt", {"prompt_to_repeat": PROMPT}, "Sure! Write a haiku about rain.", False, False),
    ("combination:repeat_prompt", {"prompt_to_repeat": PROMPT}, "Sure!\nWrite a haiku about rain.\nDrops fall.",
     False, True),
    ("combination:two_responses", {}, "Answer one.\n******\nAnswer two.", True, True),
    ("combination:two_responses", {}, "Same.\n******\nSame.", False, False),
    ("combination:two_responses", {}, "A\n******\n\n******\nB", False, False),
    ("combination:two_responses", {}, "Here are two answers:\n******\nA\n******\nB", False, True),
]


@pytest.mark.parametrize(("cid", "kwargs", "response", "strict", "loose"), CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_case(cid: str, kwargs: dict, response: str, strict: bool, loose: bool) -> None:
    [result] = check_all([{"id": cid, "kwargs": kwargs}], response)
    assert result == {"id": cid, "strict": strict, "loose": loose}


def test_every_registered_id_has_a_pass_and_a_fail_case() -> None:
    assert len(CONSTRAINTS) >= 22
    for cid in CONSTRAINTS:
        stricts = {case[3] for case in CASES if case[0] == cid}
        assert stricts == {True, False}, f"{cid} needs a passing and a failing case in CASES"
    assert {case[0] for case in CASES} <= set(CONSTRAINTS)


def test_registry_entries() -> None:
    assert {f.name for f in dataclasses.fields(Constraint)} >= {"id", "kwargs", "render", "check"}
    for cid, constraint in CONSTRAINTS.items():
        assert constraint.id == cid and ":" in cid
        assert set(constraint.kwargs.values()) <= {"count", "text", "words", "relation", "letter"}
    assert "language:response_language" not in CONSTRAINTS


def test_describe_renders_every_type() -> None:
    specs = [{"id": cid, "kwargs": kwargs} for cid, kwargs, *_ in CASES]
    lines = describe(specs).split("\n")
    assert len(lines) >= len(specs)
    assert "Answer with less than 5 words." in lines
    assert "In your response, the letter e should appear less than 5 times." in lines
    assert 'Include keywords "river", "sunset" in the response.' in lines
    text = describe([{"id": "detectable_format:multiple_sections",
                      "kwargs": {"section_spliter": "SECTION", "num_sections": 3}}])
    assert text.startswith("Your response must have 3 sections.") and "SECTION 2\n" in text
    assert describe([{"id": "combination:repeat_prompt"}]).startswith("First repeat the request word for word")


@pytest.mark.parametrize(("spec", "names"), [
    ({"id": "keyword:existence", "kwargs": {"keywords": ["a"]}}, ["'keyword:existence'", "'keywords:existence'"]),
    ({"id": "keywords:frequency", "kwargs": {"keyword": "a", "frequency": 2}}, ["'keywords:frequency'", "'relation'"]),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 9, "relation": "more than"}},
     ["'relation'", "'more than'", "'less than', 'at least'"]),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": "100", "relation": "at least"}},
     ["'num_words'", "'100'", "non-negative int"]),
    ({"id": "detectable_format:number_bullet_lists", "kwargs": {"num_bullets": True}}, ["'num_bullets'", "True"]),
    ({"id": "keywords:existence", "kwargs": {"keywords": "apple"}}, ["'keywords'", "'apple'", "list"]),
    ({"id": "keywords:letter_frequency", "kwargs": {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}},
     ["'letter'", "'ab'", "single letter"]),
    ({"id": "punctuation:no_comma", "kwargs": {"num_words": 3}}, ["'punctuation:no_comma'", "'num_words'", "remove"]),
    ({"id": "length_constraints:nth_paragraph_first_word",
      "kwargs": {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}}, ["'nth_paragraph'", "3", "1 to 2"]),
    ({"kwargs": {}}, ["#0", "'id'"]),
])
def test_validate_errors_name_the_field(spec: dict, names: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        validate([spec])
    message = str(err.value)
    assert "\n" not in message and "fix:" in message
    for name in names:
        assert name in message


def test_validate_accepts_none_kwargs_and_rejects_non_lists() -> None:
    validate([{"id": "punctuation:no_comma", "kwargs": {"num_words": None, "relation": None}},
              {"id": "detectable_format:title"}])
    with pytest.raises(ValueError, match="not a non-empty list"):
        validate({"id": "punctuation:no_comma"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a non-empty list"):
        validate([])
    with pytest.raises(ValueError, match="'relation'"):
        check_all([{"id": "length_constraints:number_words", "kwargs": {"num_words": 3, "relation": None}}], "x")


def test_repeat_prompt_takes_the_prompt_from_check_all() -> None:
    spec = [{"id": "combination:repeat_prompt"}]
    assert check_all(spec, "write a haiku about rain. Drops.", prompt=PROMPT)[0]["strict"] is True
    assert check_all(spec, "A haiku.", prompt=PROMPT)[0]["loose"] is False
    with pytest.raises(ValueError, match="prompt_to_repeat"):
        check_all(spec, "Write a haiku about rain.")


def test_blank_response_fails_strict_and_loose() -> None:
    results = check_all([{"id": "punctuation:no_comma"}, {"id": "change_case:english_lowercase"}], "  \n ")
    assert results == [{"id": "punctuation:no_comma", "strict": False, "loose": False},
                       {"id": "change_case:english_lowercase", "strict": False, "loose": False}]


def test_check_all_keeps_order_and_checks_each() -> None:
    specs = [{"id": "punctuation:no_comma"}, {"id": "detectable_format:title"},
             {"id": "length_constraints:number_words", "kwargs": {"num_words": 3, "relation": "at least"}}]
    results = check_all(specs, "<<Title>>\nNo commas at all.")
    assert [(r["id"], r["strict"]) for r in results] == [
        ("punctuation:no_comma", True), ("detectable_format:title", True), ("length_constraints:number_words", True)]


def test_loose_variants_are_ifevals_eight() -> None:
    variants = loose_variants("Sure:\n**body**\nBye")
    assert len(variants) == 8
    assert set(variants) == {"Sure:\n**body**\nBye", "**body**\nBye", "Sure:\n**body**", "**body**",
                             "Sure:\nbody\nBye", "body\nBye", "Sure:\nbody", "body"}


@pytest.mark.parametrize(("text", "count"), [
    ("Dr. Smith went to Washington. He saw the U.S. Capitol! Was it big?", 3),
    ("Pi is 3.14 exactly. Right?", 2),
    ('He said "Stop." Then he left.', 2),
    ("Yes... it was, e.g. huge. Wait... Then it ended", 3),
    ("A list\n- without\n- periods", 1),
    ("", 0),
])
def test_sentence_splitter(text: str, count: int) -> None:
    assert cc.count_sentences(text) == count


def test_word_and_capital_counts() -> None:
    assert cc.count_words("Don't stop — it's 2024, state-of-the-art!") == 10
    assert cc.count_capital_words("I said DON'T, NASA and COVID-19 but Not this") == 5
    with pytest.raises(ValueError, match="relation"):
        cc.compare(1, "at most", 2)
