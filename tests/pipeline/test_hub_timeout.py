"""`prefsynth push` to an endpoint that accepts and never answers gives up after --timeout (issue 39)."""

import socket
import time

from tests.conftest import cli_in_process
from tests.hostile import fake_run


def test_push_to_a_silent_endpoint_times_out(tmp_path, monkeypatch):
    silent = socket.socket()  # listening, never accepting: the kernel completes the handshake, nothing answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("HF_ENDPOINT", f"http://user:s3cret@127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_notarealtoken")
    start = time.perf_counter()
    proc = cli_in_process("push", str(fake_run(tmp_path)), "--repo", "me/data", "--timeout", "1")
    silent.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "did not answer within --timeout 1 s" in lines[0], proc.stderr
    assert "s3cret" not in proc.stderr and "hf_notarealtoken" not in proc.stderr and "fix:" in lines[0]
    assert time.perf_counter() - start < 30
    assert cli_in_process("push", str(tmp_path / "run"), "--repo", "me/data", "--timeout", "0").returncode == 2
