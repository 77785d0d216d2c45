"""Judge benchmark: the in-process judge vs the same judge served by `vllm serve`, on the same candidates.

Candidates: `--prompts` bundled prompts x `--n` candidates of `--max-new-tokens` tokens, generated once
with the transformers backend (seeded). Judges: an absolute (absolute-1to5-v1) and a pairwise
(pairwise-ab-v1, both orders) template on the bundled model, float32.
- in process: the judge stage's core (`judge_candidates`) on transformers; engine time is the time
  inside the forward passes (`last_position_logprobs`);
- served: the same core with judge.backend openai against a real `vllm serve` (float32, started
  here), logprobs mode, through a request log as in a run; engine time is the time inside the
  backend's async request batches (`OpenAIBackend.chat`: HTTP, server queueing and compute).
Figures: judgments/s over the stage's wall time, and the pipeline's overhead outside the engine
(templating, request building, request-log lookups and fsynced appends, parsing, table building) as
a share of the wall time (the judges issue asks for < 5%). A second served pass answers every
request from the request log (what a resumed run pays per judgment).

    python bench/judge.py [--prompts 8] [--n 3] [--max-new-tokens 48] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate import timed  # noqa: E402  (the same per-call wall-time wrapper)
from judges import absolute  # noqa: E402
from pipeline.backends.hf import TransformersBackend  # noqa: E402
from pipeline.backends.openai_backend import OpenAIBackend  # noqa: E402
from pipeline.backends.request_log import RequestLog  # noqa: E402
from pipeline.config import GenerateConfig, InputConfig, load_config  # noqa: E402
from pipeline.stages.generate import generate_candidates  # noqa: E402
from pipeline.stages.judge import build_judges, judge_candidates  # noqa: E402
from pipeline.stages.prompts import load_prompts  # noqa: E402

MODEL = "bundled:smollm2-135m-instruct"
JUDGES = ["generate.dtype=float32", "judge.pairwise_templates=[pairwise-ab-v1]", "judge.aggregate=mean_normalised"]


def measure(label: str, prompts, candidates, judges, box: list) -> tuple[float, int]:
    box[0] = 0.0
    t0 = time.perf_counter()
    table = judge_candidates(prompts, candidates, judges)
    wall = time.perf_counter() - t0
    ok = sum(table.column("ok").to_pylist())
    print(f"{label:28s} {table.num_rows:4d} judgments ({ok} ok)  {wall:7.2f} s  "
          f"{table.num_rows / wall:7.2f} judgments/s  engine {box[0]:7.2f} s  "
          f"overhead {100 * (wall - box[0]) / wall:5.2f}%", flush=True)
    return wall, table.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    prompts, _ = load_prompts(InputConfig(limit=args.prompts), seed=0)
    candidates, _ = generate_candidates(prompts, GenerateConfig(n=args.n, max_new_tokens=args.max_new_tokens),
                                        TransformersBackend(MODEL, batch_size=16), seed=0)
    tokens = sum(candidates.column("n_tokens").to_pylist())
    print(f"{prompts.num_rows} prompts x {args.n} candidates ({tokens} tokens); "
          "judges: absolute-1to5-v1 + pairwise-ab-v1 (both orders), bundled SmolLM2-135M, float32", flush=True)

    box = [0.0]
    timed(absolute, "last_position_logprobs", box)  # the forward passes of both in-process judges
    local = build_judges(load_config(None, JUDGES))
    judge_candidates(prompts.slice(0, 1), candidates.slice(0, 2), local)  # warm-up
    in_wall, n = measure("in process (transformers)", prompts, candidates, local, box)

    from tests.pipeline.vllm_serving import Server  # the launcher the tests use (float32, eager)

    work = Path(tempfile.mkdtemp(prefix="bench-judge-"))
    srv = Server(work / "serve.log")
    t0 = time.perf_counter()
    srv.start()
    print(f"vllm serve ready in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        timed(OpenAIBackend, "chat", box)  # the async request batches of every served judge
        served = JUDGES + ["judge.backend=openai", f"judge.openai.base_url={srv.url}/v1",
                           f"judge.openai.concurrency={args.concurrency}"]
        warm = RequestLog(work / "warm.jsonl")
        judge_candidates(
            prompts.slice(0, 1), candidates.slice(0, 2), build_judges(load_config(None, served), log=warm)
        )
        log = RequestLog(work / "judge.jsonl")
        srv_wall, _ = measure(
            f"served (vllm serve, c={args.concurrency})",
            prompts,
            candidates,
            build_judges(load_config(None, served), log=log),
            box,
        )
        measure("served, all from the log", prompts, candidates, build_judges(load_config(None, served), log=log), box)
    finally:
        srv.stop()
    print(
        f"served / in process: {in_wall / srv_wall:.2f}x judgments/s; {n} judgments per pass; overhead = stage wall "
        "time outside the engine (target < 5%)"
    )


if __name__ == "__main__":
    main()
