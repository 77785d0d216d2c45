"""`prefsynth train --online` end to end on the bundled model: verifier labels on instruction-constraint prompts,
the on-policy pairs kept as shards, and a real SIGKILL after the first checkpoint resumed to identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pipeline.verifiable.instructions import make
from tests.conftest import ROOT, TINY, cli_env, run_cli, write_jsonl
from tests.fake_endpoint import FakeEndpoint

pytestmark = pytest.mark.slow

STEPS = 2
SETTINGS = [f"steps={STEPS}", "save_every=1", "learning_rate=1e-4", "tensorboard=false", "online.labels=verifier",
            "online.k=4", "online.prompts_per_step=2", "online.max_new_tokens=12"]
ARGS = [x for kv in SETTINGS for x in ("--set", kv)] + ["--quiet"]


def _prompts(tmp_path: Path) -> Path:
    train, _ = make(0, n_tasks=6, per_task=1, two_prob=0.0)
    return write_jsonl(tmp_path / "prompts.jsonl", train[:3])


def _cmd(data: Path, out: Path) -> list[str]:
    return ["train", "--online", "--data", str(data), "--out", str(out), *ARGS]


@pytest.mark.timeout(1200)
def test_online_dpo_keeps_its_pairs_and_resumes_after_sigkill_to_identical_weights(tmp_path):
    data = _prompts(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    res = run_cli(*_cmd(data, whole))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"trained online for {STEPS} steps" in res.stdout

    prov = json.loads((whole / "provenance.json").read_text())
    recs = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    shards = sorted((whole / "pairs").glob("step-*.parquet"))
    # one shard per step that formed pairs (none for a step without: readers refuse empty parquet files)
    assert [s.name for s in shards] == [f"step-{r['step']:06d}.parquet" for r in recs if r["pairs"]]
    rows = [r for s in shards for r in pq.read_table(s).to_pylist()]
    assert len(rows) == prov["online"]["pairs"] == sum(r["pairs"] for r in recs) >= 1
    # verifier labels: the chosen answer meets more of the prompt's constraints than the rejected one
    assert all(r["pair_strategy"] == "verified" and r["chosen_score"] > r["rejected_score"] for r in rows)
    assert prov["online"]["judge_calls"] == sum(r["candidates"] for r in recs) == recs[-1]["judge_calls_total"]
    assert "verifier-v1" in prov["online"]["judges"] and (whole / "pairs" / "README.md").is_file()
    # a dataset others read: datasets' parquet reader, and the offline trainer's own reader
    from datasets import load_dataset

    from pipeline.train.data import open_source

    ds = load_dataset("parquet", data_files=[str(s) for s in shards], split="train")
    assert ds.num_rows == len(rows) and ds[0]["chosen"][0]["role"] == "assistant"
    assert open_source(whole / "pairs").shards == shards

    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *_cmd(data, killed)], cwd=ROOT, env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True)
        deadline = time.time() + 600
        while not (killed / "checkpoints" / "step-000001").is_dir():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (killed / "model").exists()
    res = run_cli(*_cmd(data, killed))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming the online run from step" in res.stderr + res.stdout

    a, b = (load_file(str(d / "model" / "model.safetensors")) for d in (whole, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(_bundled_safetensors()))
    assert any(not torch.equal(a[k], start[k]) for k in a if k in start)  # the weights did move
    for s in shards:
        assert pq.read_table(s).equals(pq.read_table(killed / "pairs" / s.name))
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    again = json.loads((killed / "provenance.json").read_text())
    assert again["online"]["judge_calls"] == prov["online"]["judge_calls"]


def _bundled_safetensors() -> Path:
    from pipeline.backends.model_ref import resolve

    return next(Path(resolve("bundled:smollm2-135m-instruct", field="model").path).glob("*.safetensors"))


def test_online_dpo_on_a_run_folder_labels_with_the_runs_own_judges(tiny_run, tmp_path):
    """`--data RUN_DIR` with the default `online.labels: run`: the run's prompts, its LLM judge (the bundled model with
    the absolute template, in process), its aggregation and pair strategy; one step."""
    out = tmp_path / "online"
    res = run_cli("train", "--online", "--data", str(tiny_run), "--out", str(out), "--quiet",
                  *[x for kv in ("steps=1", "online.k=2", "online.prompts_per_step=2", "online.max_new_tokens=8",
                                 "tensorboard=false") for x in ("--set", kv)])
    assert res.returncode == 0, res.stderr[-3000:]
    prov = json.loads((out / "provenance.json").read_text())["online"]
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    assert prov["labels"] == "run" and prov["judges"] == manifest["models"]["judges"]
    assert prov["judge_calls"] == 2 * 2  # k answers for each prompt of the step, each judged once
    rows = [r for s in sorted((out / "pairs").glob("step-*.parquet")) for r in pq.read_table(s).to_pylist()]
    run_ids = {r["prompt_id"] for r in pq.read_table(tiny_run / "tables" / "prompt_filter.parquet").to_pylist()}
    assert rows and len(rows) == prov["pairs"] <= 2
    assert all(r["pair_strategy"] == "best_vs_worst" and r["chosen_score"] > r["rejected_score"]
               and r["prompt_id"] in run_ids for r in rows)


def test_served_judges_spend_counts_against_the_budget_and_a_raised_budget_resumes(tmp_path):
    """Judges on an OpenAI-compatible server (tests/fake_endpoint.py `canned`: instant verdict log-probs, so the test
    costs no judge model) at a price: the online run stops with exit 3 before a request would pass the --data run's
    budget.usd, its finished step kept; `online.budget_usd` raised, the same command resumes and finishes, every
    step's tokens and dollars in metrics.jsonl and provenance.json."""
    run, out = tmp_path / "run", tmp_path / "online"
    with FakeEndpoint("canned") as url:
        served = [f"{s}.backend=openai" for s in ("generate", "judge")] + [
            f"{s}.openai.{k}" for s in ("generate", "judge") for k in ("served_model=served", f"base_url={url}")]
        price = "prices={'bundled:smollm2-135m-instruct': {input: 5000, output: 5000}}"  # USD per million tokens
        sets = [*served, price, "budget.usd=25", "rationale.enabled=false"]
        res = run_cli("run", "--config", str(TINY), "--out", str(run), "--quiet",
                      *[x for kv in sets for x in ("--set", kv)])
        assert res.returncode == 0, res.stderr[-3000:]
        online = ["train", "--online", "--data", str(run), "--out", str(out), "--quiet",
                  *[x for kv in ("steps=2", "save_every=1", "online.k=4", "online.prompts_per_step=2",
                                 "online.max_new_tokens=8", "tensorboard=false") for x in ("--set", kv)]]
        stopped = run_cli(*online)
        assert stopped.returncode == 3, stopped.stderr[-3000:]
        line = stopped.stderr.strip().splitlines()[-1]
        assert line.startswith("prefsynth: budget: the --data run's budget.usd=25 would be passed") and \
            "fix: raise online.budget_usd (e.g. --set online.budget_usd=" in line and "Traceback" not in stopped.stderr
        assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
        assert (out / "checkpoints" / "step-000001").is_dir() and (out / "pairs" / "step-000001.parquet").is_file()
        again = run_cli(*online, "--set", "online.budget_usd=60")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the online run from step 1" in again.stderr + again.stdout
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["usage"][0]["requests"] == 8 for r in recs)
    prov = json.loads((out / "provenance.json").read_text())["online"]
    tokens = sum(u["input_tokens"] + u["output_tokens"] for r in recs for u in r["usage"])
    # both steps' dollars (the stop came from the reservation of a step's requests at their longest answers)
    assert prov["usd"] == pytest.approx(tokens * 5000 / 1e6, rel=1e-4) and 0 < prov["usd"] <= 60
