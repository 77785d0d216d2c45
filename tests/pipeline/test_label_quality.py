"""Label quality against the verifier (pipeline/curation/label_quality.py), on a judgments table written by hand."""

from __future__ import annotations

import json

import pytest

from pipeline.core import schemas
from pipeline.curation.label_quality import ENSEMBLE, bootstrap_accuracy, label_quality, verified_pairs


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
    assert got[("J1", "all")] == (3, 0.5) and got[("J1", "arithmetic")] == (2, 0.75)
    assert got[("J1", "date")] == (1, 0.0)
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


def test_verified_strategy_pairs_the_best_passing_with_the_best_failing_answer():
    """Strategy 'verified' orders pairs by the verifier, not the scores: on p2 the judge prefers the failing e."""
    from pipeline.config import PairConfig
    from pipeline.curation.label_quality import verdicts
    from pipeline.stages.pair import pairs_from_scores, scored_candidates

    judgments = _judgments()
    words = {"a": "twelve", "b": "seven apples", "c": "nine pears now", "d": "Friday", "e": "a Monday it is",
             "f": "ok then", "g": "fine, sure", "h": "no idea"}
    pid = {r["candidate_id"]: r["prompt_id"] for r in judgments.to_pylist()}
    candidates = schemas.from_rows(
        [
            {"prompt_id": pid[c], "candidate_id": c, "generator": "g", "text": t, "n_tokens": len(t),
             "finish_reason": "stop"}
            for c, t in words.items()
        ],
        "candidates",
    )
    prompts = schemas.from_rows(
        [{"prompt_id": p, "messages": [{"role": "user", "content": p}]} for p in ("p1", "p2", "p3")], "prompts")
    pairs, funnel = pairs_from_scores(
        prompts, scored_candidates(candidates, judgments, "mean"), {}, PairConfig(strategy="verified"),
        prompt_ids=["p1", "p2", "p3"], passed={c: ok for c, (_, ok) in verdicts(judgments).items()},
    )
    got = sorted(zip(pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist()))
    assert got == [("a", "c"), ("d", "e")]  # p1: a passes, c is the failing answer the judge liked best; p3: no split
    assert set(pairs.column("pair_strategy").to_pylist()) == {"verified"}
    assert dict(zip(pairs.column("chosen_id").to_pylist(), pairs.column("margin").to_pylist()))["d"] == -2.0
    steps = {f["filter"]: (f["rows_in"], f["rows_out"]) for f in funnel}
    # candidate pairs: p1 3 + p2 3 (h is scored by J1) + p3 1 = 7; split by the verifier: a-b, a-c, d-e
    assert steps["not_verified_split"] == (7, 3) and "ties" not in steps and "min_margin" not in steps


def test_a_grown_dataset_reports_label_quality_over_every_increment(tmp_path):
    """publish/incremental.py: the merged manifest's label quality counts the verified pairs of all increments,
    equal to one report over the same judgments (the increments split the prompts)."""
    from pipeline.publish.incremental import _label_quality

    judgments = _judgments()
    ensemble = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 1.0, "e": 1.0, "f": 2.0, "g": 1.0, "h": 0.5}
    categories = {"p1": "arithmetic", "p2": "date", "p3": "date"}
    increments = []
    for i, prompts in enumerate((["p1"], ["p2", "p3"])):
        tables = tmp_path / "increments" / f"{i:05d}" / "tables"
        mine = [r for r in judgments.to_pylist() if r["prompt_id"] in prompts]
        schemas.write_table(schemas.from_rows(mine, "judgments"), tables / "judge.parquet", "judgments")
        scores = [
            {"prompt_id": r["prompt_id"], "candidate_id": r["candidate_id"], "score": ensemble[r["candidate_id"]]}
            for r in mine
            if r["kind"] == "verifier"
        ]
        schemas.write_table(schemas.from_rows(scores, "scores"), tables / "pair.scores.parquet", "scores")
        rows = [{"prompt_id": p, "messages": [{"role": "user", "content": p}], "category": categories[p]}
                for p in prompts]
        schemas.write_table(schemas.from_rows(rows, "prompts"), tables / "prompts.parquet", "prompts")
        increments.append({"dir": f"increments/{i:05d}"})
    grown = _label_quality(tmp_path, increments, seed=0)
    assert grown == label_quality(judgments, ensemble, categories, seed=0)
    assert grown["verified_pairs"] == 3


