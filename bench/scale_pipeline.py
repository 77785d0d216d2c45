"""The whole pipeline at growing sizes against a server that answers at once: prefsynth's own cost per prompt.

A canned OpenAI-compatible server (tests/fake_endpoint.py, mode `canned`, in its own process: chat and
completions answered from a hash of the request, top log-probs over the judges' score tokens) stands in for
the GPU servers, so what is timed is prefsynth's own work. Each size is the real CLI (`python -m flows.cli
run`, a fresh process, fresh run directory) on the bundled default config with generate, the absolute judge
and the rationales on that endpoint (request logs on, as by default), MinHash prompt dedup (no embedder), CHES
off (it needs the policy in process); the prompts are `--sizes` synthetic prompts of 8-40 random words, 5% of
them near-copies that MinHash drops (bench/scale_prompts.py's `planted_texts`).

Per size: each stage's seconds (its tables/<stage>.json), its requests (the meta's usage) and requests/s; the
run's wall time (Prefect's start included), the CLI process's peak RSS (wait4), the run directory's size; then
the same command again on the finished run (`rerun`: every stage reused). Stage seconds per 1k prompts are
printed with their ratio to the smallest size measured in the same invocation. On the largest size: `inspect`,
`card` and `datasets.load_dataset` of the published shards. With `--kill`, a run of the smallest size is
SIGKILLed mid-generate, resumed, and its pairs compared with the uninterrupted run's.

    python bench/scale_pipeline.py [--sizes 1000 10000] [--n 4] [--concurrency 32] [--kill] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.scale_prompts import planted_texts  # noqa: E402

STAGES = ("prompts", "prompt_filter", "generate", "judge", "pair", "rationale")
ENV = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT)}


def write_prompts(path: Path, n: int, seed: int) -> None:
    texts, _ = planted_texts(n, np.random.default_rng(seed))
    with open(path, "w") as fh:
        for t in texts:
            fh.write(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n")


def run_args(out: Path, prompts: Path, n: int, url: str, args) -> list[str]:
    sets = [f"input.path={prompts}", f"input.limit={n}", "input.shuffle=false", f"generate.n={args.n}",
            "curate.ches.enabled=false", "curate.dedup.near_duplicates=false", "curate.dedup.minhash.enabled=true"]
    for part in ("generate", "judge"):
        sets += [f"{part}.backend=openai", f"{part}.openai.base_url={url}", f"{part}.openai.served_model=served",
                 f"{part}.openai.concurrency={args.concurrency}"]
    sets += args.set
    return [sys.executable, "-m", "flows.cli", "run", "--out", str(out), "--quiet",
            *(x for s in sets for x in ("--set", s))]


def timed(cmd: list[str], log: Path, *, kill_when=None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB of the process, exit status); `kill_when()` true: SIGKILL its process group."""
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    while kill_when is not None:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if kill_when():
            os.killpg(proc.pid, signal.SIGKILL)
            kill_when = None
        time.sleep(0.2)
    else:
        pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


def stage_figures(out: Path) -> dict[str, dict]:
    figures = {}
    for stage in STAGES:
        meta = json.loads((out / "tables" / f"{stage}.json").read_text())
        requests = sum(r.get("requests", 0) for r in meta.get("usage") or [])
        figures[stage] = {"seconds": meta.get("seconds", 0.0), "requests": requests, "rows": meta.get("rows")}
    return figures


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(n: int, tmp: Path, url: str, args) -> dict:
    prompts, out, log = tmp / f"prompts-{n}.jsonl", tmp / f"run-{n}", tmp / f"run-{n}.log"
    write_prompts(prompts, n, args.seed)
    cmd = run_args(out, prompts, n, url, args)
    wall, peak, rc = timed(cmd, log)
    if rc != 0:
        raise SystemExit(f"run of {n} prompts failed ({rc}):\n{log.read_text()[-3000:]}")
    rerun, _, rc = timed(cmd, log)
    if rc != 0:
        raise SystemExit(f"rerun of {n} prompts failed ({rc}):\n{log.read_text()[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"prompts": n, "wall_s": round(wall, 1), "peak_rss_mb": round(peak), "run_dir_mb": round(dir_mb(out), 1),
            "rerun_s": round(rerun, 1), "pairs": manifest["rows"]["pairs"], "stages": stage_figures(out),
            "out": str(out), "cmd": cmd}


