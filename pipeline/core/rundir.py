"""Reading a run directory: what kind it is, its manifest and its shards, verified before use.

`prefsynth card`, `inspect`, `push` and `train` read runs only through here, so a missing,
truncated or altered shard, a manifest of the wrong shape, or a shard path that leaves the run
directory is always the same clear error naming the file, never a half-read dataset. Shards are
checked against the sha256 and row count in manifest.json. The prompt filter's drops are read
here too: the manifest counts them and names their tables.

A run directory is one of two kinds, and `check_kind` refuses (before any model loads) the mode
that would damage the other: a plain run (`prefsynth run`: tables/, pairs/) or a growing dataset
(`prefsynth run --incremental` / `serve`: increments/, shards named train-inc*).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.core import schemas
from pipeline.core.store import sha256
from pipeline.errors import InputError


class _Shard(BaseModel):
    path: str
    rows: int
    sha256: str


class _FunnelStep(BaseModel):
    stage: str
    filter: str
    rows_in: int
    rows_out: int


class _Rows(BaseModel):
    prompts: int
    candidates: int
    judgments: int
    pairs: int


class _Manifest(BaseModel):
    """The keys card, inspect, push and train read; anything else may be there too."""

    model_config = ConfigDict(extra="allow")
    name: str
    created_at: str
    code_version: str
    config: dict
    config_fingerprint: str
    models: dict
    rows: _Rows
    funnel: list[_FunnelStep]
    shards: list[_Shard]
    ranked_shards: list[_Shard] = []


def load_manifest(run_dir) -> dict:
    """The run's manifest.json, checked for the shape readers rely on."""
    path = Path(run_dir) / "manifest.json"
    fix = f"fix: re-run `prefsynth run --out {run_dir}` (the same command) to rewrite it"
    if not Path(run_dir).is_dir():
        raise InputError(f"{run_dir} is not a folder; fix: pass the --out folder of a `prefsynth run`")
    if not path.is_file():
        raise InputError(f"{path} not found: {run_dir} is not a finished prefsynth run; "
                         f"fix: run `prefsynth run --out {run_dir}` first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a JSON {type(data).__name__}, not a prefsynth manifest object; {fix}")
    try:
        _Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise InputError(f"{path} is not a prefsynth manifest: key {key!r} {err['msg'].lower()}; {fix}") from None
    for key in ("shards", "ranked_shards"):
        for shard in data.get(key, []):
            shard_path(run_dir, shard["path"])
    return data


def shard_path(run_dir, rel: str) -> Path:
    """A manifest's shard path, refused when it leaves the run directory (absolute, or through '..')."""
    root = Path(run_dir).resolve()
    full = (root / rel).resolve()
    if Path(rel).is_absolute() or not full.is_relative_to(root):
        raise InputError(
            f"{Path(run_dir) / 'manifest.json'} lists shard path {rel!r}, which is outside {run_dir}; "
            "fix: a manifest lists shards relative to its run directory; re-run `prefsynth run` to rewrite it"
        )
    return full


def run_kind(out) -> str | None:
    """'incremental' (a growing dataset), 'plain' (an ordinary run) or None (new or empty folder)."""
    out = Path(out)
    manifest = out / "manifest.json"
    data = None
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
    if (out / "increments").is_dir() or (isinstance(data, dict) and data.get("incremental")):
        return "incremental"
    if (out / "tables").is_dir() or manifest.exists():
        return "plain"
    return None


def check_kind(out, *, incremental: bool) -> None:
    """Refuse a mode that would damage what `out` already holds (a growing dataset vs a plain run)."""
    check_tables(out)
    kind = run_kind(out)
    if incremental and kind == "plain":
        raise InputError(
            f"--out {out} holds a plain run (tables/ from `prefsynth run` without --incremental); "
            "growing it would mix two layouts; fix: drop --incremental to update that run, or pass a new "
            "--out for the growing dataset"
        )
    if not incremental and kind == "incremental":
        raise InputError(
            f"--out {out} is a growing dataset (increments/ from `prefsynth run --incremental`); a plain "
            "run would replace its shards; fix: add --incremental to grow it, or pass another --out"
        )