def test_instruction_constraints_score_by_fraction_pair_by_more_met_and_report_per_type():
    """A `constraints` verify spec (judges/constraints.py): the verifier's row carries each constraint's strict and
    loose verdict in `raw` and scores the fraction met; strategy 'verified' pairs the answer that meets more over
    the one that meets fewer (equal fractions are not paired); passed means all met; the card's per-type rates."""
    from judges.verifier import VerifierJudge
    from pipeline.config import PairConfig
    from pipeline.curation.aggregate import verdicts, verifier_scores
    from pipeline.curation.label_quality import constraint_pass_rates
    from pipeline.publish.card import _constraints_md
    from pipeline.stages.pair import pairs_from_scores, scored_candidates
    from pipeline.verifiable.spec import verifier_rows, verify_spec

    spec = verify_spec({"kind": "constraints", "constraints": [
        {"id": "punctuation:no_comma", "kwargs": {}},
        {"id": "change_case:english_lowercase", "kwargs": {}}]}, "test")
    prompts = schemas.from_rows([{"prompt_id": "p", "messages": [{"role": "user", "content": "say hi"}],
                                  "verify": spec}], "prompts")
    texts = {"all": "hi there friend", "one": "Hi there friend", "one_b": "hi, there friend", "none": "Hi, there"}
    cands = [{"prompt_id": "p", "candidate_id": c, "text": t} for c, t in texts.items()]
    rows = verifier_rows(VerifierJudge(), prompts, cands)
    assert [r["score"] for r in rows] == [1.0, 0.5, 0.5, 0.0] and all(r["ok"] for r in rows)
    assert json.loads(rows[1]["raw"])["constraints"] == [
        {"id": "punctuation:no_comma", "strict": True, "loose": True},
        {"id": "change_case:english_lowercase", "strict": False, "loose": False}]
    judge = {"all": 2.0, "one": 4.0, "one_b": 1.0, "none": 5.0}  # the judge prefers answers that meet fewer
    judgments = schemas.from_rows(rows + [_row("p", c, "J1", "absolute", s) for c, s in judge.items()], "judgments")
    assert {c: ok for c, (_, ok) in verdicts(judgments).items()} == {"all": True, "one": False, "one_b": False,
                                                                      "none": False}
    candidates = schemas.from_rows([{"prompt_id": "p", "candidate_id": c, "generator": "g", "text": t,
                                     "n_tokens": len(t), "finish_reason": "stop"} for c, t in texts.items()],
                                   "candidates")
    pairs, funnel = pairs_from_scores(prompts, scored_candidates(candidates, judgments, "mean"), {},
                                      PairConfig(strategy="verified", max_similarity=1.0), prompt_ids=["p"],
                                      passed={c: s for c, (_, s) in verifier_scores(judgments).items()})
    # split by the verifier: all > one, one_b, none; one > none; one_b > none (one and one_b tie: no pair)
    assert {f["filter"]: f["rows_out"] for f in funnel}["not_verified_split"] == 5
    # kept: the answer meeting the most constraints, against the one the judge likes best among those it beats
    assert list(zip(pairs.column("chosen_id").to_pylist(), pairs.column("rejected_id").to_pylist())) == [
        ("all", "none")]
    assert pairs.column("margin").to_pylist() == [-3.0]
    rates = {r["constraint"]: (r["checked"], r["strict"], r["loose"]) for r in constraint_pass_rates(judgments)}
    assert rates == {"punctuation:no_comma": (4, 2, 2), "change_case:english_lowercase": (4, 2, 2)}
    card = _constraints_md(constraint_pass_rates(judgments))
    assert "| `punctuation:no_comma` | 4 | 0.500 | 0.500 |" in card
