"""The `build_dataset` flow: the stages of pipeline/stages/order.py in their order (synth when the input
is synthesised -> prompts -> prompt_filter -> self_critique -> generate -> judge -> pair -> ches ->
rationale), then publish. With `distributed.runner: ray` the shardable stages' prompt shards run on
a Ray cluster first (flows/distributed.py).

Each stage is a Prefect task that only calls its declared runner (pipeline/core/runner.py), which
decides to skip (complete output for its fingerprint), resume (checkpointed parts) or run. Tasks
pass paths and fingerprints, never models or tables (everything between stages is on disk).
Run it as an example on the bundled sample: `python -m flows.build_dataset`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.distributed import run_stage, task_runner
from pipeline.config import RunConfig
from pipeline.core.funnel import unit_label
from pipeline.core.rundir import check_kind
from pipeline.core.store import run_lock
from pipeline.errors import TransientBackendError
from pipeline.publish import shards as publish
from pipeline.publish.incremental import increment_config, merge
from pipeline.publish.incremental import plan as incremental_plan
from pipeline.stages.order import STAGES

log = logging.getLogger("prefsynth")


def _transient(task, task_run, state) -> bool:
    """Retry only transient backend errors (timeouts, 429/5xx, dropped connections); a bug or bad
    input fails at once. A retried stage resumes from its checkpointed parts."""
    return isinstance(state.data, TransientBackendError)


OPTIONS = dict(cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[5, 20, 60],
               retry_condition_fn=_transient)


def _run_stage(run_dir: str, cfg: RunConfig, upstream: tuple, stage: str, *, log=None,
               shard: tuple[int, int] | None = None) -> dict:
    """A stage task's body: the declared stage `stage` through its runner (pipeline/core/runner.py), given the
    fingerprints of its upstream stages. Module-level, so Ray workers import it rather than unpickle it."""
    return STAGE_BY_NAME[stage].run(run_dir, cfg, *upstream, log=log or print, shard=shard)


STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
STAGE_TASKS = {stage.name: task(_run_stage, name=stage.name, **OPTIONS) for stage in STAGES}  # one per stage
generate_task = STAGE_TASKS["generate"]
publish_task = task(publish.run, name="publish", **OPTIONS)


@flow(name="build_dataset", log_prints=False, persist_result=False)
def build_dataset(config: dict, out_dir: str, given: dict | None = None, incremental: bool = False) -> dict:
    """Build a preference dataset under `out_dir`; return the manifest. `incremental`: grow the
    dataset with the source's new prompts only (pipeline/publish/incremental.py)."""
    cfg = RunConfig.model_validate(config)
    with run_lock(out_dir):
        check_kind(out_dir, incremental=incremental)  # a plain run must not replace a grown dataset, nor the reverse
        if not incremental:
            return _build(cfg, out_dir, given, log.info)
        out = Path(out_dir)
        todo = incremental_plan(out, cfg)
        if todo.edited:
            log.info(
                f"{len(todo.edited)} prompt(s) already processed have new text under the same prompt_id and are "
                f"not re-processed (first: {todo.edited[0]}); give an edited prompt a new prompt_id to process it"
            )
        if todo.inc_dir is None:
            m = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
            log.info(
                f"nothing new: every prompt of {cfg.input.path} is already in {out_dir} "
                f"({m.get('rows', {}).get('pairs', 0)} pairs from {len(m.get('increments', []))} increments)"
            )
            return {
                **m,
                "nothing_new": True,
                "edited_prompts_skipped": {"count": len(todo.edited), "prompt_ids": todo.edited[:50]},
            }
        log.info(f"increment {todo.inc_dir.name}: {todo.new} new prompts")
        inc_manifest = _build(increment_config(cfg, todo.inc_dir), str(todo.inc_dir), given, log.info)
        return merge(out, todo.inc_dir, inc_manifest, cfg, given, edited=todo.edited)


def _build(cfg: RunConfig, out_dir: str, given: dict | None, say) -> dict:
    started = time.time()
    progress = create_progress_artifact(
        progress=0.0, key="prefsynth-progress", description=f"prefsynth {cfg.name}: share of stages done"
    )
    steps = len(STAGES) + 1

    def done(n):  # stage progress as a Prefect progress artifact (percent of stages finished)
        update_progress_artifact(progress, progress=round(100 * n / steps, 1))

    metas: dict[str, dict] = {}
    with task_runner(cfg.distributed) as runner:  # None: local; else the shardable stages' shards go to Ray
        for n, stage in enumerate(STAGES, 1):  # the order is pipeline/stages/order.py's
            if stage.when(cfg):
                upstream = tuple(None if u is None else metas[u]["fingerprint"] for u in stage.upstream(cfg))
                stage_task = STAGE_TASKS[stage.name]
                metas[stage.name] = (
                    run_stage(stage_task, runner, out_dir, cfg, upstream, stage.name, log=say)
                    if stage.shardable
                    else stage_task(out_dir, cfg, upstream, stage.name, log=say)
                )
            done(n)
    manifest = publish_task(out_dir, cfg, metas, given=given, started_at=started, log=say)
    done(steps)
    create_markdown_artifact(
        key="prefsynth-summary",
        markdown=f"```\n{publish.summary(manifest, out_dir)}\n```",
        description=f"prefsynth run {cfg.name}",
    )
    rows = [
        {
            "stage": f["stage"],
            "filter": f["filter"],
            "unit": unit_label(f),
            "rows_in": f["rows_in"],
            "rows_out": f["rows_out"],
            "reason": f["reason"],
        }
        for f in manifest["funnel"]
    ]  # one set of columns
    create_table_artifact(key="prefsynth-funnel", table=rows, description="drop funnel")
    return manifest


if __name__ == "__main__":
    from pipeline.config import load_config
    from pipeline.stages.prompts import bundled_data_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tiny = load_config(bundled_data_dir() / "configs" / "tiny.yaml")
    manifest = build_dataset(tiny.model_dump(), "runs/example-tiny")
    print(f"{manifest['rows']['pairs']} pairs in runs/example-tiny/pairs")
