"""The code verifier against hostile candidates (issue 31): each program in tests/fixtures/hostile_candidates is the
answer of a model that attacks the judge. Each must get a False verdict, write nothing outside its sandbox, read
no host file or environment (a fake HF_TOKEN is planted in the judge's environment, a secret file on the host),
kill nothing outside (a sentinel process running as the sandbox's own uid survives, and so does this process),
and leave no process behind (the `sandboxed` fixture, tests/judges/conftest.py). Without a working bubblewrap the
verifier refuses to run code."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from judges import sandbox
from judges.verifier import Verdict, VerifierJudge, check, split_tests
from pipeline.errors import InputError, SandboxUnavailable
from pipeline.verifiable.spec import verify_spec

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "hostile_candidates"
ADD = {"family": "python", "kind": "tests", "entry_point": "add",
       "tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(20, 22) == 42\n"}
HF_TOKEN = "hf_" + secrets.token_hex(12)  # planted in the judge's environment
FILE_SECRET = "planted-" + secrets.token_hex(8)  # planted in a host file
PYTHON_XATTRS = os.listxattr(sandbox.PYTHON) if os.path.exists(sandbox.PYTHON) else []


def code(src: str) -> str:
    return f"My answer:\n```python\n{src}\n```"


@pytest.fixture(scope="module")
def host():
    """What the candidates aim at: a sentinel process (run as the sandbox's uid when the judge is root, so that
    only the PID namespace protects it), a TCP listener and an abstract unix socket on the host."""
    as_nobody = {"user": sandbox.NOBODY, "group": sandbox.NOBODY, "extra_groups": []} if os.geteuid() == 0 else {}
    sentinel = subprocess.Popen(["sleep", "300"], **as_nobody)
    tcp, unix = socket.socket(), socket.socket(socket.AF_UNIX)
    tcp.bind(("127.0.0.1", 0))
    abstract = "prefsynth-test-" + secrets.token_hex(6)
    unix.bind("\0" + abstract)
    for s in (tcp, unix):
        s.listen()
        s.setblocking(False)
    yield {"sentinel": sentinel, "tcp": tcp, "unix": unix, "__PORT__": str(tcp.getsockname()[1]),
           "__ABSTRACT__": abstract, "__SENTINEL_PID__": str(sentinel.pid), "__JUDGE_PID__": str(os.getpid())}
    sentinel.kill()
    sentinel.wait()
    tcp.close()
    unix.close()


def owned_by_nobody_in_tmp() -> set[str]:
    """Entries of the host's temp folder that a sandbox running as nobody could have made."""
    found = set()
    for name in os.listdir(tempfile.gettempdir()):
        try:
            if os.lstat(os.path.join(tempfile.gettempdir(), name)).st_uid == sandbox.NOBODY:
                found.add(name)
        except OSError:
            continue
    return found


CASES = sorted(p.stem for p in HOSTILE.glob("*.py"))


