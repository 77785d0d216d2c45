"""The build_dataset flow end to end through the real CLI, on the bundled model and the tiny config."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT, TINY, assert_same_rows, cli_env, run_cli, use_shared_prefect_api

pytestmark = pytest.mark.slow


def test_pairs_load_with_datasets_and_trl(tiny_run, tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from pipeline.backends.model_ref import resolve

    cache = str(tmp_path / "hf-cache")  # datasets' cache can hold an older run at a reused path
    ds = datasets.load_dataset(
        "parquet", data_files=str(tiny_run / "pairs" / "*.parquet"), split="train", cache_dir=cache
    )
    assert ds.num_rows >= 1
    for col in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin", "rationale"):
        assert col in ds.column_names
    for col in ("ches", "ln_ches", "ref_chosen_logp", "ref_rejected_logp"):
        assert all(isinstance(v, float) for v in ds[col]), col  # filled for every published pair
    for row in ds:
        assert row["chosen_score"] > row["rejected_score"] and row["chosen"] != row["rejected"]
        assert abs(row["margin"] - (row["chosen_score"] - row["rejected_score"])) < 1e-9
        assert row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user"
        assert row["rationale"].startswith("The better response is better because")
    tok = AutoTokenizer.from_pretrained(resolve("bundled:smollm2-135m-instruct").path)
    row = ds[0]
    assert is_conversational(row)
    text = maybe_apply_chat_template({k: row[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert text["prompt"].endswith("<|im_start|>assistant\n") and row["chosen"][0]["content"] in text["chosen"]
    # the card's configs block lets datasets load the run folder itself
    assert datasets.load_dataset(str(tiny_run), split="train", cache_dir=cache).num_rows == ds.num_rows


def test_manifest_describes_the_shards(tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    assert m["rows"]["prompts"] == 4 and m["rows"]["candidates"] == 12 and m["rows"]["judgments"] == 12
    total = 0
    for shard in m["shards"]:
        path = tiny_run / shard["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert pq.read_metadata(path).num_rows == shard["rows"]
        total += shard["rows"]
    assert total == m["rows"]["pairs"]
    assert [f["filter"] for f in m["funnel"]][:4] == [
        "invalid_rows",
        "duplicate_prompts",
        "prompt_id_conflicts",
        "limit",
    ]
    assert set(m["timings_s"]) >= {"generate", "judge", "pair", "rationale", "publish", "total"}
    assert m["config"]["resolved"]["generate"]["n"] == 3 and m["config"]["given"]["name"] == "tiny"
    assert m["models"]["generator"].startswith("bundled:smollm2-135m-instruct@")
    filters = {f["filter"] for f in m["funnel"]}
    assert {"near_duplicate", "ties", "near_identical", "min_margin", "strategy", "ches_quantile"} <= filters
    assert m["ches"]["filter"] == "quantile" and m["ches"]["cut"] is not None
    # the manifest counts the prompt filter's drops; the dropped prompts are a table beside the stage's
    assert m["prompt_drops"]["tables"] == ["tables/prompt_filter.drops.parquet"]
    drops = pq.read_table(tiny_run / "tables" / "prompt_filter.drops.parquet")
    near = next(f for f in m["funnel"] if f["filter"] == "near_duplicate")
    assert (
        m["prompt_drops"]["counts"]
        == {"near_duplicate": near["rows_in"] - near["rows_out"]}
        == {"near_duplicate": drops.num_rows}
    )
    assert set(m["length_bias"]) >= {"score_length_spearman", "chosen_minus_rejected_len", "chosen_longer_fraction"}
    assert "pairs:" in (tiny_run / "cli-stdout.txt").read_text()


def test_card_yaml_is_a_valid_dataset_card(tiny_run):
    from huggingface_hub import DatasetCard

    text = (tiny_run / "README.md").read_text()
    card = DatasetCard(text)
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["configs"][0]["data_files"][0] == {"split": "train", "path": "pairs/train-*.parquet"}
    assert card.data.pretty_name == "tiny" and "dpo" in card.data.tags


def test_rerun_reuses_every_stage(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")  # other tests (another xdist worker too) read tiny_run
    before = pq.read_table(run / "pairs").to_pylist()
    proc = run_cli("run", "--config", str(TINY), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("prompts", "prompt_filter", "generate", "judge", "pair", "ches", "rationale"):
        assert f"{stage}: complete output exists" in proc.stderr
    assert pq.read_table(run / "pairs").to_pylist() == before


# one prompt per checkpointed chunk, so a stage is killed half done; publish.chunk_prompts is operational (outside
# every fingerprint, and candidates are seeded per prompt and sample), so the uninterrupted run the killed ones
# must reproduce row for row is the tiny_run fixture, made with the default chunking
KILL_ARGS = ["--config", str(TINY), "--set", "publish.chunk_prompts=1", "--quiet"]


# (stage killed half-way, its output table and key column, rows it must end with, the stages before it)
KILL_POINTS = [
    ("generate", "generate.parquet", "candidate_id", 12, ["prompts", "prompt_filter"]),
    ("judge", "judge.parquet", "candidate_id", 12, ["prompts", "prompt_filter", "generate"]),
    ("ches", "ches.scored.parquet", "prompt_id", None, ["generate", "judge", "pair"]),
]


def _run_until_half_done(out: Path, stage: str, log: Path) -> str:
    """Start the run, SIGKILL it (its process group, so the ephemeral Prefect server it started goes too, as
    `kill -9` of a job) once one checkpointed chunk of `stage` is written; the run's stderr."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", *KILL_ARGS, "--out", str(out)],
            cwd=ROOT,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=fh,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while not list((out / "tables").glob(f"{stage}.parts-*/part-*.json")):
            assert proc.poll() is None and time.time() < deadline, f"run ended before {stage} was half done"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "tables" / f"{stage}.json").exists() and not (out / "pairs").exists()
    return log.read_text()


