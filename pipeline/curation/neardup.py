"""Near-duplicate search over L2-normalised embeddings, with memory linear in the number of prompts.

The rule is the prompt filter's since v0.1: in input order, prompt j is dropped when its cosine
similarity to an earlier *kept* prompt is >= threshold, and its match is the earliest such kept
prompt. v0.1 built the full n x n similarity matrix (`emb @ emb.T`: 4 GB at 30k prompts, 4 TB at
1M); this module gets the same decisions without it.

Prompts are taken in blocks of `block` in input order. A block is compared with the earlier prompts
it can match (a GEMM in column chunks, so at most block x chunk similarities exist at once); a hit
on a kept prompt before the block decides a row at once, and the few rows whose only hits lie inside
the block are resolved in order. Kept status of earlier prompts is final, so this is exactly the
greedy rule, whatever the block size.

Which earlier prompts a block is compared with is the method (`curate.dedup.method`):
- exact: all of them. Time O(n^2 d) with a small constant (GEMMs; 3.6 min for 100k prompts on 2
  busy cores), memory O(n d). Equal to v0.1's output, decision for decision.
- clustered: the prompts of its `probes` nearest clusters. Embeddings are first clustered with
  spherical k-means (as NeMo Curator's SemDeDup does, Abbas et al. 2023, "SemDeDup: Data-efficient
  learning at web-scale through semantic deduplication"), every prompt is stored in the list of its
  nearest centroid and searches the lists of its `probes` nearest centroids (an inverted-file index,
  Jegou et al. 2011). Unlike SemDeDup, duplicates across cluster borders are still found when the
  border cluster is probed. Approximate: a pair is missed only if neither clustering nor probing puts
  the two prompts together; every reported pair is verified with its exact cosine. Time about
  n * probes * n / clusters * d; with the defaults (about 2 sqrt(n) clusters, probes a 64th of them,
  at least 16) that is O(n^1.5 d). Recall against exact is measured by bench/scale_prompts.py.
- auto: exact up to `exact_max_prompts` prompts, clustered above.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

BLOCK = 2048  # exact: query rows per GEMM (block x chunk float32 similarities at once)
BLOCK_CLUSTERED = 32768  # clustered: a block touches most lists; larger blocks mean fewer, larger GEMMs per list
CHUNK = 16384  # columns per GEMM
KMEANS_ITERS = 10
KMEANS_SAMPLE_PER_CLUSTER = 40  # k-means trains on at most clusters * this many prompts (faiss warns below 39)


@dataclass
class Search:
    """The result: `match[j]` is the index of the kept prompt j duplicates, -1 if j is kept."""

    match: np.ndarray  # int64, shape (n,)
    score: np.ndarray  # float32 cosine to the match, nan for kept prompts
    method: str  # exact | clustered
    clusters: int | None = None
    probes: int | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def dropped(self) -> np.ndarray:
        return np.flatnonzero(self.match >= 0)


def choose_method(n: int, method: str, exact_max_prompts: int) -> str:
    if method == "auto":
        return "exact" if n <= exact_max_prompts else "clustered"
    return method


def default_clusters(n: int) -> int:
    """Clusters for `n` prompts when curate.dedup.clusters is null: about 2 sqrt(n) (lists of sqrt(n)/2)."""
    return max(1, min(n, round(2 * math.sqrt(n))))


def default_probes(clusters: int) -> int:
    """Probes when curate.dedup.probes is null: a fixed share of the clusters (at least 16), which keeps recall
    steady as n grows (bench/README.md: 0.99 against exact at 100k and 1M on isotropic embeddings)."""
    return min(clusters, max(16, -(-clusters // 64)))


def spherical_kmeans(emb: torch.Tensor, k: int, *, iters: int = KMEANS_ITERS, seed: int = 0) -> torch.Tensor:
    """k unit centroids of the rows of `emb` (cosine k-means on a seeded sample)."""
    gen = torch.Generator().manual_seed(seed)
    n = emb.shape[0]
    sample = emb[torch.randperm(n, generator=gen)[: min(n, k * KMEANS_SAMPLE_PER_CLUSTER)].sort().values]
    cent = sample[torch.randperm(sample.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = _nearest(sample, cent, 1)[:, 0]
        sums = torch.zeros_like(cent).index_add_(0, assign, sample)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # re-seed empty clusters with random sample rows
            sums[empty] = sample[torch.randint(sample.shape[0], (int(empty.sum()),), generator=gen)]
        cent = torch.nn.functional.normalize(sums, dim=-1)
    return cent


def _nearest(emb: torch.Tensor, cent: torch.Tensor, p: int, rows: int = 65536) -> torch.Tensor:
    """Indices of the `p` most similar centroids of every row, shape (n, p)."""
    out = torch.empty((emb.shape[0], p), dtype=torch.long)
    for s in range(0, emb.shape[0], rows):
        out[s : s + rows] = (emb[s : s + rows] @ cent.T).topk(p, dim=1).indices
    return out


class _Lists:
    """Prompts grouped by list (cluster), ascending index within a list, embeddings stored in that order."""

    def __init__(self, emb: torch.Tensor, owner: torch.Tensor, n_lists: int):
        self.order = torch.argsort(owner * emb.shape[0] + torch.arange(emb.shape[0]))  # by (list, index)
        self.index = self.order.numpy()
        self.offsets = np.concatenate([[0], np.cumsum(torch.bincount(owner, minlength=n_lists).numpy())])
        self.emb = emb if n_lists == 1 else emb[self.order]  # one list: the input order already
        self.position = torch.empty_like(self.order)
        self.position[self.order] = torch.arange(len(self.order))

    def before(self, c: int, end: int) -> tuple[int, int]:
        """Storage range of list c's prompts with index < end."""
        lo, hi = self.offsets[c], self.offsets[c + 1]
        return lo, lo + int(np.searchsorted(self.index[lo:hi], end))


