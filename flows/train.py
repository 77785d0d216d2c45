"""The `train`, `train_online`, `train_rm` and `build_and_train` flows: DPO (offline on a run's shards, or online on
its prompts and judges) or a reward model.

`train` wraps pipeline.train.train in one task (the trainer checkpoints and resumes itself, so a
re-run after a crash continues from its last checkpoint); `build_and_train` runs `build_dataset`
and then trains on the shards it published. Example on the bundled sample:
`python -m flows.train` (builds runs/example-tiny if missing, trains a few steps on CPU).
"""

from __future__ import annotations

import logging

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.loop.online import train_online as train_online_core
from pipeline.train import TrainConfig
from pipeline.train.config import RMConfig
from pipeline.train.rm_trainer import train_rm as train_rm_core
from pipeline.train.trainer import train as train_core

log = logging.getLogger("prefsynth")

train_task = task(train_core, name="train", cache_policy=NO_CACHE, persist_result=False)
train_online_task = task(train_online_core, name="train-online", cache_policy=NO_CACHE, persist_result=False)
train_rm_task = task(train_rm_core, name="train-rm", cache_policy=NO_CACHE, persist_result=False)


def _report(prov: dict) -> None:
    rows = [{"metric": k, "value": round(v, 6)} for k, v in sorted(prov["final_eval"].items())]
    create_table_artifact(key="prefsynth-train", table=rows or [{"metric": "steps", "value": prov["steps"]}],
                          description=f"prefsynth train: {prov['steps']} steps, losses {prov['losses']}")


@flow(name="train", log_prints=False, persist_result=False)
def train(config: dict, data: str, out_dir: str) -> dict:
    """Train `config['model']` on the pairs at `data`; return the provenance record."""
    prov = train_task(TrainConfig.model_validate(config), data, out_dir, log=log.info)
    _report(prov)
    return prov


@flow(name="train_online", log_prints=False, persist_result=False)
def train_online(config: dict, data: str, out_dir: str) -> dict:
    """Online DPO/IPO: sample from the policy, label with `data`'s judges, train, step after step."""
    prov = train_online_task(TrainConfig.model_validate(config), data, out_dir, log=log.info)
    on = prov["online"]
    create_table_artifact(key="prefsynth-train-online",
                          table=[{"metric": k, "value": on[k]} for k in ("pairs", "judge_calls")],
                          description=f"prefsynth train --online: {prov['steps']} steps")
    return prov


@flow(name="train_rm", log_prints=False, persist_result=False)
def train_rm(config: dict, data: str, out_dir: str) -> dict:
    """Train a Bradley-Terry reward model on `config['model']` from the pairs at `data`; return the provenance."""
    prov = train_rm_task(RMConfig.model_validate(config), data, out_dir, log=log.info)
    rows = [{"metric": k, "value": round(v, 6)} for k, v in sorted(prov["final_eval"].items())]
    create_table_artifact(key="prefsynth-train-rm", table=rows or [{"metric": "steps", "value": prov["steps"]}],
                          description=f"prefsynth train-rm: {prov['steps']} steps")
    return prov


@flow(name="build_and_train", log_prints=False, persist_result=False)
def build_and_train(config: dict, train_config: dict, out_dir: str, train_out: str) -> dict:
    """Build the dataset under `out_dir`, then train on its shards into `train_out`."""
    from flows.build_dataset import build_dataset

    build_dataset(config, out_dir)
    return train(train_config, out_dir, train_out)


if __name__ == "__main__":
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.stages.prompts import bundled_data_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiny = load_config(bundled_data_dir() / "configs" / "tiny.yaml")
    prov = build_and_train(tiny.model_dump(), TrainConfig(steps=4, batch_size=2, micro_batch_size=2,
                                                          learning_rate=1e-5, eval_every=2).model_dump(),
                           "runs/example-tiny", "runs/example-tiny-dpo")
    print(f"trained {prov['steps']} steps: {Path(prov['model']['path'])}")
