"""Per-prompt diversity of candidates, by generation mode (for the manifest and the card).

For the candidates of one prompt from one generation mode (`sampling.mode`: `sample` for n
independent samples, `verbalized` for verbalized sampling):
- distinct-n (Li et al. 2016): unique word n-grams / all word n-grams over the candidates, n = 1, 2;
- embedding distance: mean over candidate pairs of 1 - cosine similarity of the bundled MiniLM
  sentence embeddings (the embedder of prompt dedup).
A mode's figure is the mean over its prompts with at least two non-empty candidates. This is what
lets users compare modes from one run ("Verbalized Sampling: How to Mitigate Mode Collapse and
Unlock LLM Diversity" reports diversity the same way: lexical and semantic).
"""

from __future__ import annotations

import random
from collections import defaultdict

import pyarrow as pa
import torch


def distinct_n(texts: list[str], n: int) -> float | None:
    grams = [
        tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else None


def embedding_distance(emb: torch.Tensor) -> float | None:
    """Mean pairwise 1 - cosine over L2-normalised rows."""
    k = emb.shape[0]
    if k < 2:
        return None
    sim = emb @ emb.T
    off = sim[~torch.eye(k, dtype=torch.bool)]
    return float((1 - off).mean())


def prompt_set_diversity(texts: list[str], embed, *, max_prompts: int = 500, seed: int = 0) -> dict:
    """Diversity of a whole prompt set, the same figures as a prompt's candidates: distinct-1/2 over every
    prompt, MiniLM distance over a seeded sample of at most `max_prompts` (pairs grow as its square)."""
    texts = [t for t in texts if t and t.strip()]
    sample = texts if len(texts) <= max_prompts else random.Random(seed).sample(texts, max_prompts)
    emb = embed(sample) if len(sample) >= 2 else torch.empty(0, 0)
    distance = embedding_distance(emb) if len(sample) >= 2 else None
    return {
        "prompts": len(texts),
        "distinct_1": _round(distinct_n(texts, 1)),
        "distinct_2": _round(distinct_n(texts, 2)),
        "embedding_distance": _round(distance),
        "embedded": len(sample),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def diversity_by_mode(candidates: pa.Table, embed, *, max_prompts: int = 500, seed: int = 0) -> dict[str, dict]:
    """{mode: {prompts, distinct_1, distinct_2, embedding_distance}}; `embed(texts)` returns
    L2-normalised embeddings (pipeline.stages.prompt_filter.embed with the run's embedder). distinct-n is over
    every prompt; the embedding distance over a seeded sample of at most `max_prompts` prompts per mode (the
    embedder does about 60 candidates a CPU-second: every candidate of a million prompts would take a day), and
    a sampled mode says how many prompts it embedded (`embedded_prompts`)."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    samplings = candidates.column("sampling").to_pylist()
    for pid, text, s in zip(
        candidates.column("prompt_id").to_pylist(), candidates.column("text").to_pylist(), samplings
    ):
        if text and text.strip():
            groups[((s or {}).get("mode") or "sample", pid)].append(text)
    eligible: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for key, ts in groups.items():
        if len(ts) >= 2:
            eligible[key[0]].append(key)
    sampled = {mode: len(keys) > max_prompts for mode, keys in eligible.items()}
    chosen = {k for mode, keys in eligible.items()
              for k in (random.Random(seed).sample(keys, max_prompts) if sampled[mode] else keys)}
    texts = [t for key, ts in groups.items() if key in chosen for t in ts]
    emb = embed(texts) if texts else torch.empty(0, 0)
    per_mode: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    at = 0
    for key, ts in groups.items():
        if len(ts) < 2:
            continue
        mode = key[0]
        figures = {"distinct_1": distinct_n(ts, 1), "distinct_2": distinct_n(ts, 2)}
        if key in chosen:
            figures["embedding_distance"] = embedding_distance(emb[at : at + len(ts)])
            at += len(ts)
        for name, value in figures.items():
            if value is not None:
                per_mode[mode][name].append(value)
        per_mode[mode]["prompts"].append(1)
    return {
        mode: {"prompts": len(v.pop("prompts")), **{k: round(sum(x) / len(x), 4) for k, x in sorted(v.items())},
               **({"embedded_prompts": max_prompts} if sampled[mode] else {})}
        for mode, v in sorted(per_mode.items())
    }
