"""Does the over-optimisation watch fire on a run that over-optimises, and not on a healthy one?

The bundled SmolLM2-135M-Instruct trained twice on a real run's pairs (pipeline/train, the real
watch, nothing mocked), evaluating after every step on the same held-out prompts:
- defaults: every trainer default (batch 8, lr 5e-6, sigmoid DPO, the default watch) for `--steps`
  (8) steps, except eval_every=1 (the watch sees every step, not step 0 and the last) and
  eval_fraction `--eval-fraction` (0.25, 10 pairs: the default 0.1 holds out 1 of the default run's 36
  prompts, topped up to overopt.min_eval_pairs = 3 so the watch is on; 10 resolve more; the script says so);
- over-optimised: lr `--lr` (default 1e-4, 20x the default), `--epochs` passes over only
  `--pairs` training pairs, batch 4. Its eval prompts are the defaults arm's (a subset shard that
  keeps every held-out pair: the split is a seeded hash of prompt_id).
Each evaluation logs the indicators (top-k entropy and mass, their change since step 0 with its
paired bootstrap se) and the held-out preference metrics with their se: reward accuracy, reward
margin, and the chosen log-likelihood's change since the reference model (rewards/chosen / beta,
paired by construction). Printed: per evaluation, both; the step where the watch fires; the step
where each held-out metric starts to decline, by the watch's own rule (pipeline.train.metrics.
decline: `window` evaluations in a row below the first, or below an earlier sustained rise, by more
than the noise; no normal-movement floor); each indicator's largest change in units of its
threshold; and the first alarm under other watch settings, replayed from the recorded series.

    python bench/overopt.py                       # builds the default run (data/configs/default.yaml) once
    python bench/overopt.py --data runs/my-run    # any finished `prefsynth run` folder
    python bench/overopt.py --simulate            # the rule's false alarms on simulated flat runs, no model
    python bench/overopt.py --report WORK/overopt  # re-report a finished arm (the current rule replayed), no training
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OUT = ("rewards/accuracies", "rewards/margins", "rewards/chosen")
GRID = [(z, w, m) for z in (2.0, 3.0) for w in (1, 2, 3) for m in (0.0, 0.01, 0.02, 0.05)]


def build_default_run(out: Path) -> Path:
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "flows.cli", "run", "--config", str(ROOT / "data/configs/default.yaml"),
               "--out", str(out), "--quiet"]
        subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def subset_shard(data: Path, out: Path, *, n_train: int, seed: int, fraction: float) -> tuple[Path, int]:
    """Every held-out pair of `data` plus its first `n_train` training pairs, as one parquet file."""
    from pipeline.train.data import eval_prompts, open_source

    source = open_source(data)
    held = eval_prompts(source, seed=seed, fraction=fraction)
    table = pa.concat_tables([pq.read_table(s) for s in source.shards])
    ids = table.column("prompt_id").to_pylist()
    keep = [i for i, p in enumerate(ids) if p in held]
    keep += [i for i, p in enumerate(ids) if p not in held][:n_train]
    pq.write_table(table.take(sorted(keep)), out)
    return out, sum(p in held for p in ids)


def run_arm(name: str, cfg, data: Path, out: Path) -> tuple[list[dict], dict]:
    from pipeline.train import train

    lines: list[str] = []
    train(cfg, data, out, log=lines.append)
    return show(name, out, cfg)


def show(name: str, out: Path, cfg) -> tuple[list[dict], dict]:
    """Print a finished training folder's evaluations: the indicators and the held-out metrics."""
    prov = json.loads((out / "provenance.json").read_text())
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "eval/topk_mass" in r]
    print(f"\n== {name}: {prov['steps']} steps, lr {cfg.learning_rate:g}, batch {cfg.batch_size}, "
          f"eval pairs {prov['overopt_watch']['eval_pairs']}, watch window {cfg.overopt.window}, z {cfg.overopt.z:g}, "
          f"min_change {cfg.overopt.min_change:g}")
    print(f"{'step':>4} {'entropy':>7} {'change±se':>17} {'mass':>7} {'change±se':>17} {'eval acc':>12} "
          f"{'eval margin':>14} {'chosen logp change':>18}  alarm")
    for r in evals:
        ind = [f"{r['eval/' + k]:7.4f} {r['eval/' + k + '_change']:+8.4f}±{r['eval/' + k + '_change_se']:.4f}"
               for k in ("topk_entropy", "topk_mass")]
        acc, margin = (f"{r['eval/' + k]:.3f}±{r['eval/' + k + '_se']:.3f}" for k in HELD_OUT[:2])
        chosen = f"{r['eval/rewards/chosen'] / cfg.beta:+.2f}±{r['eval/rewards/chosen_se'] / cfg.beta:.2f}"
        alarm = ",".join(r.get("overopt_holding", [])) + (" FIRED" if "warning" in r else "")
        print(f"{r['step']:>4} {ind[0]} {ind[1]} {acc:>12} {margin:>14} {chosen:>18}  {alarm}")
    return evals, prov


