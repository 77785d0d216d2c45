"""Verifier judges: a response checked against its prompt's spec (pipeline/verifiable/spec.py) by program. Specs:
`numeric` (the answer's last number within max(abs_tol, rel_tol * |answer|)), `exact` (case-insensitive,
whitespace-collapsed equality; `case_sensitive: true` keeps case), `tests` (the response's code run in an OS sandbox
against the spec's `assert <call> == <literal>` tests), `constraints` (IFEval-style instructions,
judges/constraints.py: passes when all do, scored by the fraction that do). A verdict is True, False, or None when
nothing can be checked (no answer, no code block, a bad spec): verifiable rewards as in RLVR (Tulu 3), never a
guessed default.

Code is hostile until proven otherwise (issue 31, docs/verifier_sandbox.md): it runs under bubblewrap
(judges/sandbox.py), and the verdict is decided here, outside the sandbox. The tests are split with `ast` into call
expressions, which go in, and expected values, which never do; the sandbox sends back each call's value as the
repr of plain data (int, float, str, bool, None, list, tuple, dict), read here with `ast.literal_eval` and compared
with `==` on that plain data, so neither an `__eq__` that is always true nor a forged line on the results channel
passes a test without the right value. Without a working sandbox, code is not run: SandboxUnavailable names the fix.
"""

from __future__ import annotations

import ast
import math
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from judges import constraints, sandbox
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: cannot be checked (no answer, no code block, bad spec)
    reason: str
    score: float | None = None  # constraints: the fraction that pass (else 1.0 or 0.0 from passed)
    details: tuple = ()  # constraints: {"id", "strict", "loose"} per constraint


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LABEL = re.compile(r"^.*?\b(?:final\s+answer|answer|result)\s*(?:is\b|:|=)\s*", re.I)
_LATEX_TEXT = re.compile(r"\\(?:text|textbf|textit|texttt|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_NUM = r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER = re.compile(rf"(?<![\w.])({_NUM})(?:\s*/\s*({_NUM}))?")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


def _boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (balanced braces); an unclosed one is skipped."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _unwrap(s: str) -> str:
    """Strip markdown and punctuation wrappers: bullets, **, backticks, quotes, $, an "Answer:" label, a final '.'."""
    previous = None
    while s != previous:
        previous = s
        s = _LATEX_TEXT.sub(r"\1", s).strip()
        s = re.sub(r"^(?:#+|>|[-*•]|\d+\.)\s+", "", s)  # heading, quote, bullet ("-3" keeps its sign)
        s = _LABEL.sub("", s)
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)]
        s = s.strip("*_`\"'$ \t").rstrip(".!,;:")
    return s


def extract_answer(text: str) -> str | None:
    """The response's final answer: the content of its last `\\boxed{...}` (balanced braces); else its last
    non-empty line stripped of markdown and punctuation wrappers ("Answer:", "**", a trailing "."). None when
    neither gives anything."""
    if not isinstance(text, str):
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed or None
    lines = [line for line in text.splitlines() if line.strip()]
    return (_unwrap(lines[-1]) or None) if lines else None


def parse_number(s: str | None) -> float | None:
    """The last number in `s`: "1,234.5", "-3", "2.5e3", a fraction "3/4" or \\frac{3}{4}; None when none."""
    if not s:
        return None
    s = _FRAC.sub(r"\1/\2", s.replace("{,}", "").replace("\\,", "").replace("\\!", "").replace("−", "-"))
    for match in reversed(list(_NUMBER.finditer(s))):
        num, den = (float(g.replace(",", "")) if g else None for g in match.groups())
        value = num / den if den else num  # a zero denominator: the numerator alone
        if math.isfinite(value):
            return value
    return None


def _norm(s: str, case_sensitive: bool) -> str:
    s = " ".join(_unwrap(s).split())
    return s if case_sensitive else s.casefold()


def _fence(text: str) -> str | None:
    """The last ```python (or ```py / ```python3) block, else the last untagged ``` block."""
    blocks = _FENCE.findall(text) if isinstance(text, str) else []
    tagged = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
    untagged = [code for lang, code in blocks if not lang]
    return (tagged or untagged or [None])[-1]


