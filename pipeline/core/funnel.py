"""The drop funnel: every filter's rows in and out in a stated unit, chained, checked when a manifest is written.

A step is {stage, filter, unit, rows_in, rows_out, reason}, plus `unit_in` where the step turns one
unit into another (prompts -> candidates, prompts -> candidate pairs, candidate pairs -> pairs)
and `adds` where the step brings in the rows another stage produced (self-critique pairs joining
the pair stage). Within a stage, a step's rows_in is the previous step's rows_out, in the unit that
step ended in, so a reader can follow one number from the input rows to the published pairs; the
last step of a run ends at the published pair count. Across stages nothing is chained: the unit
changes there (judgments become scored prompts) and self-critique is a branch that joins through
its `adds` step. (Before, `pair.too_few_scored` restarted from the prompt count before
`pair.low_agreement`, so the same prompts were counted as dropped twice.)

A broken chain is a bug in prefsynth, not in the user's data: `verify` raises FunnelError when
PREFSYNTH_STRICT_FUNNEL=1 (tests/conftest.py sets it) and otherwise logs an error and returns the
problems, which the manifest keeps as `funnel_errors`, so a finished run is not thrown away over
bookkeeping. Manifests written before units existed have steps without `unit`: readers show it blank.

Incremental runs sum each step over increments (`sum_funnels`). Sums of chains are chains when
every increment has the same steps; an increment whose config lacked a step passes its rows
through it unchanged (a disabled source stage such as self-critique contributes zero).
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Iterable

from pipeline.errors import FunnelError

UNITS = ("prompts", "candidates", "judgments", "candidate pairs", "pairs")
STRICT_ENV = "PREFSYNTH_STRICT_FUNNEL"
# A stage missing from one increment passed its upstream stage's output through unchanged; any other
# missing stage (a source such as self_critique that was off) produced nothing.
PASS_THROUGH = {"prompt_filter": "prompts", "ches": "pair"}
# Steps a stage wrote before units existed whose meaning is unchanged: a reused stage meta gets its
# unit here, so an old cached stage does not break a new run's chain.
LEGACY_UNITS = {
    ("prompts", "invalid_rows"): "prompts",
    ("prompts", "duplicate_prompts"): "prompts",
    ("prompts", "limit"): "prompts",
    ("prompt_filter", "decontaminate"): "prompts",
    ("prompt_filter", "near_duplicate"): "prompts",
    ("generate", "context_limit"): "prompts",
    ("generate", "verbalized_unparsed"): "prompts",
    ("judge", "judge_failed"): "judgments",
    ("ches", "ches_quantile"): "pairs",
    ("ches", "ches_threshold"): "pairs",
    ("ches", "ches_none"): "pairs",
}


def step(
    stage: str,
    name: str,
    rows_in: int,
    rows_out: int,
    reason: str,
    *,
    unit: str,
    unit_in: str | None = None,
    adds: str | None = None,
) -> dict:
    """One funnel entry; `unit` counts rows_out (and rows_in unless `unit_in` says otherwise)."""
    for u in (unit, unit_in):
        if u is not None and u not in UNITS:
            raise ValueError(f"funnel step {stage}.{name}: unit {u!r} is not one of {UNITS}")
    entry = {
        "stage": stage,
        "filter": name,
        "unit": unit,
        "rows_in": int(rows_in),
        "rows_out": int(rows_out),
        "reason": reason,
    }
    if unit_in is not None and unit_in != unit:
        entry["unit_in"] = unit_in
    if adds is not None:
        entry["adds"] = adds
    return entry


def unit_label(entry: dict) -> str:
    """'prompts', 'prompts -> candidate pairs', or '' for a step from a manifest older than units."""
    unit = entry.get("unit") or ""
    return f"{entry['unit_in']} -> {unit}" if entry.get("unit_in") else unit


def problems(funnel: list[dict], published: int) -> list[str]:
    """Every place where the funnel does not add up; empty when it chains and ends at `published`."""
    errors: list[str] = []
    last: dict[str, dict] = {}  # stage -> its latest step so far
    for f in funnel:
        name = f"{f['stage']}.{f['filter']}"
        unit, into = f.get("unit"), f.get("unit_in", f.get("unit"))
        if unit not in UNITS:
            errors.append(f"{name} has no unit (got {unit!r}; expected one of {', '.join(UNITS)})")
        if min(f["rows_in"], f["rows_out"]) < 0:
            errors.append(f"{name} counts a negative number of rows ({f['rows_in']} -> {f['rows_out']})")
        prev = last.get(f["stage"])
        if prev is not None:
            before = f"{prev['stage']}.{prev['filter']}"
            if into != prev.get("unit"):
                errors.append(
                    f"{name} starts in {into} but {before} ended in {prev.get('unit')} "
                    "(a step that changes unit must name it in unit_in)"
                )
            elif f["rows_in"] != prev["rows_out"]:
                errors.append(f"{name} starts from {f['rows_in']} {into} but {before} ended at {prev['rows_out']}")
        if f.get("adds"):
            source = last.get(f["adds"])
            brought = source["rows_out"] if source else 0
            if f["rows_out"] - f["rows_in"] != brought:
                errors.append(
                    f"{name} adds {f['rows_out'] - f['rows_in']} {unit} but stage {f['adds']} ended at {brought}"
                )
        last[f["stage"]] = f
    if funnel and funnel[-1]["rows_out"] != published:
        f = funnel[-1]
        errors.append(
            f"the last step {f['stage']}.{f['filter']} ends at {f['rows_out']} but {published} pairs were published"
        )
    return errors


def verify(funnel: list[dict], published: int) -> list[str]:
    """Check the chain when a manifest is written: raise in strict mode (tests), else log an error
    (logger "prefsynth") and return the problems for the manifest."""
    errors = problems(funnel, published)
    if errors:
        message = "the drop funnel does not add up (a prefsynth bug; please report it): " + "; ".join(errors)
        if os.environ.get(STRICT_ENV) == "1":
            raise FunnelError(message)
        logging.getLogger("prefsynth").error(message)
    return errors


def _merged_order(funnels: list[list[dict]], stages: Iterable[str]) -> list[tuple[str, str]]:
    """Every (stage, filter) key of any funnel: stages in pipeline order, and within a stage each
    step that only some funnels have placed after the step it follows there."""
    order: list[tuple[str, str]] = []
    stages = list(stages)
    stages += [s for s in dict.fromkeys(f["stage"] for funnel in funnels for f in funnel) if s not in stages]
    for stage in stages:
        names: list[str] = []
        for funnel in funnels:
            prev = None
            for f in funnel:
                if f["stage"] != stage:
                    continue
                if f["filter"] not in names:
                    names.insert(names.index(prev) + 1 if prev is not None else 0, f["filter"])
                prev = f["filter"]
        order += [(stage, name) for name in names]
    return order


def _counts(funnel: list[dict], order: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(rows_in, rows_out) of every key in `order` for one increment, filling the steps it lacks."""
    have = {(f["stage"], f["filter"]): f for f in funnel}
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for pos, key in enumerate(order):
        if key in have:
            out[key] = (have[key]["rows_in"], have[key]["rows_out"])
            continue
        stage = key[0]
        before = [k for k in out if k[0] == stage]
        after = [k for k in order[pos + 1 :] if k[0] == stage and k in have]
        if before:
            n = out[before[-1]][1]
        elif after:
            n = have[after[0]]["rows_in"]
        elif stage in PASS_THROUGH:
            upstream = [k for k in out if k[0] == PASS_THROUGH[stage]]
            n = out[upstream[-1]][1] if upstream else 0
        else:
            n = 0
        out[key] = (n, n)
    return out


def sum_funnels(funnels: list[list[dict]], stages: Iterable[str]) -> list[dict]:
    """One funnel for several increments: every step's rows summed (see the module docstring);
    `stages` is the pipeline's stage order (publish.STAGES)."""
    order = _merged_order(funnels, stages)
    template = {}
    for funnel in funnels:
        for f in funnel:
            template.setdefault((f["stage"], f["filter"]), f)
    summed = {key: {**copy.deepcopy(template[key]), "rows_in": 0, "rows_out": 0} for key in order}
    for funnel in funnels:
        for key, (rows_in, rows_out) in _counts(funnel, order).items():
            summed[key]["rows_in"] += rows_in
            summed[key]["rows_out"] += rows_out
    return [summed[key] for key in order]


def collect(metas: dict[str, dict], stages: Iterable[str]) -> list[dict]:
    """The run's funnel: each stage's steps, stages in pipeline order (units filled for legacy steps)."""
    out = []
    for s in stages:
        for f in metas[s].get("funnel", []):
            legacy = LEGACY_UNITS.get((f["stage"], f["filter"]))
            out.append({**f, "unit": legacy} if "unit" not in f and legacy else dict(f))
    return out
