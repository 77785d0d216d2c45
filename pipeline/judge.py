"""Judge stage: every configured judge scores the candidates (candidates -> judgments).

Reads `prompts.messages`, `candidates.{prompt_id, candidate_id, text}`; writes `judgments`, one
row per (candidate or candidate pair, judge):
- absolute LLM judges (`judge.templates`): score = expectation over the score-token
  probabilities (judges/absolute.py), kind=absolute, aspect from the template;
- reward models (`judge.reward_models`): kind=reward_model, score = the reward;
- pairwise LLM judges (`judge.pairwise_templates`): every pair of non-empty candidates of a prompt
  judged in both orders (judges/pairwise.py), candidate_id "x|y", score = P(x better),
  `position_consistent` set, kind=pairwise.
Unscoreable outputs are ok=false with the raw output kept, never a default score; empty
candidates are not sent to any judge (ok=false, reason in `raw`). A judge whose model also
generated the candidates is flagged for self-preference in the meta.
"""

from __future__ import annotations

import json
import time
from itertools import combinations

import pyarrow as pa

from judges.absolute import ScoreTokenJudge, explain
from judges.pairwise import PairwiseJudge
from judges.reward_model import RewardModelJudge
from pipeline import schemas
from pipeline.backends.hf import load_causal_lm
from pipeline.config import RunConfig, fingerprint
from pipeline.funnel import step
from pipeline.models import resolve
from pipeline.progress import bar
from pipeline.store import StageStore, done_rows, run_in_parts

VERSION = "4"
READS = ("prompts.messages", "candidates.prompt_id", "candidates.candidate_id", "candidates.text")
WRITES = tuple(schemas.JUDGMENTS.names)
EMPTY = json.dumps({"error": "empty response, not judged"})


def _row(pid, cid, judge, score, ok, raw, consistent=None, rationale=None) -> dict:
    return {"prompt_id": pid, "candidate_id": cid, "judge": judge.id, "kind": judge.kind, "aspect": judge.aspect,
            "score": score, "rationale": rationale, "raw": raw, "ok": ok, "position_consistent": consistent}


def judge_candidates(prompts: pa.Table, candidates: pa.Table, judges: list, progress=None, *,
                     explainer=None, rationale_tokens: int = 32) -> pa.Table:
    """Pure core over tables: the judgments of every judge, judge by judge, in candidate order.
    With `explainer` (a generation backend on the judge model) absolute judgments get rationales."""
    conversations = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    references = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("reference").to_pylist()))
    cands = candidates.select(["prompt_id", "candidate_id", "text"]).to_pylist()
    scoreable = [c for c in cands if c["text"].strip()]
    rows = []
    for judge in judges:
        if judge.kind == "pairwise":
            pairs = [(x, y) for pid in dict.fromkeys(c["prompt_id"] for c in scoreable)
                     for x, y in combinations([c for c in scoreable if c["prompt_id"] == pid], 2)]
            verdicts = judge.judge([(conversations[x["prompt_id"]], x["text"], y["text"]) for x, y in pairs])
            rows += [_row(x["prompt_id"], f"{x['candidate_id']}|{y['candidate_id']}", judge, v.p_first_wins, v.ok, v.raw,
                          v.position_consistent) for (x, y), v in zip(pairs, verdicts)]
        else:
            items = [(conversations[c["prompt_id"]], c["text"]) for c in scoreable]
            refs = [references[c["prompt_id"]] for c in scoreable]
            scored = judge.score(items, references=refs)
            reasons = (explain(judge, items, scored, explainer, max_new_tokens=rationale_tokens, references=refs)
                       if explainer is not None and judge.kind == "absolute" else [None] * len(scored))
            by_id = {c["candidate_id"]: (j, why) for c, j, why in zip(scoreable, scored, reasons)}
            for c in cands:
                j, why = by_id.get(c["candidate_id"], (None, None))
                rows.append(_row(c["prompt_id"], c["candidate_id"], judge, j.score if j else None, bool(j and j.ok),
                                 j.raw if j else EMPTY, rationale=why))
        if progress is not None:
            progress(len(cands))
    return schemas.from_rows(rows, "judgments")


def judge_generator(cfg: RunConfig, batch_size: int):
    """A generation backend on the judge model (judgment and pair rationales), on judge.backend."""
    if cfg.judge.backend == "vllm":
        from pipeline.backends.vllm_backend import shared

        return shared(cfg.judge_model, dtype=cfg.generate.dtype, engine=cfg.generate.vllm.model_dump(), field="judge.model")
    from pipeline.backends.hf import TransformersBackend

    return TransformersBackend(cfg.judge_model, dtype=cfg.generate.dtype, batch_size=batch_size, field="judge.model")


