"""Generate stage: N candidate responses per prompt (prompts -> candidates).

Reads `prompts.prompt_id, prompts.messages`; writes the `candidates` table (long format: every
candidate kept). Each candidate's seed is a hash of (run seed, prompt_id, sample index), so a
candidate depends on the model, the prompt and the sampling config only: batch size, chunking or
a resumed run never change it (see pipeline/backends/hf.py). Prompts over the context budget are
skipped with a recorded reason and counted in the funnel.
"""

from __future__ import annotations

import time

import pyarrow as pa

from pipeline import schemas
from pipeline.backends import make_backend, resolve_backend_name
from pipeline.backends.base import GeneratorBackend, Request, SamplingParams, Skipped
from pipeline.config import GenerateConfig, RunConfig, fingerprint
from pipeline.funnel import step
from pipeline.models import resolve
from pipeline.pools import pool_candidates
from pipeline.progress import bar
from pipeline.request_log import LoggedBackend, RequestLog
from pipeline.store import StageStore, done_rows, run_in_parts
from pipeline.verbalized import verbalized_candidates

VERSION = "3"  # 3: backend in the fingerprint (vllm/openai sample differently from transformers)
READS = ("prompts.prompt_id", "prompts.messages")
WRITES = tuple(schemas.CANDIDATES.names)


def candidate_seed(seed: int, prompt_id: str, k: int) -> int:
    return int(fingerprint("candidate-seed", seed, prompt_id, k), 16) % (2**63)


def with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def generate_candidates(prompts: pa.Table, cfg: GenerateConfig, backend: GeneratorBackend | None, *, seed: int,
                        progress=None, backend_for=None) -> tuple[pa.Table, dict[str, str]]:
    """Pure core: (candidates table, {prompt_id: skip reason}). With `cfg.pool`, `backend_for(member index)`
    gives each member's backend (pipeline/pools.py) and `backend` serves verbalized sampling only."""
    rows = prompts.select(["prompt_id", "messages"]).to_pylist()
    if cfg.pool:
        out, skipped = pool_candidates(rows, cfg, backend_for, seed=seed, progress=progress)
        if cfg.verbalized_k and backend is not None:
            out += verbalized_candidates(rows, cfg, backend, seed=seed, skipped=skipped, progress=progress)
        return schemas.from_rows(out, "candidates"), skipped
    requests = [
        Request(with_system(r["messages"], cfg.system_prompt),
                tuple(candidate_seed(seed, r["prompt_id"], k) for k in range(cfg.n)))
        for r in rows
    ]
    sampling = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    results = backend.generate(requests, sampling=sampling, max_prompt_tokens=cfg.max_prompt_tokens, progress=progress)
    out, skipped = [], {}
    for row, req, result in zip(rows, requests, results):
        if isinstance(result, Skipped):
            skipped[row["prompt_id"]] = result.reason
            continue
        for k, (completion, s) in enumerate(zip(result, req.seeds)):
            out.append({
                "prompt_id": row["prompt_id"],
                "candidate_id": f"{row['prompt_id']}-{k:02d}",
                "generator": backend.label,
                "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p,
                             "max_new_tokens": cfg.max_new_tokens, "seed": s, "mode": "sample"},
                "text": completion.text,
                "n_tokens": completion.n_tokens,
                "finish_reason": completion.finish_reason,
            })
    if cfg.verbalized_k:
        out += verbalized_candidates(rows, cfg, backend, seed=seed, skipped=skipped, progress=progress)
    return schemas.from_rows(out, "candidates"), skipped


def generate_funnel(n_prompts: int, skipped: dict[str, str], candidates: pa.Table, verbalized_k: int) -> list[dict]:
    """prompts -> prompts answered -> candidates (sampled, plus the verbalized answers asked for, less
    those no reply held)."""
    answered = n_prompts - len(skipped)
    modes = [s["mode"] if s else "sample" for s in candidates.column("sampling").to_pylist()]
    sampled = sum(m != "verbalized" for m in modes)
    asked = sampled + verbalized_k * answered
    funnel = [step("generate", "context_limit", n_prompts, answered, "prompt longer than generate.max_prompt_tokens",
                   unit="prompts"),
              step("generate", "candidates", answered, asked, "the prompts left become their sampled candidates"
                   + (f" and generate.verbalized_k={verbalized_k} verbalized answers each" if verbalized_k else ""),
                   unit="candidates", unit_in="prompts")]
    if verbalized_k:
        pids = candidates.column("prompt_id").to_pylist()
        unparsed = answered - len({p for p, m in zip(pids, modes) if m == "verbalized"})
        funnel.append(step("generate", "verbalized_unparsed", asked, candidates.num_rows,
                           f"verbalized answers asked for but not parsed ({unparsed} prompt(s) got none; they keep "
                           "their sampled candidates)", unit="candidates"))
    return funnel


