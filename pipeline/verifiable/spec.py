"""The `verify` field of a prompt: a machine-checkable spec the verifier judge (judges/verifier.py) checks
a candidate against. Four kinds:

  {"kind": "numeric", "answer": 42.5, "abs_tol": 1e-6, "rel_tol": 0}   the last number of the extracted answer
  {"kind": "exact", "answer": "2024-03-15"}                            the extracted answer, case and spaces aside
  {"kind": "tests", "entry_point": "f", "tests": "assert f(2) == 4"}   the response's python code run with the tests
  {"kind": "constraints", "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]}
                                    IFEval-style instructions (judges/constraints.py), each checked by program

Tests are `assert <call> == <literal>` statements (judges/verifier.py splits them: the calls run in the sandbox,
the literals stay with the judge); other forms are refused when the prompts load.
Optional keys: `family` (a label, e.g. the generator's family), `timeout_s` for tests. Specs are
stored as canonical JSON in the prompts table's `verify` column.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from judges import constraints
from judges.verifier import split_tests
from pipeline.errors import InputError

VERIFY_KEYS = {
    "numeric": {"answer": (int, float)},
    "exact": {"answer": str},
    "tests": {"tests": str, "entry_point": str},
    "constraints": {"constraints": list},
}


def verify_spec(spec: Any, where: str) -> str | None:
    """A row's `verify` as canonical JSON, or None; InputError naming the field when it is malformed."""
    if spec is None:
        return None
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            raise InputError(f"{where}: 'verify' is not JSON; fix: give an object such as "
                             '{"kind": "numeric", "answer": 42}') from None
    if not isinstance(spec, dict) or spec.get("kind") not in VERIFY_KEYS:
        raise InputError(
            f"{where}: 'verify' must be an object whose 'kind' is one of {sorted(VERIFY_KEYS)} (got "
            f"{str(spec)[:60]!r}); fix: e.g. {{\"kind\": \"numeric\", \"answer\": 42}}"
        )
    for key, types in VERIFY_KEYS[spec["kind"]].items():
        value = spec.get(key)
        if not isinstance(value, types) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
            raise InputError(
                f"{where}: verify.{key} is {str(value)[:60]!r}; fix: a {spec['kind']} spec needs "
                f"'{key}' ({' or '.join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))})"
            )
    if spec["kind"] == "constraints":
        try:
            constraints.validate(spec["constraints"])
        except ValueError as exc:
            raise InputError(f"{where}: verify.constraints: {exc}") from None
    if spec["kind"] == "tests":  # split here as the verifier will: calls into its sandbox, expected values kept out
        try:
            split_tests(spec["tests"])
        except SyntaxError as exc:
            raise InputError(f"{where}: verify.tests do not parse ({exc.msg}, line {exc.lineno}); fix: python "
                             "statements, one `assert f(...) == value` per line") from None
        except ValueError as exc:
            raise InputError(f"{where}: verify.tests: {exc}") from None
    for key in ("abs_tol", "rel_tol", "timeout_s"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
            raise InputError(f"{where}: verify.{key} is {value!r}; fix: a number >= 0 or drop it")
    return json.dumps(spec, sort_keys=True)


def wants_verifier(mode: str, prompts: pa.Table) -> bool:
    """judge.verifiers: 'on', or 'auto' when any prompt has a `verify` spec."""
    return mode == "on" or (mode == "auto" and prompts.column("verify").null_count < prompts.num_rows)


def verifier_rows(judge, prompts: pa.Table, cands: list[dict]) -> list[dict]:
    """Judgments of the verifier judge, one per candidate: score 1.0 (passes its prompt's spec) or 0.0, ok=false
    when it cannot check (no spec, no answer found); `raw` holds the verdict and the reason."""
    wanted = {c["prompt_id"] for c in cands}
    specs = {p: json.loads(v) if v else None
             for p, v in zip(prompts.column("prompt_id").to_pylist(), prompts.column("verify").to_pylist())
             if p in wanted}  # each spec parsed once, for the prompts of this chunk only
    found = judge.verify([specs[c["prompt_id"]] for c in cands], [c["text"] for c in cands])
    return [
        {
            "prompt_id": c["prompt_id"],
            "candidate_id": c["candidate_id"],
            "judge": judge.id,
            "kind": judge.kind,
            "aspect": judge.aspect,
            "score": None if v.passed is None else (v.score if v.score is not None else float(v.passed)),
            "rationale": None,
            "raw": json.dumps({"verdict": v.passed, "reason": v.reason, **({"constraints": list(v.details)}
                                                                          if v.details else {})}),
            "ok": v.passed is not None,
            "position_consistent": None,
            "score_mode": None,
        }
        for c, v in zip(cands, found)
    ]