@pytest.mark.timeout(900)
def test_sigkill_mid_stage_then_rerun(tiny_run, tmp_path):
    """Real SIGKILLs while a stage is half done (one checkpointed chunk written), in generate, then in the
    rerun's judge, then in the next rerun's ches: each rerun must not redo the finished stages and must resume
    the killed one, and the last must end with the rows of an uninterrupted run: nothing lost, nothing twice.
    (One run directory killed three times: each stage's work is paid once, not once per kill point.)"""
    out = tmp_path / "killed"
    logs = []
    for n, (stage, *_rest) in enumerate(KILL_POINTS):
        logs.append(_run_until_half_done(out, stage, tmp_path / f"kill-{n}.log"))
    final = run_cli("run", *KILL_ARGS, "--out", str(out))
    assert final.returncode == 0, final.stderr[-3000:]
    # the run after the kill in KILL_POINTS[n] is the one logged in logs[n + 1] (the last: `final`)
    for n, (stage, _table, _key, _rows, before) in enumerate(KILL_POINTS):
        after = logs[n + 1] if n + 1 < len(logs) else final.stderr
        for done in before:
            assert f"{done}: complete output exists" in after, (stage, done)
        assert f"{stage}: resuming" in after, stage
    killed = pq.read_table(out / "pairs").to_pylist()
    assert len(killed) >= 1
    assert_same_rows(killed, pq.read_table(tiny_run / "pairs").to_pylist(), "pairs")
    for stage, table, key, rows, _before in KILL_POINTS:
        got = pq.read_table(out / "tables" / table)
        assert_same_rows(got.to_pylist(), pq.read_table(tiny_run / "tables" / table).to_pylist(), table)
        if rows is not None:
            keys = got.column(key).to_pylist()
            assert len(keys) == len(set(keys)) == rows, stage


def test_many_pairs_per_prompt_with_ranked_view(tmp_path):
    """all_above_margin gives several pairs per prompt: each published once, with its rationale."""
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "--config",
        str(TINY),
        "--out",
        str(out),
        "--set",
        "pair.strategy=all_above_margin",
        "--set",
        "pair.keep_ranked=true",
        "--set",
        "curate.ches.filter=none",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pq.read_table(out / "pairs").to_pylist()
    keys = [(r["prompt_id"], r["chosen_id"], r["rejected_id"]) for r in rows]
    assert len(keys) == len(set(keys)) and len(keys) > len({r["prompt_id"] for r in rows})
    assert all(r["pair_strategy"] == "all_above_margin" and r["rationale"] for r in rows)
    ranked = pq.read_table(out / "ranked").to_pylist()
    assert len(ranked) == 4 and all(len(r["candidates"]) == 3 for r in ranked)
    assert all(
        [c["score"] for c in r["candidates"]] == sorted((c["score"] for c in r["candidates"]), reverse=True)
        for r in ranked
    )
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "ranked"]


