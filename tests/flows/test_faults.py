"""Interrupts and damaged state against the real CLI: Ctrl-C, SIGTERM and SIGKILL of `prefsynth run`
stop it promptly, keep finished work and leave no process behind; a damaged stage table or meta is
rebuilt on the rerun instead of being used. Every rerun ends with the uninterrupted run's rows."""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, TINY, cli_env, run_cli

pytestmark = pytest.mark.slow
ARGS = ["run", "--config", str(TINY)]  # the tiny_run fixture's command, so the rows must match it


def _alive(marker: str) -> list[int]:
    """Processes whose environment carries `marker`: everything the run started, whatever its session."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def _gone(marker: str, seconds: float) -> bool:
    """Whether every process carrying `marker` ends within `seconds` (polled: a quick exit passes at once)."""
    deadline = time.time() + seconds
    while _alive(marker):
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def _interrupt(out: Path, *, when: str, sig: int, group: bool) -> tuple[int, str, float, str]:
    """Start the run, send `sig` once a part of stage `when` is checkpointed; (rc, output, seconds to exit, marker)."""
    marker = uuid.uuid4().hex
    log = out.parent / f"{out.name}-{when}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *ARGS, "--out", str(out)],
            cwd=ROOT,
            env={**cli_env(shared_api=False), "PREFSYNTH_TEST_MARKER": marker},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while not list((out / "tables").glob(f"{when}.parts-*/part-*.json")):
            assert proc.poll() is None and time.time() < deadline, f"run ended before {when} was half done"
            time.sleep(0.02)
        sent = time.time()
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        proc.wait(timeout=120)
        return proc.returncode, log.read_text(), time.time() - sent, marker


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_ctrl_c_sigterm_and_sigkill_stop_cleanly_and_the_rerun_completes(tiny_run, tmp_path):
    """One run directory, interrupted three ways at three stages, then finished: each interrupt exits
    promptly with its status and message, every process the run started is gone within 10 s (the
    ephemeral Prefect API server included), finished parts stay, and the end result equals an
    uninterrupted run's pairs."""
    out = tmp_path / "run"
    steps = [
        ("generate", signal.SIGINT, True, 130, "interrupted"),  # a terminal's Ctrl-C: the whole group
        ("judge", signal.SIGTERM, False, 143, "terminated (SIGTERM)"),
        ("rationale", signal.SIGINT, False, 130, "interrupted"),  # Ctrl-C to the main process only
    ]
    for stage, sig, group, rc, word in steps:
        code, output, seconds, marker = _interrupt(out, when=stage, sig=sig, group=group)
        assert code == rc, output[-3000:]
        assert seconds < 15, f"{stage}: took {seconds:.1f} s to stop"
        assert output.strip().splitlines()[-1] == (
            f"prefsynth: {word}; finished work is kept; rerun the same command to resume"
        )
        assert "Traceback" not in output
        assert "Finished in state Crashed" in output  # Prefect recorded the flow run's end before the API stopped
        assert list((out / "tables").glob(f"{stage}.parts-*/part-*.json")), "the finished part was lost"
        assert _gone(marker, 10), f"processes left after {signal.Signals(sig).name}"

    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *ARGS, "--out", str(out)],
        cwd=ROOT,
        env={**cli_env(shared_api=False), "PREFSYNTH_TEST_MARKER": marker},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not _alive(marker) or len(_alive(marker)) < 2:  # the run and its API server
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()  # SIGKILL of the main process alone: nothing can clean up but the server's own watch
    proc.wait()
    assert _gone(marker, 10), "processes left after SIGKILL"

    final = run_cli(*ARGS, "--out", str(out))
    assert final.returncode == 0, final.stderr[-3000:]
    for stage in ("generate", "judge"):
        assert f"{stage}: complete output exists" in final.stderr
    assert pq.read_table(out / "pairs").to_pylist() == pq.read_table(tiny_run / "pairs").to_pylist()


def test_damaged_stage_table_and_meta_are_rebuilt_on_rerun(tiny_run, tmp_path):
    out = tmp_path / "damaged"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns(".prefsynth.lock"))
    judge = out / "tables" / "judge.parquet"
    data = bytearray(judge.read_bytes())
    data[len(data) // 2] ^= 0xFF
    judge.write_bytes(bytes(data))
    meta = out / "tables" / "pair.json"
    meta.write_text(meta.read_text()[:25])
    proc = run_cli(*ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "judge: judge.parquet differs from the table its meta recorded (sha256 mismatch); rebuilding" in proc.stderr
    assert "pair: its meta pair.json is unreadable" in proc.stderr
    assert "generate: complete output exists" in proc.stderr
    assert pq.read_table(out / "pairs").to_pylist() == pq.read_table(tiny_run / "pairs").to_pylist()


def test_the_runs_own_prefect_api_killed_mid_run_is_one_line_at_once(tmp_path):
    """The command's own Prefect API server (flows/cli/api_server.py) gets SIGKILL while the run works: the command
    exits 2 within seconds with one error line saying how to resume, no traceback, its finished stages kept (before:
    about 290 s of Prefect client retries and their tracebacks)."""
    out, marker = tmp_path / "run", uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *ARGS, "--out", str(out)], cwd=ROOT,
                            env={**cli_env(shared_api=False), "PREFSYNTH_TEST_MARKER": marker},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while not (out / "tables" / "prompt_filter.parquet").is_file():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its prompt filter finished"
        time.sleep(0.05)
    (server,) = [p for p in _alive(marker)
                 if b"flows.cli.api_server" in Path(f"/proc/{p}/cmdline").read_bytes()]
    os.kill(server, signal.SIGKILL)
    killed = time.time()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and time.time() - killed < 20, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("prefsynth: error: the Prefect API at ") and "rerun the same command to resume" in last
    assert (out / "tables" / "prompts.parquet").is_file() and (out / "tables" / "prompt_filter.parquet").is_file()
    assert _gone(marker, 10)
