"""`prefsynth train` under torchrun on CPU ranks (gloo): DDP and FSDP2 give the one-process run's losses and weights.

The two-rank runs go through the real launcher (`python -m torch.distributed.run --nproc-per-node 2 -m flows.cli
train`); the one-process run is the plain trainer on a copy of the same shards. Tiny settings (3 steps of 4 pairs,
128 tokens) keep each torchrun to about a minute on two CPU cores.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.errors import ConfigError
from pipeline.train import TrainConfig, train
from pipeline.train.parallel import Dist, plan
from tests.conftest import ROOT, cli_env

SMALL = dict(steps=3, batch_size=4, micro_batch_size=2, max_length=128, max_prompt_tokens=64, eval_fraction=0.25,
             eval_every=2, learning_rate=5e-5, tensorboard=False)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _torchrun(data: Path, out: Path, log: Path, **overrides) -> subprocess.Popen:
    """Two CPU ranks of `prefsynth train` (`--standalone`: a free port, so runs side by side do not collide);
    stdout and stderr go to `log` (a pipe nobody reads could fill up)."""
    sets = [a for k, v in {**SMALL, **overrides}.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "flows.cli",
             "train", "--data", str(data), "--out", str(out), "--quiet", *sets],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _assert_same_run(one: Path, two: Path, steps: int = 3) -> None:
    """Per-step training loss and eval loss, and every final weight, within 1e-5 (float32); the gradient norm
    within 1e-4 relative (FSDP's reduce-scatter adds the shards' gradients in another order: ~1e-5 relative)."""
    ra, rb = _records(one), _records(two)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(steps + 1))
    for a, b in zip(ra, rb):
        for k, rel in (("loss", 1e-5), ("eval/loss", 1e-5), ("grad_norm", 1e-4)):
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=rel, abs=1e-5), (a["step"], k)
    wa = load_file(str(one / "model" / "model.safetensors"))
    wb = load_file(str(two / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-5, worst


@pytest.fixture(scope="module")
def one_process(pairs_run, tmp_path_factory) -> Path:
    """The one-process run both torchrun runs must reproduce (its own copy: it computes its reference pre-pass)."""
    root = tmp_path_factory.mktemp("one-process")
    data = shutil.copytree(pairs_run, root / "run")
    train(TrainConfig(**SMALL), data, root / "out", log=lambda msg: None)
    return root / "out"


@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_matches_one_process(pairs_run, one_process, tmp_path):
    data = shutil.copytree(pairs_run, tmp_path / "run")  # its own reference pre-pass, sharded across the ranks
    out = tmp_path / "ddp"
    proc = _torchrun(data, out, tmp_path / "log", parallel="ddp")
    text = (tmp_path / "log").read_text() if proc.wait(timeout=600) is not None else ""
    assert proc.returncode == 0, text[-4000:]
    assert "trained 3 steps" in text and "Flow run" in text  # rank 0 ran the Prefect flow
    _assert_same_run(one_process, out)
    assert list((data / "ref_logps").glob("*.parquet"))  # the pre-pass ran, and rank 0 cached it
    assert not list(out.glob("**/.*.tmp"))


def _rank_pid(launcher: int, rank: int, deadline: float) -> int:
    """The pid of torchrun's worker with RANK=rank (a child of the launcher)."""
    while time.time() < deadline:
        for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_fsdp_resumes_after_sigkill_of_one_rank_and_matches_one_process(pairs_run, one_process, tmp_path):
    # FSDP2 (fully_shard) runs on CPU with gloo in the installed torch; its checkpoints go through DCP
    data = shutil.copytree(pairs_run, tmp_path / "run")
    out = tmp_path / "fsdp"
    log = tmp_path / "log"
    proc = _torchrun(data, out, log, parallel="fsdp", save_every=1)
    deadline = time.time() + 400
    victim = _rank_pid(proc.pid, 1, deadline)
    while not (out / "checkpoints" / "step-000002").exists():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    proc.wait(timeout=300)
    assert proc.returncode != 0  # torchrun stops the run when a rank dies
    assert (out / "checkpoints" / "step-000002" / "dcp").is_dir() and not (out / "model").exists()
    proc = _torchrun(data, out, log, parallel="fsdp", save_every=1)
    proc.wait(timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert "resuming from step 2" in text
    _assert_same_run(one_process, out)
    saved = load_file(str(out / "model" / "model.safetensors"))
    assert all(not hasattr(v, "full_tensor") for v in saved.values()) and (out / "model" / "config.json").exists()


def test_parallel_settings_fail_in_one_line(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert plan(TrainConfig()) == ("none", None)
    with pytest.raises(ConfigError, match=r"train.parallel 'ddp' needs processes started by torchrun.*fix:"):
        plan(TrainConfig(parallel="ddp"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"needs MASTER_ADDR \(now None\).*fix: launch with `torchrun"):
        plan(TrainConfig(batch_size=4, micro_batch_size=2))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert plan(TrainConfig(batch_size=4, micro_batch_size=2)) == ("ddp", 2)
    with pytest.raises(ConfigError, match=r"train.batch_size 6 is not a multiple of world size 2 x micro_batch_size "
                                          r"2 = 4; fix: set batch_size to a multiple of 4"):
        plan(TrainConfig(batch_size=6, micro_batch_size=2))
    with pytest.raises(ConfigError, match="train.parallel 'none' under torchrun with WORLD_SIZE 2"):
        plan(TrainConfig(parallel="none"))


@pytest.mark.parametrize("env, named", [
    ({"RANK": "x"}, "RANK='x' is not an integer >= 0"), ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not an integer >= 1"), ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "1"}, "LOCAL_RANK=1 is not below LOCAL_WORLD_SIZE=1"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "http"}, "MASTER_PORT='http' is not an integer"),
])
def test_garbage_torchrun_variables_fail_in_one_line(monkeypatch, env, named):
    """Issue 39: torchrun's variables with values torchrun never sets were int() tracebacks."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match="fix: ") as err:
        plan(TrainConfig(batch_size=4, micro_batch_size=2))
    assert named in str(err.value) and "\n" not in str(err.value)


def test_rank_shares_and_rounds_cover_a_batch_once():
    batch = list(range(8))
    ranks = [Dist("ddp", r, 2) for r in range(2)]
    assert [d.share(batch) for d in ranks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rounds = [d.rounds(3) for d in ranks]  # 3 chunks on 2 ranks: rank 1 repeats chunk 0 in round 2 and drops it
    assert rounds == [[(0, True), (2, True)], [(1, True), (0, False)]]
    assert sorted(i for r in rounds for i, keep in r if keep) == [0, 1, 2]
    assert torch.distributed.is_available()


@pytest.mark.slow
def test_lora_with_gradient_checkpointing_under_ddp_matches_one_process(pairs_run, tmp_path):
    lora = dict(steps=2, lora={"r": 4, "alpha": 8}, gradient_checkpointing=True, learning_rate=5e-4)
    one = tmp_path / "one"
    train(TrainConfig(**{**SMALL, **lora}), shutil.copytree(pairs_run, tmp_path / "run1"), one, log=lambda m: None)
    proc = _torchrun(shutil.copytree(pairs_run, tmp_path / "run2"), tmp_path / "ddp", tmp_path / "log",
                     parallel="ddp", **lora)
    assert proc.wait(timeout=600) == 0, (tmp_path / "log").read_text()[-4000:]
    _assert_same_run(one, tmp_path / "ddp", steps=2)
    assert not any("lora" in k for k in load_file(str(tmp_path / "ddp" / "model" / "model.safetensors")))
