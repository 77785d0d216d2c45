"""Code verifications per second: the bubblewrap sandbox (judges/sandbox.py) against the in-process runner it
replaced (issue 31: isolation must stay within 3x of the old throughput), in the same run.

  before   judges/verifier.py as of OLD_REV (an audit-hooked `python -I -S -B` subprocess), loaded from git
  after    the current VerifierJudge: bwrap namespaces, rlimits, verdict decided outside

Both judge the same answers with the same VerifierJudge settings (workers, timeout): for every bundled python
prompt (data/prompts/verifiable.jsonl) its reference solution and a wrong one, `--repeats` times over. Each side
runs once untimed first (the sandbox's once-per-process probe, the page cache), then the rounds alternate
before/after so that machine noise falls on both. Prints verifications/s of each and the ratio.

    python bench/verifier_sandbox.py [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judges.verifier import VerifierJudge  # noqa: E402
from pipeline.verifiable.generator import reference_solution  # noqa: E402

OLD_REV = "263e549"  # the last commit whose verifier ran code in the audit-hooked subprocess


def old_verifier():
    """judges/verifier.py at OLD_REV as a module (from a file: its runner reads its own source with inspect)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_REV}:judges/verifier.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="prefsynth-bench-")) / "old_verifier.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_verifier", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_verifier"] = module
    spec.loader.exec_module(module)
    return module


def workload() -> tuple[list[dict], list[str], list[bool]]:
    rows = [json.loads(line) for line in (ROOT / "data" / "prompts" / "verifiable.jsonl").open()]
    rows = [r for r in rows if r["verify"]["kind"] == "tests"]
    specs, answers, expected = [], [], []
    for r in rows:
        wrong = f"def {r['verify']['entry_point']}(*args):\n    return None"
        for src, ok in ((reference_solution(r), True), (wrong, False)):
            specs.append(r["verify"])
            answers.append(f"```python\n{src}\n```")
            expected.append(ok)
    return specs, answers, expected


def timed(judge, specs, answers, expected) -> float:
    start = time.perf_counter()
    verdicts = judge.verify(specs, answers)
    elapsed = time.perf_counter() - start
    wrong = [(s["entry_point"], v) for s, v, e in zip(specs, verdicts, expected) if v.passed is not e]
    assert not wrong, f"{type(judge).__module__}: unexpected verdicts {wrong[:3]}"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    specs, answers, expected = workload()
    judges = {"before": old_verifier().VerifierJudge(workers=args.workers),
              "after": VerifierJudge(workers=args.workers)}
    for judge in judges.values():  # untimed warm-up
        timed(judge, specs[:4], answers[:4], expected[:4])
    seconds = {name: 0.0 for name in judges}
    for _ in range(args.repeats):
        for name, judge in judges.items():
            seconds[name] += timed(judge, specs, answers, expected)
    n = len(specs) * args.repeats
    rate = {name: n / s for name, s in seconds.items()}
    print(f"{len(specs)} verifications ({len(specs) // 2} bundled python prompts, a right and a wrong answer each) "
          f"x {args.repeats}, {args.workers} workers")
    for name in judges:
        print(f"{name:>7}: {rate[name]:6.1f} verifications/s")
    print(f"  ratio: {rate['before'] / rate['after']:.2f}x slower with the OS sandbox (the bound is 3x)")


if __name__ == "__main__":
    main()
