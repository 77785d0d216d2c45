"""Label quality against the verifier (pipeline/label_quality.py), on a judgments table written by hand."""

from __future__ import annotations

import json

import pytest

from pipeline import schemas
from pipeline.label_quality import ENSEMBLE, bootstrap_accuracy, label_quality, verified_pairs


def _row(pid, cid, judge, kind, score, ok=True, consistent=None):
    return {"prompt_id": pid, "candidate_id": cid, "judge": judge, "kind": kind, "aspect": "x", "score": score,
            "rationale": None, "raw": json.dumps({}), "ok": ok, "position_consistent": consistent, "score_mode": None}


def _judgments():
    verdict = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 0.0, "f": 1.0, "g": 1.0}
    pid = {"a": "p1", "b": "p1", "c": "p1", "d": "p2", "e": "p2", "f": "p3", "g": "p3", "h": "p2"}
    rows = [_row(pid[c], c, "verifier-v1", "verifier", v) for c, v in verdict.items()]
    rows.append(_row("p2", "h", "verifier-v1", "verifier", None, ok=False))  # not checkable: in no pair
    absolute = {"a": 5.0, "b": 1.0, "c": 5.0, "d": 2.0, "e": 4.0, "f": 3.0, "g": 1.0, "h": 5.0}
    rows += [_row(pid[c], c, "J1", "absolute", s) for c, s in absolute.items()]
    rows += [
        _row("p1", "a|b", "P", "pairwise", 0.8, consistent=True),  # prefers a (passes): right
        _row("p1", "c|a", "P", "pairwise", 0.9, consistent=True),  # prefers c (fails): wrong
    ]  # P never judged d vs e: that pair is not in P's count
    return schemas.from_rows(rows, "judgments")


def test_verified_pairs_are_pass_fail_pairs_of_one_prompt():
    assert sorted(verified_pairs(_judgments()).values()) == [("a", "b"), ("a", "c"), ("d", "e")]


def test_accuracy_per_judge_family_and_ensemble_matches_a_hand_count():
    ensemble = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 1.0, "e": 1.0}
    q = label_quality(_judgments(), ensemble, {"p1": "arithmetic", "p2": "date", "p3": "date"}, seed=0)
    got = {(r["judge"], r["category"]): (r["pairs"], r["accuracy"]) for r in q["table"]}
    # J1: a>b right (1), a vs c tie (0.5), d<e wrong (0); P: a|b right, c|a wrong; ensemble: 1, 1, tie
    assert got[("J1", "all")] == (3, 0.5) and got[("J1", "arithmetic")] == (2, 0.75) and got[("J1", "date")] == (1, 0.0)
    assert got[("P", "all")] == (2, 0.5) and ("P", "date") not in got
    assert got[(ENSEMBLE, "all")] == (3, round(2.5 / 3, 4))
    assert ("verifier-v1", "all") not in got  # the verifier is the ground truth, not a judge under test
    assert (q["verified_candidates"], q["passed"], q["verified_pairs"], q["prompts_with_pairs"]) == (7, 4, 3, 2)
    for r in q["table"]:
        assert r["low"] <= r["accuracy"] <= r["high"]


def test_no_verifier_means_no_report():
    rows = [_row("p1", "a", "J1", "absolute", 1.0), _row("p1", "b", "J1", "absolute", 2.0)]
    assert label_quality(schemas.from_rows(rows, "judgments"), {}, {}, seed=0) is None


def test_bootstrap_resamples_prompts_and_is_seeded():
    credits = {"p1": [1.0, 1.0, 1.0, 1.0], "p2": [0.0], "p3": [1.0, 0.0]}
    acc, low, high = bootstrap_accuracy(credits, seed=3)
    assert acc == pytest.approx(5 / 7) and (acc, low, high) == bootstrap_accuracy(credits, seed=3)
    # with p1 drawn every time the accuracy is 1, with p2 every time 0: both ends are reachable
    assert 0.0 <= low < acc < high <= 1.0
    assert bootstrap_accuracy({"p": [1.0, 0.0]}, seed=0) == (0.5, 0.5, 0.5)  # one prompt: nothing to resample
