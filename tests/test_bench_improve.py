"""bench/improve.py's pure parts (no model): the seeded prompt set and its split, pair forming, the bootstrap."""

from __future__ import annotations

import random

import pytest

from bench.improve import bootstrap, cap_pairs, distinct_ngram_ratio, label_agreement, main, make_pairs, score
from judges.constraints import describe, validate
from pipeline.backends.base import Completion
from pipeline.core import schemas
from pipeline.verifiable.instructions import BASE_TASKS, make, task_of


def test_prompts_are_seeded_and_split_by_base_task():
    train, held = make(0)
    assert (train, held) == make(0) and make(1) != (train, held)
    assert not {task_of(r) for r in train} & {task_of(r) for r in held}
    assert len(train) + len(held) == 2 * len(BASE_TASKS)
    ids = [r["prompt_id"] for r in train + held]
    assert len(ids) == len(set(ids))
    for r in train + held:
        cons = r["verify"]["constraints"]
        validate(cons)
        assert r["verify"]["kind"] == "constraints" and 1 <= len(cons) <= 2
        assert r["messages"] == [{"role": "user", "content": f"{task_of(r)} {describe(cons)}"}]
        assert len({c["id"] for c in cons}) == len(cons)


def test_pairs_prefer_more_constraints_passed_and_skip_prompts_without_contrast():
    text = "Describe a sunset. Answer with less than 5 words."
    row = {"prompt_id": "p0", "messages": [{"role": "user", "content": text}],
           "verify": {"kind": "constraints", "constraints": [
               {"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 5}}]}}
    short, long = Completion("Red sky.", 3, "stop"), Completion("The sky turns red and orange tonight.", 9, "stop")
    assert score(row, short.text)["strict"] == 1 and score(row, long.text)["strict"] == 0
    flat = dict(row, prompt_id="p1")
    pairs, stats = make_pairs([row, flat], [[short, long, long], [long, long]], max_pairs_per_prompt=2,
                              rng=random.Random(0))
    assert stats["with_contrast"] == 1 and stats["none_pass"] == 1
    assert len(pairs) == 2 and all(p["chosen"][0]["content"] == "Red sky." for p in pairs)
    assert {p["rejected_id"] for p in pairs} == {"p0-01", "p0-02"}
    schemas.check(schemas.from_rows(pairs, "pairs"), "pairs")


def test_other_label_sources_pair_by_their_scores_and_report_agreement_with_the_verifier():
    """A label source's scores pick chosen and rejected (here against the verifier), the budget caps every arm at the
    verifier's pair count, and the agreement counts where the verifier stands on each pair."""
    text = "Describe a sunset. Answer with less than 5 words."
    row = {"prompt_id": "p0", "messages": [{"role": "user", "content": text}],
           "verify": {"kind": "constraints", "constraints": [
               {"id": "length_constraints:number_words", "kwargs": {"relation": "less than", "num_words": 5}}]}}
    short, long = Completion("Red sky.", 3, "stop"), Completion("The sky turns red and orange tonight.", 9, "stop")
    longer = Completion("The sky turns red, then orange, then dark blue.", 12, "stop")
    # the "judge" prefers long answers: its chosen answer breaks the constraint
    pairs, stats = make_pairs([row], [[short, long, longer]], max_pairs_per_prompt=2, rng=random.Random(0),
                              scores=[[1.0, 4.0, 5.0]], strategy="judge_best_vs_lower")
    assert stats["pairs"] == 2 and {p["chosen_id"] for p in pairs} == {"p0-02"}
    assert {p["rejected_id"] for p in pairs} == {"p0-00", "p0-01"}
    assert all(p["pair_strategy"] == "judge_best_vs_lower" and p["margin"] > 0 for p in pairs)
    assert label_agreement(pairs) == {"agree": 0.0, "tie": 0.5, "reversed": 0.5}
    # unscored candidates (None) are left out; a prompt with fewer than two scored ones gives no pair
    pairs2, _ = make_pairs([row], [[short, long, longer]], max_pairs_per_prompt=2, rng=random.Random(0),
                           scores=[[None, 4.0, None]])
    assert pairs2 == []
    verifier_pairs, _ = make_pairs([row], [[short, long, longer]], max_pairs_per_prompt=2, rng=random.Random(0))
    assert label_agreement(verifier_pairs) == {"agree": 1.0, "tie": 0.0, "reversed": 0.0}
    assert cap_pairs(pairs, 1, random.Random(0)) in ([pairs[0]], [pairs[1]])
    assert cap_pairs(pairs, 5, random.Random(0)) == pairs and cap_pairs(pairs, None, random.Random(0)) == pairs


def test_paired_bootstrap_interval():
    base = [{m: 0.0 for m in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose", "words", "tokens",
                              "repetitive", "cut")} for _ in range(50)]
    better = [dict(b, prompt_strict=1.0 if i % 2 else 0.0) for i, b in enumerate(base)]
    res = bootstrap(base, better, resamples=2000, seed=0)
    assert res["prompt_strict"]["diff"] == 0.5 and res["prompt_strict"]["excludes_0"]
    assert res["prompt_strict"]["ci95"][0] < 0.5 < res["prompt_strict"]["ci95"][1]
    assert not res["words"]["excludes_0"] and res["words"]["ci95"] == [0.0, 0.0]
    assert res == bootstrap(base, better, resamples=2000, seed=0)


def test_distinct_ngram_ratio_flags_repetition():
    assert distinct_ngram_ratio("Sure, sure, sure, sure, sure, sure, sure, sure") < 0.5
    assert distinct_ngram_ratio("The sky turns red and orange as the sun sets.") == 1.0
    assert distinct_ngram_ratio("Red sky.") == 1.0


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_reduced_benchmark_runs_end_to_end(tmp_path):
    """Tiny sizes, the real parts: prompts, candidates from the bundled model, verifier- and judge-labelled pairs, the
    bundled DPO trainer, held-out evaluation of base and trained, the report and policy folders transformers loads.
    It asserts the pipeline, not the gain."""
    import json

    from transformers import AutoConfig

    out = tmp_path / "improve"
    assert main(["--out", str(out), "--tasks", "6", "--per-task", "2", "--mix", "highlight,placeholder,words_lt_15",
                 "--k", "4", "--max-new-tokens", "24", "--eval-max-new-tokens", "16", "--train-batch", "2",
                 "--eval-samples", "0", "--resamples", "200", "--threads", "1", "--labels", "verifier,judge"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"]["train"] > 0 and report["prompts"]["heldout"] > 0 and report["pairs"]["pairs"] > 0
    greedy = report["eval"]["greedy"]["bootstrap"]["prompt_strict"]
    assert set(greedy) >= {"base", "trained", "diff", "ci95"}
    assert greedy["ci95"][0] <= greedy["diff"] <= greedy["ci95"][1]
    assert AutoConfig.from_pretrained(out / "model").model_type == "llama"
    # the judge arm: the same candidates labelled by the LLM-judge ensemble through the judge stage's core, at most
    # the verifier's number of pairs, its own policy, evaluated against the same base figures
    judge = report["arms"]["judge"]
    assert 0 < judge["pairs"]["pairs"] <= report["pairs"]["pairs"] and judge["pairs"]["judged_share"] > 0.9
    assert sum(judge["pairs"]["agreement_with_verifier"].values()) == pytest.approx(1.0, abs=0.01)
    jb = judge["eval"]["greedy"]["bootstrap"]["prompt_strict"]
    assert jb["base"] == greedy["base"] and AutoConfig.from_pretrained(out / "model-judge").model_type == "llama"
    assert (out / "labels.png").stat().st_size > 0
