"""Reading a finished run directory: its manifest and its shards, verified before use.

`prefsynth card`, `inspect` and `push` (and later the trainer) read runs only through here, so a
missing, truncated or altered shard is always the same clear error naming the file, never a
half-read dataset. Shards are checked against the sha256 and row count in manifest.json.
The prompt filter's drops are read here too: the manifest counts them and names their tables.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schemas
from pipeline.errors import InputError
from pipeline.store import sha256


def load_manifest(run_dir) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{path} not found: {run_dir} is not a finished prefsynth run; "
                         f"fix: run `prefsynth run --out {run_dir}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); fix: re-run `prefsynth run` to rewrite it") from None


def verify_shards(run_dir, manifest: dict, key: str = "shards") -> list[Path]:
    """Paths of the manifest's shards under `key`, each checked for presence, hash and rows."""
    paths = []
    for shard in manifest.get(key, []):
        path = Path(run_dir) / shard["path"]
        fix = "fix: re-run the same `prefsynth run` command to rewrite the shards"
        if not path.is_file():
            raise InputError(f"shard {path} listed in manifest.json is missing; {fix}")
        digest = sha256(path)
        if digest != shard["sha256"]:
            raise InputError(f"shard {path} is corrupted: sha256 {digest[:12]}... differs from the manifest's "
                             f"{shard['sha256'][:12]}...; {fix}")
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
