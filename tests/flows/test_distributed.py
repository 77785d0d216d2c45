"""The build_dataset flow on a real local Ray instance (127.0.0.1) against the same run in one process.

Both runs use one torch thread per process (OMP_NUM_THREADS=1, which Ray workers inherit): float
reductions then happen in the same order, so "the same rows" can be asserted bit for bit. With
unlike thread counts the judge's scores differ in the 6th digit (summation order), nothing else.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, TINY, cli_env

pytestmark = pytest.mark.slow
SIX = (
    "--config",
    str(TINY),
    "--set",
    "input.limit=6",
    "--quiet",
)  # 3 chunks of 2 prompts: shard 0 gets chunks 0 and 2


RAY = ("--ray", "--shards", "2", "--set", "distributed.num_cpus=2")


def _env():
    return {**cli_env(), "OMP_NUM_THREADS": "1"}


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    local = _cli("run", *SIX, "--out", str(base / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    ray = _cli("run", *SIX, "--out", str(base / "ray"), *RAY)
    assert ray.returncode == 0, ray.stderr[-3000:]
    return base / "local", base / "ray", ray


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_a_ray_run_writes_the_rows_of_a_local_run(runs):
    local, ray, proc = runs
    for stage in ("generate", "judge", "ches", "rationale"):
        a, b = pq.read_table(local / "tables" / f"{stage}.parquet"), pq.read_table(ray / "tables" / f"{stage}.parquet")
        assert a.num_rows > 0 and a.equals(b), stage
    shard_a, shard_b = (pq.read_table(run / "pairs" / "train-00000-of-00001.parquet") for run in (local, ray))
    assert shard_a.equals(shard_b)
    m_local, m_ray = (json.loads((run / "manifest.json").read_text()) for run in (local, ray))
    assert m_ray["config_fingerprint"] == m_local["config_fingerprint"]  # where work runs is not part of the data
    assert m_ray["config"]["resolved"]["distributed"] == {
        **m_local["config"]["resolved"]["distributed"],
        "runner": "ray",
        "shards": 2,
        "num_cpus": 2,
    }
    assert m_ray["funnel"] == m_local["funnel"]
    assert "Creating a local Ray instance" in proc.stderr


def test_each_shard_did_its_own_prompts_in_a_ray_worker(runs):
    _, ray, proc = runs
    logs = sorted((ray / "requests").glob("generate.shard-*.jsonl"))
    assert [p.name for p in logs] == ["generate.shard-0-of-2.jsonl", "generate.shard-1-of-2.jsonl"]
    keys = [{json.loads(line)["key"] for line in p.read_text().splitlines()} for p in logs]
    assert len(keys[0]) == 4 and len(keys[1]) == 2 and not keys[0] & keys[1]  # 2 chunks vs 1, none twice
    assert not (ray / "requests" / "generate.jsonl").read_text()  # the gathering call generated nothing
    workers = {line.split("pid=")[1].split(")")[0] for line in proc.stderr.splitlines() if "(generate pid=" in line}
    assert workers and str(os.getpid()) not in workers


def _ray_processes() -> list[str]:
    """Command lines of Ray's own daemons and workers on this machine (none run between tests)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmd for mark in ("raylet", "gcs_server", "default_worker.py", "ray::")):  # zombies have none
            out.append(cmd[:120])
    return out


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_a_killed_ray_run_resumes_to_the_same_rows(runs, tmp_path):
    """SIGKILL the driver while Ray workers judge (`kill -9` of the CLI alone): Ray's daemons and workers
    exit after it (Ray's own watchers; its agents take about a minute), and the rerun keeps the generate
    table and the judge shards' finished parts and ends with the one-process run's rows. Prefect's
    ephemeral API server outlives a SIGKILLed parent (Prefect's behaviour, local runs alike): the
    test removes it with the session's process group."""
    local = runs[0]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", *SIX, "--out", str(out), *RAY],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 600
        while not list((out / "tables").glob("judge.parts-*/part-*.json")):
            assert proc.poll() is None and time.time() < deadline, "run ended before judge was half done"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 180
        while _ray_processes() and time.time() < deadline:
            time.sleep(1)
        assert not _ray_processes(), "Ray processes outlived the killed run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "tables" / "judge.json").exists()
    again = _cli("run", *SIX, "--out", str(out), *RAY)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generate: complete output exists" in again.stderr
    for stage in ("generate", "judge", "ches", "rationale"):
        assert pq.read_table(out / "tables" / f"{stage}.parquet").equals(
            pq.read_table(local / "tables" / f"{stage}.parquet")
        ), stage
    assert pq.read_table(out / "pairs").equals(pq.read_table(local / "pairs"))
