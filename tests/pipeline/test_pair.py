import pyarrow as pa
import pytest

from pipeline import schemas
from pipeline.config import PairConfig
from pipeline.errors import SchemaError
from pipeline.pair import check_pairs, make_pairs


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
    assert funnel_of(funnel) == {"too_few_scored": (5, 4), "identical_texts": (4, 3), "ties": (3, 2),
                                 "min_margin": (2, 1)}


def test_mean_of_ok_judgments_is_the_score():
    p, c, j = build({"a": [("x", 1.0), ("y", 5.0)]})
    extra = schemas.from_rows([{"prompt_id": "a", "candidate_id": "a-00", "judge": "j2", "kind": "absolute",
                                "aspect": "overall", "score": 5.0, "ok": True},
                               {"prompt_id": "a", "candidate_id": "a-01", "judge": "j2", "kind": "absolute",
                                "aspect": "overall", "score": None, "ok": False}], "judgments")
    pairs, _ = make_pairs(p, c, pa.concat_tables([j, extra]), PairConfig(min_margin=0))
    r = pairs.to_pylist()[0]
    assert (r["chosen_id"], r["chosen_score"], r["rejected_score"]) == ("a-00", 3.0, 1.0) or \
        (r["chosen_id"], r["chosen_score"], r["rejected_score"]) == ("a-01", 5.0, 3.0)
    assert r["chosen_score"] == 5.0 and r["rejected_score"] == 3.0


def test_check_pairs_rejects_inverted_scores():
    pairs, _ = make_pairs(*build({"a": [("x", 1.0), ("y", 5.0)]}), PairConfig(min_margin=0))
    bad = pairs.set_column(pairs.schema.get_field_index("rejected_score"), "rejected_score", pa.array([9.0]))
    with pytest.raises(SchemaError, match="chosen_score > rejected_score"):
        check_pairs(bad)