def search(emb: torch.Tensor | np.ndarray, threshold: float, *, method: str = "exact", clusters: int | None = None,
           probes: int | None = None, seed: int = 0, block: int | None = None, chunk: int = CHUNK) -> Search:
    """Greedy-in-input-order near-duplicates of the rows of `emb` (float32, L2-normalised)."""
    emb = torch.as_tensor(emb, dtype=torch.float32)
    n = emb.shape[0]
    t0 = time.perf_counter()
    seconds = {}
    if method == "exact" or n <= 1:
        lists, probe = _Lists(emb, torch.zeros(n, dtype=torch.long), 1), torch.zeros((n, 1), dtype=torch.long)
        clusters = probes = None
        method = "exact"
    elif method == "clustered":
        clusters = min(n, clusters or default_clusters(n))
        probes = min(probes or default_probes(clusters), clusters)
        cent = spherical_kmeans(emb, clusters, seed=seed)
        probe = _nearest(emb, cent, probes)
        lists = _Lists(emb, probe[:, 0].contiguous(), clusters)
        del emb  # the lists hold the only copy (reordered)
        seconds["cluster"] = round(time.perf_counter() - t0, 2)
    else:
        raise ValueError(f"unknown near-duplicate method {method!r}")
    match = np.full(n, -1, dtype=np.int64)
    score = np.full(n, np.nan, dtype=np.float32)
    kept = torch.ones(n, dtype=torch.bool)
    block = block or (BLOCK if method == "exact" else BLOCK_CLUSTERED)
    # the clustered search is many small GEMMs: one thread each, since waiting on a second thread that
    # another process holds costs more than it saves (measured 7x slower with 2 threads on 2 busy cores)
    with _torch_threads(1 if method == "clustered" else torch.get_num_threads()):
        for s in range(0, n, block):
            _search_block(lists, probe, kept, match, score, s, min(n, s + block), threshold, chunk)
    seconds["search"] = round(time.perf_counter() - t0 - seconds.get("cluster", 0.0), 2)
    return Search(match, score, method, clusters, probes, seconds)


