"""Judge stage: every configured judge scores the candidates (candidates -> judgments).

Reads `prompts.messages`, `candidates.{prompt_id, candidate_id, text}`; writes `judgments`, one
row per (candidate or candidate pair, judge):
- absolute LLM judges (`judge.templates`): score = expectation over the score-token
  probabilities (judges/absolute.py), kind=absolute, aspect from the template;
- reward models (`judge.reward_models`): kind=reward_model, score = the reward;
- pairwise LLM judges (`judge.pairwise_templates`): every pair of non-empty candidates of a prompt
  judged in both orders (judges/pairwise.py), candidate_id "x|y", score = P(x better),
  `position_consistent` set, kind=pairwise.
Each LLM judge runs where its config says (`judge.backend` or its own mapping): in process on
transformers or vLLM, or on an OpenAI-compatible endpoint (judges/served.py: logprobs or sampled
mode, recorded per judgment in `score_mode`); one ensemble may mix them. Requests to endpoints go
through the request log (RUN/requests/judge.jsonl) and the stage's ledger (pipeline/core/accounting.py):
a killed stage resumes without re-sending an answered request, and each part records its tokens.
Unscoreable outputs are ok=false with the raw output kept, never a default score; empty
candidates are not sent to any judge (ok=false, reason in `raw`). A judge whose model also
generated the candidates is flagged for self-preference in the meta.
"""

from __future__ import annotations

import json
from itertools import combinations

import pyarrow as pa
import pyarrow.compute as pc

from judges.absolute import ScoreTokenJudge, explain
from judges.pairwise import PairwiseJudge
from judges.reward_model import reward_judge
from judges.served import Endpoint, ServedPairwiseJudge, ServedScoreJudge
from pipeline.backends import factory
from pipeline.backends.hf import load_causal_lm
from pipeline.backends.model_ref import resolve
from pipeline.backends.openai_backend import endpoint_backend
from pipeline.backends.request_log import RequestLog
from pipeline.config import SCORING_FIELDS, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.rowindex import RowIndex
from pipeline.core.runner import Chunked, Read, Stage, StageRun
from pipeline.curation.aggregate import VERIFIER_KIND
from pipeline.errors import ConfigError, ModelNotFoundError
from pipeline.verifiable.spec import verifier_rows, wants_verifier

VERSION = "4"
EMPTY = json.dumps({"error": "empty response, not judged"})
# verifier options enter the fingerprint only when changed: runs made before the verifier keep theirs
VERIFIER = {"verifiers", "verifier_timeout_s", "verifier_memory_mb"}


def _row(pid, cid, judge, score, ok, raw, consistent=None, rationale=None, mode=None) -> dict:
    return {"prompt_id": pid, "candidate_id": cid, "judge": judge.id, "kind": judge.kind, "aspect": judge.aspect,
            "score": score, "rationale": rationale, "raw": raw, "ok": ok, "position_consistent": consistent,
            "score_mode": mode}


