"""`prefsynth serve`: the build_dataset flow as a scheduled Prefect deployment that grows a dataset.

Each scheduled run is incremental (pipeline/publish/incremental.py): it processes only prompts not yet in
OUT and ends in seconds when nothing is new. `limit=1` on the runner and the run lock keep runs of
one OUT serial. Schedules need a Prefect API with its scheduler (`prefect server start`, or Prefect
Cloud): set PREFECT_API_URL. The ephemeral API that `prefsynth run` uses has no scheduler.
"""

from __future__ import annotations

from prefect import serve as prefect_serve

from flows.build_dataset import build_dataset


def deployment(config: dict, out_dir: str, *, name: str, cron: str | None = None, interval: float | None = None):
    return build_dataset.to_deployment(name=name, cron=cron, interval=interval, concurrency_limit=1,
                                       parameters={"config": config, "out_dir": out_dir, "incremental": True},
                                       description=f"prefsynth: grow {out_dir} with new prompts")


def serve(config: dict, out_dir: str, *, name: str, cron: str | None = None, interval: float | None = None) -> None:
    """Block, running the deployment's scheduled runs one at a time (Ctrl-C stops)."""
    prefect_serve(deployment(config, out_dir, name=name, cron=cron, interval=interval), limit=1)
