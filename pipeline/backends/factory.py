"""The one place a stage builds the backends it sends requests through, from its config section.

Inside a stage run every backend gets the same three things, so no stage can forget one:
  meter      the stage's ledger (pipeline/core/accounting.py): tokens and dollars booked per request, and a
             request that could pass `budget.usd` refused
  batch_dir  RUN/requests/batches, where an endpoint in batch mode writes its batch files
  log        RUN/requests/<stage>.jsonl (pipeline/backends/request_log.py), when the section asks for it:
             a resumed stage re-sends nothing that was answered

`generator` builds on `generate.*` (backend, dtype, engine options `generate.vllm`, endpoint options
`generate.openai`, `generate.request_log`): candidate generation, prompt synthesis, simulated conversations,
self-critique revisions and `prefsynth eval` (which runs outside a stage: no meter, no log). `judge_generator`
builds the judge model on `judge.backend` (judgments, rationales); its requests are logged on 'openai'.
`served(run, logged=...)` gives the same three to code that builds its own clients (the judge ensemble).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pipeline.backends import GeneratorBackend, make_backend, resolve_backend_name
from pipeline.backends.request_log import LoggedBackend, RequestLog

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.core.runner import StageRun


def request_log(run: StageRun) -> RequestLog:
    """The stage's request log (one file per Ray shard), opened once per stage run and closed when its work ends."""
    path = f"{run.run_dir}/requests/{run.stage.name}.jsonl"
    return run.keep("request_log", lambda: RequestLog(path, writer=run.writer), close=RequestLog.close)


def opens_request_log(when: Callable[[RunConfig], bool]) -> Callable[[StageRun], None]:
    """A `Chunked(before=...)` hook: open the log before the work, also when no chunk is left (a gathering call
    after Ray shards then writes the stage's own, empty, file)."""

    def before(run: StageRun) -> None:
        if when(run.cfg):
            request_log(run)

    return before


def served(run: StageRun | None, *, logged: bool) -> dict:
    """meter, batch_dir and log (None when not `logged`) for a backend built inside `run`; all None outside one."""
    if run is None:
        return {"meter": None, "batch_dir": None, "log": None}
    return {"meter": run.ledger(), "batch_dir": f"{run.run_dir}/requests/batches",
            "log": request_log(run) if logged else None}


def generates_in_batch(cfg: RunConfig) -> bool:
    """Whether `generator` backends send batch files (generate.openai.mode 'batch'): a stage then runs as one
    chunk (`Chunked(one_chunk=...)`), so its requests make one batch file."""
    return resolve_backend_name(cfg.generate.backend) == "openai" and cfg.generate.openai.mode == "batch"


def generator(cfg: RunConfig, model: str, *, field: str, batch_size: int, run: StageRun | None = None
              ) -> GeneratorBackend:
    """A backend on `model` as `generate.*` configures it; `field` names the config key in errors."""
    g = cfg.generate
    name = resolve_backend_name(g.backend)
    opts = served(run, logged=g.request_log)
    backend = make_backend(name, model, dtype=g.dtype, batch_size=batch_size, field=field, vllm=g.vllm.model_dump(),
                           openai=g.openai.model_dump(), meter=opts["meter"], batch_dir=opts["batch_dir"])
    return backend if opts["log"] is None else LoggedBackend(backend, opts["log"], backend_name=name)


def judge_generator(cfg: RunConfig, batch_size: int, *, run: StageRun | None = None) -> GeneratorBackend:
    """A generation backend on the judge model (judgments, rationales) on judge.backend; on 'openai' (endpoint
    options judge.openai) its requests are metered and logged."""
    if cfg.judge.backend == "openai":
        from pipeline.backends.openai_backend import endpoint_backend

        opts = served(run, logged=True)
        backend = endpoint_backend(cfg.judge_model, cfg.judge.openai, field="judge.openai", meter=opts["meter"],
                                   batch_dir=opts["batch_dir"])
        return backend if opts["log"] is None else LoggedBackend(backend, opts["log"], backend_name="openai")
    if cfg.judge.backend == "vllm":
        from pipeline.backends.vllm_backend import shared

        return shared(cfg.judge_model, dtype=cfg.generate.dtype, engine=cfg.generate.vllm.model_dump(),
                      field="judge.model")
    from pipeline.backends.hf import TransformersBackend

    return TransformersBackend(cfg.judge_model, dtype=cfg.generate.dtype, batch_size=batch_size, field="judge.model")
