"""Judge stage: score every candidate with an absolute LLM judge (candidates -> judgments).

Reads `prompts.messages`, `candidates.{prompt_id, candidate_id, text}`; writes `judgments` with
kind=absolute, one row per (candidate, judge). The score is the expectation over the judge's
score-token probabilities (judges/parsing.py); unscoreable outputs are ok=false with the raw
distribution kept, never a default score. Empty candidates are not sent to the judge: they are
ok=false with the reason in `raw`.
"""

from __future__ import annotations

import json
import time

import pyarrow.compute as pc

import pyarrow as pa

from judges.absolute import ScoreTokenJudge
from pipeline import schemas
from pipeline.backends.hf import load_causal_lm
from pipeline.config import RunConfig, fingerprint
from pipeline.models import resolve
from pipeline.progress import bar
from pipeline.store import StageStore, run_in_parts

VERSION = "2"
READS = ("prompts.messages", "candidates.prompt_id", "candidates.candidate_id", "candidates.text")
WRITES = tuple(schemas.JUDGMENTS.names)


def judge_candidates(prompts: pa.Table, candidates: pa.Table, judge: ScoreTokenJudge, progress=None) -> pa.Table:
    """Pure core over tables: one judgment row per candidate, in candidate order."""
    conversations = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    cands = candidates.select(["prompt_id", "candidate_id", "text"]).to_pylist()
    scoreable = [c for c in cands if c["text"].strip()]
    scored = judge.score([(conversations[c["prompt_id"]], c["text"]) for c in scoreable], progress=progress)
    by_id = {c["candidate_id"]: j for c, j in zip(scoreable, scored)}
    rows = []
    for c in cands:
        j = by_id.get(c["candidate_id"])
        rows.append({
            "prompt_id": c["prompt_id"], "candidate_id": c["candidate_id"], "judge": judge.id,
            "kind": "absolute", "aspect": judge.template.aspect,
            "score": j.score if j else None, "rationale": None,
            "raw": j.raw if j else json.dumps({"error": "empty response, not judged"}),
            "ok": bool(j and j.ok), "position_consistent": None,
        })
    return schemas.from_rows(rows, "judgments")


def stage_fingerprint(cfg: RunConfig, candidates_fp: str) -> str:
    model = resolve(cfg.judge_model, field="judge.model")
    return fingerprint("judge", VERSION, cfg.stage_fields("judge"), candidates_fp, model.revision)


def run(run_dir, cfg: RunConfig, candidates_fp: str, *, log=print) -> dict:
    store = StageStore(run_dir, "judge", "judgments", stage_fingerprint(cfg, candidates_fp))
    if (meta := store.reuse(log)) is not None:
        return meta
    prompts = schemas.read_table(f"{run_dir}/tables/prompts.parquet", "prompts")
    candidates = schemas.read_table(f"{run_dir}/tables/generate.parquet", "candidates")
    started = time.perf_counter()
    model, tokenizer, label = load_causal_lm(cfg.judge_model, cfg.generate.dtype, "judge.model")
    judge = ScoreTokenJudge(model, tokenizer, label, template_id=cfg.judge.template, min_mass=cfg.judge.min_score_mass,
                            max_input_tokens=cfg.judge.max_input_tokens, batch_size=cfg.judge.batch_size)
    ids = list(dict.fromkeys(candidates.column("prompt_id").to_pylist()))
    pid = candidates.column("prompt_id")
    done = store.done_keys()
    with bar(total=candidates.num_rows, desc="judge", unit="cand",
             initial=sum(1 for p in pid.to_pylist() if p in done)) as pbar:
        def work(chunk):
            subset = candidates.filter(pc.is_in(pid, value_set=pa.array(chunk)))
            return judge_candidates(prompts, subset, judge, progress=pbar.advance), {}
        parts = run_in_parts(store, ids, cfg.publish.chunk_prompts, work, log)
    table = schemas.concat([t for t, _ in parts], "judgments")
    failed = table.num_rows - sum(table.column("ok").to_pylist())
    meta = {"seconds": round(time.perf_counter() - started, 2), "judge": judge.id, "template": judge.template.id,
            "failure_rate": round(failed / max(table.num_rows, 1), 4),
            "funnel": [{"stage": "judge", "filter": "judge_failed", "rows_in": table.num_rows,
                        "rows_out": table.num_rows - failed, "reason": "judgment not scoreable (ok=false)"}]}
    log(f"judge: {table.num_rows} judgments, {failed} not ok")
    return store.finish(table, meta)