def build_judges(cfg: RunConfig) -> list:
    j = cfg.judge
    judges: list = [RewardModelJudge(ref, batch_size=j.batch_size, max_input_tokens=j.max_input_tokens) for ref in j.reward_models]
    if j.templates or j.pairwise_templates:
        if j.backend == "vllm":  # the engine scores: judges/absolute.py next_token_logprobs
            engine = judge_generator(cfg, j.batch_size)
            model, tokenizer, label = engine, engine.tokenizer, engine.label
        else:
            model, tokenizer, label = load_causal_lm(cfg.judge_model, cfg.generate.dtype, "judge.model")
        common = dict(min_mass=j.min_score_mass, max_input_tokens=j.max_input_tokens, batch_size=j.batch_size)
        judges = [ScoreTokenJudge(model, tokenizer, label, template_id=t, **common) for t in j.templates] + judges
        judges += [PairwiseJudge(model, tokenizer, label, template_id=t, **common) for t in j.pairwise_templates]
    return judges


def judge_funnel(n_candidates: int, judgments: pa.Table) -> list[dict]:
    """candidates -> judgments (one per candidate or candidate pair and judge) -> ok judgments."""
    failed = judgments.num_rows - sum(judgments.column("ok").to_pylist())
    return [step("judge", "judgments", n_candidates, judgments.num_rows, "each candidate scored by every absolute "
                 "judge and reward model, each candidate pair by every pairwise judge", unit="judgments",
                 unit_in="candidates"),
            step("judge", "judge_failed", judgments.num_rows, judgments.num_rows - failed,
                 "judgment not scoreable (ok=false)", unit="judgments")]


def stage_fingerprint(cfg: RunConfig, candidates_fp: str) -> str:
    revisions = [resolve(cfg.judge_model, field="judge.model").revision]
    revisions += [resolve(r, field="judge.reward_models").revision for r in cfg.judge.reward_models]
    return fingerprint("judge", VERSION, cfg.stage_fields("judge"), candidates_fp, revisions)


def run(run_dir, cfg: RunConfig, candidates_fp: str, *, log=print, shard: tuple[int, int] | None = None) -> dict:
    """Run, resume or skip the stage; `shard=(i, k)`: only that shard's chunks, nothing committed."""
    store = StageStore(run_dir, "judge", "judgments", stage_fingerprint(cfg, candidates_fp))
    if (meta := store.reuse(log)) is not None:
        return meta
    prompts = schemas.read_table(f"{run_dir}/tables/prompts.parquet", "prompts")
    candidates = schemas.read_table(f"{run_dir}/tables/generate.parquet", "candidates")
    started = time.perf_counter()
    n_judges = len(cfg.judge.templates) + len(cfg.judge.pairwise_templates) + len(cfg.judge.reward_models)
    with bar(total=candidates.num_rows * n_judges, desc="judge", unit="cand",
             initial=n_judges * done_rows(store, candidates)) as pbar:
        def make_work():  # judge models load only when a chunk is left to do
            judges = build_judges(cfg)
            explainer = judge_generator(cfg, cfg.judge.batch_size) if cfg.judge.rationales and cfg.judge.templates else None
            return lambda subset: (judge_candidates(prompts, subset, judges, progress=pbar.advance, explainer=explainer,
                                                    rationale_tokens=cfg.judge.rationale_tokens), {})
        parts = run_in_parts(store, candidates, cfg.publish.chunk_prompts, make_work, log, shard=shard)
    if shard is not None:
        return store.shard_meta(shard)
    table = schemas.concat([t for t, _ in parts], "judgments")
    failed = table.num_rows - sum(table.column("ok").to_pylist())
    kinds = dict(zip(table.column("judge").to_pylist(), table.column("kind").to_pylist()))  # in judge order
    judge_ids = list(kinds)  # read off the table: a gathering call loads no judge
    same_model = resolve(cfg.judge_model).path == resolve(cfg.generate.model).path
    self_pref = [j for j, kind in kinds.items() if kind != "reward_model"] if same_model else []
    meta = {"seconds": round(time.perf_counter() - started, 2), "judges": judge_ids,
            "judge": judge_ids[0] if judge_ids else None, "failure_rate": round(failed / max(table.num_rows, 1), 4),
            "self_preference": self_pref,
            "funnel": judge_funnel(candidates.num_rows, table)}
    log(f"judge: {table.num_rows} judgments from {len(judge_ids)} judge(s), {failed} not ok")
    return store.finish(table, meta)
