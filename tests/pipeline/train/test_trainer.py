"""The trainer on a real run's shards with the bundled model, on CPU."""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.backends.model_ref import resolve
from pipeline.errors import InputError
from pipeline.train import TrainConfig, train
from pipeline.train.data import examples, open_source
from pipeline.train.metrics import OverOptConfig
from pipeline.train.trainer import accumulate, load_policy
from tests.conftest import ROOT, cli_env, cli_in_process, run_cli

pytestmark = pytest.mark.slow

FAST = dict(batch_size=4, micro_batch_size=2, learning_rate=5e-5, eval_fraction=0.25, eval_every=4, tensorboard=False)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def data(pairs_run, tmp_path):
    """A private copy of the run, so reference-log-prob caches written beside it stay per test."""
    return shutil.copytree(pairs_run, tmp_path / "run")


def test_training_learns_the_pairs_and_writes_a_loadable_model(data, tmp_path):
    lines = []
    cfg = TrainConfig(steps=8, **{**FAST, "tensorboard": True})
    prov = train(cfg, data, tmp_path / "out", log=lines.append)
    assert any("from the shards, 0 computed" in line for line in lines)  # CHES's reference log-probs reused
    recs = _records(tmp_path / "out")
    assert [r["step"] for r in recs] == list(range(9))
    first, last = recs[0], recs[-1]
    # policy == reference at step 0: every reward is ~0. The reference log-probs come from the shards
    # (CHES computed them in other batches), so margins differ from 0 by float noise (~1e-7) and the
    # strict `chosen > rejected` accuracy (TRL's rule) is noise too: only the margins are asserted.
    assert abs(first["eval/rewards/margins"]) < 1e-3
    assert abs(last["eval/rewards/margins"]) > abs(first["eval/rewards/margins"])  # the policy moved
    # the training pairs are learned; held-out margins are not asserted: the 135M judge's labels are
    # too noisy for 9 training pairs to generalise from (see the issue note)
    assert recs[1]["rewards/margins"] == pytest.approx(0.0, abs=1e-3)
    assert last["rewards/accuracies"] == 1.0 and last["rewards/margins"] > 1.0 and last["loss"] < recs[1]["loss"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "loss", "grad_norm", "tokens_per_second"):
        assert all(key in r for r in recs[1:]), key
    assert "eval/topk_entropy" in last and 0 < last["eval/topk_mass"] <= 1
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    board.Reload()  # the indicators with their intervals, and the change the watch judges with its se
    assert {f"eval/topk_{k}{s}" for k in ("mass", "entropy") for s in ("", "_se", "_lo", "_hi", "_change_se")} \
        <= set(board.Tags()["scalars"])
    model_dir = tmp_path / "out" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    manifest = json.loads((data / "manifest.json").read_text())
    assert prov["data"]["manifest_config_fingerprint"] == manifest["config_fingerprint"]
    assert prov["steps"] == 8 and prov["losses"] == {"sigmoid": 1.0}
    # the same command again reports the finished run; another config in the same folder is refused
    again = []
    assert train(cfg, data, tmp_path / "out", log=again.append)["run_key"] == prov["run_key"]
    assert any("nothing to do" in line for line in again)
    with pytest.raises(InputError, match="another config or data"):
        train(TrainConfig(steps=8, **{**FAST, "beta": 0.5}), data, tmp_path / "out")


