"""Does `prefsynth train-rm` teach the bundled model's reward head the verifier's preferences?

1. Pairs: `--pairs` (a pairs shard or folder, e.g. bench/improve.py's DIR/pairs/pairs.parquet), or made here as
   bench/improve.py makes them: instruction-following prompts (pipeline/verifiable/instructions.py), k sampled
   candidates per prompt from the bundled model, chosen = a candidate passing the most IFEval-style constraints
   (judges/constraints.py), rejected = one passing fewer (improve.make_pairs).
2. Train: pipeline/train/rm_trainer.py on the bundled SmolLM2-135M-Instruct with a new score head; the held-out
   pairs are the trainer's eval split (whole prompt_ids, `--eval-fraction`).
3. Measure: each held-out pair is right when r(chosen) > r(rejected); accuracy at step 0 (the untrained head, the
   trainer's own seeded initialisation) and after training, each with a 95% BCa bootstrap interval over the pairs,
   and the paired difference (the same pairs on both sides) with its percentile interval. DIR/report.json.

    python bench/train_rm.py --out /tmp/rm-bench --pairs /path/to/improve/pairs/pairs.parquet
    python bench/train_rm.py --out /tmp/rm-bench            # samples its own candidates (--tasks, --k)

Caveat: the eval split is by prompt_id, and improve's prompts cross each base task with several constraint sets,
so a held-out prompt's base task may have been trained on under other constraints.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.improve import MODEL, make_pairs, sample, write_pairs  # noqa: E402
from pipeline.verifiable.instructions import DEFAULT_MIX, make  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pairs", type=Path, help="an existing pairs shard or folder (skips sampling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, default=40, help="base tasks when sampling (of the built-in list)")
    p.add_argument("--k", type=int, default=4, help="candidates per prompt when sampling")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--eval-fraction", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--resamples", type=int, default=4000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def own_pairs(a) -> Path:
    rows, _ = make(a.seed, mix=DEFAULT_MIX.split(","), n_tasks=a.tasks, per_task=2, two_prob=0.3, heldout_frac=0.0)
    results, seconds = sample(MODEL, rows, n=a.k, temperature=1.0, max_new_tokens=a.max_new_tokens, seed=a.seed,
                              batch_size=16, tag="rm")
    pairs, stats = make_pairs(rows, results, max_pairs_per_prompt=2, rng=random.Random(f"rm-{a.seed}"))
    print(f"candidates: {sum(map(len, results))} in {seconds:.0f}s; {len(pairs)} pairs", flush=True)
    write_pairs(pairs, {**stats, "sample_seconds": round(seconds, 1)}, a.out / "pairs")
    return a.out / "pairs" / "pairs.parquet"


def correct(model, eval_set, enc, batch: int) -> np.ndarray:
    """1.0 where the reward model scores the pair's chosen above its rejected."""
    import torch

    from pipeline.train.rm_trainer import pair_rewards

    out = []
    with torch.no_grad():
        for s in range(0, len(eval_set), batch):
            c, r, _ = pair_rewards(model, eval_set[s : s + batch], **enc)
            out += (c > r).float().tolist()
    return np.array(out)


def paired_interval(before: np.ndarray, after: np.ndarray, *, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(before), size=(resamples, len(before)))
    diffs = (after[idx] - before[idx]).mean(1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    from pipeline.train.config import RMConfig
    from pipeline.train.data import eval_prompts, examples, open_source
    from pipeline.train.loop import precision
    from pipeline.train.metrics import bootstrap
    from pipeline.train.rm_trainer import load_reward_model, template_tail, train_rm

    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = a.pairs or own_pairs(a)
    cfg = RMConfig(seed=a.seed, epochs=a.epochs, batch_size=a.batch, learning_rate=a.lr, eval_fraction=a.eval_fraction,
                   min_eval_pairs=0, eval_every=10_000, save_every=10_000, tensorboard=False, max_length=384)
    # step 0: the head train_rm starts from (same seed), on the eval split train_rm holds out
    model, tokenizer, _ = load_reward_model(cfg, "cpu", precision(cfg, "cpu")[0])
    enc = dict(pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id, tail=template_tail(tokenizer))
    source = open_source(data)
    held = eval_prompts(source, seed=cfg.seed, fraction=cfg.eval_fraction, min_pairs=0)
    eval_set = list(examples(source, tokenizer, keep=held.__contains__, max_prompt_tokens=cfg.max_prompt_tokens,
                             max_length=cfg.max_length))
    n_train = sum(1 for _ in examples(source, tokenizer, keep=lambda p: p not in held,
                                      max_prompt_tokens=cfg.max_prompt_tokens, max_length=cfg.max_length))
    before = correct(model.eval(), eval_set, enc, a.batch)
    del model
    t_train = time.time()
    prov = train_rm(cfg, data, a.out / "rm")
    t_train = time.time() - t_train
    trained, _, _ = load_reward_model(cfg.model_copy(update={"model": str(a.out / "rm" / "model")}), "cpu",
                                      torch.float32)
    after = correct(trained.eval(), eval_set, enc, a.batch)
    est = {k: bootstrap(v, resamples=a.resamples, seed=a.seed) for k, v in (("step0", before), ("trained", after))}
    lo, hi = paired_interval(before, after, resamples=a.resamples, seed=a.seed)
    report = {
        "data": str(data), "train_pairs": n_train,
        "eval_pairs": len(eval_set), "eval_prompts": len(held), "steps": prov["steps"],
        "threads": torch.get_num_threads(), "train_seconds": round(t_train, 1), "seconds": round(time.time() - t0, 1),
        **{f"accuracy_{k}": {"value": e.value, "lo": e.lo, "hi": e.hi} for k, e in est.items()},
        "difference": {"value": float(after.mean() - before.mean()), "lo": lo, "hi": hi},
        "trainer_final_eval_accuracy": prov["final_eval"].get("eval/accuracy"),
        "config": cfg.model_dump(),
    }
    (a.out / "report.json").write_text(json.dumps(report, indent=2))
    s, t, d = report["accuracy_step0"], report["accuracy_trained"], report["difference"]
    print(f"held-out pair accuracy on {len(eval_set)} pairs ({len(held)} prompts), {prov['steps']} steps in "
          f"{t_train:.0f}s: step 0 {s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] -> trained {t['value']:.3f} "
          f"[{t['lo']:.3f}, {t['hi']:.3f}]; difference {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
