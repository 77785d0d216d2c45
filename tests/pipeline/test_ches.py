"""CHES against an independent, straightforward one-example-at-a-time implementation."""

import pyarrow as pa
import pytest
import torch

from pipeline.config import CHESConfig, load_config
from pipeline.core import schemas
from pipeline.core.encoding import encode_pair
from pipeline.errors import ConfigError
from pipeline.stages.ches import apply_filter, score_pairs


def pairs_table(items):
    rows = []
    for k, (prompt, chosen, rejected) in enumerate(items):
        rows.append({"prompt": [{"role": "user", "content": prompt}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "prompt_id": f"p{k}", "chosen_id": f"p{k}-0", "rejected_id": f"p{k}-1", "chosen_score": 2.0,
                     "rejected_score": 1.0, "margin": 1.0, "pair_strategy": "best_vs_worst",
                     "chosen_len": 1, "rejected_len": 1})
    return schemas.from_rows(rows, "pairs")


@torch.inference_mode()
def reference(model, tokenizer, prompt, response):
    """Plain single-sequence computation: full forward, hidden_states[-1], full-vocab log_softmax."""
    p_ids, r_ids = encode_pair(tokenizer, prompt, response)
    out = model(torch.tensor([p_ids + r_ids]), output_hidden_states=True)
    P, n = len(p_ids), len(r_ids)
    h = out.hidden_states[-1][0, P - 1 : P + n - 1].double()
    logp = torch.log_softmax(out.logits[0, P - 1 : P + n - 1].double(), -1)
    return h.sum(0), n, float(logp[torch.arange(n), torch.tensor(r_ids)].sum())


MIXED = [
    ("What is 2+2?", "4.", "The answer is four, because two plus two makes four in ordinary arithmetic."),
    ("Name a colour.", "Blue is a calm colour that many people like.", "Red."),
    (
        "Write a haiku about rain on a tin roof at night, please.",
        "Drops drum on the tin / night hums a silver rhythm / sleep comes soft and wet",
        "Rain.",
    ),
    ("Hi", "Hello! How can I help you today?", "Hey."),
]


@pytest.mark.slow
@pytest.mark.parametrize("padding_side,batch_size", [("right", 8), ("left", 8), ("left", 3)])
def test_batched_matches_one_at_a_time(model, padding_side, batch_size):
    m, tok, _ = model
    got = score_pairs(pairs_table(MIXED), m, tok, batch_size=batch_size, padding_side=padding_side).to_pylist()
    for row, (prompt, chosen, rejected) in zip(got, MIXED):
        conv = [{"role": "user", "content": prompt}]
        sp, np_, lp_c = reference(m, tok, conv, chosen)
        sm, nm, lp_r = reference(m, tok, conv, rejected)
        ches = float(sp @ sm - sp @ sp)
        ln = float((sp / np_) @ (sm / nm) - (sp / np_) @ (sp / np_))
        for name, want in (("ches", ches), ("ln_ches", ln), ("ref_chosen_logp", lp_c), ("ref_rejected_logp", lp_r)):
            assert abs(row[name] - want) <= 1e-4 * abs(want), (name, row[name], want)
        assert row["ref_chosen_logp"] < 0 and row["ref_rejected_logp"] < 0


@pytest.mark.slow
def test_a_candidate_in_several_pairs_is_scored_once_with_the_same_result(model):
    """all_above_margin-style pairs (a, b), (a, c), (b, c) of one prompt: three distinct sequences go
    through the model, and every pair's scores equal those of the pair scored on its own."""
    m, tok, _ = model
    prompt, (a, b, c) = "Name a colour.", ("Blue is calm.", "Red.", "Green is the colour of grass.")
    shared = pairs_table([(prompt, a, b), (prompt, a, c), (prompt, b, c)])
    shared = shared.set_column(shared.schema.get_field_index("prompt_id"), "prompt_id", pa.array(["p"] * 3))
    seen = []
    got = score_pairs(shared, m, tok, batch_size=8, progress=lambda n, tokens: seen.append((n, tokens))).to_pylist()
    assert sum(n for n, t in seen if t) == 3 and sum(n for n, _ in seen) == 6  # 3 forwards; the bar still counts 6
    for row, (x, y) in zip(got, ((a, b), (a, c), (b, c))):
        alone = score_pairs(pairs_table([(prompt, x, y)]), m, tok, batch_size=1).to_pylist()[0]
        for name in ("ches", "ln_ches", "ref_chosen_logp", "ref_rejected_logp"):
            assert row[name] == pytest.approx(alone[name], rel=1e-5), name


@pytest.mark.slow
def test_more_similar_responses_have_higher_ches(model):
    """Razin et al.: likelihood displacement is driven by similar chosen/rejected representations."""
    m, tok, _ = model
    chosen = "The capital of France is Paris."
    got = score_pairs(
        pairs_table(
            [
                ("What is the capital of France?", chosen, "The capital of France is Lyon."),
                ("What is the capital of France?", chosen, "Bananas grow in warm tropical climates."),
            ]
        ),
        m,
        tok,
        batch_size=4,
    ).to_pylist()
    assert got[0]["ches"] > got[1]["ches"] and got[0]["ln_ches"] > got[1]["ln_ches"]


def _with_ln(values):
    t = pairs_table([("q", "a", "b")] * len(values))
    return t.set_column(
        t.schema.get_field_index("ln_ches"), schemas.PAIRS.field("ln_ches"), pa.array(values, pa.float64())
    )


def test_quantile_filter_drops_the_top_decile():
    kept, entry = apply_filter(_with_ln([float(i) for i in range(20)]), CHESConfig(filter="quantile", quantile=0.9))
    assert sorted(kept.column("ln_ches").to_pylist()) == [float(i) for i in range(18)]
    assert (entry["rows_in"], entry["rows_out"]) == (20, 18) and abs(entry["cut"] - 17.1) < 1e-9


def test_threshold_and_none_filters():
    kept, entry = apply_filter(_with_ln([-1.0, 0.5, 2.0]), CHESConfig(filter="threshold", threshold=0.5))
    assert kept.column("ln_ches").to_pylist() == [-1.0, 0.5] and "threshold=0.5" in entry["reason"]
    kept, entry = apply_filter(_with_ln([-1.0, 0.5, 2.0]), CHESConfig(filter="none"))
    assert kept.num_rows == 3 and entry["rows_out"] == 3


def test_threshold_filter_needs_a_threshold():
    with pytest.raises(ConfigError, match="curate.ches.threshold is not set"):
        load_config(None, ["curate.ches.filter=threshold"])
