"""Fuzzy text dedup: MinHash over word shingles, LSH bands, clusters by connected components.

The near-copy filter of web-scale pipelines (datatrove's MinhashDedup*, NeMo Curator's fuzzy dedup;
Broder 1997, "On the resemblance and containment of documents"), for prompts that differ in case,
punctuation, spacing or a few words, and for runs where no embedder should run:
1. shingles: word n-grams of the lower-cased text (words are Unicode `\\w+` runs); a text shorter
   than n words is one shingle. Words hash with blake2b, so signatures are the same in every process.
2. signature: for each of bands * rows hash functions h_k(x) = (a_k x + b_k) mod 2^64 >> 32
   (multiply-shift, seeded), the minimum over the text's shingles. Two texts agree on h_k with
   probability equal to the Jaccard similarity of their shingle sets.
3. LSH: texts whose `rows` signature values agree in any band share a bucket; the chance that a pair
   of Jaccard s does is 1 - (1 - s^rows)^bands (14 x 8, datatrove's default: 0.72 is the midpoint).
4. verify and cluster: each bucket member is linked to the bucket's earliest text when their signatures
   agree on at least `threshold` of the hashes (drops LSH's false positives), and linked texts form
   clusters (connected components, as datatrove and NeMo do); each cluster keeps its earliest text.
A dropped text's match is its cluster's kept text. Everything past tokenising is numpy over arrays.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

WORD = re.compile(r"\w+")
MASK64 = (1 << 64) - 1
CHUNK_TEXTS = 20_000  # texts per signature batch (their shingles x one hash function at a time)
EDGES = 1 << 20  # candidate pairs verified at once


@dataclass
class FuzzyResult:
    match: np.ndarray  # int64 (n,): index of the kept text of the cluster, -1 for kept texts
    score: np.ndarray  # float32: share of agreeing signature values with the match (estimated Jaccard)


def _hash_params(k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    a = g.integers(1, 1 << 63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = g.integers(0, 1 << 63, size=k, dtype=np.uint64)
    return a, b


class _WordHashes:
    """Deterministic 64-bit word hashes, each distinct word hashed once."""

    def __init__(self):
        self.cache: dict[str, int] = {}

    def __call__(self, word: str) -> int:
        h = self.cache.get(word)
        if h is None:
            h = self.cache[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return h


def shingle_hashes(texts: list[str], ngram: int, words: _WordHashes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 shingle hashes, offsets): text i owns hashes[offsets[i]:offsets[i + 1]]."""
    words = words or _WordHashes()
    ids, lengths = [], []
    for text in texts:
        w = [words(x) for x in WORD.findall(text.lower())]
        ids.extend(w)
        lengths.append(len(w))
    flat = np.array(ids, dtype=np.uint64)
    lengths = np.array(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    with np.errstate(over="ignore"):
        # shingle at word p: a polynomial in the n words from p (mod 2^64); short texts use their own length
        span = np.minimum(lengths, ngram)
        count = np.where(lengths > 0, lengths - span + 1, 0)
        owner = np.repeat(np.arange(len(texts)), count)
        pos = np.arange(count.sum()) - np.repeat(np.concatenate([[0], np.cumsum(count)])[:-1], count)
        first = starts[owner] + pos
        width = span[owner]
        h = np.zeros(len(first), dtype=np.uint64)
        for j in range(ngram):
            use = j < width
            h[use] = h[use] * np.uint64(0x100000001B3) + flat[first[use] + j]
    return h, np.concatenate([[0], np.cumsum(count)])


def signatures(texts: list[str], *, ngram: int, n_hashes: int, seed: int = 1) -> np.ndarray:
    """uint32 MinHash signatures, shape (len(texts), n_hashes); a text without words gets all 2^32-1."""
    a, b = _hash_params(n_hashes, seed)
    out = np.full((len(texts), n_hashes), np.iinfo(np.uint32).max, dtype=np.uint32)
    words = _WordHashes()
    for s in range(0, len(texts), CHUNK_TEXTS):
        h, offsets = shingle_hashes(texts[s : s + CHUNK_TEXTS], ngram, words)
        nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
        if not len(h):
            continue
        with np.errstate(over="ignore"):
            for k in range(n_hashes):
                v = ((h * a[k] + b[k]) >> np.uint64(32)).astype(np.uint32)
                out[s + nonempty, k] = np.minimum.reduceat(v, offsets[nonempty])
    return out


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest index of each node's connected component (min-label propagation with pointer jumping)."""
    label = np.arange(n)
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def fuzzy_duplicates(texts: list[str], *, ngram: int, bands: int, rows: int, threshold: float,
                     seed: int = 1) -> FuzzyResult:
    """Near-copies among `texts` by MinHash LSH; the earliest text of every cluster is kept."""
    n = len(texts)
    sig = signatures(texts, ngram=ngram, n_hashes=bands * rows, seed=seed)
    has_words = sig[:, 0] != np.iinfo(np.uint32).max
    src, dst = [], []
    with np.errstate(over="ignore"):
        for band in range(bands):
            cols = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
            key = np.zeros(n, dtype=np.uint64)
            for j in range(rows):
                key = key * np.uint64(0x9E3779B97F4A7C15) + cols[:, j] + np.uint64(j)
            idx = np.flatnonzero(has_words)
            idx = idx[np.argsort(key[idx], kind="stable")]  # stable: ascending index within a bucket
            k = key[idx]
            new_bucket = np.r_[True, k[1:] != k[:-1]]
            head = idx[np.maximum.accumulate(np.where(new_bucket, np.arange(len(idx)), 0))]
            member = ~new_bucket
            src.append(head[member])
            dst.append(idx[member])
    a = np.concatenate(src) if src else np.empty(0, dtype=np.int64)
    b = np.concatenate(dst) if dst else np.empty(0, dtype=np.int64)
    agree = np.concatenate([(sig[a[i : i + EDGES]] == sig[b[i : i + EDGES]]).mean(1)
                            for i in range(0, len(a), EDGES)]) if len(a) else np.empty(0)
    a, b = a[agree >= threshold], b[agree >= threshold]
    root = _components(n, a, b)
    match = np.where(root != np.arange(n), root, -1)
    score = np.full(n, np.nan, dtype=np.float32)
    dropped = np.flatnonzero(match >= 0)
    if len(dropped):
        score[dropped] = (sig[dropped] == sig[match[dropped]]).mean(1)
    return FuzzyResult(match.astype(np.int64), score)
