"""`prefsynth judge-eval`: the configured judges scored on a user's human-labelled preference pairs.

Why: a judge that disagrees with people on your prompts turns a large run's pairs into noise; a few
hundred labelled pairs check it in minutes first. The judges are a run's own (`judge.*`, built by
pipeline/stages/judge.py `build_judges`), so what is measured is what a run would use.
Input: TRL preference format, jsonl or parquet: `prompt` (text or a message list ending with a user
turn), `chosen` and `rejected` (text or a list with one assistant message), optional `category`, `id`.
- Absolute judges and reward models score chosen and rejected: correct is 1 when score(chosen) >
  score(rejected), 0.5 for a tie (within 1e-9, judges/agreement.py `outcome`), else 0.
- Pairwise judges judge (chosen, rejected) in both orders (judges/pairwise.py): correct from
  P(chosen better) averaged over the orders, as above against 0.5 (an inconsistent pair is not made a
  tie here, unlike a run's pairing); position consistency is the share of judged pairs whose orders agree.
- The ensemble: `judge.aggregate` over the judges it combines (pipeline/curation/aggregate.py), as a run, when
  there are two or more (the means and the median combine absolute judges and reward models only).
A pair with a judgment not ok is `failed`: counted, left out of n and accuracy, never a default score.
Accuracy is the mean of `correct`, overall ('all') and per category, with a 95% BCa bootstrap
interval over the pairs (pipeline/train/metrics.py `bootstrap`: 1000 resamples, seeded by `seed`).
Writes judge_eval.parquet, judge_eval_pairs.parquet (schemas.JUDGE_EVAL*) and judge_eval.md atomically.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from judges.agreement import outcome
from pipeline.config import RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.rundir import check_out_dir
from pipeline.core.store import write_text
from pipeline.curation.aggregate import SCORE_KINDS, candidate_scores
from pipeline.errors import ConfigError, InputError
from pipeline.stages.preflight import check_endpoint, check_model, offline_unless_hub
from pipeline.stages.prompts import ROLES, iter_files
from pipeline.train.metrics import bootstrap

OVERALL = "all"
FORMATS = (".jsonl", ".json", ".ndjson", ".parquet")
WHICH = {"chosen": "preferred", "rejected": "dispreferred"}


@dataclass(frozen=True)
class LabelledPair:
    id: str
    category: str | None
    prompt: list[dict]
    chosen: str
    rejected: str


def _prompt(row: dict, where: str) -> list[dict]:
    value = row.get("prompt")
    if value is None:
        raise InputError(f"{where}: missing 'prompt'; fix: add the prompt as text or a list of {{role, content}}")
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"{where}: 'prompt' is empty; fix: give the prompt's text")
        return [{"role": "user", "content": value}]
    value = value.tolist() if hasattr(value, "tolist") else value
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'prompt' must be text or a non-empty message list; fix: e.g. \"prompt\": \"...\"")
    for k, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                and m["content"].strip()):
            raise InputError(f"{where}: prompt[{k}] is not a message; fix: give {{\"role\": one of {sorted(ROLES)}, "
                             "\"content\": non-empty text}")
    if value[-1]["role"] != "user":
        raise InputError(f"{where}: 'prompt' ends with a {value[-1]['role']!r} turn; fix: end it with the user turn "
                         "that chosen and rejected answer")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _response(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None:
        raise InputError(f"{where}: missing '{field}'; fix: add the {WHICH[field]} response as text or "
                         '[{"role": "assistant", "content": "..."}]')
    value = value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise InputError(f"{where}: '{field}' must be text or a list with one assistant message; fix: "
                             '[{"role": "assistant", "content": "..."}]')
        value = value[0].get("content")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: '{field}' has no text; fix: give the {WHICH[field]} response or drop the row")
    return value


def _pair(row, where: str, default_id: str) -> LabelledPair:
    if not isinstance(row, dict):
        raise InputError(f'{where}: expected an object, got {type(row).__name__}; fix: write each row as '
                         '{"prompt": "...", "chosen": "...", "rejected": "..."}')
    prompt, chosen, rejected = _prompt(row, where), _response(row, "chosen", where), _response(row, "rejected", where)
    if chosen == rejected:
        raise InputError(f"{where}: 'chosen' and 'rejected' are the same text; fix: drop the row (no preference)")
    category = None if row.get("category") is None else str(row["category"])
    if category == OVERALL:
        raise InputError(f"{where}: category {OVERALL!r} names the overall rows of the report; fix: rename it")
    pid = row.get("id")
    return LabelledPair(default_id if pid is None else str(pid), category, prompt, chosen, rejected)


def load_labels(path: str | os.PathLike) -> list[LabelledPair]:
    """Every row of a labelled file, checked; a bad row is an InputError naming the row, the field and the fix."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--labels {path}: {'a folder' if p.is_dir() else 'no such file'}; fix: pass a .jsonl or "
                         ".parquet file of labelled pairs (prompt, chosen, rejected)")
    if p.suffix not in FORMATS:
        raise InputError(f"--labels {path}: unknown format {p.suffix or '(no suffix)'!r}; fix: use .jsonl or .parquet "
                         "in TRL preference format (prompt, chosen, rejected)")
    pairs: list[LabelledPair] = []
    seen: dict[str, str] = {}
    for i, (where, row) in enumerate(iter_files([p])):
        if isinstance(row, InputError):
            raise row
        pair = _pair(row, where, f"row-{i}")
        if pair.id in seen:
            raise InputError(f"{where}: id {pair.id!r} is also the id at {seen[pair.id]}; fix: give each pair its own")
        seen[pair.id] = where
        pairs.append(pair)
    if not pairs:
        raise InputError(f"--labels {path}: no labelled pairs in the file; fix: one row per pair with prompt, chosen "
                         "and rejected")
    return pairs