def test_flow_leaves_summary_and_funnel_artifacts(tmp_path):
    """Runs the flow in-process on the session's shared Prefect API, then reads the artifacts back from it."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.build_dataset import build_dataset
    from pipeline.config import load_config

    use_shared_prefect_api()
    state = build_dataset(load_config(TINY).model_dump(), str(tmp_path / "run"), return_state=True)
    manifest, run_id = state.result(), state.state_details.flow_run_id

    async def latest(key):
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])
                )
            )
            assert len(found) == 1
            return found[0]

    summary, funnel = asyncio.run(latest("prefsynth-summary")), asyncio.run(latest("prefsynth-funnel"))
    assert summary.type == "markdown" and f"{manifest['rows']['pairs']} in 1 shard(s)" in summary.data
    assert funnel.type == "table" and "near_duplicate" in str(funnel.data) and "ches_quantile" in str(funnel.data)
    progress = asyncio.run(latest("prefsynth-progress"))
    assert progress.type == "progress" and float(progress.data) == 100.0


def test_only_transient_backend_errors_are_retried():
    """Prefect retries a stage task whose backend failed transiently, and only then: a task with the
    stage tasks' own retry options (delays zeroed) run by a real flow. The faults are raised by the
    task itself: a real transient fault cannot be provoked from a local model."""
    from prefect import flow, task

    from flows.build_dataset import generate_task
    from pipeline.errors import BackendError, TransientBackendError

    use_shared_prefect_api()
    attempts = []

    def failing(exc):
        attempts.append(type(exc).__name__)
        raise exc

    retried = task(
        failing,
        retries=generate_task.retries,
        retry_delay_seconds=0,
        retry_condition_fn=generate_task.retry_condition_fn,
    )

    @flow
    def run_one(exc):
        return retried(exc, return_state=True)

    for exc in (TransientBackendError("HTTP 503"), BackendError("bad model"), ValueError("bug")):
        attempts.clear()
        state = run_one(exc, return_state=True)
        assert state.is_failed()
        expected = 1 + generate_task.retries if isinstance(exc, TransientBackendError) else 1
        assert attempts == [type(exc).__name__] * expected
    assert generate_task.retries >= 1


def test_judge_ensemble_run(seeded_rm, tmp_path):
    """Two LLM-judge templates, a both-order pairwise judge and a reward model in one run."""
    rm = seeded_rm
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "--config",
        str(TINY),
        "--out",
        str(out),
        "--set",
        "judge.templates=[absolute-1to5-v1, ultrafeedback-helpfulness-v1]",
        "--set",
        "judge.pairwise_templates=[pairwise-ab-v1]",
        "--set",
        f"judge.reward_models=[{rm}]",
        "--set",
        "judge.aggregate=bradley_terry",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    judgments = pq.read_table(out / "tables" / "judge.parquet").to_pylist()
    kinds = {}
    for r in judgments:
        kinds.setdefault(r["kind"], set()).add(r["judge"])
    assert len(kinds["absolute"]) == 2 and len(kinds["reward_model"]) == 1 and len(kinds["pairwise"]) == 1
    pairwise = [r for r in judgments if r["kind"] == "pairwise"]
    assert len(pairwise) == 4 * 3 and all(r["position_consistent"] is not None for r in pairwise if r["ok"])
    scores = pq.read_table(out / "tables" / "pair.scores.parquet").to_pylist()
    assert len(scores) == 12 and all(r["judge_agreement"] is not None for r in scores)
    m = json.loads((out / "manifest.json").read_text())
    agreement = m["judge_agreement"]
    assert m["judge_aggregate"] == "bradley_terry" and agreement["krippendorff_alpha"] is not None
    assert len(agreement["kendall_tau"]) == 3  # three score judges, three pairs of them
    pairwise_judge = next(iter(kinds["pairwise"]))
    assert 0.0 <= agreement["judges"][pairwise_judge]["position_consistency"] <= 1.0
    assert len(m["self_preference"]) == 3  # the bundled model generated and judged
    rows = pq.read_table(out / "pairs").to_pylist()
    assert rows and all(r["judge_agreement"] is not None and r["chosen_score"] > r["rejected_score"] for r in rows)
    assert "position consistency" in (out / "README.md").read_text()


def test_flow_file_runs_as_an_example(tmp_path):
    """docs/architecture.md rule 10: `python -m flows.build_dataset` runs the flow on the bundled tiny sample."""
    proc = subprocess.run(
        [sys.executable, "-m", "flows.build_dataset"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pairs in runs/example-tiny/pairs" in proc.stdout
    assert list((tmp_path / "runs" / "example-tiny" / "pairs").glob("train-*.parquet"))


@pytest.mark.timeout(900)  # minutes of work; more when a second xdist worker shares the cores
def test_mixed_pair_sources_stay_distinguishable_and_train_with_rdpo(seeded_rm, tmp_path):
    """Best-vs-worst, self-critique revisions and reward-augmented rewrites in one run; the shards
    load with datasets, every source is counted, and the trainer's rdpo loss runs on them."""
    import datasets

    from pipeline.train import TrainConfig, train

    rm = seeded_rm
    out = tmp_path / "run"
    proc = run_cli(
        "run",
        "--config",
        str(TINY),
        "--out",
        str(out),
        "--quiet",
        "--set",
        "sources.self_critique.enabled=true",
        "--set",
        f"sources.self_critique.reward_model={rm}",
        "--set",
        "sources.self_critique.principles=[safety, honesty, roleplay]",
        "--set",
        "sources.self_critique.max_new_tokens=24",
        "--set",
        "sources.reward_augmented.enabled=true",
        "--set",
        "sources.reward_augmented.keep_original=true",
        "--set",
        "curate.ches.filter=none",
        "--set",
        "generate.verbalized_k=3",
        "--set",
        "generate.verbalized_max_new_tokens=96",
        "--set",
        "input.limit=8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    by = m["sources"]["pairs_by_strategy"]
    assert by["best_vs_worst"] >= 1
    assert by["reward_augmented:high:best_vs_worst"] == by["reward_augmented:low:best_vs_worst"] == by["best_vs_worst"]
    assert any(k.startswith("self_critique:") for k in by), by
    assert sum(by.values()) == m["rows"]["pairs"]
    assert m["sources"]["self_critique"]["template"] == "self-critique-v1"
    assert any(f["stage"] == "self_critique" for f in m["funnel"])
    # verbalized sampling beside plain sampling: candidates tagged by mode, diversity compared in manifest and card
    modes = {c["sampling"]["mode"] for c in pq.read_table(out / "tables" / "generate.parquet").to_pylist()}
    assert modes == {"sample", "verbalized"}
    assert set(m["diversity"]) == {"sample", "verbalized"}
    for figures in m["diversity"].values():
        assert figures["prompts"] >= 1 and 0 < figures["distinct_1"] <= 1 and 0 <= figures["embedding_distance"] <= 2
    card = (out / "README.md").read_text()
    assert "| verbalized |" in card and "| sample |" in card and "`self_critique:" in card
    ds = datasets.load_dataset(
        "parquet", data_files=str(out / "pairs" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    for row in ds:
        if row["pair_strategy"].startswith("self_critique:"):
            assert 0 < row["label_confidence"] < 1 and row["rationale"].startswith("Principle: ")
            assert row["chosen_id"].endswith("-revision")
        else:
            assert row["label_confidence"] is None
        if row["pair_strategy"].startswith("reward_augmented:"):
            assert row["prompt"][0]["role"] == "system" and "quality score is" in row["prompt"][0]["content"]
    prov = train(
        TrainConfig(steps=1, batch_size=4, losses={"rdpo": 1.0}, eval_fraction=0.0, tensorboard=False),
        out,
        tmp_path / "dpo",
    )
    assert prov["steps"] == 1 and (tmp_path / "dpo" / "model" / "model.safetensors").exists()
