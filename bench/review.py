"""Page latency of `prefsynth review` on a run of 100k synthetic pairs (goal: p95 < 300 ms on 2 cores).

Builds a run directory without a model (tests/review_run.py: stage tables, shard, manifest; 100k
pairs, 200k candidates, 400k judgments), starts the real CLI server (`prefsynth review --port 0`,
uvicorn) in a subprocess, and times whole HTTP requests from this process over one keep-alive
connection: status line to the last byte of the HTML. Scenarios, each `--requests` random pages:
  list            /pairs?page=K (run order)
  sorted          /pairs?sort=margin&desc=1&page=K (cached order after the first)
  filtered        /pairs?where=margin > 1.5 AND chosen_len > 20&sort=ln_ches&page=K
  text filter     /pairs?where=chosen LIKE '%Topic 3 is%'&page=K (a substring search over 100k responses)
  new filter      /pairs?where=margin > X&sort=chosen_len (X random: every request filters and sorts anew)
  pair view       /pair/ID (a random pair: row, judgments, labels)
Prints p50/p95 per scenario and over all requests, the server's start time and its resident memory.

    python bench/review.py [--pairs 100000] [--requests 60]
"""

from __future__ import annotations

import argparse
import http.client
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.review import labels as review  # noqa: E402
from tests.review_run import build  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="prefsynth-bench-review-") as tmp:
        t0 = time.perf_counter()
        run = build(Path(tmp) / "run", args.pairs, card=False, name="bench-review")
        print(f"built a run of {args.pairs} pairs in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "review", str(run), "--port", "0"], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("the review server did not start")
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            url = found and int(found.group(1))
        print(f"server up in {time.perf_counter() - t0:.1f} s (reads and verifies the run, loads the pairs)")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", url, timeout=120)

            def get(path: str) -> float:
                start = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                took = time.perf_counter() - start
                assert resp.status == 200 and len(body) > 500, (path, resp.status)
                return took

            pages = -(-args.pairs // 50)
            where = quote("margin > 1.5 AND chosen_len > 20")
            like = quote("chosen LIKE '%Topic 3 is%'")  # 1 prompt in 17
            ids = [review.pair_id(f"p{i:06d}", f"p{i:06d}-c0", f"p{i:06d}-c1", "best_vs_worst")
                   for i in rng.sample(range(args.pairs), args.requests)]
            scenarios = {
                "list": lambda k: f"/pairs?page={rng.randint(1, pages)}",
                "sorted": lambda k: f"/pairs?sort=margin&desc=1&page={rng.randint(1, pages)}",
                "filtered": lambda k: f"/pairs?where={where}&sort=ln_ches&page={rng.randint(1, pages // 4)}",
                "text filter": lambda k: f"/pairs?where={like}&page={rng.randint(1, args.pairs // 17 // 50)}",
                "new filter": lambda k: f"/pairs?where={quote(f'margin > {rng.uniform(0.5, 2.5):.6f}')}"
                                        f"&sort=chosen_len&page=2",
                "pair view": lambda k: f"/pair/{ids[k]}",
            }
            everything = []
            print(f"{'scenario':<12} {'first':>9} {'p50':>9} {'p95':>9} {'max':>9}  ({args.requests} requests each)")
            for name, path in scenarios.items():
                first = get(path(0))
                times = [get(path(k)) for k in range(args.requests)]
                everything += times
                print(f"{name:<12} {first * 1000:>7.1f}ms {pct(times, .5) * 1000:>7.1f}ms "
                      f"{pct(times, .95) * 1000:>7.1f}ms {max(times) * 1000:>7.1f}ms")
            print(f"{'all':<12} {'':>9} {pct(everything, .5) * 1000:>7.1f}ms {pct(everything, .95) * 1000:>7.1f}ms "
                  f"{max(everything) * 1000:>7.1f}ms  (mean {statistics.mean(everything) * 1000:.1f} ms)")
            print(f"server resident memory: {rss_mib(proc.pid):.0f} MiB")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
