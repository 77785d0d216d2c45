"""Config of curation and publishing: pair strategy, CHES, dedup, decontamination, rationales, shards."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.config.base import _Section, operational


class PairConfig(_Section):
    strategy: Literal["best_vs_worst", "best_vs_random", "all_above_margin", "top_k_vs_bottom_k", "verified"] = Field(
        "best_vs_worst",
        description="How pairs are formed per prompt: best vs worst; best vs a seeded random lower-scored "
        "candidate; every pair above the margin; each of the top k vs each of the bottom k; or 'verified': the "
        "best-scored answer that passes its prompt's verify spec vs the best-scored one that fails (prompts "
        "without such a split give no pair; min_margin does not apply, the judges may have ranked them wrongly).",
    )
    k: int = Field(2, ge=1, description="With strategy=top_k_vs_bottom_k, the k.")
    min_margin: float = Field(
        0.05, ge=0.0, description="Drop pairs whose score margin is below this."
    )
    tie_epsilon: float = Field(
        1e-9,
        ge=0.0,
        description="Tie policy: candidates whose scores differ by at most this are a tie and are never paired.",
    )
    max_similarity: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Drop pairs whose chosen and rejected are near-identical: character 5-gram Jaccard above this.",
    )
    max_length_ratio: float | None = Field(
        None,
        ge=1.0,
        description="Length-controlled pairing: chosen may be at most this many times longer (tokens) than "
        "rejected; null is off.",
    )
    keep_ranked: bool = Field(
        False,
        description="Also publish every scored candidate per prompt, best first (ranked/*.parquet), for listwise use.",
    )


class CHESConfig(_Section):
    enabled: bool = Field(True, description="Compute CHES / LN-CHES and reference log-probs for every pair.")
    model: str | None = Field(
        None, description="The policy to be trained (CHES is policy-specific); null means the generator model."
    )
    filter: Literal["quantile", "threshold", "none"] = Field(
        "quantile", description="Drop the highest-LN-CHES pairs: above a quantile, above a threshold, or none."
    )
    quantile: float = Field(
        0.9, gt=0.0, le=1.0, description="With filter=quantile, keep pairs with LN-CHES at or below this quantile."
    )
    threshold: float | None = Field(
        None, description="With filter=threshold, keep pairs with LN-CHES at or below this value."
    )
    batch_size: int = operational(8, ge=1, description="Sequences per forward pass.")

    @model_validator(mode="after")
    def _threshold_given(self):
        if self.filter == "threshold" and self.threshold is None:
            raise ValueError(
                "curate.ches.filter is 'threshold' but curate.ches.threshold is not set; "
                "fix: set it or use filter: quantile"
            )
        return self


class MinHashConfig(_Section):
    """Fuzzy text dedup (curation/minhash.py): near-copies by MinHash LSH over word shingles, before embeddings."""

    enabled: bool = Field(
        False,
        description="Drop prompts that are near-copies of an earlier prompt by their words "
        "(case, punctuation, a few edits); needs no embedder. Clusters of linked prompts keep "
        "their earliest prompt (connected components, as datatrove and NeMo Curator).",
    )
    ngram: int = Field(
        5,
        ge=1,
        le=32,
        description="Words per shingle (datatrove's 5); a prompt with fewer words is one "
        "shingle. Smaller n also links prompts that differ in more words.",
    )
    bands: int = Field(
        14,
        ge=1,
        le=512,
        description="LSH bands; with `rows` sets the Jaccard at which pairs become "
        "candidates: (1/bands)^(1/rows), 0.72 for datatrove's 14 x 8.",
    )
    rows: int = Field(8, ge=1, le=64, description="Signature values per band (bands x rows hash functions in all).")
    threshold: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="A candidate pair is linked only when its signatures "
        "agree on at least this share of hashes (the estimated Jaccard of their shingle sets).",
    )


class DedupConfig(_Section):
    near_duplicates: bool = Field(
        True, description="Drop prompts that are near-duplicates of an earlier prompt (embeddings)."
    )
    model: str = Field(
        "bundled:minilm-l6", description="Sentence embedder: bundled:minilm-l6, a local folder or a Hub id."
    )
    threshold: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Cosine similarity at or above which a later prompt is a near-duplicate "
        "(MiniLM: paraphrases score 0.9-0.97, same question about another country about 0.66).",
    )
    method: Literal["auto", "exact", "clustered"] = Field(
        "auto",
        description="Near-duplicate search (pipeline/curation/neardup.py): 'exact' compares each prompt with every "
        "earlier prompt blockwise (memory linear, time quadratic: 4 min for 100k prompts on 2 busy cores); "
        "'clustered' clusters the embeddings (k-means) and compares each prompt only with the prompts of its "
        "`probes` nearest clusters (approximate: 24 s for 100k, 9.5 min for 1M, recall 0.99; bench/README.md); "
        "'auto' is exact up to "
        "`exact_max_prompts` prompts and clustered above.",
    )
    exact_max_prompts: int = Field(50_000, ge=1, description="With method 'auto', the most prompts searched exactly.")
    clusters: int | None = Field(
        None,
        ge=1,
        description="Clusters of the clustered search; null is about 2 sqrt(n) (lists of about sqrt(n)/2 prompts).",
    )
    probes: int | None = Field(
        None,
        ge=1,
        description="Nearest clusters each prompt searches in the clustered search; "
        "null is a 64th of the clusters, at least 16. More finds more duplicates across cluster "
        "borders and costs proportionally more time.",
    )
    minhash: MinHashConfig = Field(default_factory=MinHashConfig, description="Fuzzy text dedup (MinHash LSH).")
    batch_size: int = operational(64, ge=1, description="Prompts per embedding batch.")
    chunk_prompts: int = operational(
        8192,
        ge=1,
        description="Prompts per checkpointed part of the embeddings; a killed run "
        "resumes from its finished parts, and Ray shards split these parts.",
    )


class DecontaminateConfig(_Section):
    benchmarks: list[str] = Field(
        [],
        description="Benchmark prompt files (.jsonl with prompt/messages/question/text, .parquet, or .txt one per "
        "line); "
        "prompts sharing a word n-gram with any of them are dropped.",
    )
    ngram: int = Field(
        8,
        ge=3,
        description="n of the word n-grams compared (13 in GPT-3's decontamination; shorter suits short prompts).",
    )


class CurateConfig(_Section):
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    ches: CHESConfig = CHESConfig()


class RationaleConfig(_Section):
    enabled: bool = Field(True, description="Write a short judge rationale for each published pair.")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Token cap per rationale.")
    batch_size: int = operational(16, ge=1, description="Pairs per generate() call.")


class PublishConfig(_Section):
    shard_rows: int = operational(5000, ge=1, description="Rows per parquet shard.")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field("zstd", description="Parquet codec.")
    license: str = Field("other", description="License written into the dataset card.")
    chunk_prompts: int = operational(
        8, ge=1, description="Prompts per checkpointed chunk of generate/judge work."
    )