@contextmanager
def _torch_threads(k: int):
    before = torch.get_num_threads()
    torch.set_num_threads(k)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _search_block(lists: _Lists, probe: torch.Tensor, kept: torch.Tensor, match: np.ndarray, score: np.ndarray,
                  s: int, e: int, threshold: float, chunk: int) -> None:
    """Decide prompts s..e-1, given the final decisions of every prompt before s."""
    m = e - s
    queries = lists.emb[lists.position[s:e]]
    first = torch.full((m,), np.iinfo(np.int64).max, dtype=torch.long)  # earliest kept hit before s
    first_sim = torch.full((m,), float("nan"))
    inside: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (row, earlier row, sim) within the block
    rows_of = probe[s:e]
    by_list = torch.argsort(rows_of.flatten(), stable=True)
    lists_hit, counts = torch.unique_consecutive(rows_of.flatten()[by_list], return_counts=True)
    row_groups = torch.split(by_list // rows_of.shape[1], counts.tolist())
    for c, rows in zip(lists_hit.tolist(), row_groups):
        lo, hi = lists.before(c, e)
        q = queries[rows] if len(rows) < m else queries
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            sims = q @ lists.emb[a:b].T
            hits = sims >= threshold  # float32 against the threshold cast to float32, as v0.1 did
            if not bool(hits.any()):
                continue
            cols = torch.from_numpy(lists.index[a:b])
            earlier = (cols < s) & kept[cols]
            sel = hits & earlier
            has = sel.any(1)
            if bool(has.any()):
                r = has.nonzero().flatten()
                pos = sel[r].to(torch.uint8).argmax(1)  # the first hit: columns ascend by index
                cand = cols[pos]
                better = cand < first[rows[r]]
                first[rows[r[better]]] = cand[better]
                first_sim[rows[r[better]]] = sims[r[better], pos[better]]
            in_block = hits & (cols >= s) & (cols < (rows + s)[:, None])
            if bool(in_block.any()):
                qi, ci = in_block.nonzero(as_tuple=True)
                inside.append((rows[qi], cols[ci] - s, sims[qi, ci]))
    has_first = first < np.iinfo(np.int64).max
    block_kept = ~has_first
    block_match = torch.where(has_first, first, -1)
    block_sim = first_sim.clone()
    if inside:
        q_rows, earlier_rows, sims = (torch.cat(x) for x in zip(*inside))
        keep_pairs = ~has_first[q_rows]  # rows already decided by a kept prompt before the block need nothing more
        q_rows, earlier_rows, sims = q_rows[keep_pairs], earlier_rows[keep_pairs], sims[keep_pairs]
        order = torch.argsort(q_rows * m + earlier_rows)
        q_rows, earlier_rows, sims = q_rows[order].numpy(), earlier_rows[order].numpy(), sims[order].numpy()
        starts = np.flatnonzero(np.r_[True, q_rows[1:] != q_rows[:-1]])
        ends = np.r_[starts[1:], len(q_rows)]
        bk = block_kept.numpy()
        for a, b in zip(starts, ends):  # ascending rows: every earlier row of the block is decided already
            cand = earlier_rows[a:b]
            ok = np.flatnonzero(bk[cand])
            if len(ok):
                j = q_rows[a]
                bk[j] = False
                block_match[j] = s + int(cand[ok[0]])
                block_sim[j] = float(sims[a + ok[0]])
        block_kept = torch.from_numpy(bk)
    kept[s:e] = block_kept
    match[s:e] = block_match.numpy()
    score[s:e] = block_sim.numpy()


def legacy_near_duplicates(emb: torch.Tensor, threshold: float) -> dict[int, int]:
    """v0.1's full-matrix search, kept as the reference the block search is tested against (O(n^2) memory)."""
    sims = emb @ emb.T
    dropped: dict[int, int] = {}
    for i in range(emb.shape[0]):
        if i in dropped:
            continue
        for j in (sims[i, i + 1 :] >= threshold).nonzero().flatten().tolist():
            dropped.setdefault(i + 1 + j, i)
    return dropped
