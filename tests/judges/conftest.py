"""The code verifier's sandboxes, watched: each bwrap the verifier starts reports its PID namespace (--info-fd,
added here, not in judges/sandbox.py), and a test using `sandboxed` fails at teardown if a bwrap is still running
or any process is left in one of those namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from judges import sandbox


def in_namespace(ns: int) -> list[int]:
    """Live processes in PID namespace `ns` (by its inode). Zombies are dead: the sandbox's init is one until the
    host's init reaps it (bwrap exits without waiting for it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{ns}]" and state != "Z":
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
def sandboxed(monkeypatch):
    """[(bwrap process, its sandbox's PID namespace inode)] for every sandbox started during the test."""
    sandbox.require()  # the once-per-process probe runs before the watch starts
    seen = []

    class Watched(subprocess.Popen):
        def __init__(self, args, **kwargs):
            if not str(args[0]).endswith("bwrap"):
                super().__init__(args, **kwargs)
                return
            r, w = os.pipe()
            super().__init__([args[0], "--info-fd", str(w), *args[1:]], pass_fds=(w,), **kwargs)
            os.close(w)
            data = b""
            while not data.rstrip().endswith(b"}"):  # bwrap writes it once the namespaces exist
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
            os.close(r)
            seen.append((self, json.loads(data)["pid-namespace"] if data else None))

    monkeypatch.setattr(sandbox.subprocess, "Popen", Watched)
    yield seen
    for proc, ns in seen:
        assert proc.poll() is not None, f"bwrap {proc.pid} is still running"
        deadline = time.monotonic() + 3  # the kernel kills a namespace's processes when its init dies
        while ns and in_namespace(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ns and not in_namespace(ns), f"processes left in sandbox namespace {ns}: {in_namespace(ns)}"