def points(evals: list[dict], key: str, *, change: bool) -> list[dict]:
    """A recorded series as the watch sees it: change since the first evaluation with its se."""
    if change:  # an indicator: the trainer recorded the paired change
        return [{"step": r["step"], "value": r[f"eval/{key}"], "change": r[f"eval/{key}_change"],
                 "se": r[f"eval/{key}_change_se"]} for r in evals]
    v0 = evals[0][f"eval/{key}"]
    return [{"step": r["step"], "value": r[f"eval/{key}"], "change": r[f"eval/{key}"] - v0,
             "se": r[f"eval/{key}_se"]} for r in evals]


def held_out_decline(evals: list[dict], key: str, *, window: int, z: float) -> tuple[int, int] | None:
    """(start step, confirming step) of the first decline of a held-out metric beyond its noise."""
    from pipeline.train.metrics import decline, noise_multiple

    s = points(evals, key, change=False)
    k = noise_multiple(z, int(evals[0]["eval/pairs"]))

    def threshold(a: dict, b: dict) -> float:
        return k * math.hypot(a["se"], b["se"])

    for t in range(len(s)):
        if decline(s[: t + 1], window=window, threshold=threshold, after_rise=True):
            return s[t - window + 1]["step"], s[t]["step"]
    return None


def replay(evals: list[dict], z: float, window: int, min_change: float) -> int | None:
    """The step of the first alarm the watch would give with these settings, from the recorded series."""
    from pipeline.train.metrics import OverOptConfig, OverOptimisationWatch

    w = OverOptimisationWatch(OverOptConfig(z=z, window=window, min_change=min_change))
    series = {k: points(evals, k, change=True) for k in ("topk_entropy", "topk_mass")}
    for i, r in enumerate(evals):
        if w.update(r["step"], {k: v[i] for k, v in series.items()}, eval_pairs=int(r["eval/pairs"])):
            return r["step"]
    return None


def report(name: str, evals: list[dict], prov: dict, cfg) -> dict:
    from pipeline.train.metrics import noise_multiple

    w, z = cfg.overopt.window, cfg.overopt.z
    fired = prov["warnings"]
    k = noise_multiple(z, int(evals[0]["eval/pairs"]))
    print(f"-- {name} (noise multiple for {int(evals[0]['eval/pairs'])} pairs at z {z:g}: {k:.2f})")
    for key in ("topk_entropy", "topk_mass"):
        s = points(evals, key, change=True)
        floor = cfg.overopt.min_change * abs(s[0]["value"])
        units = [p["change"] / max(k * p["se"], floor) for p in s[1:]]
        print(f"   {key}: change since step 0 from {min(p['change'] for p in s):+.4f} to "
              f"{max(p['change'] for p in s):+.4f}; in units of its threshold max({k:.2f} x se, "
              f"{cfg.overopt.min_change:g} x first): from {min(units):+.2f} to {max(units):+.2f}")
    for a in fired:
        print(f"   watch FIRED at step {a['step']} ({a['indicator']}, {a['rule']}): {a['warning']}")
    if not fired:
        print("   watch: no alarm")
    declines = {key: held_out_decline(evals, key, window=w, z=z) for key in HELD_OUT}
    for key, d in declines.items():
        print(f"   held-out {key}: " + (f"declines from step {d[0]} (confirmed at step {d[1]})" if d else
                                         "no decline beyond its noise"))
    found = [d for d in declines.values() if d]
    if fired and found:  # the same rule's two moments on both sides: where the evidence starts, and where it holds
        a, d = fired[0], min(found)
        start, f = a["window"][0]["step"], a["step"]
        order = lambda x, y: "before" if x < y else "at" if x == y else "after"  # noqa: E731
        print(f"   first alarm: evidence from step {start}, fired at step {f}; first held-out decline: from step "
              f"{d[0]}, confirmed at step {d[1]}. The alarm fired {order(f, d[1])} the decline was confirmed and "
              f"{order(f, d[0])} it started")
    elif fired:
        print(f"   first alarm at step {fired[0]['step']}; no held-out metric declined beyond its noise")
    return {g: replay(evals, *g) for g in GRID}