def split_tests(tests: str) -> list[tuple[str, str, object]]:
    """The spec's tests as (test text, call expression, expected value), on the trusted side: each top-level
    statement must be `assert <expression> == <literal>` (either order). The expression goes into the sandbox; the
    expected value never does. ValueError naming the test and the fix otherwise."""
    out = []
    for n, node in enumerate(ast.parse(tests).body, 1):
        test = node.test if isinstance(node, ast.Assert) else None
        equal = isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
        orders = ((test.left, test.comparators[0]), (test.comparators[0], test.left)) if equal else ()
        for call, literal in orders:
            try:
                expected = ast.literal_eval(literal)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if _plain(expected):
                out.append((ast.unparse(node), ast.unparse(call), expected))
                break
        else:
            raise ValueError(f"test {n} ({ast.unparse(node)[:80]!r}) is not `assert <call> == <plain literal>`; fix: "
                             "write each test as assert f(...) == value, value an int, float, str, bool, None, "
                             "list, tuple or dict")
    return out


def _plain(value, depth: int = 0) -> bool:
    """Plain data only, by exact type (no subclass, so no custom __eq__): what a verdict may compare."""
    if depth > 20:
        return False
    if type(value) in (int, float, str, bool, type(None)):
        return True
    if type(value) in (list, tuple):
        return all(_plain(v, depth + 1) for v in value)
    return type(value) is dict and all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())


def _value(record: dict):
    """A value the sandbox returned, read back as plain data; ValueError when it is not."""
    try:
        value = ast.literal_eval(record["value"])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not a literal") from None
    if not _plain(value):
        raise ValueError(f"a {type(value).__name__}")
    return value


def _run_tests(code: str, tests: str, entry_point: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Verdict:
    """Run `code` and the tests' call expressions in the OS sandbox (judges/sandbox.py); compare here."""
    try:
        split = split_tests(tests)
    except ValueError as exc:
        return Verdict(None, f"bad spec: {exc}")
    outcome = sandbox.run(code, [call for _, call, _ in split], entry_point, timeout_s=timeout_s, memory_mb=memory_mb)
    if outcome.timed_out:
        return Verdict(False, f"timeout after {timeout_s:g}s")
    records = outcome.records
    if records and "error" in records[0]:
        return Verdict(False, _limit_named(records[0]["error"], memory_mb))
    for i, (text, _, expected) in enumerate(split):
        if i >= len(records):
            return Verdict(False, _ended(outcome, memory_mb))
        record = records[i]
        if "raised" in record:
            return Verdict(False, _limit_named(f"test raised {record['raised']}: {text}", memory_mb))
        if "value" not in record:
            return Verdict(False, f"test returned a {record.get('unplain', '?')[:40]}, not plain data: {text}")
        try:
            got = _value(record)
        except ValueError as exc:
            return Verdict(False, f"test returned a value that is not plain data ({exc}): {text}")
        if got != expected:
            return Verdict(False, f"test failed: {text} (got {repr(got)[:200]})")
    if outcome.unreadable or len(records) != len(split):  # the code wrote on the results channel
        return Verdict(False, "the results channel holds more than the harness wrote")
    return Verdict(True, f"{len(split)} tests passed")


def _limit_named(reason: str, memory_mb: int) -> str:
    return f"{reason} (memory limit {memory_mb} MB)" if "MemoryError" in reason else reason


def _ended(outcome: sandbox.Outcome, memory_mb: int) -> str:
    """Why the sandbox ended before every test had a result."""
    if outcome.unreadable:
        return "the results channel holds more than the harness wrote"
    killed = -outcome.rc if outcome.rc < 0 else outcome.rc - 128 if outcome.rc > 128 else 0  # bwrap: 128 + signal
    if killed in signal.valid_signals():
        name = signal.Signals(killed).name
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": f"file size limit {sandbox.FSIZE_MB} MB"}.get(
            name, "memory or limits")
        return f"killed by {name} ({why})"
    if outcome.rc == 0:
        return "exited with status 0 before the tests finished"
    said = [line for line in outcome.stderr.splitlines() if line.strip()]
    return _limit_named((said or [f"exit status {outcome.rc}"])[-1], memory_mb)


_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH", re.I)


def _redact(text: str) -> str:
    """Values of the host's secret-looking environment variables never leave in a reason."""
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text[:300]


