"""Task runners for the build_dataset flow: every stage in this process, or the heavy ones on Ray.

With `distributed.runner: ray` the prompt-sharded stages (the prompt filter's embeddings, generate,
judge, self-critique, CHES, rationale) each run as `distributed.shards` Prefect tasks on a Ray cluster
through prefect-ray's
`RayTaskRunner`, every task reserving `cpus_per_task` / `gpus_per_task` (prefect_ray's
`remote_options`). Shard i does chunks i, i+k, ... of the stage (pipeline/core/store.py) and writes
checkpointed parts into the run's tables folder; the stage's ordinary call in the flow then finds
every part done and commits the table without loading a model. So a Ray run writes the rows a
local run writes, and a killed one resumes like a local one, with any shard count.

Prefect API: with PREFECT_API_URL set (a `prefect server start` that every node reaches, or Prefect
Cloud) the workers report there. Without it, the workers of a local Ray instance are pointed at
this process's ephemeral API, so all task runs of a flow run are recorded in one place.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time

from pipeline.config import DistributedConfig, RunConfig
from pipeline.errors import ConfigError

# passed to Ray workers (a remote cluster does not inherit this process's environment); secrets never are
WORKER_ENV = (
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "PREFSYNTH_CACHE",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
)


def task_runner(d: DistributedConfig):
    """A context manager giving the Ray task runner for `d`, or None for a local run."""
    if d.runner == "local":
        return contextlib.nullcontext(None)
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "distributed.runner: 'ray' needs prefect-ray and ray; fix: pip install 'prefsynth[ray]' "
            "or set distributed.runner=local"
        ) from exc

    class _Runner(RayTaskRunner):
        def __enter__(self):
            env = self.init_kwargs.setdefault("runtime_env", {}).setdefault("env_vars", {})
            env.update(_worker_env(local=self.address is None))
            return super().__enter__()

    init = {"include_dashboard": False}
    if d.address is None and d.num_cpus is not None:
        init["num_cpus"] = d.num_cpus
    return _Runner(address=d.address, init_kwargs=init)


def _worker_env(*, local: bool) -> dict[str, str]:
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env["PREFSYNTH_PROGRESS"] = "0"  # several workers' bars interleaved on one stream are noise
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    elif local:  # the flow already started an ephemeral API: report there rather than start one per worker
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        if server.running:
            env["PREFECT_API_URL"] = server.api_url
    return env


def worker_log(message: str) -> None:
    """A stage's `log` inside a Ray worker: the task run's Prefect logger (forwarded to the driver too)."""
    from prefect.logging import get_run_logger

    get_run_logger().info(message)


def run_stage(stage_task, runner, run_dir: str, cfg: RunConfig, *inputs, log):
    """Run a stage task. With a Ray `runner` the shards run there first (in parallel, each reserving
    its resources); the call in this process then only gathers their parts and commits the table."""
    if runner is None:
        return stage_task(run_dir, cfg, *inputs, log=log)
    from prefect_ray.context import remote_options

    started = time.perf_counter()

    d = cfg.distributed
    sig = inspect.signature(stage_task.fn)
    with remote_options(num_cpus=d.cpus_per_task, num_gpus=d.gpus_per_task):
        futures = [
            runner.submit(stage_task, sig.bind(run_dir, cfg, *inputs, log=worker_log, shard=(i, d.shards)).arguments)
            for i in range(d.shards)
        ]
    for future in futures:
        future.wait()
    for future in futures:
        future.result()  # raises the first shard's failure; finished shards' parts stay on disk
    meta = stage_task(run_dir, cfg, *inputs, log=log)
    # the work ran in the shards: the stage took the wall time of shards + gathering, not the gathering's
    return {**meta, "seconds": round(time.perf_counter() - started, 2)}
