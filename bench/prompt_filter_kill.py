"""Kill-and-resume of the prompt filter's embedding at scale (50k prompts by default).

The suite shows the behaviour at 5k prompts (tests/pipeline/test_prompt_filter.py); this runs the same check,
with the same assertions, at the size that shows it holds for a long stage: SIGKILL once two parts of
`--chunk` prompts are embedded, rerun, the finished parts kept untouched and only the rest embedded. Baseline in
the same run: the uninterrupted stage on the same input. The rerun's time over the baseline's should be near
the share of parts left to embed.

    python bench/prompt_filter_kill.py [--n 50000] [--chunk 2500]
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
sys.path.insert(0, str(ROOT))

from tests.pipeline.test_prompt_filter import KILL_SCRIPT, kill_while_embedding_then_rerun  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--chunk", type=int, default=2500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefsynth-bench-kill-") as tmp:
        killed = Path(tmp) / "killed"
        got = kill_while_embedding_then_rerun(killed, args.n, args.chunk)
        clean = Path(tmp) / "clean"
        (clean / "tables").mkdir(parents=True)
        (clean / "tables" / "prompts.parquet").write_bytes((killed / "tables" / "prompts.parquet").read_bytes())
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(clean), str(args.chunk)], cwd=ROOT, check=True,
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        clean_s = time.perf_counter() - start
    parts = -(-args.n // args.chunk)
    left = 1 - got["parts_done"] / parts
    print(f"{args.n} prompts in {parts} parts of {args.chunk}; killed after {got['parts_done']} parts")
    print(f"uninterrupted stage {clean_s:.1f} s; rerun after the kill {got['rerun_s']:.1f} s; "
          f"ratio {got['rerun_s'] / clean_s:.2f} (share of parts left {left:.2f})")


if __name__ == "__main__":
    main()
