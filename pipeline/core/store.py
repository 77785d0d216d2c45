"""Where a stage's output lives in a run directory, and how it survives a crash.

Layout under RUN/tables/:
  <stage>.parquet            the stage's complete table
  <stage>.json               its meta: fingerprint, rows, seconds, funnel, models (written last)
  <stage>.parts-<fp>/        checkpointed chunks while the stage runs:
      part-000000016.parquet rows for a set of prompts (written atomically); the number is the
                             input position of the part's first prompt, so names sort in input order
      part-000000016.json    the prompt_ids that part covers, plus stage extras (written after it)

A stage is complete when its meta exists with the current fingerprint and the sha256 of the table
it records (since prefsynth 0.1 metas carry one) matches the file: a table altered or damaged on
disk, or a meta that no longer parses, makes the stage run again (the log says why) instead of
feeding bad rows to the next stage. A part counts only once its JSON exists, so a kill between the
two files just redoes that chunk. Parts are keyed by
prompt_id, not by chunk number, so resuming with another chunk size neither redoes nor
duplicates work. Parts of another fingerprint sit in their own folder and are never mixed in.

Distributed stages (flows/distributed.py): shard i of k does chunks i, i+k, ... of a plan cut
from *all* prompts, so shards that start at different times never overlap; several processes
can write one parts folder at once because no two chunks share a first prompt. The stage's
ordinary (unsharded) call then finds every part done, loads no model and commits the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schemas
from pipeline.core.rowindex import RowIndex
from pipeline.errors import InputError, disk_full, no_space


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text(path: Path, text: str) -> None:
    """Atomic text write (temp file + rename): a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            raise no_space(path, exc) from None
        raise


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temp file + rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class StageStore:
    def __init__(self, run_dir: str | os.PathLike, stage: str, table: str, fingerprint: str):
        self.dir = Path(run_dir) / "tables"
        self.stage, self.table_name, self.fingerprint = stage, table, fingerprint
        self.table_path = self.dir / f"{stage}.parquet"
        self.meta_path = self.dir / f"{stage}.json"
        self.parts_dir = self.dir / f"{stage}.parts-{fingerprint}"

    # -- complete output -------------------------------------------------------------------
    def _checked_meta(self) -> tuple[dict | None, str | None]:
        """(meta of a complete, intact output for this fingerprint, else None; why it is not usable)."""
        for path in (self.table_path, self.meta_path):
            if (path.exists() or path.is_symlink()) and not path.is_file():  # else a traceback after the work
                raise InputError(f"{path} is not a file but a folder or a broken link where the {self.stage} "
                                 f"stage's table belongs; fix: remove it (rm -r '{path}') and rerun")
        if not (self.meta_path.exists() and self.table_path.exists()):
            return None, None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"its meta {self.meta_path.name} is unreadable ({exc})"
        if not isinstance(meta, dict) or meta.get("fingerprint") != self.fingerprint:
            return None, None
        if "sha256" in meta:
            if sha256(self.table_path) != meta["sha256"]:
                return None, f"{self.table_path.name} differs from the table its meta recorded (sha256 mismatch)"
        else:  # a meta from before hashes were recorded: at least the parquet footer and row count
            try:
                rows = pq.read_metadata(self.table_path).num_rows
            except Exception as exc:  # pyarrow raises several types for a broken footer
                return None, f"{self.table_path.name} is not readable parquet ({exc})"
            if rows != meta.get("rows"):
                return None, f"{self.table_path.name} has {rows} rows, its meta says {meta.get('rows')}"
        return meta, None

    def meta(self) -> dict | None:
        """The meta of a complete, intact output for this fingerprint, else None."""
        return self._checked_meta()[0]

    def reuse(self, log) -> dict | None:
        """The complete output's meta, logged as reused; None when the stage must run (logged with the reason
        when an output exists but is damaged)."""
        meta, problem = self._checked_meta()
        if meta is not None:
            log(
                f"{self.stage}: complete output exists for fingerprint {self.fingerprint} ({meta['rows']} rows), "
                "not redone"
            )
        elif problem is not None:
            log(f"{self.stage}: {problem}; rebuilding the stage")
        return meta

    def shard_meta(self, shard: tuple[int, int]) -> dict:
        """What a shard task returns: its parts are on disk, the stage is committed by the gathering call."""
        return {"stage": self.stage, "shard": list(shard)}

    def read(self) -> pa.Table:
        return schemas.read_table(self.table_path, self.table_name)

    def finish(self, table: pa.Table, meta: dict) -> dict:
        """Write the complete table, then its meta (the commit point), then drop the parts."""
        meta = {**meta, "stage": self.stage, "fingerprint": self.fingerprint, "rows": table.num_rows}
        if self.meta_path.exists():
            self.meta_path.unlink()  # an old meta must not vouch for the new table mid-write
        schemas.write_table(table, self.table_path, self.table_name)
        meta["sha256"] = sha256(self.table_path)
        write_json(self.meta_path, meta)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return meta

    # -- checkpointed parts ------------------------------------------------------------------
    def _infos(self) -> list[tuple[Path, dict]]:
        """(parquet path, JSON info) of every complete part."""
        out = []
        for info in sorted(self.parts_dir.glob("part-*.json")):
            data = self.parts_dir / (info.stem + ".parquet")
            if data.exists():
                try:
                    out.append((data, json.loads(info.read_text())))
                except ValueError:  # written atomically, so only outside damage: redo that chunk
                    continue
        return out

    def part_infos(self) -> list[dict]:
        """The JSON info of every complete part (keys and stage extras), without reading a table."""
        return [info for _, info in self._infos()]

    def iter_parts(self):
        """(table, info) of every complete part, read one at a time (in input order)."""
        for data, info in self._infos():
            yield schemas.read_table(data, self.table_name), info

    def parts(self) -> list[tuple[pa.Table, dict]]:
        return list(self.iter_parts())

    def done_keys(self) -> set[str]:
        """Keys covered by complete parts (reads only the small JSON files)."""
        return {k for _, info in self._infos() for k in info["keys"]}

    def write_part(self, table: pa.Table, keys: list[str], extra: dict | None = None, *, position: int) -> None:
        """`position`: the input position of keys[0]; unique among unfinished chunks, so it names the part."""
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{position:09d}"
        schemas.write_table(table, self.parts_dir / f"{name}.parquet", self.table_name)
        write_json(self.parts_dir / f"{name}.json", {"keys": keys, **(extra or {})})