def test_default_training_raises_no_overoptimisation_warning(data, tmp_path):
    # the trainer's defaults (lr 5e-6, sigmoid DPO, the default watch) for the default run's 8 steps, on the tiny
    # run (the default run takes minutes to build; bench/overopt.py trains on it at batch 8). Departures, for CI
    # time and for the watch to have something to judge: batch 2 (a quarter of the compute of 8), eval_every=1 (9
    # evaluations instead of step 0 and 8, too few to fire at all), eval_fraction=0.25 (3 of the tiny run's 12
    # prompts; the default 0.1 holds out 1, and the watch needs 3)
    cfg = TrainConfig(steps=8, batch_size=2, eval_every=1, eval_fraction=0.25, tensorboard=False)
    lines = []
    prov = train(cfg, data, tmp_path / "out", log=lines.append)
    evals = [r for r in _records(tmp_path / "out") if "eval/topk_mass" in r]
    assert [r["step"] for r in evals] == list(range(9)) and prov["overopt_watch"]["active"]
    moved = max(abs(r["eval/topk_mass_change"]) for r in evals)
    assert moved > 1e-3  # the indicators do move (the old rule's tolerance was 1e-3) ...
    assert prov["warnings"] == [] and not any("WARNING" in line for line in lines)  # ... within normal movement
    assert "No alarm: neither indicator moved" in (tmp_path / "out" / "model" / "README.md").read_text()
    for r in evals:
        for k in ("topk_entropy", "topk_mass"):
            assert r[f"eval/{k}_lo"] <= r[f"eval/{k}"] <= r[f"eval/{k}_hi"] and r[f"eval/{k}_se"] > 0
    # early_stop with a hair-trigger watch (window 1, no noise multiple, no floor, no drift) on the same run: the first
    # indicator that falls below step 0 fires, and the run stops there
    trigger = cfg.model_copy(update={"steps": 4, "early_stop": True,
                                     "overopt": OverOptConfig(window=1, z=1e-9, min_change=0.0, drift=False)})
    prov = train(trigger, data, tmp_path / "stop", log=lines.append)
    alarm = prov["warnings"][0]
    assert prov["stopped_early"] and prov["steps"] == alarm["step"] < 4
    assert alarm["window"][0]["change"] < 0 and prov["overopt_watch"]["window"] == 1
    recs = _records(tmp_path / "stop")
    assert recs[-1]["step"] == alarm["step"] and "likely over-optimisation" in recs[-1]["warning"]
    assert any(f"WARNING at step {alarm['step']}" in line and "stopping early" in line for line in lines)
    assert alarm["warning"] in (tmp_path / "stop" / "model" / "README.md").read_text()  # the card says what fired


def test_resume_after_sigkill_matches_an_uninterrupted_run(data, tmp_path):
    cfg = TrainConfig(steps=4, save_every=1, **FAST)
    train(cfg, data, tmp_path / "straight")
    shutil.rmtree(tmp_path / "straight" / "checkpoints")  # only its model is compared: 3 GB less on the CI disk
    killed = tmp_path / "killed"
    code = ("import sys; from pipeline.train import TrainConfig, train; "
            f"train(TrainConfig.model_validate_json(sys.argv[1]), {str(data)!r}, {str(killed)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code, cfg.model_dump_json()], cwd=ROOT,
                            env=cli_env(shared_api=False),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000002").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    lines = []
    train(cfg, data, killed, log=lines.append)
    assert any("resuming from step" in line for line in lines)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: same pairs, same optimiser state, same updates
    ra, rb = _records(tmp_path / "straight"), _records(killed)
    assert [r["step"] for r in rb] == [0, 1, 2, 3, 4]  # nothing logged twice
    assert [r["loss"] for r in ra[1:]] == [r["loss"] for r in rb[1:]]


def test_gradient_accumulation_gives_the_big_batch_gradient(data):
    cfg = TrainConfig(**{**FAST, "micro_batch_size": 4})
    model, tok, _ = load_policy(cfg, "cpu", torch.float32)
    batch = list(examples(open_source(data), tok, max_prompt_tokens=256, max_length=768))[:4]
    refs = {ex.key: (ex.shard_ref[0] - 1.0, ex.shard_ref[1] + 1.0) for ex in batch}  # a non-trivial margin

    def grads(micro):
        model.zero_grad(set_to_none=True)
        sums, _, _ = accumulate(model, batch, refs, cfg.model_copy(update={"micro_batch_size": micro}), 2,
                                contextlib.nullcontext, n_rationales=0)
        return sums, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    s4, g4 = grads(4)
    s1, g1 = grads(1)
    assert s1["sigmoid"] == pytest.approx(s4["sigmoid"], rel=1e-5)
    assert float((g1 - g4).norm() / g4.norm()) < 1e-5


def test_ld_dpo_computes_and_caches_its_reference_then_reuses_it(data, tmp_path):
    cfg = TrainConfig(steps=1, ld_alpha=0.5, **FAST)
    first, second = [], []
    train(cfg, data, tmp_path / "a", log=first.append)
    assert any("0 from the shards" in line and "computed in a pre-pass" in line for line in first)
    assert len(list((data / "ref_logps").glob("*.parquet"))) == 1
    train(cfg, data, tmp_path / "b", log=second.append)
    assert any("from the cache" in line for line in second)
    assert not any("pre-pass" in line for line in second)


def test_lora_with_rationale_term_trains_and_merges(data, tmp_path):
    losses = {"sigmoid": 1.0, "rationale": 0.05, "nll": 0.1}
    cfg = TrainConfig(steps=2, lora={"r": 4, "alpha": 8}, losses=losses, **FAST)
    train(cfg, data, tmp_path / "out")
    recs = _records(tmp_path / "out")
    assert all("loss/rationale" in r and "loss/nll" in r for r in recs[1:])  # the tiny run's pairs carry rationales
    merged = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert not any("lora" in k for k in merged)  # a plain model folder: adapters merged
    base = AutoModelForCausalLM.from_pretrained(resolve("bundled:smollm2-135m-instruct").path)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base.state_dict()[q])


