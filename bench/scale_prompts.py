"""Time and peak memory of the prompt filter at 10k, 100k and 1M synthetic prompts.

Each case is the real stage (`pipeline.stages.prompt_filter.run`) in a fresh process on a run folder whose
prompts table and embedding parts were written beforehand, as if the embedding parts had run: the
stage finds every part done, loads no model, searches and commits. So the figures are the filter
without the embedder; the embedder's own speed is measured apart on real text (`embed` row) and
extrapolated to 1M. Peak memory is the stage process's peak RSS (ru_maxrss; imports included,
printed apart).

Embeddings: isotropic random unit vectors in 384 dimensions (the hardest case for a clustered
search: random data has no cluster structure) with planted near-duplicates: 10% of the prompts are
rotated copies of an earlier *original* prompt at cosine uniform in [0.905, 0.99], 5% are near
misses at [0.80, 0.88]. With threshold 0.9 exactly the planted copies are duplicates under the
greedy rule, so "found" (planted copies dropped) is recall against the exact search at every size,
1M included; "near misses kept" checks the other side. Texts: 8-40 random words from 20k; 5% are
near-copies of an earlier prompt (case, punctuation, one added word) for the MinHash rows.

Baseline, in the same run: v0.1's full-matrix search (`emb @ emb.T`, neardup.legacy_near_duplicates)
at 10k and 20k on the same embeddings; ratios compare its time and peak with the block search's.

    python bench/scale_prompts.py [--sizes 10000 100000 1000000] [--exact-max 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline.config import load_config  # noqa: E402
from pipeline.core import schemas  # noqa: E402

DIM, THRESHOLD, CHUNK = 384, 0.9, 8192


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def planted_embeddings(n: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, indices of planted copies, indices of near misses)."""
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    special = rng.choice(np.arange(1, n), size=int(0.15 * n), replace=False)
    copies, misses = np.sort(special[: int(0.10 * n)]), np.sort(special[int(0.10 * n) :])
    originals = np.setdiff1d(np.arange(n), special)
    for idx, lo, hi in ((copies, 0.905, 0.99), (misses, 0.80, 0.88)):
        for s in range(0, len(idx), 65536):
            j = idx[s : s + 65536]
            src = originals[(rng.random(len(j)) * np.searchsorted(originals, j)).astype(np.int64)]
            u = rng.standard_normal((len(j), DIM), dtype=np.float32)
            u -= (u * x[src]).sum(1, keepdims=True) * x[src]
            u /= np.linalg.norm(u, axis=1, keepdims=True)
            c = rng.uniform(lo, hi, size=(len(j), 1)).astype(np.float32)
            x[j] = c * x[src] + np.sqrt(1 - c * c) * u
    return x, copies, misses


def planted_texts(n: int, rng) -> tuple[list[str], np.ndarray]:
    vocab = np.array([f"w{i}" for i in range(20_000)])
    lengths = rng.integers(8, 41, size=n)
    words = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(n)]
    copies = np.sort(rng.choice(np.arange(1, n), size=int(0.05 * n), replace=False))
    for j in copies:  # copies of copies are fine here: MinHash clusters them all
        src = int(rng.integers(0, j))
        texts[j] = texts[src].upper().replace(" ", ", ", 1) + " please!"
    return texts, copies


def prompts_table(texts: list[str]) -> pa.Table:
    n = len(texts)
    msgs = pa.StructArray.from_arrays([pa.array(["user"] * n), pa.array(texts)], fields=list(schemas.MESSAGE))
    messages = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), msgs).cast(schemas.MESSAGES)
    ids = pa.array([f"p{i:07d}" for i in range(n)])
    nulls = pa.nulls(n, pa.string())
    return pa.table([ids, messages, nulls, nulls, nulls], schema=schemas.PROMPTS)