def judge_candidates(prompts: pa.Table, candidates: pa.Table, judges: list, progress=None, *,
                     explainer=None, rationale_tokens: int = 32) -> pa.Table:
    """Pure core over tables: the judgments of every judge, judge by judge, in candidate order. `prompts` needs
    only the candidates' prompts (the stage passes a chunk's own; its dicts cost the chunk, not the run).
    With `explainer` (a generation backend on the judge model) absolute judgments get rationales."""
    conversations = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    references = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("reference").to_pylist()))
    cands = candidates.select(["prompt_id", "candidate_id", "text"]).to_pylist()
    scoreable = [c for c in cands if c["text"].strip()]
    rows = []
    for judge in judges:
        if judge.kind == VERIFIER_KIND:  # every candidate against its prompt's spec; not counted in the progress bar
            rows += verifier_rows(judge, prompts, cands)
            continue
        if judge.kind == "pairwise":
            by_pid: dict[str, list[dict]] = {}
            for c in scoreable:
                by_pid.setdefault(c["prompt_id"], []).append(c)
            pairs = [(x, y) for group in by_pid.values() for x, y in combinations(group, 2)]
            verdicts = judge.judge([(conversations[x["prompt_id"]], x["text"], y["text"]) for x, y in pairs])
            rows += [
                _row(
                    x["prompt_id"],
                    f"{x['candidate_id']}|{y['candidate_id']}",
                    judge,
                    v.p_first_wins,
                    v.ok,
                    v.raw,
                    v.position_consistent,
                    mode=v.mode,
                )
                for (x, y), v in zip(pairs, verdicts)
            ]
        else:
            items = [(conversations[c["prompt_id"]], c["text"]) for c in scoreable]
            refs = [references[c["prompt_id"]] for c in scoreable]
            scored = judge.score(items, references=refs)
            reasons = (
                explain(judge, items, scored, explainer, max_new_tokens=rationale_tokens, references=refs)
                if explainer is not None and judge.kind == "absolute"
                else [None] * len(scored)
            )
            by_id = {c["candidate_id"]: (j, why) for c, j, why in zip(scoreable, scored, reasons)}
            for c in cands:
                j, why = by_id.get(c["candidate_id"], (None, None))
                rows.append(
                    _row(
                        c["prompt_id"],
                        c["candidate_id"],
                        judge,
                        j.score if j else None,
                        bool(j and j.ok),
                        j.raw if j else EMPTY,
                        rationale=why,
                        mode=j.mode if j else None,
                    )
                )
        if progress is not None:
            progress(len(cands))
    return schemas.from_rows(rows, "judgments")


def build_judges(cfg: RunConfig, *, log: RequestLog | None = None, meter=None, batch_dir=None) -> list:
    """Every judge of the ensemble: absolute LLM judges, reward models, pairwise LLM judges, in config order.
    In-process models and endpoints are shared between judges that name the same one."""
    j = cfg.judge
    common = dict(min_mass=j.min_score_mass, max_input_tokens=j.max_input_tokens)
    models: dict[tuple, tuple] = {}
    endpoints: dict[tuple, Endpoint] = {}

    def in_process(ref: str, backend: str):
        if (ref, backend) not in models:
            if backend == "vllm":  # the engine scores: judges/absolute.py next_token_logprobs
                from pipeline.backends.vllm_backend import shared

                engine = shared(
                    ref, dtype=cfg.generate.dtype, engine=cfg.generate.vllm.model_dump(), field="judge.model"
                )
                models[(ref, backend)] = (engine, engine.tokenizer, engine.label)
            else:
                models[(ref, backend)] = load_causal_lm(ref, cfg.generate.dtype, "judge.model")
        return models[(ref, backend)]

    def endpoint(ref: str, opts, field: str) -> Endpoint:
        key = (ref, opts.base_url, opts.served_model)
        if key not in endpoints:
            backend = endpoint_backend(ref, opts, field=field, meter=meter, batch_dir=batch_dir)
            endpoints[key] = Endpoint(
                backend,
                log,
                score_mode=j.score_mode,
                samples=j.samples,
                temperature=j.sample_temperature,
                max_tokens=j.sample_max_tokens,
                top_logprobs=j.top_logprobs,
            )
        return endpoints[key]

    llm = {"absolute": [], "pairwise": []}
    for kind, spec in cfg.llm_judge_specs():
        if spec.backend == "openai":
            ep = endpoint(spec.model, spec.openai, "judge.openai")
            cls = ServedScoreJudge if kind == "absolute" else ServedPairwiseJudge
            llm[kind].append(
                cls(ep, ep.backend.label, template_id=spec.template, tokenizer=ep.backend.tokenizer, **common)
            )
        else:
            model, tokenizer, label = in_process(spec.model, spec.backend)
            cls = ScoreTokenJudge if kind == "absolute" else PairwiseJudge
            llm[kind].append(
                cls(model, tokenizer, label, template_id=spec.template, batch_size=j.batch_size, **common)
            )
    rewards = [reward_judge(spec, cfg, log=log, meter=meter) for spec in cfg.reward_model_specs()]
    judges = llm["absolute"] + rewards + llm["pairwise"]
    ids = [x.id for x in judges]
    if len(set(ids)) < len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(
            f"judge.templates: judges {twice} would share one id (same model and template); fix: list "
            "each (model, template) once"
        )
    return judges


