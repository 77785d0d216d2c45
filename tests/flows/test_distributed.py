"""The build_dataset flow on a real local Ray instance (127.0.0.1) against the same run in one process.

Both runs use one torch thread per process (OMP_NUM_THREADS=1, which Ray workers inherit): float
reductions then happen in the same order, so "the same rows" can be asserted bit for bit. With
unlike thread counts the judge's scores differ in the 6th digit (summation order), nothing else.
"""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, TINY, cli_env

pytestmark = pytest.mark.slow
SIX = ("--config", str(TINY), "--set", "input.limit=6", "--quiet")  # 3 chunks of 2 prompts: shard 0 gets chunks 0 and 2


def _cli(*args):
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    local = _cli("run", *SIX, "--out", str(base / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    ray = _cli("run", *SIX, "--out", str(base / "ray"), "--ray", "--shards", "2", "--set", "distributed.num_cpus=2")
    assert ray.returncode == 0, ray.stderr[-3000:]
    return base / "local", base / "ray", ray


def test_a_ray_run_writes_the_rows_of_a_local_run(runs):
    local, ray, proc = runs
    for stage in ("generate", "judge", "ches", "rationale"):
        a, b = pq.read_table(local / "tables" / f"{stage}.parquet"), pq.read_table(ray / "tables" / f"{stage}.parquet")
        assert a.num_rows > 0 and a.equals(b), stage
    shard_a, shard_b = (pq.read_table(run / "pairs" / "train-00000-of-00001.parquet") for run in (local, ray))
    assert shard_a.equals(shard_b)
    m_local, m_ray = (json.loads((run / "manifest.json").read_text()) for run in (local, ray))
    assert m_ray["config_fingerprint"] == m_local["config_fingerprint"]  # where work runs is not part of the data
    assert m_ray["config"]["resolved"]["distributed"] == {**m_local["config"]["resolved"]["distributed"],
                                                           "runner": "ray", "shards": 2, "num_cpus": 2}
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
