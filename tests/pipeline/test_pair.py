import pyarrow as pa
import pytest

from pipeline.config import PairConfig
from pipeline.core import schemas
from pipeline.errors import SchemaError
from pipeline.stages.pair import check_pairs, make_pairs


def build(spec):
    """spec: {prompt_id: [(text, score or None for not ok), ...]}"""
    prompts, cands, judgments = [], [], []
    for pid, items in spec.items():
        prompts.append({"prompt_id": pid, "messages": [{"role": "user", "content": f"q {pid}"}]})
        for k, (text, score) in enumerate(items):
            cid = f"{pid}-{k:02d}"
            cands.append({"prompt_id": pid, "candidate_id": cid, "generator": "g", "text": text,
                          "n_tokens": len(text), "finish_reason": "stop"})
            judgments.append({"prompt_id": pid, "candidate_id": cid, "judge": "j", "kind": "absolute",
                              "aspect": "overall", "score": score, "ok": score is not None})
    return (schemas.from_rows(prompts, "prompts"), schemas.from_rows(cands, "candidates"),
            schemas.from_rows(judgments, "judgments"))


def funnel_of(funnel):
    return {f["filter"]: (f["rows_in"], f["rows_out"]) for f in funnel}


def test_best_vs_worst_with_every_drop_reason():
    tables = build({
        "a": [("mid", 3.0), ("best", 4.5), ("worst", 1.0)],
        "b": [("same", 2.0), ("other", 2.0)],              # tie
        "c": [("x", 3.0), ("x ", 1.0)],                     # identical texts after strip
        "d": [("one", 2.0), ("two", 2.01)],                 # below min_margin
        "e": [("only ok", 3.0), ("not ok", None), ("", 5.0)],  # one scoreable candidate left
    })
    pairs, funnel = make_pairs(*tables, PairConfig(min_margin=0.05))
    rows = pairs.to_pylist()
    assert len(rows) == 1
    r = rows[0]
    assert r["chosen"] == [{"role": "assistant", "content": "best"}]
    assert r["rejected"] == [{"role": "assistant", "content": "worst"}]
    assert (r["chosen_id"], r["rejected_id"], r["margin"]) == ("a-01", "a-02", 3.5)
    assert r["prompt"] == [{"role": "user", "content": "q a"}] and r["pair_strategy"] == "best_vs_worst"
    assert (r["chosen_len"], r["rejected_len"]) == (4, 5)
    # prompts, then candidate pairs: a has 3, b/c/d one each; e has a single scoreable candidate
    assert funnel_of(funnel) == {"too_few_scored": (5, 4), "candidate_pairs": (4, 6), "ties": (6, 5),
                                 "near_identical": (5, 4), "min_margin": (4, 3), "strategy": (3, 1)}
    assert [f["unit"] for f in funnel] == ["prompts", "candidate pairs", "candidate pairs", "candidate pairs",
                                           "candidate pairs", "pairs"]
    assert [f.get("unit_in") for f in funnel] == [None, "prompts", None, None, None, "candidate pairs"]


def test_mean_of_ok_judgments_is_the_score():
    p, c, j = build({"a": [("x", 1.0), ("y", 5.0)]})
    extra = schemas.from_rows([{"prompt_id": "a", "candidate_id": "a-00", "judge": "j2", "kind": "absolute",
                                "aspect": "overall", "score": 5.0, "ok": True},
                               {"prompt_id": "a", "candidate_id": "a-01", "judge": "j2", "kind": "absolute",
                                "aspect": "overall", "score": None, "ok": False}], "judgments")
    pairs, _ = make_pairs(p, c, pa.concat_tables([j, extra]), PairConfig(min_margin=0))
    r = pairs.to_pylist()[0]
    # a-00: mean(1, 5) = 3; a-01: mean(5) = 5, its failed judgment not counted (as 0 it would be 2.5)
    assert (r["chosen_id"], r["chosen_score"], r["rejected_id"], r["rejected_score"]) == ("a-01", 5.0, "a-00", 3.0)


def test_check_pairs_rejects_inverted_scores():
    pairs, _ = make_pairs(*build({"a": [("x", 1.0), ("y", 5.0)]}), PairConfig(min_margin=0))
    bad = pairs.set_column(pairs.schema.get_field_index("rejected_score"), "rejected_score", pa.array([9.0]))
    with pytest.raises(SchemaError, match="chosen_score > rejected_score"):
        check_pairs(bad)


FIVE = {"p": [("alpha answer one", 5.0), ("bravo reply two", 4.0), ("charlie text three", 3.0),
              ("delta words four", 2.0), ("echo string five", 1.0)]}


def ids(pairs):
    return sorted((r["chosen_id"], r["rejected_id"]) for r in pairs.to_pylist())


