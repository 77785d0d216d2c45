"""A run over verifiable prompts with the bundled model: the verifier's verdicts, the manifest's and the card's
label-quality table, `inspect`, and pair strategy `verified`, checked against the test's own count.

The prompts are easy sums written here: on the bundled verifiable set (pipeline/verifiable/generator.py) the 135M model
passed 0 of 30 checked candidates in a 10-prompt sample, which leaves no verified pair to count."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import product

import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY, run_cli, write_jsonl

SUMS = [("2 + 2", 4), ("7 + 5", 12), ("10 - 3", 7), ("3 * 3", 9), ("6 + 1", 7), ("9 - 4", 5)]


@pytest.mark.slow
def test_label_quality_and_verified_pairs_match_the_tables(tmp_path):
    rows = [
        {"prompt_id": f"easy-{i}", "prompt": f"What is {q}? Answer with the number.",
         "category": "even" if i % 2 == 0 else "odd", "verify": {"kind": "numeric", "answer": a}}
        for i, (q, a) in enumerate(SUMS)
    ]
    out = tmp_path / "run"
    proc = run_cli(
        "run", "--config", str(TINY), "--out", str(out), "--quiet",
        "--set", f"input.path={write_jsonl(tmp_path / 'sums.jsonl', rows)}", "--set", "input.limit=6",
        "--set", "generate.n=4", "--set", "generate.max_new_tokens=24", "--set", "pair.strategy=verified",
        "--set", "curate.ches.filter=none", "--set", "rationale.enabled=false", timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    judgments = pq.read_table(out / "tables" / "judge.parquet").to_pylist()
    verdict = {r["candidate_id"]: r["score"] == 1.0 for r in judgments if r["kind"] == "verifier" and r["ok"]}
    prompt_of = {r["candidate_id"]: r["prompt_id"] for r in judgments}
    sides = defaultdict(lambda: ([], []))
    for cid, ok in verdict.items():
        sides[prompt_of[cid]][0 if ok else 1].append(cid)
    pairs = [(p, good, bad) for p, (goods, bads) in sides.items() for good, bad in product(goods, bads)]
    assert pairs, "the bundled model solved every sum or none: no verified pair to count"

    def accuracy(score):  # the test's own count: a right preference 1, a tie 1/2, over pairs both sides scored
        credits = [1.0 if score[g] > score[b] else 0.5 if score[g] == score[b] else 0.0
                   for _, g, b in pairs if g in score and b in score]
        return len(credits), round(sum(credits) / len(credits), 4)

    judge = next(r["judge"] for r in judgments if r["kind"] == "absolute")
    absolute = {r["candidate_id"]: r["score"] for r in judgments if r["judge"] == judge and r["ok"]}
    scores = pq.read_table(out / "tables" / "pair.scores.parquet").to_pylist()
    ensemble = {r["candidate_id"]: r["score"] for r in scores}
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["label_quality"]
    table = {(r["judge"], r["category"]): r for r in q["table"]}
    assert (q["verified_candidates"], q["passed"], q["verified_pairs"]) == (len(verdict), sum(verdict.values()),
                                                                           len(pairs))
    for name, scores in ((judge, absolute), ("ensemble", ensemble)):
        row = table[(name, "all")]
        assert (row["pairs"], row["accuracy"]) == accuracy(scores) and row["low"] <= row["accuracy"] <= row["high"]
        card_row = f"| `{name}` | all | {row['pairs']} | {row['prompts']} | {row['accuracy']:.3f} |"
        assert card_row in (out / "README.md").read_text()
    assert (out / "plots" / "label_quality.png").stat().st_size > 1000
    # strategy verified: every published pair's chosen passed and its rejected failed, one pair per split prompt
    published = pq.read_table(next((out / "pairs").glob("*.parquet"))).to_pylist()
    assert published and all(verdict[p["chosen_id"]] and not verdict[p["rejected_id"]] for p in published)
    assert {p["prompt_id"] for p in published} == {p for p, _, _ in pairs}
    assert {p["pair_strategy"] for p in published} == {"verified"}
    shown = run_cli("inspect", str(out), "--sample", "0")
    assert shown.returncode == 0 and f"accuracy on {len(pairs)} verified pairs" in shown.stdout
