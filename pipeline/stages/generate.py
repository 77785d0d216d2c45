"""Generate stage: N candidate responses per prompt (prompts -> candidates).

Reads `prompts.prompt_id, prompts.messages`; writes the `candidates` table (long format: every
candidate kept). Each candidate's seed is a hash of (run seed, prompt_id, sample index), so a
candidate depends on the model, the prompt and the sampling config only: batch size, chunking or
a resumed run never change it (see pipeline/backends/hf.py). Prompts over the context budget are
skipped with a recorded reason and counted in the funnel.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.backends import factory, resolve_backend_name
from pipeline.backends.base import GeneratorBackend, Request, SamplingParams, Skipped
from pipeline.backends.model_ref import resolve
from pipeline.config import GenerateConfig, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.runner import Chunked, Read, Stage, StageRun
from pipeline.sampling.candidate import candidate_row, candidate_seed, with_system
from pipeline.sampling.pools import pool_candidates
from pipeline.sampling.verbalized import verbalized_candidates

VERSION = "3"  # 3: backend in the fingerprint (vllm/openai sample differently from transformers)


def generate_candidates(prompts: pa.Table, cfg: GenerateConfig, backend: GeneratorBackend | None, *, seed: int,
                        progress=None, backend_for=None) -> tuple[pa.Table, dict[str, str]]:
    """Pure core: (candidates table, {prompt_id: skip reason}). With `cfg.pool`, `backend_for(member index)`
    gives each member's backend (pipeline/sampling/pools.py) and `backend` serves verbalized sampling only."""
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
            out.append(
                candidate_row(
                    row["prompt_id"],
                    f"{row['prompt_id']}-{k:02d}",
                    backend.label,
                    text=completion.text,
                    n_tokens=completion.n_tokens,
                    finish_reason=completion.finish_reason,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=s,
                )
            )
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
    funnel = [
        step(
            "generate",
            "context_limit",
            n_prompts,
            answered,
            "prompt longer than generate.max_prompt_tokens",
            unit="prompts",
        ),
        step(
            "generate",
            "candidates",
            answered,
            asked,
            "the prompts left become their sampled candidates"
            + (f" and generate.verbalized_k={verbalized_k} verbalized answers each" if verbalized_k else ""),
            unit="candidates",
            unit_in="prompts",
        ),
    ]
    if verbalized_k:
        pids = candidates.column("prompt_id").to_pylist()
        unparsed = answered - len({p for p, m in zip(pids, modes) if m == "verbalized"})
        funnel.append(
            step(
                "generate",
                "verbalized_unparsed",
                asked,
                candidates.num_rows,
                f"verbalized answers asked for but not parsed ({unparsed} prompt(s) got none; they keep "
                "their sampled candidates)",
                unit="candidates",
            )
        )
    return funnel


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output (the backend enters the fingerprint by its
    resolved name; engine and endpoint options, batch size and the request log do not count; `turns` shapes
    the prompts, so it enters through the prompts stage's fingerprint)."""
    return {
        "seed": cfg.seed,
        **cfg.generate.fingerprinted(exclude={"backend", "turns"}),
    }


def stage_fingerprint(cfg: RunConfig, prompts_fp: str) -> str:
    model = resolve(cfg.generate.model, field="generate.model")
    pool = [resolve(m.model, field=f"generate.pool.{i}.model").revision for i, m in enumerate(cfg.generate.pool)]
    return fingerprint(
        "generate",
        VERSION,
        fields(cfg),
        resolve_backend_name(cfg.generate.backend),
        prompts_fp,
        model.revision,
        *pool,
    )


def _make_work(run: StageRun):  # backends (models, engines) load only when a chunk is left to do
    cfg, g = run.cfg, run.cfg.generate
    backends: dict[str, GeneratorBackend] = {}

    def backend_of(model: str, field: str) -> GeneratorBackend:
        if model not in backends:
            backends[model] = factory.generator(cfg, model, field=field, batch_size=g.batch_size, run=run)
        return backends[model]

    if resolve_backend_name(g.backend) == "openai":
        run.pbar.in_flight = lambda: sum(getattr(b, "in_flight", 0) for b in backends.values())
    backend = None if g.pool and not g.verbalized_k else backend_of(g.model, "generate.model")
    backend_for = lambda m: backend_of(g.pool[m].model, f"generate.pool.{m}.model")  # noqa: E731

    def work(subset):
        hits = _log_hits(backends)
        table, skipped = generate_candidates(
            subset, g, backend, seed=cfg.seed, progress=run.pbar.advance, backend_for=backend_for
        )
        hits = _log_hits(backends) - hits
        return table, {"skipped": skipped, "request_log_hits": hits}

    return work




def _summarise(run: StageRun, table: pa.Table, extras: list[dict]):
    cfg = run.cfg
    n_prompts = run.read("prompt_filter").num_rows
    skipped = {k: v for info in extras for k, v in info.get("skipped", {}).items()}
    tokens = int(sum(table.column("n_tokens").to_pylist()))
    labels = generator_labels(cfg)
    run.log(f"generate: {table.num_rows} candidates for {n_prompts - len(skipped)} prompts, {tokens} tokens")
    return table, {
        "backend": resolve_backend_name(cfg.generate.backend),
        "request_log_hits": sum(info.get("request_log_hits", 0) for info in extras),
        "model": ", ".join(labels),
        "models": labels,
        "tokens": tokens,
        "skipped": skipped,
        "funnel": generate_funnel(n_prompts, skipped, table, cfg.generate.verbalized_k),
    }


STAGE = Stage(
    name="generate",
    reads=(Read("prompt_filter", "prompts", ("prompt_id", "messages")),),
    writes="candidates",
    after=("prompt_filter",),
    fields=fields,
    fingerprint=stage_fingerprint,
    chunked=Chunked(
        rows="prompt_filter",
        make_work=_make_work,
        summarise=_summarise,
        one_chunk=factory.generates_in_batch,
        before=factory.opens_request_log(lambda cfg: cfg.generate.request_log),
    ),
    shardable=True,
)
run = STAGE.run


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
