"""CHES throughput: batched scoring against one-pair-at-a-time, same pairs, same run.

Pairs come from a run directory (`--run RUN_DIR`, its tables/pair.parquet) or, by default, are
generated here from the bundled prompts (2 candidates each with the bundled model). Baseline: the
same `score_pairs` with batch_size=1 (one sequence per forward, no padding). Subject: batch_size
16, length-sorted. Figure: tokens (prompt + response, both sides of every pair) per second.
The curation issue asks for batched >= 5x one-at-a-time on 2 CPU cores.

    python bench/ches.py [--run RUN_DIR] [--pairs 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

from pipeline import schemas
from pipeline.backends.hf import TransformersBackend
from pipeline.ches import score_pairs
from pipeline.config import GenerateConfig, InputConfig
from pipeline.encoding import encode_pair
from pipeline.generate import generate_candidates
from pipeline.prompts import load_prompts


def make_pairs(n: int, backend) -> "schemas.pa.Table":
    prompts, _ = load_prompts(InputConfig(limit=n), seed=1)
    cands, _ = generate_candidates(prompts, GenerateConfig(n=2, max_new_tokens=96), backend, seed=0)
    by_prompt: dict[str, list[str]] = {}
    for r in cands.select(["prompt_id", "text"]).to_pylist():
        by_prompt.setdefault(r["prompt_id"], []).append(r["text"])
    rows = []
    for p in prompts.to_pylist():
        a, b = by_prompt[p["prompt_id"]]
        rows.append({"prompt": p["messages"], "chosen": [{"role": "assistant", "content": a}],
                     "rejected": [{"role": "assistant", "content": b}], "prompt_id": p["prompt_id"],
                     "chosen_id": "a", "rejected_id": "b", "chosen_score": 2.0, "rejected_score": 1.0, "margin": 1.0,
                     "pair_strategy": "bench", "chosen_len": 0, "rejected_len": 0})
    return schemas.from_rows(rows, "pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="use RUN_DIR/tables/pair.parquet instead of generating pairs")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    backend = TransformersBackend("bundled:smollm2-135m-instruct", batch_size=16)
    model, tok = backend.model, backend.tokenizer
    if args.run:
        pairs = schemas.read_table(f"{args.run}/tables/pair.parquet", "pairs").slice(0, args.pairs)
    else:
        pairs = make_pairs(args.pairs, backend)
    tokens = 0
    for r in pairs.select(["prompt", "chosen", "rejected"]).to_pylist():
        for side in ("chosen", "rejected"):
            p, y = encode_pair(tok, r["prompt"], r[side][0]["content"])
            tokens += len(p) + len(y)
    score_pairs(pairs.slice(0, 2), model, tok, batch_size=4)  # warm-up

    t0 = time.perf_counter()
    single = score_pairs(pairs, model, tok, batch_size=1)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = score_pairs(pairs, model, tok, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in
                zip(batched.column("ln_ches").to_pylist(), single.column("ln_ches").to_pylist()))
    print(f"{pairs.num_rows} pairs, {tokens} tokens (prompt + response, both sides)")
    print(f"baseline one-at-a-time (batch 1): {tokens / t_single:.0f} tok/s ({t_single:.1f}s)")
    print(f"batched (batch {args.batch_size}):         {tokens / t_batched:.0f} tok/s ({t_batched:.1f}s)")
    print(f"speed-up batched/one-at-a-time: {t_single / t_batched:.2f}x (target >= 5x); max relative LN-CHES difference {worst:.2e}")


if __name__ == "__main__":
    main()