@pytest.mark.parametrize("name", CASES)
def test_hostile_candidate_fails_and_leaves_the_host_as_it_was(name, host, sandboxed, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    (tmp_path / "secret.txt").write_text(FILE_SECRET)
    (tmp_path / "victim.txt").write_text("intact")
    before_tmp = owned_by_nobody_in_tmp()
    src = (HOSTILE / f"{name}.py").read_text().replace("__TARGET__", str(tmp_path))
    for key in ("__PORT__", "__ABSTRACT__", "__SENTINEL_PID__", "__JUDGE_PID__"):
        src = src.replace(key, host[key])

    verdict = check(ADD, code(src), timeout_s=3, memory_mb=256)

    assert verdict.passed is False, (name, verdict)
    for secret in (HF_TOKEN, FILE_SECRET, "root:x:0:0"):  # neither as text nor hex-encoded
        assert secret not in verdict.reason and secret.encode().hex() not in verdict.reason, (name, verdict)
    assert sorted(os.listdir(tmp_path)) == ["secret.txt", "victim.txt"], name
    assert (tmp_path / "victim.txt").read_text() == "intact" and os.listxattr(tmp_path / "victim.txt") == []
    assert stat.S_IMODE(os.stat(sandbox.PYTHON).st_mode) != 0o777 and os.listxattr(sandbox.PYTHON) == PYTHON_XATTRS
    assert host["sentinel"].poll() is None, f"{name} killed the sentinel"
    for listener in (host["tcp"], host["unix"]):
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert owned_by_nobody_in_tmp() <= before_tmp, name
    assert len(sandboxed) == 1  # and the fixture checks nothing is left in its namespace


def test_every_attack_of_the_issue_has_a_fixture():
    assert set(CASES) == {
        "exit_noop", "forge_results", "proc_self_mem", "frame_walk", "always_equal", "int_subclass",
        "patch_harness_builtins", "dir_fd_symlink", "opener", "mkfifo_mknod_setxattr", "disk_fill",
        "read_host_files", "read_parent_environ", "sockets", "subprocesses", "setsid_survivor", "kill_host",
        "pidfd_kill_parent", "ctypes_syscalls", "fork_bomb"}


def test_the_reasons_say_what_stopped_each_attack(sandboxed):
    def reason(name):
        return check(ADD, code((HOSTILE / f"{name}.py").read_text().replace("__TARGET__", "/nowhere")),
                     timeout_s=3, memory_mb=256).reason

    assert reason("always_equal") == "test returned a Yes, not plain data: assert add(1, 2) == 3"
    assert reason("int_subclass") == "test returned a Sly, not plain data: assert add(1, 2) == 3"
    assert reason("frame_walk") == "test failed: assert add(-1, 1) == 0 (got 3)"  # forged values stay values
    assert reason("patch_harness_builtins") == "test failed: assert add(-1, 1) == 0 (got 3)"
    assert reason("forge_results") == "test failed: assert add(-1, 1) == 0 (got 3)"  # forged, still values
    assert "No space left on device" in reason("disk_fill")  # the 16 MB tmpfs, not the host's disk
    assert reason("exit_noop") == "test failed: assert add(1, 2) == 3 (got -1)"


def test_only_values_cross_the_boundary():
    """The expected values are split off on the trusted side: only the call expressions go into the sandbox."""
    assert split_tests(ADD["tests"]) == [("assert add(1, 2) == 3", "add(1, 2)", 3),
                                         ("assert add(-1, 1) == 0", "add(-1, 1)", 0),
                                         ("assert add(20, 22) == 42", "add(20, 22)", 42)]
    assert split_tests("assert [1, (2, 'x')] == f(None)") == [("assert [1, (2, 'x')] == f(None)", "f(None)",
                                                                [1, (2, "x")])]
    for bad in ("assert f(1)", "assert f(1) != 2", "x = 3", "assert f(1) == g(2)", "assert f(1) == {1, 2}"):
        with pytest.raises(ValueError, match="fix: write each test as assert f"):
            split_tests(bad)
    verdict = check({**ADD, "tests": "assert add(1, 2)"}, code("def add(a, b):\n    return a + b"))
    assert verdict.passed is None and verdict.reason.startswith("bad spec: test 1")
    with pytest.raises(InputError, match=r"row 7: verify.tests: test 1 .* fix: write each test as assert f"):
        verify_spec({**ADD, "tests": "assert add(1, 2)"}, "row 7")  # refused when the prompts load


def test_without_a_working_sandbox_the_verifier_refuses_to_run_code(monkeypatch):
    sandbox._probe.cache_clear()
    bin_dir = Path(tempfile.mkdtemp(prefix="prefsynth-test-bin-"))
    bin_dir.chmod(0o755)  # bwrap runs as nobody when the judge is root
    monkeypatch.setenv("PATH", str(bin_dir))  # no bwrap on PATH
    try:
        missing = r"refuses to run code without its sandbox: bwrap \(bubblewrap\) is not installed; fix: `make setup-"
        with pytest.raises(SandboxUnavailable, match=missing):
            check(ADD, code("def add(a, b):\n    return a + b"))
        with pytest.raises(SandboxUnavailable, match="setup-sandbox"):
            VerifierJudge().verify([ADD], [code("def add(a, b):\n    return a + b")])
        numeric = {"kind": "numeric", "answer": 4.0}  # answer checks need no sandbox
        assert VerifierJudge().verify([numeric], ["\\boxed{4}"]) == [Verdict(True, "4 == 4 (tolerance 0)")]
        sandbox._probe.cache_clear()
        fake = bin_dir / "bwrap"  # a bwrap that does not work (as where user namespaces are off)
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
        with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace.*setup-sandbox"):
            check(ADD, code("def add(a, b):\n    return a + b"))
    finally:
        sandbox._probe.cache_clear()
        shutil.rmtree(bin_dir)
