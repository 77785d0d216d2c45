"""Verifier judges: a response checked against its prompt's spec (pipeline/verifiable/spec.py) by program. Specs:
`numeric` (the answer's last number within max(abs_tol, rel_tol * |answer|)), `exact` (case-insensitive,
whitespace-collapsed equality; `case_sensitive: true` keeps case), `tests` (the response's code plus the spec's
asserts, run in a sandbox), `constraints` (IFEval-style instructions, judges/constraints.py: passes when all do,
scored by the fraction that do). A verdict is True, False, or None when nothing can be checked (no answer, no code
block, a bad spec): verifiable rewards as in RLVR (Tulu 3), never a guessed default.

Sandbox threat model: candidates are model-written code, usually wrong, sometimes careless (endless loops, huge
allocations, stray files) or reward-hacking (exiting 0 before the tests run), rarely hostile. They run in
`python -I -S -B` (isolated, stdlib only, no .pyc writes) in a fresh temporary directory deleted afterwards, with
only PATH and LANG in the environment (no HF_TOKEN, OPENAI_API_KEY, ...), in a new session whose process group
is killed at the end, under rlimits (address space, CPU, file size, open files, no core; NPROC, which root
ignores). An audit hook (PEP 578) installed before the candidate runs kills it, with a reason, at its first
socket or name lookup, process start or signal, ctypes, sub-interpreter, rlimit change, write or delete outside
the directory, or read outside it and the standard library. A pass needs exit status 0 plus a per-run nonce
printed only after every test passed, so `sys.exit(0)` or `os._exit(0)` fail. Out of scope: code written against
this runner (audit hooks are no security boundary: native code, or frames walked to the nonce, sidestep them);
for adversarial models run the verifier in a container or VM without network (docs/verifier_sandbox.md).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from judges import constraints
from pipeline.errors import ConfigError

MARK = "prefsynth-verifier:"  # the runner's lines on stdout/stderr start with this
FSIZE_MB = 4  # largest file the candidate may write, stdout and stderr included


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


def _runner():  # runs alone in the child (`python -I -S -B -c <source>`): stdlib only, imports inside
    import ast
    import json
    import os
    import sys

    def say(fd, line, code):  # a line the parent reads (MARK), then exit
        os.write(fd, f"\nprefsynth-verifier:{' '.join(line.split())[:600]}\n".encode("utf-8", "replace"))
        os._exit(code)

    def what(exc):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    nonce, entry = job.pop("nonce"), job["entry_point"]
    work = os.path.realpath(os.getcwd())
    writable = (work, "/dev/null")
    readable = (*writable, *(os.path.realpath(p) for p in sys.path if p), f"/proc/{os.getpid()}", "/dev/zero",
                "/dev/urandom", "/dev/random", "/usr/share/zoneinfo", "/etc/localtime")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    processes = ("os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system", "os.spawn", "os.kill",
                 "os.killpg", "subprocess.Popen", "signal.pthread_kill", "resource.setrlimit", "resource.prlimit",
                 "cpython.PyInterpreterState_New")
    modules = ("_posixsubprocess", "ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels")
    paths = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.chmod": ((0, 2),),
             "os.chown": ((0, 3),), "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.symlink": ((1, 2),),
             "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "shutil.rmtree": ((0, 1),)}

    def inside(path, roots, dir_fd=None):
        if isinstance(path, int):  # an already open descriptor
            return True
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots)

    def denied(event, args):
        if event in processes or event.startswith(("socket.", "ctypes.")):
            return event
        if event == "import" and (args[0].split(".")[0] in modules or args[0].startswith("_test")):
            return f"import {args[0]}"
        if event == "open":
            path, mode, flags = (*args, None, None)[:3]
            writing = bool(flags & write_flags) if isinstance(flags, int) else any(c in (mode or "") for c in "wax+")
            if not inside(path, writable if writing else readable):
                return f"open({path!r}) for {'writing' if writing else 'reading'} outside the sandbox"
        for path_at, fd_at in paths.get(event, ()):
            fd = None if fd_at is None else args[fd_at]
            if not inside(args[path_at], writable, fd if isinstance(fd, int) and fd >= 0 else None):
                return f"{event}({args[path_at]!r}) outside the sandbox"
        return None

    def hook(event, args):
        try:
            why = denied(event, args)
        except Exception as exc:  # fail closed: an operation the hook cannot judge is refused
            why = f"{event} (not checkable: {type(exc).__name__})"
        if why:
            say(2, f"blocked {why}", 3)

    try:
        code = compile(job["code"], "<candidate>", "exec")
    except (SyntaxError, ValueError) as exc:
        say(2, f"fail the code does not compile: {what(exc)}", 1)
    tests = []
    for node in ast.parse(job["tests"], "<tests>").body:
        left = None
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1:
            left = compile(ast.Expression(node.test.left), "<tests>", "eval")
        tests.append((compile(ast.Module([node], []), "<tests>", "exec"), ast.unparse(node), left))
    namespace = {"__name__": "candidate"}  # not __main__: a demo under `if __name__ == "__main__"` does not run
    sys.addaudithook(hook)
    try:
        exec(code, namespace)
    except BaseException as exc:  # SystemExit too: exiting early is a failure, not a pass
        say(2, f"fail the code raised {what(exc)}", 1)
    if not callable(namespace.get(entry)):
        say(2, f"fail the code defines no function {entry}", 1)
    for test, text, left in tests:
        try:
            exec(test, namespace)
        except AssertionError as exc:
            try:
                got = f" (got {repr(eval(left, namespace))[:200]})" if left else ""
            except BaseException:
                got = ""
            say(2, f"fail test failed: {text}{f': {exc}' if str(exc) else ''}{got}", 1)
        except BaseException as exc:
            say(2, f"fail test raised {what(exc)}: {text}", 1)
    sys.stdout.flush()  # what the candidate printed comes before the last line
    say(1, f"ok {nonce}", 0)


_RUNNER = inspect.getsource(_runner) + "\n_runner()\n"
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL|AUTH", re.I)


def _limits(timeout_s: float, memory_mb: int):
    """preexec_fn: the child's rlimits, set between fork and exec (hard = soft, so the child cannot raise them)."""
    limits = [(resource.RLIMIT_AS, memory_mb * 2**20), (resource.RLIMIT_CPU, math.ceil(timeout_s) + 1),
              (resource.RLIMIT_FSIZE, FSIZE_MB * 2**20), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)]
    if hasattr(resource, "RLIMIT_NPROC"):  # ignored for root: the audit hook blocks process creation too
        limits.append((resource.RLIMIT_NPROC, 1))
    hard = {what: resource.getrlimit(what)[1] for what, _ in limits}  # an unprivileged parent cannot raise these
    capped = [(w, v if hard[w] == resource.RLIM_INFINITY else min(v, hard[w])) for w, v in limits]

    def apply():
        for what, value in capped:
            resource.setrlimit(what, (value, value))

    return apply