def false_alarms(z: float, window: int, min_change: float, *, runs: int = 150, n_evals: int = 40,
                 n_pairs: int = 10, seed: int = 0) -> float:
    """Share of simulated flat runs on which the watch fires: heterogeneous eval pairs (levels and
    lengths), each pair's indicators moving by zero-mean noise (sd 0.02) at every evaluation after the
    first. No model: the rule alone, as tests/pipeline/train/test_metrics.py uses it."""
    import numpy as np

    from pipeline.train.metrics import OverOptConfig, OverOptimisationWatch

    rng = np.random.default_rng(seed)
    fired = 0
    for _ in range(runs):
        base = {"topk_entropy": rng.uniform(0.8, 1.8, n_pairs), "topk_mass": rng.uniform(0.6, 0.95, n_pairs)}
        tokens = rng.integers(20, 120, n_pairs)
        w = OverOptimisationWatch(OverOptConfig(z=z, window=window, min_change=min_change, resamples=200))
        for i in range(n_evals):
            lv = base if i == 0 else {k: v + 0.02 * rng.standard_normal(n_pairs) for k, v in base.items()}
            if w.observe(i, {k: v * tokens for k, v in lv.items()}, tokens, seed=i)[1]:
                fired += 1
                break
    return fired / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="a finished run folder (default: build data/configs/default.yaml)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "prefsynth-bench-overopt")
    ap.add_argument("--pairs", type=int, default=8, help="training pairs of the over-optimised arm")
    ap.add_argument("--epochs", type=int, default=8, help="passes over them")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=8, help="steps of the defaults arm")
    ap.add_argument("--eval-fraction", type=float, default=0.25, help="held-out share of prompts, both arms")
    ap.add_argument("--skip-defaults", action="store_true", help="run only the over-optimised arm")
    ap.add_argument("--skip-overopt", action="store_true", help="run only the defaults arm")
    ap.add_argument("--report", type=Path, nargs="+", metavar="OUT", help="only report finished training folders "
                    "of this script (WORK/defaults, WORK/overopt): their recorded series, the current rule's replay")
    ap.add_argument("--simulate", action="store_true", help="only the false-alarm rates of the rule on simulated "
                    "flat runs (no model, seconds)")
    a = ap.parse_args()
    if a.simulate:
        print("share of 150 simulated flat runs (40 evaluations, 10 eval pairs, per-pair noise sd 0.02) that fire:")
        for z in (2.0, 3.0):
            for window in (1, 2, 3):
                rates = [f"min_change {m:g}: {false_alarms(z, window, m):.3f}" for m in (0.0, 0.02)]
                print(f"   z {z:g}, window {window}: " + ", ".join(rates))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFSYNTH_PROGRESS", "0")
    from pipeline.train import TrainConfig

    if a.report:
        replays = {}
        for out in a.report:
            cfg = TrainConfig(**json.loads((out / "provenance.json").read_text())["config"])
            evals, prov = show(out.name, out, cfg)
            replays[out.name] = report(out.name, evals, prov, cfg)
        return print_replays(replays)

    a.work.mkdir(parents=True, exist_ok=True)
    data = a.data or build_default_run(a.work / "default-run")
    for arm in ("defaults",) * (not a.skip_defaults) + ("overopt",) * (not a.skip_overopt):
        subprocess.run(["rm", "-rf", str(a.work / arm)], check=True)  # a fresh training folder per invocation
    from pipeline.train.data import eval_prompts, open_source

    n_default = len(eval_prompts(open_source(data), seed=0, fraction=TrainConfig().eval_fraction,
                                 min_pairs=TrainConfig().overopt.min_eval_pairs))
    defaults = TrainConfig(steps=a.steps, eval_every=1, eval_fraction=a.eval_fraction, tensorboard=False,
                           save_every=10**6)
    on = n_default >= defaults.overopt.min_eval_pairs
    print(f"data: {data}; model: {defaults.model}; CPU threads: {os.cpu_count()}; at the default eval_fraction "
          f"{TrainConfig().eval_fraction} it holds out {n_default} prompt(s): the watch (min_eval_pairs "
          f"{defaults.overopt.min_eval_pairs}) would be {'on' if on else 'off'}")
    replays = {}
    if not a.skip_defaults:
        evals, prov = run_arm("defaults", defaults, data, a.work / "defaults")
        replays["defaults"] = report("defaults", evals, prov, defaults)
    if a.skip_overopt:
        return print_replays(replays)
    shard, n_held = subset_shard(data, a.work / "overopt-pairs.parquet", n_train=a.pairs, seed=defaults.seed,
                                 fraction=a.eval_fraction)
    hot = TrainConfig(learning_rate=a.lr, epochs=a.epochs, batch_size=4, eval_every=1, eval_fraction=a.eval_fraction,
                      tensorboard=False, save_every=10**6)
    evals, prov = run_arm(f"over-optimised ({a.pairs} training pairs x {a.epochs} epochs, {n_held} held-out pairs)",
                          hot, shard, a.work / "overopt")
    replays["over-optimised"] = report("over-optimised", evals, prov, hot)
    print_replays(replays)


def print_replays(replays: dict) -> None:
    print("\nfirst alarm (step) under other watch settings, replayed from the recorded series:")
    print("   z  window  min_change  " + "  ".join(f"{arm:>14}" for arm in replays))
    for g in GRID:
        print(f"{g[0]:4g}  {g[1]:6d}  {g[2]:10g}  " + "  ".join(f"{str(r[g] if r[g] is not None else '-'):>14}"
                                                           for r in replays.values()))


if __name__ == "__main__":
    main()