def _correct(chosen: float, rejected: float) -> float:
    return (outcome(chosen, rejected) + 1) / 2


def _judgment(k: int, side: str, judge, score, ok: bool, consistent=None) -> dict:
    """A judgments-table row (schemas.JUDGMENTS) for curation/aggregate.py: prompt k, candidates k:c and k:r."""
    return {"prompt_id": str(k), "candidate_id": side, "judge": judge.id, "kind": judge.kind, "aspect": judge.aspect,
            "score": score, "ok": ok, "position_consistent": consistent}


def judge_pairs(pairs: list[LabelledPair], judges: list, *, aggregate: str, log=None) -> pa.Table:
    """One judge_eval_pairs row per (pair, judge), judge by judge, plus the ensemble's (two or more judges)."""
    rows, judgments = [], []
    for judge in judges:
        if log is not None:
            log(f"judge-eval: {judge.id} on {len(pairs)} pairs")
        if judge.kind == "pairwise":
            for k, (p, v) in enumerate(zip(pairs, judge.judge([(p.prompt, p.chosen, p.rejected) for p in pairs]))):
                pc = v.p_first_wins if v.ok else None
                rows.append(_row(p, judge.id, judge.kind, pc, None if pc is None else 1 - pc, v.position_consistent))
                judgments.append(_judgment(k, f"{k}:c|{k}:r", judge, pc, v.ok, v.position_consistent))
            continue
        scored = judge.score([(p.prompt, text) for p in pairs for text in (p.chosen, p.rejected)])
        for k, p in enumerate(pairs):
            c, r = scored[2 * k], scored[2 * k + 1]
            rows.append(_row(p, judge.id, judge.kind, c.score if c.ok else None, r.score if r.ok else None))
            judgments += [_judgment(k, f"{k}:c", judge, c.score, c.ok), _judgment(k, f"{k}:r", judge, r.score, r.ok)]
    if len(ensemble_members(judges, aggregate)) > 1:
        table = schemas.from_rows(judgments, "judgments")
        agg = candidate_scores(table, {str(k): [f"{k}:c", f"{k}:r"] for k in range(len(pairs))}, aggregate)
        name = ensemble_id(aggregate)
        rows += [_row(p, name, "ensemble", agg.get(f"{k}:c"), agg.get(f"{k}:r")) for k, p in enumerate(pairs)]
    return schemas.from_rows(rows, "judge_eval_pairs")