def _number(spec: dict, key: str, default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _check(spec: dict | None, response: str, timeout_s: float, memory_mb: int) -> Verdict:
    if not isinstance(spec, dict):
        return Verdict(None, "no verify spec" if spec is None else f"bad spec: a {type(spec).__name__}, not a dict")
    if not isinstance(response, str):
        return Verdict(None, f"response is {type(response).__name__}, not text")
    kind = spec.get("kind")
    if kind == "tests":
        entry, tests = spec.get("entry_point"), spec.get("tests")
        if not isinstance(entry, str) or not entry.isidentifier() or not isinstance(tests, str):
            return Verdict(None, "bad spec: a tests spec needs an entry_point name and tests text")
        try:
            if not ast.parse(tests).body:
                return Verdict(None, "bad spec: tests is empty")
        except SyntaxError as exc:
            return Verdict(None, f"bad spec: tests do not parse ({exc})")
        code = _fence(response)
        if code is None:
            return Verdict(None, "no ```python code block in the response")
        return _run_tests(code, tests, entry, timeout_s=timeout_s, memory_mb=memory_mb)
    if kind == "numeric":
        try:
            answer, abs_tol, rel_tol = (_number(spec, *kd) for kd in (("answer",), ("abs_tol", 0), ("rel_tol", 0)))
        except ValueError as exc:
            return Verdict(None, f"bad spec: {exc}")
        extracted = extract_answer(response)
        if extracted is None:
            return Verdict(None, "no answer found")
        value = parse_number(extracted)
        if value is None:
            return Verdict(None, f"no number in the answer {extracted[:80]!r}")
        tol = max(abs_tol, rel_tol * abs(answer))
        ok = abs(value - answer) <= tol + 1e-9 * max(1.0, abs(answer))  # 1e-9: float rounding, not leniency
        return Verdict(ok, f"{value:g} {'==' if ok else '!='} {answer:g} (tolerance {tol:g})")
    if kind == "exact":
        answer = spec.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            return Verdict(None, "bad spec: an exact spec needs a non-empty answer string")
        extracted = extract_answer(response)
        if extracted is None:
            return Verdict(None, "no answer found")
        case = bool(spec.get("case_sensitive", False))
        ok = _norm(extracted, case) == _norm(answer, case)
        return Verdict(ok, f"{extracted[:80]!r} {'matches' if ok else 'does not match'} {answer[:80]!r}")
    if kind == "constraints":  # instruction-following constraints, IFEval-style (judges/constraints.py)
        passed, score, reason, details = constraints.verdict(spec, response)
        return Verdict(passed, reason, score, tuple(details))
    return Verdict(None, f"bad spec: unknown kind {kind!r} (numeric, exact, tests or constraints)")


def check(spec: dict | None, response: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Verdict:
    """The verdict of one response against its spec; never raises for a bad spec or an odd response. Raises
    SandboxUnavailable (naming the fix) when code must run and this machine has no working sandbox."""
    verdict = _check(spec, response, timeout_s, memory_mb)
    return Verdict(verdict.passed, _redact(verdict.reason), verdict.score, verdict.details)


class VerifierJudge:
    """Judge kind 'verifier': one Verdict per (spec, response), in input order; code checks run in a thread pool
    (each in its own bubblewrap sandbox), answer checks inline. Refuses (SandboxUnavailable, before any row is
    checked) to check code where no sandbox works."""

    id = "verifier-v1"
    kind = "verifier"
    aspect = "correctness"

    def __init__(self, *, timeout_s: float = 5.0, memory_mb: int = 512, workers: int = 2):
        if timeout_s <= 0 or memory_mb < 64 or workers < 1:
            raise ConfigError(f"verifier: timeout_s={timeout_s}, memory_mb={memory_mb}, workers={workers}; fix: "
                              "timeout_s > 0, memory_mb >= 64 (the interpreter itself needs some), workers >= 1")
        self.timeout_s, self.memory_mb, self.workers = timeout_s, memory_mb, workers

    def verify(self, specs: list[dict | None], responses: list[str], progress=None) -> list[Verdict]:
        if len(specs) != len(responses):
            raise ValueError(f"verify: {len(specs)} specs but {len(responses)} responses; give one spec per response")
        tick = progress or (lambda n: None)
        out: list[Verdict | None] = [None] * len(specs)
        code = [i for i, spec in enumerate(specs) if isinstance(spec, dict) and spec.get("kind") == "tests"]
        if code:
            sandbox.require()
        for i in sorted(set(range(len(specs))) - set(code)):
            out[i] = check(specs[i], responses[i])
            tick(1)
        if code:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="verifier") as pool:
                limits = {"timeout_s": self.timeout_s, "memory_mb": self.memory_mb}
                futures = {pool.submit(check, specs[i], responses[i], **limits): i for i in code}
                for future in as_completed(futures):
                    out[futures[future]] = future.result()
                    tick(1)
        return out
