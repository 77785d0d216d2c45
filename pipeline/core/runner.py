"""One way to be a stage: a declaration (`Stage`) and the one runner every stage goes through.

A stage declares its name, the tables it reads (with the columns it uses), the table it writes,
the upstream stages whose fingerprints enter its own, and its logic: either `build` (the whole
table at once) or `Chunked` (work on a prompt's rows at a time, plus a summary). `Stage.run` does
the rest, the same way for every stage:

  reuse      a complete, intact output for this fingerprint is returned; nothing is read or loaded
  read       `run.read(stage)` only for declared inputs; a missing column fails naming stage, table, column
  work       (Chunked) the rows not yet covered by checkpointed parts, `chunk` prompts at a time (all in one
             chunk when `one_chunk(cfg)`: an endpoint in batch mode makes one batch file per stage);
             models are built (`make_work`) only if a chunk is left; `shard=(i, k)`: one Ray shard's
             chunks, nothing committed (flows/distributed.py)
  usage      what the stage's requests cost (its ledger, `run.ledger()`) is booked with each part and summed
             into the meta's `usage`; a stage never merges usage itself
  summarise  (Chunked) the concatenated parts -> (table, meta)
  commit     the declared output columns are checked, then table, meta (the commit point), parts dropped

Backends, with the ledger, batch files and request log that every stage's requests go through, are built by
pipeline/backends/factory.py, never by a stage itself.

The order of stages is pipeline/stages/order.py; flows/build_dataset.py walks it. Checkpoint layout and
resume rules: pipeline/core/store.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.core import accounting, schemas
from pipeline.core.progress import bar
from pipeline.core.store import StageStore, done_rows, run_in_parts
from pipeline.errors import SchemaError

Work = Callable[[pa.Table], tuple[pa.Table, dict]]  # rows of some prompts -> (output rows, part extras)


class ContractError(SchemaError):
    """A stage read or wrote a table that breaks its declaration."""


@dataclass(frozen=True)
class Read:
    """An input: the committed table of stage `stage` (RUN/tables/<stage>.parquet), of schema `table`,
    of which this stage uses `columns` (checked when read)."""

    stage: str
    table: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Chunked:
    """How a chunked stage works. `rows`: the declared input (a stage name) whose rows are split by
    prompt_id into checkpointed parts, or a function of the run giving that table. `make_work(run)`
    loads models and returns the work function. `summarise(run, table, extras)` turns the
    concatenated parts (and each part's extras, in input order) into (table, meta). `skip(run)`:
    (table, meta) to commit without any work (a disabled stage), else None. `weight`: progress
    units per row; `chunk(run, rows)`: prompts per part (default publish.chunk_prompts); `one_chunk(cfg)`: the
    whole input in one part (an endpoint in batch mode: one batch file; the request log checkpoints).
    `before(run)`: called before the work, also when no chunk is left (pipeline/backends/factory.py's
    `opens_request_log`); what it opens with `run.keep` is closed before the summary."""

    rows: str | Callable[[StageRun], pa.Table]
    make_work: Callable[[StageRun], Work]
    summarise: Callable[[StageRun, pa.Table, list[dict]], tuple[pa.Table, dict]]
    unit: str = "prompt"
    weight: Callable[[RunConfig], int] = lambda cfg: 1
    chunk: Callable[[StageRun, pa.Table], int] | None = None
    skip: Callable[[StageRun], tuple[pa.Table, dict] | None] | None = None
    one_chunk: Callable[[RunConfig], bool] = lambda cfg: False
    before: Callable[[StageRun], None] | None = None


@dataclass(frozen=True)
class Stage:
    """A stage's declaration. `fingerprint(cfg, *upstream fingerprints)`; `fields(cfg)`: the config fields
    that change its output (they enter its fingerprint and the run's config fingerprint); `after`: the stages whose
    fingerprints it takes, in order (a function of the config when that depends on it; None for an
    input that is off). `build(run)` -> (table, meta), or None when a shard's part is done; or
    `chunked`. `when(cfg)`: whether the flow runs it at all. `shardable`: its chunks can run as Ray
    shards. `reused(run_dir, store, meta)`: a hook to upgrade an older complete output's meta."""

    name: str
    writes: str
    reads: tuple[Read, ...]
    fingerprint: Callable[..., str]
    fields: Callable[[RunConfig], dict] = lambda cfg: {}
    after: tuple[str, ...] | Callable[[RunConfig], tuple[str | None, ...]] = ()
    build: Callable[[StageRun], tuple[pa.Table, dict] | None] | None = None
    chunked: Chunked | None = None
    when: Callable[[RunConfig], bool] = lambda cfg: True
    shardable: bool = False
    reused: Callable[[Any, StageStore, dict], dict] | None = None

    def __post_init__(self):
        if (self.build is None) == (self.chunked is None):
            raise TypeError(f"stage {self.name}: declare exactly one of build= or chunked=")
        for r in self.reads:
            unknown = [c for c in r.columns if c not in schemas.SCHEMAS[r.table].names]
            if unknown:
                raise TypeError(f"stage {self.name}: reads {r.table}.{unknown[0]}, which the {r.table} schema lacks")

    def upstream(self, cfg: RunConfig) -> tuple[str | None, ...]:
        return self.after(cfg) if callable(self.after) else self.after

    def run(self, run_dir, cfg: RunConfig, *upstream: str | None, log=print, shard: tuple[int, int] | None = None):
        """Run, resume or skip the stage under `run_dir`; return its meta. `upstream`: the fingerprints of
        the stages in `after`. `shard=(i, k)`: only that shard's chunks; returns the shard meta."""
        store = StageStore(run_dir, self.name, self.writes, self.fingerprint(cfg, *upstream))
        if (meta := store.reuse(log)) is not None:
            return self.reused(run_dir, store, meta) if self.reused else meta
        run = StageRun(self, run_dir, cfg, store, log, shard, upstream)
        try:
            out = self.build(run) if self.build is not None else self._chunked(run)
            if out is not None and self.build is not None:
                out = (out[0], run.with_usage(out[1], []))
        finally:
            run.close()
        if shard is not None:  # a shard's parts are on disk; the gathering call commits
            return store.shard_meta(shard)
        if out is None:
            raise ContractError(f"stage {self.name}: returned no (table, meta) to commit; a stage returns None "
                                "only for a shard")
        table, meta = out
        missing = [c for c in schemas.SCHEMAS[self.writes].names if c not in table.column_names]
        if missing:
            raise ContractError(
                f"stage {self.name}: its {self.writes} table lacks declared output column '{missing[0]}'; "
                f"fix: the stage's summary must return every column of schema {self.writes}"
            )
        return store.finish(table, {"seconds": run.seconds(), **meta})

    def _chunked(self, run: StageRun):
        c = self.chunked
        if c.skip is not None and (out := c.skip(run)) is not None:
            return out
        rows = run.read(c.rows) if isinstance(c.rows, str) else c.rows(run)
        if c.before is not None:
            c.before(run)
        weight = c.weight(run.cfg)
        initial = weight * done_rows(run.store, rows)
        with bar(total=weight * rows.num_rows, initial=initial, desc=self.name, unit=c.unit) as run.pbar:
            if c.one_chunk(run.cfg):
                chunk = rows.num_rows
            else:
                chunk = c.chunk(run, rows) if c.chunk is not None else run.cfg.publish.chunk_prompts
            parts = run_in_parts(run.store, rows, max(chunk, 1), lambda: run.booking(c.make_work(run)), run.log,
                                 shard=run.shard)
        run.close()  # request logs end before the summary
        if run.shard is not None:
            return None
        extras = [info for _, info in parts]
        table, meta = c.summarise(run, schemas.concat([t for t, _ in parts], self.writes), extras)
        return table, run.with_usage(meta, extras)


class StageRun:
    """One run of one stage: what a declaration's functions get (config, inputs, log, progress, shard)."""

    def __init__(self, stage: Stage, run_dir, cfg: RunConfig, store: StageStore, log, shard, upstream=()):
        self.stage, self.run_dir, self.cfg, self.store, self.log, self.shard = stage, run_dir, cfg, store, log, shard
        self.upstream = upstream  # the fingerprints of the stages in `after`
        self.pbar = None  # the progress bar while chunks run (its `advance` is the work's progress callback)
        self._started = time.perf_counter()
        self._ledger = None
        self._tables: dict[str, pa.Table] = {}
        self._kept: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []

    def seconds(self) -> float:
        return round(time.perf_counter() - self._started, 2)

    @property
    def writer(self) -> str | None:
        """A request log's writer name: concurrent shards each append to their own file."""
        return None if self.shard is None else f"shard-{self.shard[0]}-of-{self.shard[1]}"

    def read(self, stage: str) -> pa.Table:
        """The committed table of a declared input, its declared columns checked."""
        if stage in self._tables:
            return self._tables[stage]
        decl = next((r for r in self.stage.reads if r.stage == stage), None)
        if decl is None:
            raise ContractError(f"stage {self.stage.name}: reads tables/{stage}.parquet, not declared in its reads=")
        path = Path(self.run_dir) / "tables" / f"{stage}.parquet"
        if not path.exists():
            raise ContractError(
                f"stage {self.stage.name}: its input {path} ({decl.table} table) does not exist; fix: run the "
                f"'{stage}' stage first (prefsynth run does, in order)"
            )
        names = pq.read_schema(path).names
        later = schemas.ADDED_LATER.get(decl.table, ())  # read as null from a table of an older run
        missing = [c for c in decl.columns if c not in names and c not in later]
        if missing:
            raise ContractError(
                f"stage {self.stage.name}: reads column '{missing[0]}' of the {decl.table} table {path}, which "
                f"lacks it; fix: rebuild that table with this prefsynth (delete tables/{stage}.json and rerun)"
            )
        self._tables[stage] = schemas.read_table(path, decl.table)
        return self._tables[stage]

    def ledger(self) -> accounting.Ledger:
        """The stage's token/cost ledger (pipeline/core/accounting.py), counting the parts already done."""
        if self._ledger is None:
            done = self.store.part_infos()
            self._ledger = accounting.Ledger.for_stage(self.run_dir, self.cfg, self.stage.name, done)
        return self._ledger

    def keep(self, key: str, make: Callable[[], Any], close: Callable[[Any], None] | None = None):
        """A resource of this stage run (a request log), made once and closed when the work ends."""
        if key not in self._kept:
            self._kept[key] = make()
            if close is not None:
                self._closers.append(lambda: close(self._kept[key]))
        return self._kept[key]

    def booking(self, work: Work) -> Work:
        """`work` that books the requests of each chunk with the chunk's part (unless the work did)."""

        def booked(rows: pa.Table):
            table, extras = work(rows)
            if self._ledger is not None and "usage" not in extras:
                extras = {**extras, "usage": self._ledger.take()}
            return table, extras

        return booked

    def with_usage(self, meta: dict, extras: list[dict]) -> dict:
        """The meta with `usage`: the parts' booked requests plus what the ledger holds now, when the stage had a
        ledger or a part booked some (a meta the stage filled itself is kept)."""
        booked = [e.get("usage") for e in extras if e.get("usage") is not None]
        if "usage" in meta or (self._ledger is None and not booked):
            return meta
        now = self._ledger.take() if self._ledger is not None else None
        return {**meta, "usage": accounting.merge(*booked, now)}

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        self._kept.clear()