def ensemble_id(aggregate: str) -> str:
    return f"ensemble ({aggregate})"


def ensemble_members(judges: list, aggregate: str) -> list:
    """The judges `aggregate` combines: score judges for the means and the median, every judge for the votes."""
    return [j for j in judges if aggregate in ("majority", "bradley_terry") or j.kind in SCORE_KINDS]


def _row(p: LabelledPair, judge: str, kind: str, chosen, rejected, consistent=None) -> dict:
    ok = chosen is not None and rejected is not None
    return {"id": p.id, "category": p.category, "judge": judge, "kind": kind, "score_chosen": chosen,
            "score_rejected": rejected, "correct": _correct(chosen, rejected) if ok else None, "ok": ok,
            "position_consistent": consistent if ok else None}


def summarise(pairs: pa.Table, *, resamples: int = 1000, seed: int = 0) -> pa.Table:
    """judge_eval rows: per judge, overall and per category, accuracy with its bootstrap interval."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    kinds = {}
    for r in pairs.to_pylist():
        kinds[r["judge"]] = r["kind"]
        groups[(r["judge"], OVERALL)].append(r)
        if r["category"] is not None:
            groups[(r["judge"], r["category"])].append(r)
    out = []
    for judge, kind in kinds.items():
        for category in [OVERALL, *sorted({c for j, c in groups if j == judge and c != OVERALL})]:
            rows = groups[(judge, category)]
            judged = [r for r in rows if r["ok"]]
            est = bootstrap([r["correct"] for r in judged], resamples=resamples, seed=seed) if judged else None
            consistency = (sum(bool(r["position_consistent"]) for r in judged) / len(judged)
                           if kind == "pairwise" and judged else None)
            out.append({"judge": judge, "kind": kind, "category": category, "n": len(judged),
                        "accuracy": est and est.value, "low": est and est.lo, "high": est and est.hi,
                        "failed": len(rows) - len(judged), "position_consistency": consistency})
    return schemas.from_rows(out, "judge_eval")


def _judge_refs(cfg: RunConfig) -> dict[str, str]:
    """{config key: model} of the judges that load in this process."""
    refs = {("judge.model" if s.model == cfg.judge_model else
             f"judge.{'templates' if kind == 'absolute' else 'pairwise_templates'}[{s.template}].model"): s.model
            for kind, s in cfg.llm_judge_specs() if s.backend != "openai"}
    refs.update({f"judge.reward_models[{i}]": r.model for i, r in enumerate(cfg.reward_model_specs())
                 if r.backend != "openai"})
    return refs


def _preflight(cfg: RunConfig, out_dir) -> None:
    """The output folder, the judges' models and endpoints, before any model loads."""
    check_out_dir(out_dir)
    refs = _judge_refs(cfg)
    offline_unless_hub(list(refs.values()))
    for key, ref in refs.items():
        check_model(ref, field=key)
    for field, model, opts in cfg.served_models():
        if not field.startswith("judge."):
            continue
        if opts.mode == "batch" or not opts.base_url:
            raise ConfigError(f"{field}: judge-eval sends its requests online to a server; fix: --set "
                              f"{field}.mode=online --set {field}.base_url=http://HOST:8000/v1")
        check_endpoint(opts, field=field, model=model)


