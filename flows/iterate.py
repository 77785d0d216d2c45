"""The `iterate` flow: rounds of build_dataset -> train -> eval, each round's policy generating the next round's
candidates (pipeline/loop/iterate.py has the plan, the round configs and the rounds table; this module only wires).

Each round is subflows that resume themselves: a rerun of the same command skips finished stages, resumes a
killed stage from its chunks and a killed training from its last checkpoint, and reads finished evaluations back.
Example on the bundled sample: `python -m flows.iterate` (2 tiny rounds under runs/example-iterate).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow

from flows.build_dataset import build_dataset
from flows.evaluate import evaluate
from flows.train import train
from pipeline.config import RunConfig
from pipeline.loop.iterate import (
    finished_eval,
    plan_prompts,
    round_config,
    round_dirs,
    round_row,
    stop_reason,
    train_config,
    write_card,
    write_rounds,
)

log = logging.getLogger("prefsynth")


def _eval(cfg: RunConfig, model: str, baseline: str, folder, held_out: str, config_label: str) -> dict:
    done = finished_eval(folder, model, baseline)
    if done is not None:
        log.info(f"iterate: {folder} already holds {model} vs {baseline}")
        return done
    return evaluate(cfg.model_dump(), model, str(folder), baseline=baseline, config_label=config_label,
                    prompts=held_out, answers_dir=str(Path(held_out).parent.parent / "answers"))


@flow(name="iterate", log_prints=False, persist_result=False)
def iterate(config: dict, out_dir: str, rounds: int, config_label: str = "defaults") -> list[dict]:
    """Run `rounds` rounds under `out_dir`; return the rounds table's rows."""
    cfg = RunConfig.model_validate(config)
    held_out, prompt_files = plan_prompts(cfg, out_dir, rounds)
    base = policy = cfg.generate.model
    rows = []
    for r in range(rounds):
        dirs = round_dirs(out_dir, r)
        log.info(f"iterate: round {r} of {rounds}, generating with {policy}")
        manifest = build_dataset(round_config(cfg, r, policy, prompt_files[r]).model_dump(), str(dirs["run"]))
        prov = train(train_config(cfg, policy).model_dump(), str(dirs["run"]), str(dirs["train"]))
        new = str(dirs["train"] / "model")
        vs_base = _eval(cfg, new, base, dirs["eval-base"], str(held_out), config_label)
        vs_prev = vs_base if policy == base else _eval(cfg, new, policy, dirs["eval-previous"], str(held_out),
                                                       config_label)
        rows.append(round_row(r, policy, new, dirs, manifest, prov, vs_base, vs_prev))
        if cfg.iterate.early_stop:
            rows[-1]["stop"] = stop_reason(rows[-1], prov)
        write_rounds(out_dir, rows)
        write_card(out_dir, rows, config=config_label)
        if rows[-1]["stop"]:
            log.info(f"iterate: stopping after round {r}: {rows[-1]['stop']}")
            break
        policy = new
    return rows


if __name__ == "__main__":
    from pipeline.config import load_config
    from pipeline.loop.iterate import rounds_text
    from pipeline.stages.prompts import bundled_data_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiny = load_config(bundled_data_dir() / "configs" / "tiny.yaml",
                       ["eval.limit=4", "iterate.train={steps: 2, batch_size: 2, learning_rate: 1e-4}"])
    print(rounds_text(iterate(tiny.model_dump(), "runs/example-iterate", 2)))
