"""Incremental runs: one output dataset that grows with its prompt source.

`prefsynth run --incremental` (and `prefsynth serve`) treat OUT as a growing dataset:
  1. plan: load the source (a file, a folder of .jsonl/.parquet files, a dataset), drop every
     prompt_id that an earlier increment already processed (whether or not it yielded pairs), and
     cap the rest at `input.limit`. Nothing new: say so and stop, before any model loads. A prompt
     whose id was processed but whose text has changed since is not re-processed (its pairs are
     published already); it is counted and listed as `edited_prompts_skipped` in the summary and
     the manifest. To process an edited prompt, give it a new prompt_id (or drop the field: the id
     is then a hash of the messages, so an edit is a new prompt).
  2. run: the new prompts become OUT/increments/NNNNN/ (its `new_prompts.parquet` is written once,
     so a killed increment resumes on the same prompts), an ordinary run directory built by the
     same stages, with its own tables, shards, manifest and card.
  3. merge: the increment's shards are copied into OUT/pairs/ as `train-incNNNNN-*.parquet`
     (temp name, then rename; shards are never rewritten) and OUT/manifest.json (the commit point)
     is rewritten atomically: every shard with its sha256, row counts summed over increments, the
     funnel summed per step and checked to chain to the summed pair count (pipeline/core/funnel.py),
     the prompt filter's drop counts summed per filter (each increment's drops table named),
     `increments` listing each one; then the card is regenerated.
Shards in OUT/pairs/ that no manifest lists are leftovers of a kill between copy and commit; the
next merge removes them. Human review labels (OUT/reviews/, pipeline/review/labels.py) cover the whole
dataset: once it has any, each merge re-applies all of them to every increment's own unreviewed
shards (`publish.reviewed`), so labels of earlier increments are kept, and only the shards of
increments that labels change differ from their copies. Per-increment figures (judges, length bias, CHES) stay in each
increment's own manifest; the top manifest carries the latest increment's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import yaml

from pipeline.config import RunConfig
from pipeline.core import accounting, funnel, schemas
from pipeline.core.rundir import prompt_drops
from pipeline.core.store import sha256, write_json
from pipeline.curation.aggregate import VERIFIER_KIND
from pipeline.curation.label_quality import label_quality
from pipeline.publish.shards import STAGES, reviewed
from pipeline.review import labels as review
from pipeline.stages.prompts import load_prompts, messages_hash

INCREMENTS = "increments"


def _manifest(out: Path) -> dict | None:
    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def committed(out: Path) -> list[dict]:
    m = _manifest(out)
    return list(m.get("increments", [])) if m else []


def processed(out: Path) -> dict[str, str]:
    """{prompt_id: messages hash} of every committed increment (each increment's own prompt table)."""
    ids: dict[str, str] = {}
    for inc in committed(out):
        table = schemas.read_table(out / inc["dir"] / "tables" / "prompts.parquet", "prompts")
        ids.update(
            zip(table.column("prompt_id").to_pylist(), map(messages_hash, table.column("messages").to_pylist()))
        )
    return ids


@dataclass
class Plan:
    inc_dir: Path | None  # the increment to build, or None when nothing is new
    new: int  # prompts it processes
    edited: list[str] = field(default_factory=list)  # processed ids whose text changed since: skipped


def plan(out: Path, cfg: RunConfig) -> Plan:
    """What the next increment processes (see the module docstring)."""
    done = committed(out)
    nxt = out / INCREMENTS / f"{len(done) + 1:05d}"
    pending = nxt / "new_prompts.parquet"
    edited_path = nxt / "edited_prompts.json"
    if pending.exists():  # a killed increment: resume it on the prompts it started with
        edited = json.loads(edited_path.read_text()) if edited_path.exists() else []
        return Plan(nxt, schemas.read_table(pending, "prompts").num_rows, edited)
    unlimited = cfg.input.model_copy(update={"limit": None})
    table, _ = load_prompts(unlimited, seed=cfg.seed)
    known = processed(out)
    ids, messages = table.column("prompt_id").to_pylist(), table.column("messages").to_pylist()
    edited = [p for p, m in zip(ids, messages) if p in known and known[p] != messages_hash(m)]
    new = table.filter(
        pc.invert(pc.is_in(table.column("prompt_id"), value_set=schemas.pa.array(sorted(known), schemas.pa.string())))
    )
    if cfg.input.limit is not None:
        new = new.slice(0, cfg.input.limit)
    if new.num_rows == 0:
        return Plan(None, 0, edited)
    write_json(edited_path, edited)
    schemas.write_table(new, pending, "prompts")
    return Plan(nxt, new.num_rows, edited)


def increment_config(cfg: RunConfig, inc_dir: Path) -> RunConfig:
    """The run config of one increment: the same stages over its new prompts only."""
    data = cfg.model_dump()
    data["input"] = {**data["input"], "path": str(inc_dir / "new_prompts.parquet"), "limit": None, "shuffle": False}
    return RunConfig.model_validate(data)


def _sum_prompt_drops(out: Path, increments: list[dict], manifests: list[dict]) -> dict:
    """Drop counts summed over increments; each increment's drops table, named relative to OUT."""
    counts: dict[str, int] = {}
    tables: list[str] = []
    for inc, m in zip(increments, manifests):
        got, _, inc_tables = prompt_drops(out / inc["dir"], m, limit=0)
        for name, n in got.items():
            counts[name] = counts.get(name, 0) + n
        tables += [f"{inc['dir']}/{t}" for t in inc_tables]
    return {"counts": counts, "tables": tables}


def _label_quality(out: Path, increments: list[dict], seed: int) -> dict | None:
    """Label quality over every increment's verified prompts (curation/label_quality.py), not the last one's only."""
    judgments, ensemble, categories = [], {}, {}
    for inc in increments:
        tables = out / inc["dir"] / "tables"
        table = schemas.read_table(tables / "judge.parquet", "judgments")
        checked = table.filter(pc.equal(table.column("kind"), VERIFIER_KIND)).column("prompt_id").unique()
        if not len(checked):
            continue
        judgments.append(table.filter(pc.is_in(table.column("prompt_id"), value_set=checked)))
        scores = schemas.read_table(tables / "pair.scores.parquet", "scores")
        ensemble.update(zip(scores.column("candidate_id").to_pylist(), scores.column("score").to_pylist()))
        prompts = schemas.read_table(tables / "prompts.parquet", "prompts")
        categories.update(zip(prompts.column("prompt_id").to_pylist(), prompts.column("category").to_pylist()))
    if not judgments:
        return None
    return label_quality(schemas.concat(judgments, "judgments"), ensemble, categories, seed=seed)


def _sum_usage(manifests: list[dict], cfg: RunConfig) -> dict:
    """Tokens and dollars of every increment's requests, summed per stage, model and endpoint."""
    per_stage = {
        s: [{"usage": [r for m in manifests for r in (m.get("usage") or {}).get("stages", {}).get(s, [])]}]
        for s in accounting.METERED
    }
    return accounting.summary(per_stage, cfg.prices, cfg.budget.usd)


def merge(
    out: Path,
    inc_dir: Path,
    inc_manifest: dict,
    cfg: RunConfig,
    given: dict | None = None,
    edited: list[str] | None = None,
) -> dict:
    """Copy the increment's shards into OUT/pairs and commit the grown manifest; return it."""
    from pipeline.publish import card

    previous = _manifest(out) or {"shards": [], "increments": []}
    n = len(previous["increments"]) + 1
    listed = {s["path"] for s in previous["shards"]}
    pairs_dir = out / "pairs"
    pairs_dir.mkdir(parents=True, exist_ok=True)
    for stray in pairs_dir.iterdir():  # copied by a merge that was killed before its commit
        if f"pairs/{stray.name}" not in listed:
            stray.unlink()
    shards = list(previous["shards"])
    for shard in inc_manifest["shards"]:
        name = f"train-inc{n:05d}-{Path(shard['path']).name.removeprefix('train-')}"
        tmp = pairs_dir / f".{name}.tmp"
        shutil.copyfile(inc_dir / shard["path"], tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, pairs_dir / name)
        shards.append({"path": f"pairs/{name}", "rows": shard["rows"], "sha256": sha256(pairs_dir / name)})
    increments = [
        *previous["increments"],
        {
            "id": n,
            "dir": str(inc_dir.relative_to(out)),
            "prompts": inc_manifest["rows"]["prompts"],
            "pairs": inc_manifest["rows"]["pairs"],
            "edited_prompts_skipped": len(edited or []),
            "config_fingerprint": inc_manifest["config_fingerprint"],
            "created_at": inc_manifest["created_at"],
        },
    ]
    all_manifests = [json.loads((out / i["dir"] / "manifest.json").read_text()) for i in increments]
    rows = {k: sum(m["rows"][k] for m in all_manifests) for k in inc_manifest["rows"]}
    steps = funnel.sum_funnels([m["funnel"] for m in all_manifests], STAGES)
    funnel_errors = funnel.verify(steps, rows["pairs"])  # raises under PREFSYNTH_STRICT_FUNNEL=1
    grown = {
        **inc_manifest,
        "shards": shards,
        "ranked_shards": [],
        "rows": rows,
        "funnel": steps,
        "funnel_errors": funnel_errors,
        "prompt_drops": _sum_prompt_drops(out, increments, all_manifests),
        "increments": increments,
        "incremental": True,
        "usage": _sum_usage(all_manifests, cfg),
        "label_quality": _label_quality(out, increments, cfg.seed),
        "edited_prompts_skipped": {"count": len(edited or []), "prompt_ids": (edited or [])[:50]},
        "config": {"given": given or {}, "resolved": cfg.model_dump()},
    }
    if review.read(out).digest or previous.get("review"):  # labels of every increment so far, the new one included
        grown = reviewed(out, grown)
    write_json(out / "manifest.json", grown)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    card.write(out, grown)
    return grown