def judge_funnel(n_candidates: int, judgments: pa.Table) -> list[dict]:
    """candidates -> judgments (one per candidate or candidate pair and judge) -> ok judgments."""
    failed = judgments.num_rows - sum(judgments.column("ok").to_pylist())
    return [
        step(
            "judge",
            "judgments",
            n_candidates,
            judgments.num_rows,
            "each candidate scored by every absolute judge and reward model (and checked by the verifier when "
            "prompts carry verify specs), each candidate pair by every pairwise judge",
            unit="judgments",
            unit_in="candidates",
        ),
        step(
            "judge",
            "judge_failed",
            judgments.num_rows,
            judgments.num_rows - failed,
            "judgment not scoreable (ok=false; for the verifier: an answer it cannot check)",
            unit="judgments",
        ),
    ]


def model_revision(ref: str, backend: str, field: str) -> str:
    """A judge model's revision; a model known only to its server (a hosted name) is 'served'."""
    try:
        return resolve(ref, field=field).revision
    except ModelNotFoundError:
        if backend == "openai":
            return "served"
        raise


def backend_field(cfg: RunConfig) -> dict:
    """vLLM's numerics differ from transformers'; the default is left out so older runs keep their fingerprints."""
    return {} if cfg.judge.backend == "transformers" else {"backend": cfg.judge.backend}


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output."""
    j = cfg.judge
    out = j.fingerprinted(exclude={"model", "aggregate", "min_agreement", "backend", *SCORING_FIELDS, *VERIFIER})
    # judges given as mappings count without their endpoint (operational); scoring options of served judges
    # count only when changed, so runs made before they existed keep their fingerprints
    for name in ("templates", "pairwise_templates", "reward_models"):
        out[name] = [
            t if isinstance(t, str) else t.fingerprinted(exclude_none=True) for t in getattr(j, name)
        ]
    return {
        "model": cfg.judge_model,
        **backend_field(cfg),
        **out,
        **j.model_dump(include=SCORING_FIELDS | VERIFIER, exclude_defaults=True),
    }


def judge_revisions(cfg: RunConfig) -> list[str]:
    """The revisions of the judge models (LLM judges, then reward models) that the fingerprint counts."""
    revisions = [model_revision(s.model, s.backend, "judge.model") for _, s in cfg.llm_judge_specs()] or [
        model_revision(cfg.judge_model, cfg.judge.backend, "judge.model")
    ]
    revisions = revisions[:1] if len(set(revisions)) == 1 else revisions  # one judge model: as before mappings existed
    return revisions + [model_revision(r.model, r.backend, "judge.reward_models") for r in cfg.reward_model_specs()]


def stage_fingerprint(cfg: RunConfig, candidates_fp: str) -> str:
    return fingerprint("judge", VERSION, fields(cfg), candidates_fp, judge_revisions(cfg))


def judge_modes(table: pa.Table) -> dict[str, dict]:
    """Per judge: its score_mode(s) over the run and, for sampled judgments, the share of verdicts not parsed."""
    out: dict[str, dict] = {}
    for judge, mode, raw in zip(*(table.column(c).to_pylist() for c in ("judge", "score_mode", "raw"))):
        acc = out.setdefault(judge, {"modes": {}, "samples": 0, "failures": 0})
        acc["modes"][mode or "n/a"] = acc["modes"].get(mode or "n/a", 0) + 1
        if mode == "sampled":
            info = json.loads(raw)
            acc["samples"] += info.get("samples", 0)
            acc["failures"] += info.get("failures", 0)
    return {
        j: {
            "score_mode": "/".join(sorted(a["modes"])),
            "judgments_by_mode": a["modes"],
            "parse_failure_rate": round(a["failures"] / a["samples"], 4) if a["samples"] else None,
        }
        for j, a in out.items()
    }


def _served(cfg: RunConfig) -> bool:
    return (
        any(s.backend == "openai" for _, s in cfg.llm_judge_specs())
        or any(r.backend == "openai" for r in cfg.reward_model_specs())
        or (cfg.judge.rationales and cfg.judge.backend == "openai")
    )


def _n_judges(cfg: RunConfig) -> int:
    return len(cfg.llm_judge_specs()) + len(cfg.judge.reward_models)


def _make_work(run: StageRun):  # judge models load only when a chunk is left to do
    cfg = run.cfg
    judges = build_judges(cfg, **factory.served(run, logged=_served(cfg)))
    explainer = (
        factory.judge_generator(cfg, cfg.judge.batch_size, run=run)
        if cfg.judge.rationales and cfg.judge.templates
        else None
    )
    prompts = run.read("prompts")
    if wants_verifier(cfg.judge.verifiers, prompts):
        from judges.verifier import VerifierJudge

        j = cfg.judge
        judges = [*judges, VerifierJudge(timeout_s=j.verifier_timeout_s, memory_mb=j.verifier_memory_mb)]
    by_prompt = RowIndex(prompts)  # once per stage run: a chunk looks up its own prompts only
    return lambda subset: (
        judge_candidates(
            by_prompt.take(pc.unique(subset.column("prompt_id")).to_pylist()),
            subset,
            judges,
            progress=run.pbar.advance,
            explainer=explainer,
            rationale_tokens=cfg.judge.rationale_tokens,
        ),
        {},
    )


def _one_chunk(cfg: RunConfig) -> bool:
    """Batch mode: one chunk, so each judge's requests for the whole stage make one batch file."""
    return _served(cfg) and batch_mode(cfg)


