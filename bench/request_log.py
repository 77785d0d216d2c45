"""Opening a big request log: the old load-everything reader against the indexed one, in the same run.

Writes a synthetic log as a killed Ray run leaves it (`--prompts` prompts x `--completions`
completions of `--text-bytes` each, chunks of `--chunk` prompts striped over `--shards` writer
files, plus the gathering call's empty main file), in the layout every version writes, with no
index: a run directory of the previous version. Then, each in a fresh Python process, it times
opening the log and looking up one chunk's keys (a middle chunk), and reads that process's peak
RSS (`ru_maxrss`; the import-only level is printed beside it):

  old       the previous `RequestLog`: every file parsed into a dict (its code, reproduced below)
  first     the current `RequestLog` on that directory: its first lookup indexes every file, once
  resumed   the current one on the directory a killed run of it leaves: the index covers all but
            the last chunk each writer appended (written after `first`), which the lookup indexes
            before answering; the figure the issue bounds (500 MB, 5 s)

The old reader runs under an address-space cap (`--old-cap-gb`, lowered to what the machine has
free) so that it fails with MemoryError rather than take a shared machine's memory; a capped run
prints the cap it hit. The log is written under `--dir` and removed at the end.

    python bench/request_log.py [--prompts 1000000] [--completions 4] [--text-bytes 1024]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def key_of(i: int) -> str:
    return hashlib.sha256(f"bench-request-{i}".encode()).hexdigest()[:16]  # the shape of request_key's keys


def old_writer_line(key: str, texts: list[str]) -> str:
    """The previous version's `RequestLog.append` record, byte for byte."""
    rec = {"key": key, "completions": [{"text": t, "n_tokens": len(t) // 4, "finish_reason": "stop"} for t in texts]}
    return json.dumps(rec) + "\n"


def write_log(folder: Path, prompts: range, args, mode: str = "w") -> None:
    filler = ("The quick brown fox jumps over the lazy dog; " * (args.text_bytes // 40 + 2))
    files = [open(folder / f"generate.shard-{s}-of-{args.shards}.jsonl", mode, encoding="utf-8")
             for s in range(args.shards)]
    for i in prompts:
        texts = [(f"prompt {i} answer {k}: " + filler)[:args.text_bytes] for k in range(args.completions)]
        files[(i // args.chunk) % args.shards].write(old_writer_line(key_of(i), texts))
    for fh in files:
        fh.close()


def old_open_and_lookup(path: Path, keys: list[str]) -> int:
    """The previous version's reader: RequestLog.__init__ loaded every writer's file into `entries`."""
    entries = {}
    for file in [path, *sorted(path.parent.glob(f"{path.stem}.*{path.suffix}"))]:
        if not file.exists():
            continue
        for line in file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            entries[rec["key"]] = rec.get("skipped") or [(c["text"], c["n_tokens"], c["finish_reason"])
                                                        for c in rec["completions"]]
    return sum(entries.get(k) is not None for k in keys)


def measure(mode: str, path: Path, keys: list[str], cap_bytes: int) -> None:
    """Child process: open + look up, print one JSON line (seconds, peak and import-level RSS in MiB)."""
    from pipeline.backends.request_log import RequestLog

    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if cap_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    t0 = time.perf_counter()
    out: dict = {}
    try:
        if mode == "old":
            found = old_open_and_lookup(path, keys)
        else:
            log = RequestLog(path)
            found = sum(e is not None for e in log.lookup(keys))
            out["stats"] = log.stats
            log.close()
        out["found"] = found
    except MemoryError:
        out["memory_error"] = True
    out.update(seconds=time.perf_counter() - t0, base_mib=base_mib,
               peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


def run_child(mode: str, path: Path, keys: list[str], cap_bytes: int = 0) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--measure", mode, str(path), str(cap_bytes), *keys],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mem_available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        measure(sys.argv[2], Path(sys.argv[3]), sys.argv[5:], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--completions", type=int, default=4)
    ap.add_argument("--text-bytes", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=8, help="prompts per chunk (publish.chunk_prompts)")
    ap.add_argument("--shards", type=int, default=4, help="writer files (Ray shard tasks)")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--old-cap-gb", type=float, default=16.0)
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="prefsynth-bench-reqlog-", dir=args.dir))
    path = folder / "generate.jsonl"
    try:
        t0 = time.perf_counter()
        path.touch()  # the gathering call's main file
        write_log(folder, range(args.prompts), args)
        size = sum(p.stat().st_size for p in folder.glob("*.jsonl"))
        print(f"log: {args.prompts:,} prompts x {args.completions} completions x {args.text_bytes} B in "
              f"{args.shards} writer files, {size / 1e9:.2f} GB, written in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPUs; lookup of one chunk ({args.chunk} prompts)")
        middle = (args.prompts // args.chunk // 2) * args.chunk
        keys = [key_of(i) for i in range(middle, min(middle + args.chunk, args.prompts))]

        cap = int(min(args.old_cap_gb * 2**30, max(mem_available() - 3 * 2**30, 2**30)))
        rows = {"old": run_child("old", path, keys, cap), "first": run_child("first", path, keys)}
        tail = range(args.prompts, args.prompts + args.chunk * args.shards)  # each writer's last chunk, unindexed
        write_log(folder, tail, args, mode="a")
        rows["resumed"] = run_child("resumed", path, keys)

        labels = {"old": "old layout, old reader (whole log in a dict)", "first": "old layout, first open indexes it",
                  "resumed": "indexed, resumed after a kill"}
        print(f"{'':48}{'open+lookup s':>14}{'peak RSS MiB':>13}{'(imports)':>10}{'found':>7}{'indexed MB':>11}"
              f"{'read KB':>8}")
        for name, r in rows.items():
            found = "MemoryError" if r.get("memory_error") else r["found"]
            st = r.get("stats")
            io = f"{st['indexed_bytes'] / 1e6:11.1f}{st['read_bytes'] / 1e3:8.1f}" if st else ""
            print(f"  {labels[name]:46}{r['seconds']:14.2f}{r['peak_mib']:13.0f}{r['base_mib']:10.0f}{found!s:>7}{io}")
        if rows["old"].get("memory_error"):
            print(f"  the old reader hit its {cap / 2**30:.1f} GiB address-space cap after "
                  f"{rows['old']['seconds']:.1f} s: its figures are lower bounds")
        o = rows["old"]
        for name in ("resumed", "first"):
            r = rows[name]
            print(f"  old reader / {labels[name]}: time {o['seconds'] / r['seconds']:.1f}x, "
                  f"peak RSS {o['peak_mib'] / r['peak_mib']:.1f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
