"""DPO training throughput and peak memory: prefsynth's trainer against TRL's DPOTrainer.

Same process, same model weights, same pairs (one parquet shard both read), same batch, same
lengths, sigmoid loss, AdamW, reference log-probs precomputed by both (TRL:
`precompute_ref_log_probs=True`; prefsynth: its pre-pass), no eval, no checkpoints inside the
timed window. Baseline: TRL. Figures:
- tokens/s: prompt + completion tokens of chosen and rejected per step (each trainer's own count:
  TRL's `num_tokens`, prefsynth's `tokens`), over the wall time between the end of step `--warmup`
  and the end of the last step (data loading included);
- peak memory during training: torch.cuda.max_memory_allocated on GPU; on CPU the process's
  peak RSS above what it held before that trainer started (VmHWM, reset via /proc/self/clear_refs).
Texts are built from single-token words so every prompt has exactly `--prompt-tokens` tokens and
every completion `--completion-tokens` (plus the chat template's own tokens), so no truncation
or padding differs between the two.

    python bench/train.py                      # CPU, tiny: bundled SmolLM2-135M, batch 2, 32/64 tokens
    python bench/train.py --gpu-1b             # GPU: Llama-shaped 1B (random init), batch 8, 128/256
    python bench/train.py --gpu-1b --world 8 --parallel fsdp   # prefsynth alone on 8 ranks (torchrun)

`--world N` runs only prefsynth's trainer, under `torchrun --nproc-per-node N` (`train.parallel` from
`--parallel`, batch `--batch` pairs per step in all): tokens/s of the whole run and per rank, and each rank's
peak memory (GPU: max_memory_allocated; CPU: peak RSS as above).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def single_token_words(tok, n: int = 2000) -> list[str]:
    words = []
    for i in range(200, tok.vocab_size):
        text = tok.decode([i])
        if text.startswith(" ") and text[1:].isalpha() and tok.encode(text, add_special_tokens=False) == [i]:
            words.append(text)
            if len(words) == n:
                break
    return words


def make_shard(path: Path, tok, *, pairs: int, prompt_tokens: int, completion_tokens: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = single_token_words(tok)
    text = lambda n: "".join(rng.choice(words) for _ in range(n)).strip()  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": text(prompt_tokens)}],
             "chosen": [{"role": "assistant", "content": text(completion_tokens)}],
             "rejected": [{"role": "assistant", "content": text(completion_tokens)}],
             "prompt_id": f"p{i}", "chosen_id": f"p{i}-a", "rejected_id": f"p{i}-b"} for i in range(pairs)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def llama_1b(folder: Path, tokenizer_src: str) -> str:
    """A Llama-shaped 1.1B model (TinyLlama's shape) with random weights and the bundled tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


class Memory:
    def __init__(self, device: str):
        self.device = device

    def start(self):
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = self._rss("VmRSS")

    def peak_mib(self) -> float:
        if self.device == "cuda":
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (self._rss("VmHWM") - self.base) / 2**20

    @staticmethod
    def _rss(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)


def run_prefsynth(model: str, shard: Path, out: Path, a, parallel: str = "none") -> list[float]:
    from pipeline.train import TrainConfig, train

    cfg = TrainConfig(model=model, steps=a.steps, batch_size=a.batch, learning_rate=1e-6, eval_fraction=0.0,
                      tensorboard=False, save_every=10**6, max_prompt_tokens=4 * a.prompt_tokens,
                      max_length=8 * (a.prompt_tokens + a.completion_tokens), parallel=parallel,
                      micro_batch_size=a.batch // a.world)
    train(cfg, shard, out, log=lambda *_: None)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()[1:]]
    return [r["time"] for r in recs], sum(r["tokens"] for r in recs) / len(recs)


def run_trl(model: str, shard: Path, out: Path, a, device: str) -> list[float]:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            ends.append(time.time())

    ds = load_dataset("parquet", data_files=str(shard), split="train").select_columns(["prompt", "chosen", "rejected"])
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, attn_implementation="sdpa").to(device)
    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=1e-6,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        max_length=None,
        logging_steps=10**6,
        save_strategy="no",
        report_to=[],
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
        disable_tqdm=True,
        seed=0,
    )
    trainer = DPOTrainer(
        model=policy,
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model),
        callbacks=[StepEnds()],
    )
    trainer.train()
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    return ends, logged[-1] / a.steps


def rate(ends: list[float], warmup: int, tokens: float) -> float:
    """tokens/s between the end of step `warmup` and the end of the last step."""
    timed = ends[warmup - 1 :]
    return tokens * (len(timed) - 1) / (timed[-1] - timed[0])


