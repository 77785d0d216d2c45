"""judges/verifier.py: answer extraction, numeric and exact checks, code tests, and the sandbox against hostile
candidates that are merely careless (the hostile ones: tests/judges/test_verifier_sandbox.py)."""

import time

import pytest

from judges.verifier import Verdict, VerifierJudge, check, extract_answer, parse_number
from pipeline.errors import ConfigError

ADD = {"family": "python", "kind": "tests", "entry_point": "add",
       "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"}
GOOD_ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def code(src: str) -> str:
    return f"Here you go:\n```python\n{src}\n```\nHope it helps."


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so the total is \\boxed{42}.", "42"),
        ("first \\boxed{1}, then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("\\boxed{\\text{Friday}}", "\\text{Friday}"),
        ("\\boxed{7} and a cut-off \\boxed{8", "7"),
        ("Work:\n2 + 2 = 4\n\n**Answer:** 12.", "12"),
        ("Let me think.\nSo the final answer is Friday.\n\n", "Friday"),
        ("Answer: -3", "-3"),
        ("- `olleh`", "olleh"),
        ("", None),
        ("  \n\t\n", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text, number",
    [("1,234.5", 1234.5), ("-3", -3.0), ("2.5e3", 2500.0), ("3/4", 0.75), ("\\frac{3}{4}", 0.75),
     ("\\$1{,}000", 1000.0), ("about 12 apples, or 13", 13.0), ("−7", -7.0), (".5 km", 0.5), ("many", None),
     ("", None)],
)
def test_parse_number(text, number):
    assert parse_number(text) == number


def test_numeric_tolerance_is_the_larger_of_absolute_and_relative():
    spec = {"family": "unit_conversion", "kind": "numeric", "answer": 100.0, "abs_tol": 0.01, "rel_tol": 0.01}
    assert check(spec, "\\boxed{100.9}").passed is True
    assert check(spec, "\\boxed{101.1}").passed is False
    near_zero = {**spec, "answer": 0.0}
    assert check(near_zero, "\\boxed{0.005}").passed is True
    assert check(near_zero, "\\boxed{-0.02}").passed is False
    integer = {"family": "arithmetic", "kind": "numeric", "answer": 1234.0, "abs_tol": 0.0, "rel_tol": 0.0}
    assert check(integer, "The answer is **1,234**.").passed is True
    assert check(integer, "\\boxed{1235}").passed is False
    assert check(integer, "\\boxed{many}") == Verdict(None, "no number in the answer 'many'")
    assert check(integer, "").passed is None
    assert check({**integer, "answer": "x"}, "\\boxed{1}").passed is None


def test_exact_is_case_insensitive_and_whitespace_collapsed_unless_case_sensitive():
    spec = {"family": "date", "kind": "exact", "answer": "Friday"}
    for text in ("\\boxed{ friday }", "\\boxed{\\text{Friday}}", "**Answer:** Friday.", "The answer is FRIDAY"):
        assert check(spec, text).passed is True, text
    assert check(spec, "\\boxed{Thursday}").passed is False
    two_words = {"family": "string", "kind": "exact", "answer": "New  York"}
    assert check(two_words, "\\boxed{new york}").passed is True
    cased = {"family": "string", "kind": "exact", "answer": "BaNaNa", "case_sensitive": True}
    assert check(cased, "\\boxed{BaNaNa}").passed is True
    assert check(cased, "\\boxed{banana}").passed is False


def test_uncheckable_specs_give_none():
    assert check(None, "\\boxed{1}") == Verdict(None, "no verify spec")
    assert check({"kind": "vibes"}, "\\boxed{1}").passed is None
    assert check({**ADD, "tests": "assert add(1, 2) =="}, GOOD_ADD).passed is None
    assert check({**ADD, "entry_point": "not a name"}, GOOD_ADD).passed is None
    assert check(ADD, "def add(a, b): return a + b") == Verdict(None, "no ```python code block in the response")


def test_a_correct_and_a_wrong_function(sandboxed):
    assert check(ADD, GOOD_ADD) == Verdict(True, "2 tests passed")
    wrong = check(ADD, code("def add(a, b):\n    return a - b"))
    assert wrong.passed is False and "assert add(1, 2) == 3" in wrong.reason and "got -1" in wrong.reason
    missing = check(ADD, code("def plus(a, b):\n    return a + b"))
    assert missing == Verdict(False, "the code defines no function add")
    assert check(ADD, code("def add(a, b) return a")).passed is False
    # the standard library imports, the folder is writable, and the environment is PATH, LANG and PWD only
    spec = {"kind": "tests", "entry_point": "env", "tests": "assert env() == ['LANG', 'PATH', 'PWD']"}
    busy = ("import collections, json, re, datetime\nfrom collections import namedtuple\n"
            "open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
            "import os\ndef env():\n    return sorted(os.environ)")
    assert check(spec, code(busy)).passed is True


def test_exiting_early_with_status_0_does_not_pass(sandboxed):
    for src in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "def add(a, b):\n    raise SystemExit(0)"):
        assert check(ADD, code(src)).passed is False, src


