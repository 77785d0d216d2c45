"""Incremental runs and schedules: a dataset that grows with its prompt folder.

The schedule test starts a real `prefect server start` on 127.0.0.1 and `prefsynth serve` against
it, and waits for two scheduled runs, the second seeing only the prompts added after the first."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.rundir import load_pairs
from tests.conftest import ROOT, TINY, cli_env, run_cli

pytestmark = pytest.mark.slow
SEED = ROOT / "data" / "prompts" / "seed.jsonl"


def _lines(a, b):
    return SEED.read_text().splitlines()[a:b]


def _write(path: Path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _ids(lines):
    from pipeline.stages.prompts import normalise_row

    return {normalise_row(json.loads(line), "t")["prompt_id"] for line in lines}


def _args(src, out):
    return ["run", "--config", str(TINY), "--set", f"input.path={src}", "--set", "input.limit=null", "--out", str(out),
            "--incremental", "--quiet"]


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_incremental_runs_append_only_new_prompts(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _write(src / "a.jsonl", _lines(0, 3))
    first = run_cli(*_args(src, out))
    assert first.returncode == 0, first.stderr[-3000:]
    m1 = json.loads((out / "manifest.json").read_text())
    assert [i["prompts"] for i in m1["increments"]] == [3] and m1["rows"]["pairs"] >= 1
    shard1 = dict(m1["shards"][0])

    started = time.time()
    idle = run_cli(*_args(src, out))
    assert idle.returncode == 0 and "nothing new" in idle.stdout, idle.stderr[-2000:]
    assert time.time() - started < 60 and "generate" not in idle.stderr  # no stage, no model
    assert json.loads((out / "manifest.json").read_text()) == m1

    _write(src / "b.jsonl", _lines(3, 5) + _lines(0, 1))  # two new prompts and one already processed
    second = run_cli(*_args(src, out))
    assert second.returncode == 0, second.stderr[-3000:]
    m2 = json.loads((out / "manifest.json").read_text())
    assert [i["prompts"] for i in m2["increments"]] == [3, 2]
    new = (
        pq.read_table(out / m2["increments"][1]["dir"] / "tables" / "prompts.parquet").column("prompt_id").to_pylist()
    )
    assert set(new) == _ids(_lines(3, 5))
    assert m2["shards"][0] == shard1 and len(m2["shards"]) == 2  # old shard untouched, new one appended
    pairs = load_pairs(out, m2)  # every shard verified against the manifest
    assert pairs.num_rows == m2["rows"]["pairs"] == sum(i["pairs"] for i in m2["increments"])
    assert m2["rows"]["prompts"] == 5
    assert m2["prompt_drops"]["tables"] == [f"{i['dir']}/tables/prompt_filter.drops.parquet" for i in m2["increments"]]
    assert all((out / t).is_file() for t in m2["prompt_drops"]["tables"])
    keys = [(r["prompt_id"], r["chosen_id"], r["rejected_id"]) for r in pairs.to_pylist()]
    assert len(keys) == len(set(keys))
    assert "train-*.parquet" in (out / "README.md").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout, what, procs=()):
    deadline = time.time() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, (
                f"{what}: a process exited early:\n{p.stderr.read().decode()[-3000:] if p.stderr else ''}"
            )
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def _increments(out):
    path = out / "manifest.json"
    return json.loads(path.read_text()).get("increments", []) if path.exists() else []


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_served_deployment_runs_twice_on_schedule_with_only_new_prompts(tmp_path):
    port = _free_port()
    home = tmp_path / "prefect-home"
    env = {**cli_env(shared_api=False), "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    api = f"http://127.0.0.1:{port}/api"
    serve = None
    try:

        def healthy():
            try:
                return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
            except OSError:
                return False

        _wait(healthy, 180, "prefect server", [server])
        src, out = tmp_path / "src", tmp_path / "out"
        src.mkdir()
        _write(src / "a.jsonl", _lines(10, 12))
        serve_env = {**env, "PREFECT_API_URL": api}
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "serve",
                "--config",
                str(TINY),
                "--set",
                f"input.path={src}",
                "--set",
                "input.limit=null",
                "--out",
                str(out),
                "--interval",
                "20",
                "--name",
                "grow",
            ],
            cwd=ROOT,
            env=serve_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait(lambda: len(_increments(out)) >= 1, 400, "the first scheduled run", [serve])
        _write(src / "b.jsonl", _lines(12, 14))
        _wait(lambda: len(_increments(out)) >= 2, 400, "a scheduled run with the new prompts", [serve])
        incs = _increments(out)
        assert [i["prompts"] for i in incs] == [2, 2]
        new = pq.read_table(out / incs[1]["dir"] / "tables" / "prompts.parquet").column("prompt_id").to_pylist()
        assert set(new) == _ids(_lines(12, 14))

        # the Prefect API saw the runs: at least two completed runs of the deployment (the manifest is
        # written inside the run, so the second run may still be finishing when it appears)
        def completed_runs():
            req = urllib.request.Request(
                f"{api}/flow_runs/filter",
                data=json.dumps({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).encode(),
                headers={"Content-Type": "application/json"},
            )
            return [r for r in json.loads(urllib.request.urlopen(req, timeout=10).read()) if r.get("deployment_id")]

        _wait(lambda: len(completed_runs()) >= 2, 120, "two completed deployment runs in the Prefect API", [serve])
    finally:
        for p in (serve, server):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
