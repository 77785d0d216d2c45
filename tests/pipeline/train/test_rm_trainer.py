"""`prefsynth train-rm`: a reward model from pairs shards on the bundled model (CPU, tiny data), judged with.

The data: 16 pairs over 8 arithmetic prompts (the right sum against a wrong, longer answer), written here, so the
held-out prompts test what was learnt in a few steps. One uninterrupted run through the CLI and the Prefect flow is
shared by the tests of the folder, the judge and resume."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from pipeline.train.config import RMConfig, load_rm_config
from pipeline.train.data import eval_prompts, open_source
from tests.conftest import cli_in_process, use_shared_prefect_api

SETTINGS = dict(steps=4, batch_size=4, micro_batch_size=2, learning_rate=1e-4, eval_fraction=0.25, min_eval_pairs=4,
                eval_every=2, save_every=2, tensorboard=False)


def write_pairs(folder, n_prompts: int = 8):
    rows = []
    for i in range(n_prompts):
        a, b = i + 2, 3 * i + 1
        prompt = [{"role": "user", "content": f"What is {a} + {b}? Answer with the number."}]
        for j, wrong in enumerate((a + b + 1, a * b + 7)):
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": f"{a + b}"}],
                         "rejected": [{"role": "assistant", "content": f"I think it is {wrong}, roughly."}],
                         "prompt_id": f"p{i}", "chosen_id": f"c{i}", "rejected_id": f"r{i}-{j}", "margin": 1.0 + j})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "pairs-00000.parquet")
    return folder


def _sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, out folder, CLI stdout) of one uninterrupted 4-step run through `prefsynth train-rm`."""
    root = tmp_path_factory.mktemp("rm")
    data, out = write_pairs(root / "data"), root / "out"
    use_shared_prefect_api()
    proc = cli_in_process("train-rm", "--data", str(data), "--out", str(out), "--quiet", *_sets(SETTINGS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data, out, proc.stdout


@pytest.mark.slow
def test_train_rm_writes_a_reward_model_that_learnt_the_held_out_pairs(trained):
    from transformers import AutoModelForSequenceClassification

    data, out, stdout = trained
    assert "trained a reward model for 4 steps" in stdout and "held-out pairs: accuracy" in stdout
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["kind"] == "reward_model" and prov["steps"] == 4
    assert prov["data"]["fingerprint"] == open_source(data).fingerprint
    first, final = prov["initial_eval"], prov["final_eval"]
    assert final["eval/pairs"] == 4
    assert final["eval/accuracy"] == 1.0 and final["eval/margin"] > first["eval/margin"] + 1.0
    assert {"eval/accuracy_lo", "eval/accuracy_hi", "eval/reward_mean", "eval/reward_std"} <= set(final)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert {"loss", "accuracy", "margin", "reward_mean", "reward_std", "grad_norm"} <= set(records[1])
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    card = (out / "model" / "README.md").read_text()
    assert "reward-model" in card and prov["data"]["fingerprint"] in card and "judge.reward_models" in card


@pytest.mark.slow
def test_the_folder_is_a_reward_model_judge_scoring_what_was_trained(trained):
    from judges.reward_model import RewardModelJudge

    data, out, _ = trained
    prov = json.loads((out / "provenance.json").read_text())
    held = eval_prompts(open_source(data), seed=0, fraction=0.25, min_pairs=4)
    rows = [r for r in pq.read_table(data).to_pylist() if r["prompt_id"] in held]
    judge = RewardModelJudge(str(out / "model"))
    scores = judge.score([(r["prompt"], r[side][0]["content"]) for side in ("chosen", "rejected") for r in rows])
    assert all(s.ok for s in scores)
    chosen, rejected = [s.score for s in scores[: len(rows)]], [s.score for s in scores[len(rows) :]]
    # the judge's encoding and pooling are the trainer's: the same rewards, to float32 padding noise
    assert sum(chosen) / len(rows) == pytest.approx(prov["final_eval"]["eval/rewards/chosen"], abs=1e-3)
    assert sum(rejected) / len(rows) == pytest.approx(prov["final_eval"]["eval/rewards/rejected"], abs=1e-3)
    assert all(c > r for c, r in zip(chosen, rejected))


@pytest.mark.slow
def test_a_stopped_run_resumes_to_the_weights_of_the_uninterrupted_one(trained, tmp_path):
    from pipeline.train.rm_trainer import train_rm

    data, full, _ = trained
    cfg, out = RMConfig(**SETTINGS), tmp_path / "out"
    # stopped after step 3: the checkpoint of step 2 is on disk, step 3 is in metrics.jsonl only (as after a kill)
    assert train_rm(cfg, data, out, stop_after=3) == {"stopped_at": 3}
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    lines = []
    prov = train_rm(cfg, data, out, log=lines.append)
    assert any("resuming from step 2" in line for line in lines) and prov["steps"] == 4
    got, want = load_file(out / "model" / "model.safetensors"), load_file(full / "model" / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # step 3 logged once: the stopped run's record was dropped on resume
    assert prov["initial_eval"] == json.loads((full / "provenance.json").read_text())["initial_eval"]


def test_cli_errors_name_the_field_the_value_and_the_fix(tmp_path):
    proc = cli_in_process("train-rm", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a prefsynth run directory" in proc.stderr
    proc = cli_in_process("train-rm", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "margin=-1")
    assert proc.returncode == 2 and "margin" in proc.stderr and "-1" in proc.stderr
    with pytest.raises(Exception, match="micro_batch_size"):
        load_rm_config(None, ["batch_size=4", "micro_batch_size=3"])
    help_text = cli_in_process("train-rm", "--help")
    assert "label_confidence" in help_text.stdout and "center_rewards" in help_text.stdout


def test_weight_fields_leave_out_operational_keys():
    a, b = RMConfig(**SETTINGS), RMConfig(**{**SETTINGS, "micro_batch_size": 1, "save_every": 7, "eval_every": 3})
    assert a.weight_fields() == b.weight_fields()
    assert a.weight_fields() != RMConfig(**{**SETTINGS, "margin": 1.0}).weight_fields()
