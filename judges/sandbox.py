"""The OS sandbox the code verifier runs candidate code in (issue 31; docs/verifier_sandbox.md).

Candidate code runs under bubblewrap (`bwrap`, Debian's `bubblewrap`) in new user, PID, mount, network, IPC, UTS
and cgroup namespaces: a read-only /usr (the system `/usr/bin/python3`, stdlib only), a size-limited private tmpfs
at /tmp as the only writable place, its own /proc and a minimal /dev, no network, a cleared environment. Run as
root, the judge starts bwrap as `nobody`, so that RLIMIT_NPROC holds (the kernel exempts uid 0 from it). A small
harness, which runs first inside, sets the rlimits (address space, CPU, file size, open files, processes, no core),
runs the code, evaluates each call expression and writes one JSON line per call holding the value's repr (plain
data only) or the exception. It never sees the expected values: the verdict is decided outside
(judges/verifier.py), so whatever the candidate writes on that channel is at most a value, never a pass. A
wall-clock timeout kills bwrap; --die-with-parent then kills the namespace's init, and with it every process in it.

Where bwrap is missing or does not work (checked once per process), `run` raises SandboxUnavailable naming the fix:
there is no weaker fallback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass

from pipeline.errors import SandboxUnavailable

PYTHON = "/usr/bin/python3"  # the system interpreter: /usr is the only host folder the sandbox sees
FSIZE_MB = 4  # largest file the candidate may write, its stdout and stderr included
TMPFS_MB = 16  # the sandbox's only writable place, all files together
NPROC = 8  # processes and threads in the sandbox's user namespace, bwrap's init and the harness included
NOBODY = 65534
FIX = "fix: `make setup-sandbox` (apt-get install -y bubblewrap) on a kernel that allows user namespaces"


def _harness():  # runs alone in the sandbox (`python3 -I -S -B -c <source>`): stdlib only, imports inside
    import json
    import os
    import resource
    import sys

    job = json.loads(sys.stdin.buffer.read())
    os.close(0)
    for name, value in job["limits"].items():  # hard = soft: nothing in the sandbox may raise them again
        resource.setrlimit(getattr(resource, name), (value, value))
    out = os.dup(1)  # the results channel; the candidate's own prints go to stderr
    os.dup2(2, 1)
    write, dumps, exit_, plain_types = os.write, json.dumps, os._exit, (int, float, str, bool, type(None))

    def say(**record):
        write(out, (dumps(record) + "\n").encode("utf-8", "replace"))

    def what(exc):
        return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__

    def plain(value, depth=0):  # exact types: a subclass could carry its own __eq__ or __repr__
        if depth > 20:
            return False
        if type(value) in plain_types:
            return True
        if type(value) in (list, tuple):
            return all(plain(v, depth + 1) for v in value)
        if type(value) is dict:
            return all(plain(k, depth + 1) and plain(v, depth + 1) for k, v in value.items())
        return False

    try:
        code = compile(job["code"], "<candidate>", "exec")
    except (SyntaxError, ValueError) as exc:
        say(error=f"the code does not compile: {what(exc)}")
        exit_(0)
    namespace = {"__name__": "candidate"}  # not __main__: a demo under `if __name__ == "__main__"` does not run
    try:
        exec(code, namespace)
    except BaseException as exc:  # SystemExit too: exiting early is a failure, not a pass
        say(error=f"the code raised {what(exc)}")
        exit_(0)
    if not callable(namespace.get(job["entry_point"])):
        say(error=f"the code defines no function {job['entry_point']}")
        exit_(0)
    for call in job["calls"]:
        try:
            value = eval(compile(call, "<test>", "eval"), namespace)
        except BaseException as exc:
            say(raised=what(exc))
            continue
        try:
            if plain(value):
                say(value=repr(value))
            else:
                say(unplain=type(value).__name__)
        except BaseException as exc:  # a value too deep or too large to write
            say(raised=what(exc))
    exit_(0)


HARNESS = inspect.getsource(_harness) + "\n_harness()\n"


@dataclass(frozen=True)
class Outcome:
    records: list  # the harness's JSON records, in order ({"error"} or one of {"value", "raised", "unplain"})
    timed_out: bool
    rc: int  # bwrap's exit status (the harness's); negative: killed by that signal
    stderr: str  # the tail of what the code and the interpreter wrote to stderr
    unreadable: bool = False  # a line on the results channel that is not a record


def bwrap_argv(bwrap: str) -> list[str]:
    """bwrap's command line: the mounts, namespaces and environment described in the module docstring."""
    return [
        bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
        "--size", str(TMPFS_MB * 2**20), "--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", "/tmp", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
        PYTHON, "-I", "-S", "-B", "-c", HARNESS,
    ]


def _tail(f, n: int = 4096) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - n))
    return f.read().decode("utf-8", "replace")


def _records(f, limit: int = FSIZE_MB * 2**20) -> tuple[list, bool]:
    f.seek(0)
    records = []
    for line in f.read(limit).decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            return records, True
        if not (isinstance(record, dict) and len(record) == 1 and all(isinstance(v, str) for v in record.values())
                and next(iter(record)) in ("error", "value", "raised", "unplain")):
            return records, True
        records.append(record)
    return records, False


def _launch(bwrap: str, job: dict, timeout_s: float) -> Outcome:
    """One sandbox run: the job on stdin, results and stderr into unlinked host files (RLIMIT_FSIZE caps them)."""
    as_nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        fin.write(json.dumps(job).encode())
        fin.seek(0)
        try:
            proc = subprocess.Popen(
                bwrap_argv(bwrap), stdin=fin, stdout=out, stderr=err, cwd="/", env={"PATH": "/usr/bin:/bin"},
                start_new_session=True, close_fds=True, **as_nobody,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"the code sandbox did not start: {exc}; {FIX}") from None
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):  # still unreaped: the pid is ours
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            rc = proc.wait()
        records, unreadable = _records(out)
        return Outcome(records, timed_out, rc, _tail(err), unreadable)


@functools.cache
def _probe() -> str | None:
    """Why no sandbox works here (None when one does): bwrap found, started, and a trivial job answered."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap (bubblewrap) is not installed"
    if not os.access(PYTHON, os.X_OK):
        return f"{PYTHON} is missing (the sandbox runs the system python)"
    try:
        outcome = _launch(bwrap, _job("def f():\n    return 2", ["f()"], "f", 10.0, 256), 10.0)
    except SandboxUnavailable as exc:
        return str(exc).split("; fix:")[0]
    if outcome.records != [{"value": "2"}]:
        said = [line for line in outcome.stderr.splitlines() if line.strip()]
        return f"bwrap did not run a test job (exit status {outcome.rc}: {(said or ['no output'])[-1][:160]})"
    return None


def require() -> str:
    """The bwrap to use; SandboxUnavailable naming the fix where none works (checked once per process)."""
    why = _probe()
    if why:
        raise SandboxUnavailable(f"the code verifier refuses to run code without its sandbox: {why}; {FIX}")
    return shutil.which("bwrap")


def _job(code: str, calls: list[str], entry_point: str, timeout_s: float, memory_mb: int) -> dict:
    limits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": math.ceil(timeout_s) + 1,
              "RLIMIT_FSIZE": FSIZE_MB * 2**20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0, "RLIMIT_NPROC": NPROC}
    return {"code": code, "calls": calls, "entry_point": entry_point, "limits": limits}


def run(code: str, calls: list[str], entry_point: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> Outcome:
    """Run `code` in the sandbox, then evaluate each call expression; the records say what each returned."""
    return _launch(require(), _job(code, calls, entry_point, timeout_s, memory_mb), timeout_s)