def make(run_dir: Path, n: int, seed: int) -> None:
    """Write the prompts table, the finished embedding parts and the planted truth of one size."""
    from pipeline.stages.prompt_filter import embedding_store, embeddings_table

    rng = np.random.default_rng(seed)
    texts, text_copies = planted_texts(n, rng)
    table = prompts_table(texts)
    schemas.write_table(table, run_dir / "tables" / "prompts.parquet", "prompts")
    emb, copies, misses = planted_embeddings(n, rng)
    store = embedding_store(run_dir, load_config(None), f"bench-{n}")
    ids = table.column("prompt_id").combine_chunks()
    for s in range(0, n, CHUNK):
        part = ids.slice(s, CHUNK)
        store.write_part(embeddings_table(part, emb[s : s + CHUNK]), part.to_pylist(), {"dim": DIM}, position=s)
    np.savez(run_dir / "truth.npz", copies=copies, misses=misses, text_copies=text_copies)
    if n <= 20_000:
        np.save(run_dir / "emb.npy", emb)  # for the v0.1 baseline


def filter_case(run_dir: Path, n: int, overrides: list[str]) -> dict:
    """The stage on a prepared folder, in this (fresh) process."""
    import torch  # noqa: F401  (imported before the figure of the imports' memory)

    from pipeline.stages import prompt_filter

    imports = rss_mb()
    cfg = load_config(None, [f"curate.dedup.chunk_prompts={CHUNK}", *overrides])
    t0 = time.perf_counter()
    meta = prompt_filter.run(run_dir, cfg, f"bench-{n}", log=lambda m: None)
    seconds = time.perf_counter() - t0
    drops = schemas.read_table(prompt_filter.drops_path(run_dir), "prompt_drops")
    dropped = {int(p[1:]) for p in drops.column("prompt_id").to_pylist()}
    truth = np.load(run_dir / "truth.npz")
    out = {"seconds": round(seconds, 1), "peak_mb": round(peak_mb()), "imports_mb": round(imports),
           "dropped": len(dropped), "near_duplicate": meta.get("near_duplicate")}
    if "curate.dedup.near_duplicates=false" not in overrides:
        out["found"] = float(np.isin(truth["copies"], list(dropped)).mean())
        out["misses_kept"] = float(1 - np.isin(truth["misses"], list(dropped)).mean())
    else:
        out["found"] = float(np.isin(truth["text_copies"], list(dropped)).mean())
    (run_dir / "dropped.json").write_text(json.dumps(sorted(dropped)))
    for stale in (run_dir / "tables").glob("prompt_filter.*"):  # the next case runs the stage afresh
        if stale.is_file():
            stale.unlink()
    (run_dir / "tables" / "prompt_filter.parquet").unlink(missing_ok=True)
    return out


def legacy_case(run_dir: Path) -> dict:
    import torch

    from pipeline.curation.neardup import legacy_near_duplicates

    emb = torch.from_numpy(np.load(run_dir / "emb.npy"))
    t0 = time.perf_counter()
    dropped = legacy_near_duplicates(emb, THRESHOLD)
    seconds = time.perf_counter() - t0
    (run_dir / "dropped.json").write_text(json.dumps(sorted(dropped)))
    return {"seconds": round(seconds, 1), "peak_mb": round(peak_mb()), "dropped": len(dropped)}


def embed_case(n: int) -> dict:
    """The stage's embedding parts on n real-text prompts with the bundled MiniLM (prompts/s)."""
    from pipeline.stages.prompt_filter import embed_in_parts, embedding_store

    rng = np.random.default_rng(1)
    texts, _ = planted_texts(n, rng)
    words = ["the", "a", "how", "why", "explain", "write", "poem", "about", "code", "in", "python", "history"]
    texts = [" ".join(rng.choice(words, size=len(t.split()))) for t in texts]  # real words, prompt-like lengths
    cfg = load_config(None)
    with tempfile.TemporaryDirectory() as tmp:
        store = embedding_store(tmp, cfg, "bench-embed")
        from pipeline.stages.prompt_filter import embed

        embed(texts[:64], cfg.curate.dedup.model)  # model load, not timed
        t0 = time.perf_counter()
        embed_in_parts(store, pa.array([f"e{i}" for i in range(n)]), texts, cfg.curate.dedup, log=lambda m: None)
        seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 1), "prompts_per_s": round(n / seconds), "peak_mb": round(peak_mb())}