def report(summary: pa.Table, *, labels: str, n_pairs: int, judge_fp: str, config: str, aggregate: str, seed: int,
           resamples: int) -> str:
    """judge_eval.md: what was checked, what the numbers mean, a table per judge."""
    rows = summary.to_pylist()
    judges = list(dict.fromkeys((r["judge"], r["kind"]) for r in rows))
    combined = "every judge" if aggregate in ("majority", "bradley_terry") else "the absolute judges and reward models"
    lines = [f"# Judges checked against human labels: {n_pairs} pairs from `{labels}`", "",
             f"Config: `{config}`; judge fingerprint `{judge_fp}` (the judge.* fields and judge model revisions that "
             "a run's judge stage counts, pipeline/stages/judge.py).", "", "| judge | kind | model |", "|---|---|---|"]
    lines += [f"| {j} | {k} | {j.rsplit('#', 1)[0] if k != 'ensemble' else f'judge.aggregate over {combined} above'} |"
              for j, k in judges]
    lines += ["", "## What the numbers mean", "",
              "- **accuracy**: the share of judged pairs where the judge prefers the labelled `chosen`: "
              "score(chosen) > score(rejected) for absolute judges and reward models, P(chosen better) averaged "
              "over both orders > 0.5 for pairwise judges; a tie counts 0.5. 0.5 is chance.",
              f"- **95% interval**: BCa bootstrap over the pairs ({resamples} resamples, seed {seed}). Judges "
              "whose intervals overlap are not told apart by these labels; more pairs narrow it.",
              "- **failed**: pairs the judge could not judge (a judgment not ok: input over judge.max_input_tokens, "
              "too little probability on the answer tokens, an endpoint error); left out of n and accuracy.",
              "- **position consistency** (pairwise judges): the share of judged pairs whose two orders (A/B, B/A) "
              "give the same verdict; low means the verdict follows the position more than the text.", ""]
    for judge, _ in judges:
        lines += [f"## {judge}", "", "| category | n | accuracy | 95% interval | failed | position consistency |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['category']} | {r['n']} | {_num(r['accuracy'])} | {_interval(r)} | {r['failed']} | "
                  f"{_num(r['position_consistency'])} |" for r in rows if r["judge"] == judge]
        lines.append("")
    return "\n".join(lines)


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _interval(r: dict) -> str:
    return "n/a" if r["accuracy"] is None else f"[{r['low']:.3f}, {r['high']:.3f}]"


def summary_text(summary: pa.Table) -> str:
    """The overall row of every judge as a plain-text table (what the CLI prints)."""
    rows = [r for r in summary.to_pylist() if r["category"] == OVERALL]
    head = ("judge", "n", "accuracy", "95% interval", "failed", "pos. consistency")
    body = [(r["judge"], str(r["n"]), _num(r["accuracy"]), _interval(r), str(r["failed"]),
             _num(r["position_consistency"])) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in [head, *body])



def run_judge_eval(cfg: RunConfig, labels: str | os.PathLike, out_dir: str | os.PathLike, *,
                   config_label: str = "defaults", resamples: int = 1000, log=None) -> pa.Table:
    """Check the inputs, score every labelled pair with every configured judge, write the three outputs under
    `out_dir`; returns the judge_eval table."""
    pairs = load_labels(labels)
    _preflight(cfg, out_dir)
    # the judge machinery imports torch: only after the cheap checks, so a bad file fails in a second
    from pipeline.stages.judge import VERSION, build_judges, fields, judge_revisions

    judge_fp = fingerprint("judge", VERSION, fields(cfg), judge_revisions(cfg))
    per_pair = judge_pairs(pairs, build_judges(cfg), aggregate=cfg.judge.aggregate, log=log)
    summary = summarise(per_pair, resamples=resamples, seed=cfg.seed)
    out = Path(out_dir)
    schemas.write_table(per_pair, out / "judge_eval_pairs.parquet", "judge_eval_pairs")
    schemas.write_table(summary, out / "judge_eval.parquet", "judge_eval")
    write_text(out / "judge_eval.md", report(summary, labels=str(labels), n_pairs=len(pairs), judge_fp=judge_fp,
                                              config=config_label, aggregate=cfg.judge.aggregate, seed=cfg.seed,
                                              resamples=resamples))
    return summary
