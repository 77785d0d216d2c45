"""Generation stage throughput against raw `model.generate` on the same prompts, in the same run.

Baseline: HF `model.generate(do_sample=True, num_return_sequences=n)` over left-padded batches
of the same prompts, same batch size, temperature, top_p and token cap. Subject: prefsynth's
generate stage core (`generate_candidates`) with the transformers backend (per-candidate seeded
sampler, length-sorted batches). Both count generated tokens up to and including EOS. Rounds
alternate baseline/stage so machine noise hits both; the ratio of medians is the figure.
The foundation issue asks for ratio >= 0.90.

    python bench/generate.py [--prompts 16] [--n 4] [--max-new-tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GenerationConfig

from pipeline.backends.hf import TransformersBackend
from pipeline.config import GenerateConfig, InputConfig
from pipeline.generate import generate_candidates
from pipeline.prompts import load_prompts


def raw_generate(model, tok, conversations, *, n, batch_size, max_new_tokens, temperature, top_p, seed) -> int:
    torch.manual_seed(seed)
    tokens = 0
    config = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
                              num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    for start in range(0, len(conversations), batch_size):
        texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations[start : start + batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=config)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    prompts, _ = load_prompts(InputConfig(limit=args.prompts), seed=0)
    conversations = prompts.column("messages").to_pylist()
    backend = TransformersBackend("bundled:smollm2-135m-instruct", batch_size=args.batch_size)
    model, tok = backend.model, backend.tokenizer
    cfg = GenerateConfig(n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95,
                         batch_size=args.batch_size)
    raw_generate(model, tok, conversations[:2], n=2, batch_size=2, max_new_tokens=4, temperature=0.8, top_p=0.95, seed=0)

    raw_rates, stage_rates = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        tokens = raw_generate(model, tok, conversations, n=args.n, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, seed=r)
        raw_rates.append(tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        table, _ = generate_candidates(prompts, cfg, backend, seed=r)
        stage_rates.append(sum(table.column("n_tokens").to_pylist()) / (time.perf_counter() - t0))
        print(f"round {r}: raw model.generate {raw_rates[-1]:.1f} tok/s, prefsynth generate stage {stage_rates[-1]:.1f} tok/s")
    raw, stage = statistics.median(raw_rates), statistics.median(stage_rates)
    print(f"baseline raw model.generate: {raw:.1f} tok/s (median of {args.rounds})")
    print(f"prefsynth generate stage:    {stage:.1f} tok/s (median of {args.rounds})")
    print(f"ratio stage/raw: {stage / raw:.2f} (target >= 0.90); {args.prompts} prompts x {args.n} x {args.max_new_tokens} tokens, "
          f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