def extras(result: dict, tmp: Path) -> dict:
    """Seconds of `inspect`, `card` and load_dataset on a finished run."""
    out, log = result["out"], tmp / "extras.log"
    load = ("import datasets, sys; d = datasets.load_dataset('parquet', data_files=sys.argv[1] + '/pairs/*.parquet', "
            "split='train'); print(d.num_rows)")
    cmds = {"inspect": [sys.executable, "-m", "flows.cli", "inspect", out],
            "card": [sys.executable, "-m", "flows.cli", "card", out],
            "load_dataset": [sys.executable, "-c", load, out]}
    return {name: round(timed(cmd, log)[0], 1) for name, cmd in cmds.items()}


def kill_and_resume(result: dict, tmp: Path) -> dict:
    """SIGKILL a fresh run of the same size once generate has checkpointed parts, rerun it, compare the pairs."""
    import pyarrow.parquet as pq

    n = result["prompts"]
    out = tmp / f"killed-{n}"
    cmd = [str(out) if a == result["out"] else a for a in result["cmd"]]
    killed_at = {}

    def mid_generate() -> bool:
        killed_at["parts"] = len(list((out / "tables").glob("generate.parts-*/part-*.json")))
        return killed_at["parts"] >= 3

    timed(cmd, tmp / "killed.log", kill_when=mid_generate)
    wall, _, rc = timed(cmd, tmp / "killed.log")
    same = rc == 0 and all(pq.read_table(out / "tables" / f"{t}.parquet").equals(
        pq.read_table(Path(result["out"]) / "tables" / f"{t}.parquet")) for t in ("generate", "judge", "rationale"))
    return {"killed_after_parts": killed_at.get("parts"), "resume_s": round(wall, 1), "tables_equal": same}


def report(results: list[dict]) -> None:
    base = results[0]
    print(f"{os.cpu_count()} CPUs; canned server in its own process; stage seconds (s per 1k prompts, x the "
          f"{base['prompts']} baseline), requests/s")
    for r in results:
        print(f"\n{r['prompts']} prompts: wall {r['wall_s']} s, rerun {r['rerun_s']} s, peak RSS "
              f"{r['peak_rss_mb']} MB, run dir {r['run_dir_mb']} MB, {r['pairs']} pairs")
        for stage, f in r["stages"].items():
            per_k = f["seconds"] / r["prompts"] * 1000
            base_k = base["stages"][stage]["seconds"] / base["prompts"] * 1000
            ratio = per_k / base_k if base_k else float("nan")
            rps = f"{f['requests'] / f['seconds']:7.0f} req/s ({f['requests']} requests)" if f["requests"] else ""
            print(f"  {stage:<14} {f['seconds']:8.1f} s  {per_k:7.2f} s/1k  {ratio:5.2f}x  {rps}")
        for key in ("extras", "kill"):
            if key in r:
                print(f"  {key}: {r[key]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight (generate and judge)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="one more config override (repeatable)")
    ap.add_argument("--kill", action="store_true", help="SIGKILL mid-generate and resume at the smallest size")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs under DIR (default: a temporary folder)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefsynth-scale-pipeline-") as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_endpoint.py"), "canned"], env=ENV,
                                  stdout=subprocess.PIPE, text=True)
        try:
            url = server.stdout.readline().strip()
            results = []
            for n in args.sizes:
                results.append(measure(n, tmp, url, args))
                if args.kill and len(results) == 1:
                    results[0]["kill"] = kill_and_resume(results[0], tmp)
                print(json.dumps({k: v for k, v in results[-1].items() if k != "cmd"}), flush=True)
            results[-1]["extras"] = extras(results[-1], tmp)
        finally:
            server.kill()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