def stage_fingerprint(cfg: RunConfig, prompts_fp: str) -> str:
    model = resolve(cfg.generate.model, field="generate.model")
    pool = [resolve(m.model, field=f"generate.pool.{i}.model").revision for i, m in enumerate(cfg.generate.pool)]
    return fingerprint("generate", VERSION, cfg.stage_fields("generate"), resolve_backend_name(cfg.generate.backend),
                       prompts_fp, model.revision, *pool)


def run(run_dir, cfg: RunConfig, prompts_fp: str, *, log=print, shard: tuple[int, int] | None = None) -> dict:
    """Run (or resume, or skip) the stage under `run_dir`; return its meta. With `shard=(i, k)` only do
    that shard's chunks (a distributed task) and return without committing the table."""
    store = StageStore(run_dir, "generate", "candidates", stage_fingerprint(cfg, prompts_fp))
    if (meta := store.reuse(log)) is not None:
        return meta
    prompts = schemas.read_table(f"{run_dir}/tables/prompt_filter.parquet", "prompts")
    started = time.perf_counter()
    g = cfg.generate
    backend_name = resolve_backend_name(g.backend)
    writer = None if shard is None else f"shard-{shard[0]}-of-{shard[1]}"  # concurrent shards: one log file each
    request_log = RequestLog(f"{run_dir}/requests/generate.jsonl", writer=writer) if g.request_log else None
    backends: dict[str, GeneratorBackend] = {}

    def backend_of(model: str, field: str) -> GeneratorBackend:
        if model not in backends:
            b = make_backend(backend_name, model, dtype=g.dtype, batch_size=g.batch_size, field=field,
                             vllm=g.vllm.model_dump(), openai=g.openai.model_dump())
            if request_log is not None:
                b = LoggedBackend(b, request_log, backend_name=backend_name)
            backends[model] = b
        return backends[model]

    with bar(total=prompts.num_rows, initial=done_rows(store, prompts), desc="generate", unit="prompt") as pbar:
        if backend_name == "openai":
            pbar.in_flight = lambda: sum(getattr(b, "in_flight", 0) for b in backends.values())

        def make_work():  # backends (models, engines) load only when a chunk is left to do
            backend = None if g.pool and not g.verbalized_k else backend_of(g.model, "generate.model")
            backend_for = lambda m: backend_of(g.pool[m].model, f"generate.pool.{m}.model")  # noqa: E731

            def work(subset):
                hits = _log_hits(backends)
                table, skipped = generate_candidates(subset, g, backend, seed=cfg.seed, progress=pbar.advance,
                                                      backend_for=backend_for)
                return table, {"skipped": skipped, "request_log_hits": _log_hits(backends) - hits}
            return work
        parts = run_in_parts(store, prompts, cfg.publish.chunk_prompts, make_work, log, shard=shard)
    if request_log is not None:
        request_log.close()
    if shard is not None:
        return store.shard_meta(shard)
    table = schemas.concat([t for t, _ in parts], "candidates")
    skipped = {k: v for _, info in parts for k, v in info.get("skipped", {}).items()}
    seconds = time.perf_counter() - started
    tokens = int(sum(table.column("n_tokens").to_pylist()))
    labels = generator_labels(cfg)
    meta = {
        "seconds": round(seconds, 2),
        "backend": backend_name,
        "request_log_hits": sum(info.get("request_log_hits", 0) for _, info in parts),
        "model": ", ".join(labels),
        "models": labels,
        "tokens": tokens,
        "skipped": skipped,
        "funnel": generate_funnel(prompts.num_rows, skipped, table, cfg.generate.verbalized_k),
    }
    log(f"generate: {table.num_rows} candidates for {prompts.num_rows - len(skipped)} prompts, {tokens} tokens")
    return store.finish(table, meta)


def _log_hits(backends: dict) -> int:
    return sum(getattr(b, "hits", 0) for b in backends.values())


def generator_labels(cfg: RunConfig) -> list[str]:
    """Labels (model@revision) of every generator the run uses: the model, or the pool (plus the model
    when verbalized sampling asks it), sorted; known without loading anything."""
    g = cfg.generate
    refs = {(m.model, f"generate.pool.{i}.model") for i, m in enumerate(g.pool)}
    if not g.pool or g.verbalized_k:
        refs.add((g.model, "generate.model"))
    return sorted({resolve(ref, field=field).label for ref, field in refs})
