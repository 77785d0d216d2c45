"""Near-duplicate search (pipeline/curation/neardup.py) against v0.1's full-matrix search, and MinHash
(pipeline/curation/minhash.py)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.curation.minhash import fuzzy_duplicates, signatures
from pipeline.curation.neardup import choose_method, legacy_near_duplicates, search


def planted(n: int, *, seed: int = 0, d: int = 384, dup_frac: float = 0.1, lo: float = 0.82, hi: float = 0.995):
    """Random unit vectors where a share are rotated copies of an earlier row at cosine in [lo, hi]; copies of
    copies make chains (a ~ b ~ c with a, c further apart), where the greedy order matters."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if n < 2:
        return torch.from_numpy(x)
    dups = np.sort(g.choice(np.arange(1, n), size=max(1, int(n * dup_frac)), replace=False))
    for j in dups:
        src = int(g.integers(0, j))
        noise = g.standard_normal(d).astype(np.float32)
        noise -= (noise @ x[src]) * x[src]
        c = np.float32(g.uniform(lo, hi))
        x[j] = c * x[src] + np.sqrt(1 - c * c) * noise / np.linalg.norm(noise)
    return torch.from_numpy(x)


def as_dict(result) -> dict[int, int]:
    return {int(j): int(result.match[j]) for j in result.dropped}


CASES = [(0, 0.9), (1, 0.9), (2, 0.9), (3, 0.85), (50, 0.9), (1000, 0.9), (1000, 0.85), (5000, 0.9), (20000, 0.9)]


@pytest.mark.parametrize("n,threshold", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_exact_search_keeps_what_v01_kept(n, threshold):
    """Same dropped prompts and same matches as the full-matrix search, up to 20k prompts."""
    emb = planted(n, seed=n)
    want = legacy_near_duplicates(emb, threshold) if n else {}
    got = search(emb, threshold, method="exact")
    assert as_dict(got) == want
    if n >= 1000:
        assert len(want) > n * 0.04  # the planted copies are there to be found
    assert choose_method(n, "auto", 50_000) == "exact"


def test_block_and_chunk_sizes_do_not_change_decisions():
    emb = planted(1500, seed=3)
    want = search(emb, 0.88, method="exact")
    for block, chunk in ((1, 7), (7, 100), (333, 64), (4096, 1 << 20)):
        got = search(emb, 0.88, method="exact", block=block, chunk=chunk)
        assert np.array_equal(got.match, want.match), (block, chunk)
    clustered = search(emb, 0.88, method="clustered", clusters=8, probes=3, block=97, chunk=50)
    assert np.array_equal(clustered.match, search(emb, 0.88, method="clustered", clusters=8, probes=3).match)


def test_greedy_rule_against_kept_prompts_only():
    """a ~ b and b ~ c but not a ~ c: b is dropped for a, so c stays (it duplicates no *kept* prompt)."""
    ang = np.radians([0.0, 20.0, 40.0, 90.0])
    emb = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], 1), dtype=torch.float32)
    cos20 = float(np.cos(np.radians(20.0))) - 1e-4
    for method in ("exact", "clustered"):
        got = search(emb, cos20, method=method, clusters=2, probes=2)
        assert got.match.tolist() == [-1, 0, -1, -1], method
        assert abs(got.score[1] - np.cos(np.radians(20.0))) < 1e-5 and np.isnan(got.score[0])


def test_clustered_search_probing_every_cluster_is_exact():
    emb = planted(3000, seed=5)
    exact = search(emb, 0.9, method="exact")
    every = search(emb, 0.9, method="clustered", clusters=12, probes=12)
    assert np.array_equal(every.match, exact.match)


def test_clustered_search_reports_only_true_duplicates_and_finds_most():
    emb = planted(8000, seed=7)
    exact = search(emb, 0.9, method="exact")
    approx = search(emb, 0.9, method="clustered")
    assert approx.method == "clustered" and approx.clusters == 179 and approx.probes == 16
    d = approx.dropped
    m = approx.match[d]
    assert (m < d).all() and (approx.match[m] == -1).all()  # an earlier prompt, itself kept
    cos = (emb[torch.from_numpy(d)] * emb[torch.from_numpy(m)]).sum(1).numpy()
    assert (cos >= 0.9 - 1e-6).all() and np.allclose(cos, approx.score[d], atol=1e-5)
    found = len(set(d.tolist()) & set(exact.dropped.tolist())) / len(exact.dropped)
    assert found >= 0.97  # bench/scale_prompts.py measures it at 100k


def test_auto_switches_to_clustered_above_the_limit():
    assert choose_method(50_001, "auto", 50_000) == "clustered"
    assert choose_method(10, "clustered", 50_000) == "clustered" and choose_method(10**6, "exact", 50_000) == "exact"


TEXTS = [
    "Write a short poem about autumn leaves falling in the quiet park at dusk.",
    "Explain how a bicycle gear system lets a rider climb steep hills with less effort.",
    "write a short poem about autumn leaves falling in the quiet park at dusk!!",  # copy of 0 (case, punctuation)
    # a word changed: Jaccard 1/3 of 5-grams
    "Write a short poem about autumn leaves falling in the busy park at dusk.",
    "Explain how a bicycle gear system lets a rider climb steep hills with less effort, please.",  # copy of 1 + a word
    "",
    "?!",
    "What is the capital of France?",
]


def test_minhash_finds_near_copies_and_keeps_the_earliest():
    got = fuzzy_duplicates(TEXTS, ngram=5, bands=14, rows=8, threshold=0.7)
    assert got.match.tolist() == [-1, -1, 0, -1, 1, -1, -1, -1]
    assert got.score[2] == 1.0 and 0.7 <= got.score[4] < 1.0
    looser = fuzzy_duplicates(TEXTS, ngram=2, bands=20, rows=4, threshold=0.5)
    assert looser.match[3] == 0  # shorter shingles and a lower threshold also link the one-word edit (0.73 of 2-grams)


def test_minhash_clusters_by_connected_components():
    """b copies a and c copies b: one cluster, kept a, every drop matches a."""
    a = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
    b = a + " sixteen"
    c = b + " seventeen"
    got = fuzzy_duplicates([a, "unrelated words here entirely", b, c], ngram=3, bands=20, rows=2, threshold=0.5)
    assert got.match.tolist() == [-1, -1, 0, 0]


def test_minhash_signatures_are_the_same_in_every_process():
    code = ("from pipeline.curation.minhash import signatures; "
            "print(signatures(['Hello world, again'], ngram=2, n_hashes=4).tolist())")
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(signatures(["Hello world, again"], ngram=2, n_hashes=4).tolist())
