"""The `eval` flow: a trained policy against a baseline on held-out prompts (pipeline/loop/evaluate.py), as one task.

Prefect adds the run record and an artifact with the figures; the work and its outputs are pipeline/loop/evaluate.py's.
Example on the bundled sample: `python -m flows.evaluate` (the bundled model against itself: every prompt ties).
"""

from __future__ import annotations

import logging

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.config import RunConfig
from pipeline.loop.evaluate import run_eval

log = logging.getLogger("prefsynth")

eval_task = task(run_eval, name="eval", cache_policy=NO_CACHE, persist_result=False)
FIGURES = ("win_rate", "win_low", "win_high", "lc_win_rate", "model_mean_tokens", "baseline_mean_tokens",
           "model_verifier_accuracy", "baseline_verifier_accuracy")


@flow(name="eval", log_prints=False, persist_result=False)
def evaluate(config: dict, model: str, out_dir: str, baseline: str | None = None, config_label: str = "defaults",
             prompts: str | None = None, answers_dir: str | None = None) -> dict:
    """Evaluate `model` against `baseline` (default generate.model) on `prompts` (a prompts parquet file; default
    eval.prompts or input.path); `answers_dir` keeps answers for later evaluations; returns the eval_summary row."""
    summary = eval_task(RunConfig.model_validate(config), model, out_dir, baseline=baseline, prompts=prompts,
                        config_label=config_label, answers_dir=answers_dir, log=log.info)
    create_table_artifact(key="prefsynth-eval", table=[{"figure": k, "value": summary[k]} for k in FIGURES],
                          description=f"prefsynth eval: {model} vs {summary['baseline']}")
    return summary


if __name__ == "__main__":
    from pipeline.config import load_config
    from pipeline.stages.prompts import bundled_data_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiny = load_config(bundled_data_dir() / "configs" / "tiny.yaml", ["eval.limit=4"])
    print(evaluate(tiny.model_dump(), tiny.generate.model, "runs/example-eval"))
