"""Wall time of one build_dataset run in one process and on a local Ray instance with 1 and 2 workers.

Every run is the real CLI on the same config (the tiny config over `--prompts` bundled prompts) in
a fresh output folder, so each pays Prefect's ephemeral API start and its model loads. Baseline:
the local run with one torch thread (`OMP_NUM_THREADS=1`), which is what each Ray worker gets with
`cpus_per_task=1`; the ordinary local run (torch on both cores) is printed too. The Ray runs use
the same `--shards` in both cases, so their difference is the workers alone, and
(Ray 1 worker - baseline) / shard tasks is the distributed path's cost per shard task (a task
start, its model loads, Ray and Prefect bookkeeping).

    python bench/scale.py [--prompts 16] [--shards 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY_STAGES = 5  # self_critique, generate, judge, ches, rationale: each runs `shards` tasks on Ray


def timed_run(out: Path, args: list[str], threads: int | None) -> float:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({out.name}):\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    common = [
        "--config",
        str(ROOT / "data" / "configs" / "tiny.yaml"),
        "--set",
        f"input.limit={args.prompts}",
        "--quiet",
    ]
    ray = [*common, "--ray", "--shards", str(args.shards), "--set", "distributed.cpus_per_task=1"]
    cases = [
        ("local, 1 thread (baseline)", common, 1),
        ("local, torch default threads", common, None),
        ("ray, 1 worker", [*ray, "--set", "distributed.num_cpus=1"], None),
        ("ray, 2 workers", [*ray, "--set", "distributed.num_cpus=2"], None),
    ]
    with tempfile.TemporaryDirectory(prefix="prefsynth-scale-") as tmp:
        walls = {
            name: timed_run(Path(tmp) / f"run{i}", argv, threads) for i, (name, argv, threads) in enumerate(cases)
        }
    base = walls[cases[0][0]]
    print(f"{args.prompts} prompts, tiny config, {args.shards} shards per heavy stage, {os.cpu_count()} CPUs")
    for name, wall in walls.items():
        print(f"  {name:<30} {wall:7.1f} s   {wall / base:5.2f}x baseline")
    tasks = HEAVY_STAGES * args.shards
    per_task = (walls["ray, 1 worker"] - base) / tasks
    print(f"  distributed-path cost per shard task (ray 1 worker - baseline) / {tasks} tasks: {per_task:.2f} s")
    print(f"  speed-up from the second worker: {walls['ray, 1 worker'] / walls['ray, 2 workers']:.2f}x")


if __name__ == "__main__":
    main()
