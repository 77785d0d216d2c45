"""Prompt filter stage: benchmark contamination, near-copies and near-duplicates, before any generation.

Runs between `prompts` and `generate` so no compute is spent on prompts that would be dropped. In order:
- Decontamination: a prompt sharing any word n-gram (lower-cased, punctuation stripped) with a
  benchmark prompt is dropped and the matched benchmark id (`file:row` or the row's id) recorded,
  the rule of GPT-3's decontamination with a configurable n. A hash lookup.
- Fuzzy duplicates (optional, `curate.dedup.minhash`): near-copies by MinHash LSH over word shingles
  (pipeline/curation/minhash.py), as datatrove and NeMo Curator; needs no embedder.
- Near-duplicates: prompts are embedded (all-MiniLM-L6-v2 by default: mean pooling over the last
  hidden state, L2-normalised, as sentence-transformers configures that model) and, in input
  order, a prompt whose cosine similarity to an earlier kept prompt is >= `threshold` is dropped
  (pipeline/curation/neardup.py: an exact blockwise search, or a clustered one for large sets).
  Exact duplicates were already removed when the input was read.
Embeddings are computed in checkpointed parts of `chunk_prompts` prompts (pipeline/core/store.py) under
tables/prompt_filter.embed.parts-<fp>/, keyed by prompt_id: a killed run resumes from its finished
parts and Ray shards split them like the heavy stages' chunks. The parts stay after the stage as an
embedding cache, so a new threshold or method embeds nothing again (about 1.5 KB per prompt with
MiniLM; delete the folder to reclaim it).
Every drop is counted in the funnel and the meta (`drops`) and listed (prompt_id, filter, match,
score) in tables/prompt_filter.drops.parquet, written before the meta commits the stage.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.backends.model_ref import resolve
from pipeline.config import DecontaminateConfig, DedupConfig, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.progress import bar
from pipeline.core.runner import Read, Stage, StageRun
from pipeline.core.store import StageStore, done_rows, run_in_parts, write_json
from pipeline.curation import neardup
from pipeline.curation.minhash import fuzzy_duplicates
from pipeline.errors import InputError, SchemaError
from pipeline.stages.turns import conversation_ids

VERSION = "2"  # the default config's output is v0.1's (tests/pipeline/test_prompt_filter.py): fingerprints stay
EMBED_VERSION = "1"
WORD = re.compile(r"[a-z0-9]+")


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def prompt_texts(prompts: pa.Table) -> list[str]:
    """`prompt_text` of every row, computed by polars (no Python dict per message at a million prompts)."""
    user = pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    col = pl.from_arrow(prompts.select(["messages"])).select(pl.col("messages").list.eval(user).list.join("\n"))
    return col.to_series().to_list()


@lru_cache(maxsize=2)
def _embedder(path: str):
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.inference_mode()
def embed(texts: list[str], model_ref: str, *, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings, shape (len(texts), d)."""
    tok, model = _embedder(resolve(model_ref, field="curate.dedup.model").path)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    return torch.cat(out) if out else torch.empty(0, 0)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _benchmark_rows(path: Path) -> list[tuple[str, str]]:
    """(benchmark id, text) for every row of a benchmark file."""
    if not path.is_file():
        raise InputError(f"curate.decontaminate.benchmarks: {str(path)!r} does not exist; fix: give existing files")
    if path.suffix == ".txt":
        return [(f"{path.name}:{i + 1}", line) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    elif path.suffix in {".jsonl", ".json"}:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        raise InputError(
            f"curate.decontaminate.benchmarks: {str(path)!r} has unknown format; fix: use .jsonl, .parquet or .txt"
        )
    out = []
    for i, row in enumerate(rows):
        if "messages" in row and row["messages"]:
            text = prompt_text(list(row["messages"]))
        else:
            text = next((str(row[k]) for k in ("prompt", "question", "text", "input") if row.get(k)), "")
        out.append((f"{path.name}:{row.get('id', i)}", text))
    return out


def contaminated(texts: list[str], cfg: DecontaminateConfig) -> dict[int, str]:
    """{prompt index: matched benchmark id} for prompts sharing a word n-gram with a benchmark."""
    index: dict[tuple[str, ...], str] = {}
    for path in cfg.benchmarks:
        for bench_id, text in _benchmark_rows(Path(path).expanduser()):
            for gram in ngrams(text, cfg.ngram):
                index.setdefault(gram, bench_id)
    hits = {}
    for i, text in enumerate(texts):
        match = next((index[g] for g in ngrams(text, cfg.ngram) if g in index), None)
        if match is not None:
            hits[i] = match
    return hits


Drop = tuple[str, np.ndarray, pa.Array, "np.ndarray | None"]  # (filter, dropped indices, match, score)


def text_filters(
    ids: pa.Array, texts: list[str], dedup: DedupConfig, decontam: DecontaminateConfig
) -> tuple[np.ndarray, list[dict], list[Drop]]:
    """Decontamination, then MinHash near-copies: (indices of the prompts left, funnel entries, drops)."""
    keep = np.arange(len(texts))
    funnel: list[dict] = []
    drops: list[Drop] = []
    if decontam.benchmarks:
        hits = contaminated(texts, decontam)
        idx = np.array(sorted(hits), dtype=np.int64)
        drops.append(("decontaminate", idx, pa.array([hits[i] for i in idx.tolist()], pa.string()), None))
        funnel.append(
            step(
                "prompt_filter",
                "decontaminate",
                len(keep),
                len(keep) - len(hits),
                f"shares a word {decontam.ngram}-gram with a benchmark prompt",
                unit="prompts",
            )
        )
        keep = np.setdiff1d(keep, idx)
    mh = dedup.minhash
    if mh.enabled and len(keep) > 1:
        found = fuzzy_duplicates(
            [texts[i] for i in keep], ngram=mh.ngram, bands=mh.bands, rows=mh.rows, threshold=mh.threshold
        )
        d = np.flatnonzero(found.match >= 0)
        drops.append(("fuzzy_duplicate", keep[d], ids.take(keep[found.match[d]]), found.score[d]))
        funnel.append(
            step(
                "prompt_filter",
                "fuzzy_duplicate",
                len(keep),
                len(keep) - len(d),
                f"MinHash of word {mh.ngram}-grams agrees >= {mh.threshold} with an earlier prompt's "
                f"(LSH {mh.bands} bands x {mh.rows} rows)",
                unit="prompts",
            )
        )
        keep = np.delete(keep, d)
    elif mh.enabled:  # nothing to compare, but the step is there so increments' funnels sum
        funnel.append(
            step(
                "prompt_filter",
                "fuzzy_duplicate",
                len(keep),
                len(keep),
                f"MinHash of word {mh.ngram}-grams agrees >= {mh.threshold} with an earlier prompt's",
                unit="prompts",
            )
        )
    return keep, funnel, drops


def near_duplicate_filter(
    ids: pa.Array, keep: np.ndarray, emb, dedup: DedupConfig, conversation: list[str] | None = None
) -> tuple[np.ndarray, dict, Drop, dict]:
    """Near-duplicates among the prompts `keep` (rows of `emb`, in the same order): (prompts left, funnel
    entry, drops, search figures for the meta). `conversation` (per row of `ids`, pipeline/stages/turns.py):
    branches of one conversation share their history, so one is never dropped as a duplicate of another."""
    method = neardup.choose_method(len(keep), dedup.method, dedup.exact_max_prompts)
    found = neardup.search(emb, dedup.threshold, method=method, clusters=dedup.clusters, probes=dedup.probes)
    d = found.dropped
    reason = f"cosine >= {dedup.threshold} to an earlier prompt ({dedup.model})"
    if conversation is not None:
        d = d[[conversation[keep[j]] != conversation[keep[found.match[j]]] for j in d]]
        reason += " of another conversation"
    if found.method == "clustered":
        reason += f", clustered search ({found.clusters} clusters, {found.probes} probes)"
    entry = step("prompt_filter", "near_duplicate", len(keep), len(keep) - len(d), reason, unit="prompts")
    info = {"method": found.method, "clusters": found.clusters, "probes": found.probes, "seconds": found.seconds}
    return np.delete(keep, d), entry, ("near_duplicate", keep[d], ids.take(keep[found.match[d]]), found.score[d]), info


def drops_table(ids: pa.Array, drops: list[Drop]) -> pa.Table:
    """The drops as a `prompt_drops` table: filters in the order they ran, prompts in input order within one."""
    tables = [
        pa.table(
            {
                "prompt_id": ids.take(idx),
                "filter": pa.array([name] * len(idx), pa.string()),
                "match": match,
                "score": pa.nulls(len(idx), pa.float64())
                if score is None
                else pa.array(score.astype(np.float64), pa.float64()),
            },
            schema=schemas.PROMPT_DROPS,
        )
        for name, idx, match, score in drops
    ]
    return schemas.concat(tables, "prompt_drops")


def filter_prompts(
    prompts: pa.Table, dedup: DedupConfig, decontam: DecontaminateConfig
) -> tuple[pa.Table, list[dict], pa.Table]:
    """Pure core, embeddings in memory: (kept prompts, funnel entries, drops table)."""
    ids = prompts.column("prompt_id").combine_chunks()
    texts = prompt_texts(prompts)
    keep, funnel, drops = text_filters(ids, texts, dedup, decontam)
    if dedup.near_duplicates and len(keep) > 1:
        emb = embed([texts[i] for i in keep], dedup.model, batch_size=dedup.batch_size)
        keep, entry, drop, _ = near_duplicate_filter(ids, keep, emb, dedup, conversation_ids(prompts))
        funnel.append(entry)
        drops.append(drop)
    elif dedup.near_duplicates:
        funnel.append(_no_pairs_step(len(keep), dedup))
    return prompts.take(keep), funnel, drops_table(ids, drops)


def _no_pairs_step(n: int, dedup: DedupConfig) -> dict:
    """The near-duplicate step where fewer than two prompts are left (nothing to compare, nothing embedded)."""
    return step(
        "prompt_filter",
        "near_duplicate",
        n,
        n,
        f"cosine >= {dedup.threshold} to an earlier prompt ({dedup.model})",
        unit="prompts",
    )


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output."""
    d = cfg.curate.dedup
    dedup = d.model_dump(include={"near_duplicates", "model", "threshold"})
    # fields added with the scalable search count only when changed: at their defaults a run's output is
    # v0.1's (exact search up to exact_max_prompts), so runs made before keep their fingerprints
    dedup |= d.fingerprinted(exclude_defaults=True, exclude={"near_duplicates", "model", "threshold"})
    return {"dedup": dedup, "decontaminate": cfg.curate.decontaminate.model_dump()}


def stage_fingerprint(cfg: RunConfig, prompts_fp: str) -> str:
    bench = [(p, Path(p).stat().st_size if Path(p).exists() else None) for p in cfg.curate.decontaminate.benchmarks]
    return fingerprint("prompt_filter", VERSION, fields(cfg), prompts_fp, bench)


def embedding_store(run_dir, cfg: RunConfig, prompts_fp: str) -> StageStore:
    """Parts of sentence embeddings, keyed by prompt_id, for this input and embedder (any filter settings)."""
    model = resolve(cfg.curate.dedup.model, field="curate.dedup.model")
    fp = fingerprint("prompt_filter.embed", EMBED_VERSION, model.label, prompts_fp)
    return StageStore(run_dir, "prompt_filter.embed", "embeddings", fp)


def embeddings_table(ids: pa.Array, emb: np.ndarray) -> pa.Table:
    offsets = pa.array(np.arange(0, (len(emb) + 1) * emb.shape[1], emb.shape[1], dtype=np.int32))
    vectors = pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1)))
    return pa.table({"prompt_id": ids, "embedding": vectors}, schema=schemas.EMBEDDINGS)


def embed_in_parts(
    store: StageStore,
    ids: pa.Array,
    texts: list[str],
    dedup: DedupConfig,
    *,
    log=print,
    shard: tuple[int, int] | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray | None:
    """Embeddings of `texts` (rows in the given order) from checkpointed parts, embedding only what no finished
    part covers; None for a shard (its parts are on disk, the gathering call reads them). `positions`: the
    prompts' rows in the whole input, which name the parts, so parts written under other filter settings
    (another subset of prompts) are reused, never overwritten."""
    table = pa.table({"prompt_id": ids, "text": pa.array(texts, pa.string())})
    with bar(total=len(texts), initial=done_rows(store, table), desc="prompt_filter embed", unit="prompt") as pbar:

        def make_work():
            def work(subset: pa.Table):
                emb = embed(subset.column("text").to_pylist(), dedup.model, batch_size=dedup.batch_size).numpy()
                pbar.advance(subset.num_rows)
                return embeddings_table(subset.column("prompt_id"), emb), {"dim": emb.shape[1]}

            return work

        named = None if positions is None else dict(zip(ids.to_pylist(), positions.tolist()))
        run_in_parts(store, table, dedup.chunk_prompts, make_work, log, shard=shard, gather=False, positions=named)
    if shard is not None:
        return None
    position = {pid: i for i, pid in enumerate(ids.to_pylist())}
    out, filled = None, np.zeros(len(texts), dtype=bool)
    for part, info in store.iter_parts():  # one part in memory at a time, copied into one array
        rows = np.array([position.get(p, -1) for p in part.column("prompt_id").to_pylist()], dtype=np.int64)
        values = part.column("embedding").combine_chunks().flatten().to_numpy().reshape(len(rows), info["dim"])
        if out is None:
            out = np.empty((len(texts), info["dim"]), dtype=np.float32)
        out[rows[rows >= 0]] = values[rows >= 0]  # parts may also cover prompts a filter dropped since
        filled[rows[rows >= 0]] = True
    if out is None or not filled.all():
        raise SchemaError(
            f"{store.parts_dir}: embeddings missing for {int((~filled).sum())} prompts after the "
            "embedding parts ran; fix: delete that folder and rerun"
        )
    return out


def drops_path(run_dir) -> Path:
    return Path(run_dir) / "tables" / "prompt_filter.drops.parquet"


def _upgrade(run_dir, store: StageStore, meta: dict) -> dict:
    """A complete output from before the drops table (same fingerprint, drops listed in the meta): move them."""
    if "dropped" not in meta:
        return meta
    rows = [{**d, "score": None} for d in meta["dropped"]]
    schemas.write_table(schemas.from_rows(rows, "prompt_drops"), drops_path(run_dir), "prompt_drops")
    meta = {**{k: v for k, v in meta.items() if k != "dropped"}, "drops": dict(Counter(d["filter"] for d in rows))}
    write_json(store.meta_path, meta)
    return meta


def _build(run: StageRun):
    """Text filters, then (sharded over Ray when asked) the embeddings' near-duplicate filter; None for a shard."""
    cfg, log, shard = run.cfg, run.log, run.shard
    prompts = run.read("prompts")
    ids = prompts.column("prompt_id").combine_chunks()
    texts = prompt_texts(prompts)
    dedup = cfg.curate.dedup
    keep, funnel, drops = text_filters(ids, texts, dedup, cfg.curate.decontaminate)
    info = {}
    if dedup.near_duplicates and len(keep) > 1:
        t0 = time.perf_counter()
        store_e = embedding_store(run.run_dir, cfg, run.upstream[0])
        emb = embed_in_parts(
            store_e, ids.take(keep), [texts[i] for i in keep], dedup, log=log, shard=shard, positions=keep
        )
        if shard is not None:
            return None
        info["embed"] = {
            "model": resolve(dedup.model).label,
            "prompts": len(keep),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        keep, entry, drop, info["near_duplicate"] = near_duplicate_filter(
            ids, keep, emb, dedup, conversation_ids(prompts)
        )
        del emb
        funnel.append(entry)
        drops.append(drop)
    else:
        if shard is not None:
            return None
        if dedup.near_duplicates:  # a step whenever it is on (also for one prompt), so increments' funnels sum
            funnel.append(_no_pairs_step(len(keep), dedup))
    table = drops_table(ids, drops)
    schemas.write_table(table, drops_path(run.run_dir), "prompt_drops")  # before the meta, which commits the stage
    counts = {name: len(idx) for name, idx, _, _ in drops}
    how = f" ({info['near_duplicate']['method']} near-duplicate search)" if "near_duplicate" in info else ""
    log(f"prompt_filter: kept {len(keep)} of {prompts.num_rows} prompts{how}")
    return prompts.take(keep), {"funnel": funnel, "drops": counts, **info}


STAGE = Stage(
    name="prompt_filter",
    reads=(Read("prompts", "prompts", ("prompt_id", "messages", "turn")),),
    writes="prompts",
    after=("prompts",),
    fields=fields,
    fingerprint=stage_fingerprint,
    build=_build,
    shardable=True,  # the embeddings
    reused=_upgrade,
)
run = STAGE.run