@contextmanager
def run_lock(run_dir: str | os.PathLike):
    """Hold RUN/.prefsynth.lock for the whole run: two runs must not write one directory at once.
    It is an OS file lock, so a killed run releases it and the re-run can resume."""
    from filelock import FileLock, Timeout

    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / ".prefsynth.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(
            f"another prefsynth run is writing {path}; fix: wait for it to finish or pass another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def done_rows(store: StageStore, table: pa.Table) -> int:
    """Rows of `table` whose prompt_id finished parts already cover (a progress bar's start)."""
    done = store.done_keys()
    return sum(p in done for p in table.column("prompt_id").to_pylist())


def run_in_parts(
    store: StageStore,
    table: pa.Table,
    chunk_size: int,
    make_work,
    log=None,
    *,
    shard: tuple[int, int] | None = None,
    gather: bool = True,
    positions: dict[str, int] | None = None,
) -> list[tuple[pa.Table, dict]]:
    """Run `work(rows of table for some prompts) -> (output table, extra)` over the prompts (in table
    order) that no finished part covers, `chunk_size` prompts at a time, checkpointing each chunk;
    return every part (old and new). `make_work()` builds `work` (loads models) once, and only if a
    chunk is left to do. `shard=(i, k)`: only this shard's chunks of the all-prompts plan; returns
    [] (the unsharded call that follows gathers). `gather=False`: return [] too, for a caller that reads
    the parts itself (`iter_parts`, one at a time). `positions`: key -> number naming the part that starts
    with it, for a `table` that is a subset of an input that changes between runs (default: the place in
    `table`). `log` gets one line saying what is reused."""
    by_key = RowIndex(table)  # a prompt may own several rows (candidates, pairs); grouped once, not per chunk
    keys = by_key.keys
    position = positions if positions is not None else {k: i for i, k in enumerate(keys)}
    done = store.done_keys()
    if shard is None:
        plan = chunks([k for k in keys if k not in done], chunk_size)
    else:
        index, count = shard
        plan = [[k for k in c if k not in done] for c in chunks(keys, chunk_size)[index::count]]
    plan = [c for c in plan if c]
    if log is not None and done:
        n_done = len(done & set(keys))
        where = f" (shard {shard[0]} of {shard[1]})" if shard else ""
        log(
            f"{store.stage}: resuming{where}, {n_done} of {len(keys)} prompts already done in checkpointed parts"
            if plan
            else f"{store.stage}{where}: nothing left to do, {n_done} of {len(keys)} prompts done in "
            "checkpointed parts"
        )
    work = make_work() if plan else None
    for chunk in plan:
        out, extra = work(by_key.take(chunk))
        store.write_part(out, chunk, extra, position=position[chunk[0]])
    return [] if shard is not None or not gather else store.parts()