def _summarise(run: StageRun, table: pa.Table, extras: list[dict]):
    cfg = run.cfg
    failed = table.num_rows - sum(table.column("ok").to_pylist())
    kinds = dict(zip(table.column("judge").to_pylist(), table.column("kind").to_pylist()))  # in judge order
    judge_ids = list(kinds)  # read off the table: a gathering call loads no judge
    same_model = _same_model(cfg.judge_model, cfg.generate.model)
    self_pref = [j for j, kind in kinds.items() if kind not in ("reward_model", VERIFIER_KIND)] if same_model else []
    run.log(f"judge: {table.num_rows} judgments from {len(judge_ids)} judge(s), {failed} not ok")
    return table, {
        "judges": judge_ids,
        "judge": judge_ids[0] if judge_ids else None,
        "failure_rate": round(failed / max(table.num_rows, 1), 4),
        "self_preference": self_pref,
        "modes": judge_modes(table),
        "funnel": judge_funnel(run.read("generate").num_rows, table),
    }


STAGE = Stage(
    name="judge",
    reads=(
        Read("prompts", "prompts", ("prompt_id", "messages", "reference", "verify")),
        Read("generate", "candidates", ("prompt_id", "candidate_id", "text")),
    ),
    writes="judgments",
    after=("generate",),
    fields=fields,
    fingerprint=stage_fingerprint,
    chunked=Chunked(
        rows="generate",
        make_work=_make_work,
        summarise=_summarise,
        unit="cand",
        weight=_n_judges,
        one_chunk=_one_chunk,
        before=factory.opens_request_log(_served),
    ),
    shardable=True,
)
run = STAGE.run


def batch_mode(cfg: RunConfig) -> bool:
    """Whether judge requests go to endpoints as batch files (any LLM judge's endpoint in mode 'batch')."""
    return any(s.backend == "openai" and s.openai.mode == "batch" for _, s in cfg.llm_judge_specs()) or (
        cfg.judge.backend == "openai" and cfg.judge.openai.mode == "batch"
    )


def _same_model(a: str, b: str) -> bool:
    try:
        return resolve(a).path == resolve(b).path
    except ModelNotFoundError:  # a hosted judge model: only its name can be compared
        return a == b