def rank_worker(a) -> None:
    """One torchrun rank of `--world N`: train, then write this rank's figures to `--report`/rank-R.json."""
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
    mem = Memory(device)
    mem.start()
    ends, step_tokens = run_prefsynth(a.model, Path(a.shard), Path(a.report) / "out", a, a.parallel)
    figures = {"rank": rank, "peak_mib": mem.peak_mib(), "tok_s": rate(ends, a.warmup, step_tokens) if rank == 0
               else None, "step_tokens": step_tokens}
    (Path(a.report) / f"rank-{rank}.json").write_text(json.dumps(figures))


def run_world(a, model: str, shard: Path, work: Path) -> None:
    """`--world N`: this script again under torchrun, one worker per rank; print the figures they wrote."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(a.world), __file__,
           "--rank-worker", "--model", model, "--shard", str(shard), "--report", str(work), "--world", str(a.world),
           "--parallel", a.parallel, "--batch", str(a.batch), "--prompt-tokens", str(a.prompt_tokens),
           "--completion-tokens", str(a.completion_tokens), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    ranks = [json.loads((work / f"rank-{r}.json").read_text()) for r in range(a.world)]
    total = ranks[0]["tok_s"]  # rank 0 logs the whole step's tokens (summed over ranks) and its time
    print(f"prefsynth trainer, {a.world} ranks, train.parallel={a.parallel}: {total:.0f} tok/s in all, "
          f"{total / a.world:.0f} tok/s per rank ({ranks[0]['step_tokens']:.0f} tokens/step)")
    for r in ranks:
        print(f"  rank {r['rank']}: peak memory {r['peak_mib']:8.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu-1b", action="store_true", help="the GPU figure: Llama-shaped 1B, batch 8, 128/256 tokens")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--prompt-tokens", type=int)
    ap.add_argument("--completion-tokens", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--world", type=int, default=1, help="ranks under torchrun (prefsynth only); 1: no torchrun")
    ap.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp", help="train.parallel with --world N")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_worker:
        return rank_worker(a)
    big = a.gpu_1b
    a.batch = a.batch or (8 if big else 2)
    a.prompt_tokens = a.prompt_tokens or (128 if big else 32)
    a.completion_tokens = a.completion_tokens or (256 if big else 64)
    a.steps = a.steps or (20 if big else 8)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFSYNTH_PROGRESS", "0")
    from transformers import AutoTokenizer

    from pipeline.backends.model_ref import resolve

    work = Path(tempfile.mkdtemp(prefix="prefsynth-bench-train-"))
    bundled = resolve("bundled:smollm2-135m-instruct").path
    model = llama_1b(work / "llama-1b", bundled) if big else bundled
    tok = AutoTokenizer.from_pretrained(model)
    shard = make_shard(
        work / "pairs.parquet",
        tok,
        pairs=a.batch * a.steps,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
    )
    if a.world > 1:
        if a.batch % a.world:
            raise SystemExit(f"--batch {a.batch} is not a multiple of --world {a.world}; fix: make it one")
        return run_world(a, model, shard, work)
    mem = Memory(device)
    results = {}
    for name, fn in (
        ("trl", lambda: run_trl(model, shard, work / "trl", a, device)),
        ("prefsynth", lambda: run_prefsynth(model, shard, work / "prefsynth", a)),
    ):
        mem.start()
        ends, step_tokens = fn()  # each trainer's own count of the tokens it processed per step
        results[name] = (rate(ends, a.warmup, step_tokens), mem.peak_mib(), step_tokens)
        gc.collect()
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(
        f"device: {name}; model: {'Llama-shaped 1.1B (random init)' if big else 'SmolLM2-135M-Instruct'}; "
        f"batch {a.batch} pairs, prompt {a.prompt_tokens} + completion {a.completion_tokens} words; "
        f"{a.steps} steps ({a.warmup} warmup)"
    )
    (t_rate, t_mem, t_tok), (p_rate, p_mem, p_tok) = results["trl"], results["prefsynth"]
    print(
        f"  TRL DPOTrainer (baseline): {t_rate:8.0f} tok/s   peak memory {t_mem:8.0f} MiB   ({t_tok:.0f} tokens/step)"
    )
    print(
        f"  prefsynth trainer:         {p_rate:8.0f} tok/s   peak memory {p_mem:8.0f} MiB   ({p_tok:.0f} tokens/step)"
    )
    print(f"  speed ratio prefsynth/TRL: {p_rate / t_rate:.2f}x   memory ratio: {p_mem / max(t_mem, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
