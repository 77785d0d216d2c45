"""Publish stage: parquet preference shards, manifest.json and the dataset card (README.md).

Shards (`pairs/train-00000-of-00001.parquet`, zstd) are written into a fresh folder and swapped
into place when all are complete, so `RUN/pairs/*.parquet` is only ever a whole set. Each shard
is itself written atomically. The manifest records the config as given and resolved, the
fingerprints, models, per-stage row counts, the drop funnel, the prompt filter's drop counts (the
dropped prompts themselves are in tables/prompt_filter.drops.parquet), each judge's score mode, the
tokens (and dollars) of requests to endpoints per stage, model and endpoint, shards with row counts
and sha256, and timings. It is rebuilt on every run (cheap), so it always describes the shards beside it.

Human review labels (RUN/reviews/, pipeline/review/labels.py) are applied here, on the way from the
pipeline's pairs to the shards: `run` applies them to the rationale stage's table, and `republish`
(`prefsynth card`, `push`) and incremental merges (`reviewed`) apply them again to the same
unreviewed pairs, so a label changes a shard exactly once however often the run is published.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline import __version__
from pipeline.config import PublishConfig, RunConfig, fingerprint
from pipeline.core import accounting, funnel, schemas
from pipeline.core.rundir import load_manifest
from pipeline.core.store import run_lock, sha256, write_json
from pipeline.publish import card
from pipeline.review import labels as review
from pipeline.stages import order as stages
from pipeline.stages.pair import check_pairs, ranked_path
from pipeline.stages.prompt_filter import drops_path as prompt_drops_path

# the stages of a run of prompts that are not synthesised or simulated, in order (pipeline/stages/order.py)
STAGES = tuple(s.name for s in stages.STAGES if s.name not in ("synth", "conversation"))


def write_shards(table: pa.Table, out_dir: Path, *, folder: str, table_name: str, shard_rows: int,
                 compression: str | None) -> list[dict]:
    """Write `table` as whole shards into `out_dir/folder`, swapping the folder in atomically."""
    return write_parts([("train", table)], out_dir, folder=folder, table_name=table_name, shard_rows=shard_rows,
                       compression=compression)


def write_parts(parts: list[tuple[str, pa.Table | tuple[Path, ...]]], out_dir: Path, *, folder: str, table_name: str,
                shard_rows: int, compression: str | None) -> list[dict]:
    """Shards `<prefix>-i-of-n.parquet` for each (prefix, table) into a fresh folder swapped in whole;
    a part given as shard files (an increment's unchanged shards) is copied byte for byte instead."""
    final = out_dir / folder
    for stale in [*out_dir.glob(f".{folder}.*.tmp"), *out_dir.glob(f".{folder}.*.old")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed publish (the run lock excludes live ones)
    staging = out_dir / f".{folder}.{os.getpid()}.tmp"
    staging.mkdir(parents=True)
    shards = []
    for prefix, part in parts:
        if isinstance(part, tuple):
            for src in part:
                path = staging / f"{prefix}-{src.name.removeprefix('train-')}"
                shutil.copyfile(src, path)
                shards.append({"path": f"{folder}/{path.name}", "rows": pq.read_metadata(path).num_rows,
                               "sha256": sha256(path)})
            continue
        n = max(1, -(-part.num_rows // shard_rows))
        for i in range(n):
            rows = part.slice(i * shard_rows, shard_rows)
            path = schemas.write_table(rows, staging / f"{prefix}-{i:05d}-of-{n:05d}.parquet", table_name,
                                       compression=compression)
            shards.append({"path": f"{folder}/{path.name}", "rows": rows.num_rows, "sha256": sha256(path)})
    old = out_dir / f".{folder}.{os.getpid()}.old"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return shards


def run_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages a run has, in order: pipeline/stages/order.py's that run for this config."""
    return tuple(s.name for s in stages.STAGES if s.when(cfg))


def config_fingerprint(cfg: RunConfig) -> str:
    """A hash of the config fields that change the run's output: every stage's `fields`, and publish's."""
    run = {s.name: s.fields(cfg) for s in stages.STAGES if s.when(cfg)}
    return fingerprint({**run, "publish": cfg.publish.fingerprinted()})


def run(run_dir, cfg: RunConfig, metas: dict[str, dict], *, given: dict | None = None, started_at: float | None = None,
        log=print) -> dict:
    """Write shards, manifest and card from the rationale stage's table; return the manifest."""
    out = Path(run_dir)
    t0 = time.perf_counter()
    source = schemas.read_table(out / "tables" / "rationale.parquet", "pairs")
    compression = None if cfg.publish.compression == "none" else cfg.publish.compression
    check_pairs(source)
    reviewed_ = review.apply_labels(out, [review.Source("train", source, out / "tables")])
    pairs = reviewed_.parts[0][1].table
    check_pairs(pairs)
    shards = write_shards(pairs, out, folder="pairs", table_name="pairs", shard_rows=cfg.publish.shard_rows,
                          compression=compression)
    ranked_shards = []
    if cfg.pair.keep_ranked:
        ranked = schemas.read_table(ranked_path(out), "ranked")
        ranked_shards = write_shards(ranked, out, folder="ranked", table_name="ranked",
                                     shard_rows=cfg.publish.shard_rows, compression=compression)
    else:
        shutil.rmtree(out / "ranked", ignore_errors=True)  # a listwise view from an earlier config is stale
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    ran = run_stages(cfg)
    steps = funnel.collect(metas, ran) + reviewed_.steps
    funnel_errors = funnel.verify(steps, pairs.num_rows)  # raises under PREFSYNTH_STRICT_FUNNEL=1
    timings = {s: metas[s].get("seconds", 0.0) for s in ran}
    timings["publish"] = round(time.perf_counter() - t0, 2)
    if started_at is not None:
        timings["total"] = round(time.time() - started_at, 2)
    manifest = {
        "name": cfg.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
        "config": {"given": given or {}, "resolved": cfg.model_dump()},
        "config_fingerprint": config_fingerprint(cfg),
        "stage_fingerprints": {s: metas[s]["fingerprint"] for s in ran},
        "models": {
            "generator": metas["generate"].get("model"),
            "judge": metas["judge"].get("judge"),
            "judges": metas["judge"].get("judges"),
            "rationale": metas["rationale"].get("model"),
            "rationale_template": metas["rationale"].get("template"),
            "ches": metas["ches"].get("model"),
        },
        "rows": {
            "prompts": metas["prompts"]["rows"],
            "prompts_kept": metas["prompt_filter"]["rows"],
            "candidates": metas["generate"]["rows"],
            "judgments": metas["judge"]["rows"],
            "pairs": pairs.num_rows,
        },
        "funnel": steps,
        "funnel_errors": funnel_errors,
        "judge_failure_rate": metas["judge"].get("failure_rate"),
        "judge_aggregate": metas["pair"].get("aggregate"),
        "judge_aggregate_fit": metas["pair"].get("aggregate_fit"),  # judge.aggregate learned: weights, held-out
        "judge_agreement": metas["pair"].get("agreement"),
        "self_preference": metas["judge"].get("self_preference", []),
        "judge_modes": metas["judge"].get("modes", {}),
        # tokens of every request to an OpenAI-compatible endpoint, per stage, model and endpoint; dollars at `prices`
        "usage": accounting.summary(metas, cfg.prices, cfg.budget.usd),
        "length_bias": metas["pair"].get("length_bias"),
        "label_quality": metas["pair"].get("label_quality"),
        # counts only: the per-prompt list is a table (a million prompts would make this file hundreds of MB)
        "prompt_drops": {
            "counts": metas["prompt_filter"].get("drops", {}),
            "tables": [str(prompt_drops_path(out).relative_to(out))],
        },
        "ches": {k: metas["ches"].get(k) for k in ("filter", "cut", "ln_ches_min", "ln_ches_max", "dtype")},
        "generation": {
            "tokens": metas["generate"].get("tokens"),
            "backend": metas["generate"].get("backend"),
            "verbalized_template": _verbalized_template(cfg),
        },
        "sources": _sources(metas, pairs, cfg),
        "diversity": _diversity(out, cfg, metas["generate"]["fingerprint"]),
        "prompt_set": _prompt_set(out, cfg, metas["prompt_filter"]["fingerprint"], metas.get("synth"),
                                  metas.get("conversation")),
        "shards": shards,
        "ranked_shards": ranked_shards,
        "timings_s": timings,
    }
    if reviewed_.section is not None:
        manifest["review"] = reviewed_.section
    write_json(out / "manifest.json", manifest)
    card.write(out, manifest)
    log(f"publish: {pairs.num_rows} pairs in {len(shards)} shard(s) under {out / 'pairs'}")
    return manifest


def reviewed(run_dir, manifest: dict) -> dict:
    """`manifest` with the run's current labels applied to its unreviewed pairs (review.sources): the
    pairs folder rewritten (swapped in whole; an increment no label touches is copied byte for byte),
    and shards, rows, funnel, pair counts and the `review` section updated. The caller writes it."""
    out = Path(run_dir)
    srcs = review.sources(out, manifest)
    result = review.apply_labels(out, srcs)
    for _, applied in result.parts:
        check_pairs(applied.table)
    pub = PublishConfig.model_validate((manifest["config"].get("resolved") or {}).get("publish") or {})
    parts = [
        (src.prefix, src.files if src.files and not (a.flipped or a.rejected) else a.table) for src, a in result.parts
    ]
    shards = write_parts(
        parts,
        out,
        folder="pairs",
        table_name="pairs",
        shard_rows=pub.shard_rows,
        compression=None if pub.compression == "none" else pub.compression,
    )
    steps = [f for f in manifest["funnel"] if f["stage"] != "review"] + result.steps
    counts: dict[str, int] = {}
    for _, applied in result.parts:
        for strategy in applied.table.column("pair_strategy").to_pylist():
            counts[strategy] = counts.get(strategy, 0) + 1
    new = {
        **manifest,
        "shards": shards,
        "funnel": steps,
        "funnel_errors": funnel.verify(steps, result.pairs),
        "rows": {**manifest["rows"], "pairs": result.pairs},
        "sources": {**(manifest.get("sources") or {}), "pairs_by_strategy": dict(sorted(counts.items()))},
    }
    new.pop("review", None)
    if result.section is not None:
        new["review"] = result.section
    return new


def republish(run_dir, *, only_if_changed: bool = False, log=print) -> dict:
    """Apply the run's current review labels to its shards, manifest and card (`prefsynth card` and
    `push`); a run never reviewed only gets its card rewritten. `only_if_changed`: leave a run whose
    manifest already reflects the labels on disk untouched. Returns the manifest."""
    out = Path(run_dir)
    manifest = load_manifest(out)
    digest = review.read(out).digest
    if not digest and "review" not in manifest:
        if not only_if_changed:
            card.write(out, manifest)
        return manifest
    if only_if_changed and (manifest.get("review") or {}).get("labels_sha256") == digest:
        return manifest
    with run_lock(out):
        manifest = reviewed(out, load_manifest(out))
        write_json(out / "manifest.json", manifest)
        card.write(out, manifest)
    applied = (manifest.get("review") or {}).get("applied") or {}
    log(
        f"review: {applied.get('flip', 0)} pair(s) flipped, {applied.get('reject', 0)} rejected; "
        f"{manifest['rows']['pairs']} pairs in {len(manifest['shards'])} shard(s) under {out / 'pairs'}"
    )
    return manifest


def _verbalized_template(cfg: RunConfig) -> str | None:
    from pipeline.sampling.verbalized import TEMPLATE_ID

    return TEMPLATE_ID if cfg.generate.verbalized_k else None


def _cached(out: Path, name: str, key: str, compute):
    """A whole-run figure that loads the embedder, kept in RUN/tables/publish.<name>.json under `key` (its input
    stage's fingerprint, the embedder, the seed): a rerun of a finished run publishes without embedding again."""
    path = out / "tables" / f"publish.{name}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved["value"]
    except (OSError, ValueError):  # none yet, or damaged: computed again
        pass
    value = compute()
    write_json(path, {"key": key, "value": value})
    return value


def _diversity(out: Path, cfg: RunConfig, candidates_fp: str) -> dict:
    """Per generation mode: distinct-1/2 and MiniLM embedding distance of each prompt's candidates (the distance
    over a seeded sample of 500 prompts per mode where a run has more)."""
    from pipeline.curation.diversity import diversity_by_mode
    from pipeline.stages.prompt_filter import embed

    def compute():
        candidates = schemas.read_table(out / "tables" / "generate.parquet", "candidates")
        return diversity_by_mode(candidates, lambda texts: embed(texts, cfg.curate.dedup.model), seed=cfg.seed)

    key = fingerprint("diversity", candidates_fp, cfg.curate.dedup.model, cfg.seed)
    return _cached(out, "diversity", key, compute)


def _prompt_set(out: Path, cfg: RunConfig, prompts_fp: str, synth: dict | None,
                conversation: dict | None = None) -> dict:
    """The prompts the run answered (after the prompt filter): sources, categories, diversity; and, for
    synthesised prompts or simulated conversations, how they were made."""
    from pipeline.curation.diversity import prompt_set_diversity
    from pipeline.stages.prompt_filter import embed, prompt_text

    prompts = schemas.read_table(out / "tables" / "prompt_filter.parquet", "prompts")
    texts = [prompt_text(m) for m in prompts.column("messages").to_pylist()]
    counted = {}
    for name in ("source", "category"):
        values = [v if v is not None else "(none)" for v in prompts.column(name).to_pylist()]
        counted[name] = dict(sorted(((v, values.count(v)) for v in set(values)), key=lambda kv: (-kv[1], kv[0]))[:20])
    made = (
        None
        if synth is None
        else {k: synth.get(k) for k in ("mode", "template", "model", "requests", "kept", "drop_examples")}
    )
    return {
        "prompts": prompts.num_rows,
        "sources": counted["source"],
        "categories": counted["category"],
        "diversity": _cached(out, "prompt_set_diversity", fingerprint("prompt-set", prompts_fp, cfg.curate.dedup.model,
                                                                       cfg.seed),
                             lambda: prompt_set_diversity(texts, lambda t: embed(t, cfg.curate.dedup.model),
                                                          seed=cfg.seed)),
        "synth": made,
        **({"conversation": {k: conversation.get(k) for k in ("simulator", "policy", "template", "user_turns", "rows",
                                                              "ended_early")}} if conversation else {}),
    }


def _sources(metas: dict, pairs: pa.Table, cfg: RunConfig) -> dict:
    """Pairs per pair_strategy (every source stays distinguishable) and the self-critique figures."""
    counts: dict[str, int] = {}
    for strategy in pairs.column("pair_strategy").to_pylist():
        counts[strategy] = counts.get(strategy, 0) + 1
    sc = metas["self_critique"]
    critique = (
        {k: sc.get(k) for k in ("model", "reward_model", "template", "principles", "reward_model_disagrees")}
        if sc.get("enabled")
        else None
    )
    from pipeline.curation.reward_augment import TEMPLATE_ID as GOAL_TEMPLATE

    ra = cfg.sources.reward_augmented
    return {
        "pairs_by_strategy": dict(sorted(counts.items())),
        "self_critique": critique,
        "reward_augmented": {"template": GOAL_TEMPLATE, "keep_original": ra.keep_original} if ra.enabled else None,
    }


def summary(manifest: dict, out_dir: str) -> str:
    lines = [
        "",
        f"prefsynth run '{manifest['name']}' done (config fingerprint {manifest['config_fingerprint']})",
        f"  pairs:  {manifest['rows']['pairs']} in {len(manifest['shards'])} shard(s) at {Path(out_dir) / 'pairs'}",
        f"  rows:   {manifest['rows']['prompts']} prompts -> {manifest['rows']['candidates']} candidates -> "
        f"{manifest['rows']['judgments']} judgments -> {manifest['rows']['pairs']} pairs",
        "  funnel:",
    ]
    for f in manifest["funnel"]:
        removed = f["rows_in"] - f["rows_out"]
        change = "" if "unit_in" in f else f"({'+' if removed < 0 else '-'}{abs(removed)}) "  # no count across units
        lines.append(
            f"    {f['stage'] + '.' + f['filter']:<30} {f['rows_in']:>5} -> {f['rows_out']:<5} "
            f"{funnel.unit_label(f):<27} {change}{f['reason']}"
        )
    for problem in manifest.get("funnel_errors") or []:
        lines.append(f"  ERROR: funnel does not add up: {problem}")
    edited = (manifest.get("edited_prompts_skipped") or {}).get("count", 0)
    if edited:
        lines.append(
            f"  note:   {edited} prompt(s) have new text under an already processed prompt_id and were not "
            "re-processed (manifest: edited_prompts_skipped); give an edited prompt a new prompt_id"
        )
    if manifest["rows"]["pairs"] == 0:
        last = next((f for f in reversed(manifest["funnel"]) if f["rows_out"] == 0 and f["rows_in"] > 0), None)
        where = f" (the last rows were dropped at {last['stage']}.{last['filter']}: {last['reason']})" if last else ""
        lines.append(f"  WARNING: no pairs were produced{where}; read the funnel above")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in manifest["timings_s"].items())
    lines += [
        f"  timings: {timings}",
        f"  card:   {Path(out_dir) / 'README.md'}",
        f"  manifest: {Path(out_dir) / 'manifest.json'}",
    ]
    return "\n".join(lines)
