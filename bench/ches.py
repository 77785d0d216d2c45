"""CHES throughput: batched scoring against one-at-a-time, same pairs, same run.

Pairs come from a run directory (`--run RUN_DIR`, its tables/pair.parquet) or, by default, are
generated here from the bundled prompts with the bundled model, in two shapes: one pair per prompt
(2 candidates, as best_vs_worst gives) and every pair of 4 candidates per prompt (6 pairs, as
all_above_margin gives). Two baselines:
- straightforward: pair by pair, one sequence per forward with `output_hidden_states=True` and
  the full logits, log-softmax over the whole vocabulary (the independent reference of
  tests/pipeline/test_ches.py, which is what a first implementation does);
- same code at batch 1: prefsynth's `score_pairs` with batch_size=1 (isolates batching alone;
  it already scores a candidate shared by several pairs once).
Subject: `score_pairs` with batch_size 16, length-sorted. Figure: tokens (prompt + response, both
sides of every pair) per second. The curation issue asks for batched >= 5x one-at-a-time.

    python bench/ches.py [--run RUN_DIR] [--pairs 32] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations

import torch

from pipeline.backends.hf import TransformersBackend
from pipeline.config import GenerateConfig, InputConfig
from pipeline.core import schemas
from pipeline.core.encoding import encode_pair
from pipeline.stages.ches import score_pairs
from pipeline.stages.generate import generate_candidates
from pipeline.stages.prompts import load_prompts


def make_pairs(n_prompts: int, k: int, backend) -> "schemas.pa.Table":
    """Every pair of k generated candidates for each of n_prompts bundled prompts."""
    prompts, _ = load_prompts(InputConfig(limit=n_prompts), seed=1)
    cands, _ = generate_candidates(prompts, GenerateConfig(n=k, max_new_tokens=96), backend, seed=0)
    by_prompt: dict[str, list[dict]] = {}
    for r in cands.select(["prompt_id", "candidate_id", "text"]).to_pylist():
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    rows = []
    for p in prompts.to_pylist():
        for a, b in combinations(by_prompt[p["prompt_id"]], 2):
            rows.append({"prompt": p["messages"], "chosen": [{"role": "assistant", "content": a["text"]}],
                         "rejected": [{"role": "assistant", "content": b["text"]}], "prompt_id": p["prompt_id"],
                         "chosen_id": a["candidate_id"], "rejected_id": b["candidate_id"], "chosen_score": 2.0,
                         "rejected_score": 1.0, "margin": 1.0, "pair_strategy": "bench", "chosen_len": 0,
                         "rejected_len": 0})
    return schemas.from_rows(rows, "pairs")


@torch.inference_mode()
def straightforward(pairs, model, tok) -> list[float]:
    """LN-CHES per pair, one sequence per full forward (all hidden states, full-vocab log-softmax)."""
    out = []
    for r in pairs.select(["prompt", "chosen", "rejected"]).to_pylist():
        sums = []
        for side in ("chosen", "rejected"):
            p_ids, y_ids = encode_pair(tok, r["prompt"], r[side][0]["content"])
            res = model(torch.tensor([p_ids + y_ids]), output_hidden_states=True)
            P, n = len(p_ids), len(y_ids)
            logp = torch.log_softmax(res.logits[0, P - 1 : P + n - 1].double(), -1)
            _ = float(logp[torch.arange(n), torch.tensor(y_ids)].sum())  # the reference log-prob
            sums.append((res.hidden_states[-1][0, P - 1 : P + n - 1].double().sum(0), n))
        (sp, n_p), (sm, n_m) = sums
        out.append(float((sp / n_p) @ (sm / n_m) - (sp / n_p) @ (sp / n_p)))
    return out


def compare(title: str, pairs, model, tok, batch_size: int) -> None:
    tokens = 0
    for r in pairs.select(["prompt", "chosen", "rejected"]).to_pylist():
        for side in ("chosen", "rejected"):
            p, y = encode_pair(tok, r["prompt"], r[side][0]["content"])
            tokens += len(p) + len(y)
    t0 = time.perf_counter()
    reference = straightforward(pairs, model, tok)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    score_pairs(pairs, model, tok, batch_size=1)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = score_pairs(pairs, model, tok, batch_size=batch_size)
    t_batched = time.perf_counter() - t0
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(batched.column("ln_ches").to_pylist(), reference))
    print(f"{title}: {pairs.num_rows} pairs, {tokens} tokens (prompt + response, both sides)")
    print(f"  baseline straightforward one-at-a-time: {tokens / t_ref:.0f} tok/s ({t_ref:.1f}s)")
    print(f"  baseline same code at batch 1:          {tokens / t_single:.0f} tok/s ({t_single:.1f}s)")
    print(f"  batched (batch {batch_size}):                     {tokens / t_batched:.0f} tok/s ({t_batched:.1f}s)")
    print(f"  speed-up vs straightforward: {t_ref / t_batched:.2f}x (target >= 5x); vs same code at batch 1: "
          f"{t_single / t_batched:.2f}x; max relative LN-CHES difference to the reference {worst:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="use RUN_DIR/tables/pair.parquet instead of generating pairs")
    ap.add_argument("--pairs", type=int, default=32, help="pairs of each shape (default 32)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    backend = TransformersBackend("bundled:smollm2-135m-instruct", batch_size=16)
    model, tok = backend.model, backend.tokenizer
    if args.run:
        shapes = [
            (
                f"pairs of {args.run}",
                schemas.read_table(f"{args.run}/tables/pair.parquet", "pairs").slice(0, args.pairs),
            )
        ]
    else:
        shapes = [
            ("one pair per prompt (2 candidates)", make_pairs(args.pairs, 2, backend)),
            ("every pair of 4 candidates per prompt", make_pairs(max(1, args.pairs // 6), 4, backend)),
        ]
    score_pairs(shapes[0][1].slice(0, 2), model, tok, batch_size=4)  # warm-up
    for title, pairs in shapes:
        compare(title, pairs, model, tok, args.batch_size)
    print(f"torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