def _tail(f, n: int = 4096) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - n))
    return f.read().decode("utf-8", "replace")


def _run_tests(code: str, tests: str, entry_point: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Verdict:
    """Run `code`, then each top-level statement of `tests`, in the sandbox described above."""
    nonce = secrets.token_hex(16)
    job = json.dumps({"code": code, "tests": tests, "entry_point": entry_point, "nonce": nonce}).encode()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    work = tempfile.mkdtemp(prefix="prefsynth-verify-")
    timed_out = False
    try:
        with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            fin.write(job)
            fin.seek(0)
            try:  # -B: no .pyc writes (they would be writes outside the directory)
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", "-c", _RUNNER], cwd=work, env=env, stdin=fin, stdout=out,
                    stderr=err, start_new_session=True, preexec_fn=_limits(timeout_s, memory_mb),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return Verdict(None, f"the sandbox did not start: {exc}")
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # the session, whatever is left
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
            stdout, stderr = _tail(out), _tail(err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if timed_out:
        return Verdict(False, f"timeout after {timeout_s:g}s")
    if rc == 0 and stdout.rstrip().endswith(f"{MARK}ok {nonce}"):
        return Verdict(True, f"{len(ast.parse(tests).body)} tests passed")
    said = [line[len(MARK) :] for line in stderr.splitlines() if line.startswith(MARK)]
    if said:
        reason = said[-1].removeprefix("fail ")
        reason = f"blocked: {reason[8:]}" if reason.startswith("blocked ") else reason
    elif rc < 0:
        name = signal.Signals(-rc).name
        why = {"SIGXCPU": "CPU time limit", "SIGXFSZ": f"file size limit {FSIZE_MB} MB"}.get(name, "memory or limits")
        reason = f"killed by {name} ({why})"
    elif rc == 0:
        reason = "exited with status 0 before the tests finished"
    else:
        reason = ([line for line in stderr.splitlines() if line.strip()] or [f"exit status {rc}"])[-1]
    if "MemoryError" in reason:
        reason += f" (memory limit {memory_mb} MB)"
    return Verdict(False, reason)


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
    """The verdict of one response against its spec; never raises for a bad spec or an odd response."""
    verdict = _check(spec, response, timeout_s, memory_mb)
    return Verdict(verdict.passed, _redact(verdict.reason), verdict.score, verdict.details)


class VerifierJudge:
    """Judge kind 'verifier': one Verdict per (spec, response), in input order; code checks run in a thread pool
    (each in its own sandboxed process), answer checks inline."""

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