def test_hostile_infinite_loop_times_out_and_its_sandbox_is_killed(sandboxed):
    start = time.monotonic()
    verdict = check(ADD, code("while True:\n    pass"), timeout_s=1)
    assert verdict == Verdict(False, "timeout after 1s")
    assert time.monotonic() - start < 5
    assert len(sandboxed) == 1  # the fixture checks that nothing of its sandbox is left


def test_a_candidate_killed_by_a_signal_names_it(sandboxed):
    verdict = check(ADD, code("import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)"))
    assert verdict == Verdict(False, "killed by SIGXCPU (CPU time limit)")


def test_hostile_10_gb_allocation_fails_inside_the_memory_limit(sandboxed):
    verdict = check(ADD, code("x = bytearray(10**10)"), memory_mb=256)
    assert verdict.passed is False and "MemoryError" in verdict.reason and "256 MB" in verdict.reason


def test_a_reason_quoting_a_host_secret_is_redacted(sandboxed, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "sekrit")
    spec = {**ADD, "tests": "assert add('sek', 'rit') == 'sekrit!'"}  # a test written with the host's secret
    verdict = check(spec, GOOD_ADD)
    assert verdict.passed is False and "sekrit" not in verdict.reason and "***" in verdict.reason


def test_judge_keeps_input_order_and_reports_progress(sandboxed):
    judge = VerifierJudge(timeout_s=5, workers=2)
    assert (judge.id, judge.kind, judge.aspect) == ("verifier-v1", "verifier", "correctness")
    numeric = {"family": "arithmetic", "kind": "numeric", "answer": 4.0, "abs_tol": 0.0, "rel_tol": 0.0}
    exact = {"family": "string", "kind": "exact", "answer": "olleh"}
    specs = [ADD, numeric, None, ADD, exact, ADD]
    responses = [code("def add(a, b):\n    return a - b"), "\\boxed{4}", "x", GOOD_ADD, "\\boxed{hello}", "none"]
    ticks = []
    verdicts = judge.verify(specs, responses, progress=ticks.append)
    assert [v.passed for v in verdicts] == [False, True, None, True, False, None]
    assert ticks == [1] * 6
    with pytest.raises(ValueError):
        judge.verify([ADD], [])
    with pytest.raises(ConfigError, match="workers"):
        VerifierJudge(workers=0)


def test_a_constraints_spec_passes_when_every_constraint_holds_and_scores_the_fraction():
    spec = {"kind": "constraints", "constraints": [
        {"id": "startend:start_checker", "kwargs": {"start_phrase": "Sure"}},
        {"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 6}}]}
    both = check(spec, "Sure, here it is.")
    assert (both.passed, both.score, both.reason) == (True, 1.0, "2/2 constraints pass (strict)")
    one = check(spec, "Sure, here is a longer answer than allowed.")
    assert (one.passed, one.score) == (False, 0.5) and [d["strict"] for d in one.details] == [True, False]
    bad = check({"kind": "constraints", "constraints": [{"id": "keywords:existence", "kwargs": {}}]}, "x")
    assert bad.passed is None and bad.score is None and "bad spec" in bad.reason and "keywords" in bad.reason