def test_cli_errors_name_the_field_and_the_fix(tmp_path):
    proc = cli_in_process("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a prefsynth run directory" in proc.stderr
    proc = cli_in_process("train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "losses={dpo: 1}")
    assert proc.returncode == 2 and "unknown term(s) ['dpo']" in proc.stderr


def test_cli_trains_through_the_prefect_flow(data, tmp_path):
    out = tmp_path / "cli-out"
    proc = run_cli(
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        "steps=2",
        "--set",
        "batch_size=2",
        "--set",
        "eval_every=1",
        "--set",
        "eval_fraction=0.25",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"trained 2 steps on {data}" in proc.stdout
        and "eval: " in proc.stdout
        and "rewards/accuracies=" in proc.stdout
    )
    assert "Flow run" in proc.stderr and "train" in proc.stderr  # it ran as the Prefect `train` flow
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["steps"] == 2 and (out / "model" / "config.json").exists()


def test_a_separate_reference_model_supplies_the_reference_logps(data, perturbed_model, tmp_path):
    """train.reference: the pre-pass runs the reference model, not the policy: the cached reference log-probs equal
    this test's own forward of the perturbed copy (sum of response-token log-probs) and differ from the policy's."""
    cfg = TrainConfig(steps=1, reference=str(perturbed_model), **FAST)
    prov = train(cfg, data, tmp_path / "out", log=lambda msg: None)
    assert prov["config"]["reference"] == str(perturbed_model)
    caches = list((data / "ref_logps").glob("*.parquet"))
    assert len(caches) == 1
    cached = pq.read_table(caches[0]).to_pylist()
    tok = AutoTokenizer.from_pretrained(resolve("bundled:smollm2-135m-instruct").path)
    ref = AutoModelForCausalLM.from_pretrained(perturbed_model, dtype=torch.float32).eval()
    exs = {ex.key: ex for ex in examples(open_source(data), tok, max_prompt_tokens=cfg.max_prompt_tokens,
                                        max_length=cfg.max_length)}

    def own(prompt, response):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0, :-1].double(), -1)
        return float(logp[len(prompt) - 1:].gather(-1, ids[0, len(prompt):, None]).sum())

    moved = 0
    for row in cached[:3]:
        ex = exs[row["key"]]
        assert abs(own(ex.prompt, ex.chosen) - row["ref_chosen_logp"]) < 1e-3
        assert abs(own(ex.prompt, ex.rejected) - row["ref_rejected_logp"]) < 1e-3
        moved += ex.shard_ref is not None and abs(ex.shard_ref[0] - row["ref_chosen_logp"]) > 1e-2
    assert moved  # the shards hold the policy's (CHES) log-probs; the reference's differ
    with pytest.raises(ValueError, match="parallel 'fsdp'.*fix:"):
        TrainConfig(reference="x", parallel="fsdp")
