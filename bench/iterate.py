"""Does iterating help the bundled 135M model? `prefsynth iterate` for 3 rounds on the bundled verifiable prompts.

Runs the real CLI (pipeline/loop/iterate.py: round r generates with policy r, judges with the base config's judge,
pairs, CHES, trains policy r+1 from policy r, evaluates it against the base and against policy r on held-out
prompts) and prints, per round, the win rate against the base with its 95% bootstrap interval, the win rate against
the previous policy, the length-controlled win rate, the mean answer tokens and the verifier accuracy (the verifier
checks every answer to a prompt with a verify spec). Writes the figure WORK/rounds.png (pipeline/publish/plots.py).
Whatever direction the model moves is reported as measured.

    python bench/iterate.py                       # 3 rounds, WORK=/tmp/prefsynth-bench-iterate (resumes)
    python bench/iterate.py --rounds 2 --prompts 8 --work /tmp/it
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8, help="training prompts per round (input.limit)")
    ap.add_argument("--held-out", type=int, default=12, help="held-out eval prompts (eval.limit)")
    ap.add_argument("--n", type=int, default=2, help="candidates per prompt")
    ap.add_argument("--tokens", type=int, default=40, help="max new tokens (generation and eval)")
    ap.add_argument("--steps", type=int, default=4, help="DPO steps per round")
    ap.add_argument("--work", default="/tmp/prefsynth-bench-iterate")
    args = ap.parse_args()
    sets = {"input.path": "bundled:prompts/verifiable.jsonl", "input.limit": args.prompts, "generate.n": args.n,
            "generate.max_new_tokens": args.tokens, "generate.batch_size": 16,
            "eval.limit": args.held_out, "eval.max_new_tokens": args.tokens,
            "rationale.enabled": "false", "iterate.prompts": "fresh",
            "iterate.train": f"{{steps: {args.steps}, batch_size: 4, learning_rate: 5e-5, eval_fraction: 0.0, "
                             "tensorboard: false}"}
    cmd = [sys.executable, "-m", "flows.cli", "iterate", "--config", str(ROOT / "data/configs/tiny.yaml"),
           "--rounds", str(args.rounds), "--out", args.work, "--quiet"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - start

    import pyarrow.parquet as pq

    from pipeline.publish.plots import rounds_plot

    rows = pq.read_table(Path(args.work) / "rounds.parquet").to_pylist()
    f = lambda x, d=3: "  n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    print(f"\n{args.rounds} rounds, {args.prompts} fresh verifiable prompts x {args.n} candidates per round, "
          f"{args.steps} DPO steps, {args.held_out} held-out prompts, {args.tokens} tokens; {wall:.0f} s")
    print("policy  pairs  win vs base [95%]      win vs prev  LC vs base  tokens (base)   verifier acc (base)")
    for r in rows:
        print(f"{r['round'] + 1:>6}  {r['pairs']:>5}  {f(r['win_rate_vs_base'])} [{f(r['win_low_vs_base'])}, "
              f"{f(r['win_high_vs_base'])}]  {f(r['win_rate_vs_previous'])}        {f(r['lc_win_rate_vs_base'])}"
              f"       {f(r['mean_tokens'], 1)} ({f(r['base_mean_tokens'], 1)})   "
              f"{f(r['verifier_accuracy'])} ({f(r['base_verifier_accuracy'])})")
    print(f"figure: {rounds_plot(rows, Path(args.work) / 'rounds.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