def test_all_above_margin_and_top_k_vs_bottom_k():
    tables = build(FIVE)
    allp, _ = make_pairs(*tables, PairConfig(strategy="all_above_margin", min_margin=1.5))
    assert ids(allp) == [("p-00", "p-02"), ("p-00", "p-03"), ("p-00", "p-04"), ("p-01", "p-03"),
                         ("p-01", "p-04"), ("p-02", "p-04")]
    topk, funnel = make_pairs(*tables, PairConfig(strategy="top_k_vs_bottom_k", k=2, min_margin=0))
    assert ids(topk) == [("p-00", "p-03"), ("p-00", "p-04"), ("p-01", "p-03"), ("p-01", "p-04")]
    assert funnel_of(funnel)["strategy"] == (10, 4)


def test_best_vs_random_is_seeded_and_keeps_the_best_chosen():
    tables = build(FIVE)
    picks = {
        ids(make_pairs(*tables, PairConfig(strategy="best_vs_random", min_margin=0), seed=s)[0])[0] for s in range(12)
    }
    assert {c for c, _ in picks} == {"p-00"} and len({r for _, r in picks}) > 1
    a = make_pairs(*tables, PairConfig(strategy="best_vs_random", min_margin=0), seed=3)[0]
    b = make_pairs(*tables, PairConfig(strategy="best_vs_random", min_margin=0), seed=3)[0]
    assert a.equals(b)


def test_selection_happens_after_filters():
    """The worst candidate is a near-copy of the best: best_vs_worst falls back to the next admissible."""
    tables = build(
        {
            "p": [
                ("The capital of France is Paris.", 5.0),
                ("Lyon, I think.", 3.0),
                ("The capital of France is Paris!", 1.0),
            ]
        }
    )
    pairs, _ = make_pairs(*tables, PairConfig(min_margin=0))
    assert ids(pairs) == [("p-00", "p-01")]


def test_length_ratio_control():
    tables = build({"p": [("a much much longer answer that goes on", 5.0), ("short", 1.0), ("mid length one", 2.0)]})
    pairs, funnel = make_pairs(*tables, PairConfig(min_margin=0, max_length_ratio=3.0))
    assert ids(pairs) == [("p-00", "p-02")]  # 38 chars vs 5 fails the ratio, vs 14 passes
    assert funnel_of(funnel)["length_ratio"] == (3, 2)


def test_ranked_view_lists_every_scored_candidate_best_first():
    from pipeline.stages.pair import ranked_candidates, scored_candidates

    p, c, j = build({"a": [("x", 2.0), ("y", 5.0), ("z", None), ("w", 2.0)], "b": [("q", 1.0), ("r", 3.0)]})
    ranked = ranked_candidates(p, scored_candidates(c, j)).to_pylist()
    assert [r["prompt_id"] for r in ranked] == ["a", "b"]
    assert [(x["candidate_id"], x["score"]) for x in ranked[0]["candidates"]] == [
        ("a-01", 5.0),
        ("a-00", 2.0),
        ("a-03", 2.0),
    ]
    assert ranked[1]["prompt"] == [{"role": "user", "content": "q b"}]


def test_check_pairs_rejects_duplicate_rows():
    pairs, _ = make_pairs(*build({"a": [("x", 1.0), ("y", 5.0)]}), PairConfig(min_margin=0))
    with pytest.raises(SchemaError, match="more than once"):
        check_pairs(pa.concat_tables([pairs, pairs]))


def test_low_agreement_prompts_are_dropped():
    """Two judges agree on prompt 'a' and rank prompt 'b' in opposite orders."""
    p, c, j = build(
        {
            "a": [("x one", 1.0), ("y two", 3.0), ("z three", 5.0)],
            "b": [("u four", 1.0), ("v five", 3.0), ("w six", 5.0)],
        }
    )
    second = {"a-00": 1.2, "a-01": 2.9, "a-02": 4.8, "b-00": 4.0, "b-01": 3.5, "b-02": 1.0}  # b: means 2.5, 3.25, 3
    extra = schemas.from_rows(
        [
            {
                "prompt_id": cid[0],
                "candidate_id": cid,
                "judge": "j2",
                "kind": "absolute",
                "aspect": "overall",
                "score": s,
                "ok": True,
            }
            for cid, s in second.items()
        ],
        "judgments",
    )
    judgments = pa.concat_tables([j, extra])
    pairs, funnel = make_pairs(p, c, judgments, PairConfig(min_margin=0), min_agreement=0.5)
    assert [r["prompt_id"] for r in pairs.to_pylist()] == ["a"]
    assert funnel_of(funnel)["low_agreement"] == (2, 1)
    assert pairs.to_pylist()[0]["judge_agreement"] > 0.9
    kept, _ = make_pairs(p, c, judgments, PairConfig(min_margin=0))
    assert sorted(r["prompt_id"] for r in kept.to_pylist()) == ["a", "b"]