def child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PREFSYNTH_PROGRESS": "0"})
    if proc.returncode != 0:
        raise SystemExit(f"case {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest size also searched exactly")
    ap.add_argument("--baseline", type=int, nargs="+", default=[10_000, 20_000], help="sizes for v0.1's full matrix")
    ap.add_argument("--embed-sample", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "make":
            make(Path(rest[0]), int(rest[1]), int(rest[2]))
            print(json.dumps({}))
        elif kind == "filter":
            print(json.dumps(filter_case(Path(rest[0]), int(rest[1]), rest[2:])))
        elif kind == "legacy":
            print(json.dumps(legacy_case(Path(rest[0]))))
        else:
            print(json.dumps(embed_case(int(rest[0]))))
        return

    load = os.getloadavg()[0]
    print(f"prompt filter at scale: {os.cpu_count()} CPUs, load average {load:.1f} at start, threshold {THRESHOLD}, "
          f"{DIM}-dim isotropic embeddings with 10% planted copies")
    e = child("embed", str(args.embed_sample))
    print(
        f"  embed (bundled MiniLM, {args.embed_sample} real-word prompts of 8-40 words): "
        f"{e['prompts_per_s']} prompts/s "
        f"-> 1M prompts about {1e6 / e['prompts_per_s'] / 3600:.1f} h on this machine (extrapolated; parts "
        f"resume and shard on Ray)"
    )
    header = f"  {'case':<34}{'time':>9}{'peak RSS':>11}{'dropped':>9}  notes"
    print(header)
    rows: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="prefsynth-scale-prompts-") as tmp:
        for n in sorted(set(args.sizes) | set(args.baseline)):
            run_dir = Path(tmp) / f"n{n}"
            child("make", str(run_dir), str(n), str(args.seed))
            cases = []
            if n in args.baseline:
                cases.append(("v0.1 full matrix (baseline)", None))
            if n in args.sizes or n in args.baseline:
                if n <= args.exact_max:
                    cases.append(("exact", ["curate.dedup.method=exact"]))
            if n in args.sizes:
                if n > 20_000:
                    cases.append(("clustered", ["curate.dedup.method=clustered"]))
                cases.append(
                    (
                        "minhash only (no embeddings)",
                        ["curate.dedup.near_duplicates=false", "curate.dedup.minhash.enabled=true"],
                    )
                )
            for name, overrides in cases:
                r = (
                    child("legacy", str(run_dir))
                    if overrides is None
                    else child("filter", str(run_dir), str(n), *overrides)
                )
                rows[(n, name)] = r
                r["set"] = set(json.loads((run_dir / "dropped.json").read_text()))
                notes = []
                if "found" in r:
                    notes.append(f"planted found {r['found']:.4f}")
                if "misses_kept" in r:
                    notes.append(f"near misses kept {r['misses_kept']:.4f}")
                nd = r.get("near_duplicate") or {}
                if nd.get("seconds"):
                    notes.append(", ".join(f"{k} {v:.1f}s" for k, v in nd["seconds"].items()))
                if nd.get("clusters"):
                    notes.append(f"{nd['clusters']} clusters, {nd['probes']} probes")
                if name == "clustered" and (n, "exact") in rows:
                    ex, ap_ = rows[(n, "exact")]["set"], r["set"]
                    notes.append(
                        f"recall vs exact {len(ex & ap_) / len(ex):.4f}, precision {len(ex & ap_) / len(ap_):.4f}"
                    )
                if name == "exact" and (n, "v0.1 full matrix (baseline)") in rows:
                    base = rows[(n, "v0.1 full matrix (baseline)")]
                    search_s = sum(nd.get("seconds", {}).values())
                    notes.append(
                        f"search time {search_s / base['seconds']:.2f}x, peak {r['peak_mb'] / base['peak_mb']:.2f}x "
                        f"baseline; same drops: {r['set'] == base['set']}"
                    )
                if "imports_mb" in r:
                    notes.append(f"imports {r['imports_mb']} MB")
                print(
                    f"  {f'{n:,} {name}':<34}{r['seconds']:>8.1f}s{r['peak_mb']:>8} MB{r['dropped']:>9}  "
                    f"{'; '.join(notes)}",
                    flush=True,
                )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
