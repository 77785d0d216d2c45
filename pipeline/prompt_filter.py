"""Prompt filter stage: near-duplicate prompts and benchmark contamination, before any generation.

Runs between `prompts` and `generate` so no compute is spent on prompts that would be dropped.
- Near-duplicates: prompts are embedded (all-MiniLM-L6-v2 by default: mean pooling over the last
  hidden state, L2-normalised, as sentence-transformers configures that model) and, in input
  order, a prompt whose cosine similarity to an earlier kept prompt is >= `threshold` is dropped.
  Exact duplicates were already removed when the input was read.
- Decontamination: a prompt sharing any word n-gram (lower-cased, punctuation stripped) with a
  benchmark prompt is dropped and the matched benchmark id (`file:row` or the row's id) recorded,
  the rule of GPT-3's decontamination with a configurable n.
Every drop is counted in the funnel and listed (prompt_id, filter, match) in the stage meta.
"""

from __future__ import annotations

import json
import re
import time
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import schemas
from pipeline.config import DecontaminateConfig, DedupConfig, RunConfig, fingerprint
from pipeline.errors import InputError
from pipeline.funnel import step
from pipeline.models import resolve
from pipeline.store import StageStore

VERSION = "2"
READS = ("prompts.prompt_id", "prompts.messages")
WRITES = tuple(schemas.PROMPTS.names)
WORD = re.compile(r"[a-z0-9]+")


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


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


def near_duplicates(emb: torch.Tensor, threshold: float) -> dict[int, int]:
    """{dropped index: index of the earlier kept prompt it duplicates}, greedy in input order."""
    sims = emb @ emb.T
    dropped: dict[int, int] = {}
    for i in range(emb.shape[0]):
        if i in dropped:
            continue
        for j in (sims[i, i + 1 :] >= threshold).nonzero().flatten().tolist():
            dropped.setdefault(i + 1 + j, i)
    return dropped


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
        raise InputError(f"curate.decontaminate.benchmarks: {str(path)!r} has unknown format; fix: use .jsonl, .parquet or .txt")
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


def filter_prompts(prompts: pa.Table, dedup: DedupConfig, decontam: DecontaminateConfig) -> tuple[pa.Table, list[dict], list[dict]]:
    """Pure core: (kept prompts, funnel entries, dropped rows with their reason)."""
    ids = prompts.column("prompt_id").to_pylist()
    texts = [prompt_text(m) for m in prompts.column("messages").to_pylist()]
    dropped: list[dict] = []
    keep = set(range(len(ids)))
    funnel = []
    if decontam.benchmarks:
        hits = contaminated(texts, decontam)
        dropped += [{"prompt_id": ids[i], "filter": "decontaminate", "match": m} for i, m in sorted(hits.items())]
        funnel.append(step("prompt_filter", "decontaminate", len(keep), len(keep) - len(hits),
                           f"shares a word {decontam.ngram}-gram with a benchmark prompt", unit="prompts"))
        keep -= set(hits)
    if dedup.near_duplicates:  # a step whenever it is on (also for one prompt), so increments' funnels sum
        order = sorted(keep)
        dups = (near_duplicates(embed([texts[i] for i in order], dedup.model, batch_size=dedup.batch_size), dedup.threshold)
                if len(order) > 1 else {})
        dropped += [{"prompt_id": ids[order[d]], "filter": "near_duplicate", "match": ids[order[k]]} for d, k in sorted(dups.items())]
        funnel.append(step("prompt_filter", "near_duplicate", len(keep), len(keep) - len(dups),
                           f"cosine >= {dedup.threshold} to an earlier prompt ({dedup.model})", unit="prompts"))
        keep -= {order[d] for d in dups}
    return prompts.take(sorted(keep)), funnel, dropped


def stage_fingerprint(cfg: RunConfig, prompts_fp: str) -> str:
    bench = [(p, Path(p).stat().st_size if Path(p).exists() else None) for p in cfg.curate.decontaminate.benchmarks]
    return fingerprint("prompt_filter", VERSION, cfg.stage_fields("prompt_filter"), prompts_fp, bench)


def run(run_dir, cfg: RunConfig, prompts_fp: str, *, log=print) -> dict:
    store = StageStore(run_dir, "prompt_filter", "prompts", stage_fingerprint(cfg, prompts_fp))
    if (meta := store.reuse(log)) is not None:
        return meta
    started = time.perf_counter()
    prompts = schemas.read_table(f"{run_dir}/tables/prompts.parquet", "prompts")
    kept, funnel, dropped = filter_prompts(prompts, cfg.curate.dedup, cfg.curate.decontaminate)
    log(f"prompt_filter: kept {kept.num_rows} of {prompts.num_rows} prompts")
    return store.finish(kept, {"seconds": round(time.perf_counter() - started, 2), "funnel": funnel, "dropped": dropped})
