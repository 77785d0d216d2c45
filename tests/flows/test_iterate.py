"""`prefsynth iterate` on a tiny config: 2 rounds complete, round 1's candidates come from the round-1 policy,
the rounds table's win rates are this test's own count from the kept eval judgments, and a SIGKILL during round
1's training (the second round) followed by a rerun gives the weights of the uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, TINY, cli_env, run_cli
from tests.pipeline.test_evaluate import own_wins

ARGS = ["--config", str(TINY), "--rounds", "2", "--quiet", "--set", "eval.limit=3", "--set", "eval.max_new_tokens=8",
        "--set", "iterate.prompts=fixed", "--set", "rationale.enabled=false", "--set",
        "iterate.train={steps: 3, batch_size: 2, learning_rate: 1e-4, eval_fraction: 0.0, save_every: 1, "
        "tensorboard: false}"]


@pytest.fixture(scope="session")
def loop(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("iterate")
    proc = run_cli("iterate", *ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (out / "stdout.txt").write_text(proc.stdout)
    return out


def _win_rate(folder: Path) -> float:
    wins = own_wins(pq.read_table(folder / "eval_judgments.parquet").to_pylist())
    return sum(wins.values()) / len(wins)


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_two_rounds_each_from_its_policy(loop):
    rows = pq.read_table(loop / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["policy"] == rows[0]["trained"]
    assert all(r["steps"] == 3 and r["pairs"] > 0 for r in rows)
    c0, c1 = (pq.read_table(loop / f"round-{r}/run/tables/generate.parquet").to_pylist() for r in (0, 1))
    assert [(c["candidate_id"], c["sampling"]["seed"]) for c in c0] == [(c["candidate_id"], c["sampling"]["seed"])
                                                                        for c in c1]  # same prompts, same seeds
    assert any(a["text"] != b["text"] for a, b in zip(c0, c1))  # ... another policy
    assert {c["generator"] for c in c1} != {c["generator"] for c in c0}
    for r in rows:
        folder = loop / f"round-{r['round']}"
        assert r["win_rate_vs_base"] == pytest.approx(_win_rate(folder / "eval-base"))
        previous = folder / ("eval-previous" if r["round"] else "eval-base")  # round 0's previous is the base
        assert r["win_rate_vs_previous"] == pytest.approx(_win_rate(previous))
    held = set(pq.read_table(loop / "prompts" / "held_out.parquet").column("prompt_id").to_pylist())
    assert held.isdisjoint(c["prompt_id"] for c in c0)  # eval prompts are never trained on
    assert "round 1:" in (loop / "stdout.txt").read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_sigkill_in_round_two_training_resumes_to_the_same_weights(loop, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "iterate", *ARGS, "--out", str(out)], cwd=ROOT,
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    while not (out / "round-1" / "train" / "checkpoints" / "step-000001").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "round-1" / "train" / "model").exists()
    rerun = run_cli("iterate", *ARGS, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "resuming from step" in rerun.stderr
    assert "already holds this finished run" in rerun.stderr  # round 0's training is reused, not redone
    assert f"{out / 'round-0' / 'eval-base'} already holds" in rerun.stderr  # ... and its evaluation
    a = load_file(str(loop / "round-1" / "train" / "model" / "model.safetensors"))
    b = load_file(str(out / "round-1" / "train" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")
            if p.is_file()}


# what a rerun writes again: each round's publish step (shards with the same rows, card, manifest, plots, the
# round's config) and the loop's rounds table and card; every stage table, prompt file, policy and evaluation stays
REPUBLISHED = ("README.md", "rounds.parquet", "rounds.png", "/run/README.md", "/run/config.yaml",
               "/run/manifest.json", "/run/pairs/", "/run/plots/")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rerunning_a_finished_iterate_redoes_nothing(loop):
    """Issue 39: a finished `prefsynth iterate` run again reuses every round: no stage table, prompt file, policy
    or evaluation is written again (the prompts' fingerprint once held round 0's file modification time), and the
    log says so for each stage, training and evaluation."""
    before = _files(loop)
    shards = {p: pq.read_table(p) for p in sorted(loop.glob("round-*/run/pairs/*.parquet"))}
    proc = run_cli("iterate", *[a for a in ARGS if a != "--quiet"], "--out", str(loop))
    assert proc.returncode == 0, proc.stderr[-4000:]
    after, log = _files(loop), proc.stdout + proc.stderr
    rewritten = sorted(k for k in before if after.get(k) != before[k])
    assert rewritten and all(any(k.endswith(r) or r in k for r in REPUBLISHED) for k in rewritten), rewritten
    assert all(pq.read_table(p).equals(t) for p, t in shards.items()) and len(shards) == 2
    for stage in ("prompts", "prompt_filter", "generate", "judge", "pair", "ches", "rationale"):
        assert log.count(f"prefsynth {stage}: complete output exists") == 2, stage  # both rounds
    assert log.count("already holds this finished run") == 2 and log.count("already holds") == 5