def check_tables(out) -> None:
    """Every stage table and meta under OUT/tables must be a plain file: a folder (or a link to one) in its place
    fails the stage's write after its work is done, or its read with a traceback."""
    tables = Path(out) / "tables"
    if not tables.is_dir():
        return
    for entry in sorted(tables.iterdir()):
        if entry.suffix in (".parquet", ".json") and not entry.is_file():
            raise InputError(f"{entry} is not a file but a {'folder' if entry.is_dir() else 'broken link'} where a "
                             f"stage table belongs; fix: remove it (rm -r '{entry}') and rerun: that stage is redone")


def check_out_dir(out) -> None:
    """`out` must be (or be creatable as) a writable folder: checked before any model loads."""
    if not str(out).strip():  # Path("") is the current folder: an empty --out would write there
        raise InputError(f"--out {str(out)!r} is empty; fix: pass a folder path (or leave --out out where the "
                         "command has a default)")
    out = Path(out)
    try:
        out.resolve()
    except (RuntimeError, OSError) as exc:  # a symbolic link loop (RuntimeError in Python 3.11, OSError ELOOP later)
        raise InputError(f"--out {out} cannot be used ({exc}); fix: remove the symbolic link loop, or pass another "
                         "folder") from None
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder; fix: pass a folder path (it is created if missing)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--out {out} cannot be created: {parent} is a file; fix: pass a path under a folder")
    try:  # probe where the run will write first, leaving nothing behind (a failed preflight creates no folder)
        tempfile.TemporaryFile(dir=out if out.is_dir() else parent).close()
        os.rmdir(tempfile.mkdtemp(dir=out if out.is_dir() else parent))
    except OSError as exc:
        raise InputError(
            f"--out {out} is not writable ({exc.strerror or exc}); fix: pass a folder you can write to, "
            "or fix its permissions"
        ) from None


def verify_shards(run_dir, manifest: dict, key: str = "shards") -> list[Path]:
    """Paths of the manifest's shards under `key`, each checked for presence, hash and rows."""
    paths = []
    for shard in manifest.get(key, []):
        path = shard_path(run_dir, shard["path"])
        fix = "fix: re-run the same `prefsynth run` command to rewrite the shards"
        if not path.is_file():
            raise InputError(f"shard {path} listed in manifest.json is missing; {fix}")
        digest = sha256(path)
        if digest != shard["sha256"]:
            raise InputError(
                f"shard {path} is corrupted: sha256 {digest[:12]}... differs from the manifest's "
                f"{shard['sha256'][:12]}...; {fix}"
            )
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # pyarrow raises several types for a broken footer
            raise InputError(f"shard {path} is not readable parquet ({exc}); {fix}") from None
        if rows != shard["rows"]:
            raise InputError(f"shard {path} has {rows} rows, the manifest says {shard['rows']}; {fix}")
        paths.append(path)
    return paths


def load_pairs(run_dir, manifest: dict | None = None) -> pa.Table:
    """The run's published pairs, after verifying every shard."""
    manifest = manifest or load_manifest(run_dir)
    return schemas.concat([schemas.read_table(p, "pairs") for p in verify_shards(run_dir, manifest)], "pairs")


def prompt_drops(run_dir, manifest: dict, limit: int = 20) -> tuple[dict[str, int], list[dict], list[str]]:
    """(drops per filter, the first `limit` dropped prompts, their tables) of a run. The manifest counts the
    drops and names the tables that list them (`tables/prompt_filter.drops.parquet`, one per increment);
    manifests written before that table listed every drop themselves."""
    drops = manifest.get("prompt_drops") or {}
    if isinstance(drops, list):
        return dict(Counter(d["filter"] for d in drops)), drops[:limit], []
    rows: list[dict] = []
    for rel in drops.get("tables", []):
        path = Path(run_dir) / rel
        if len(rows) < limit and path.is_file():
            rows += schemas.read_table(path, "prompt_drops").slice(0, limit - len(rows)).to_pylist()
    return dict(drops.get("counts") or {}), rows, list(drops.get("tables", []))
