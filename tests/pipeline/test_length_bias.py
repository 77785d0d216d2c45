import polars as pl

from pipeline.core import schemas
from pipeline.curation.length_bias import length_bias


def pairs(lens):
    return schemas.from_rows(
        [
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
                "prompt_id": f"p{i}",
                "chosen_id": "a",
                "rejected_id": "b",
                "chosen_score": 2.0,
                "rejected_score": 1.0,
                "margin": 1.0,
                "pair_strategy": "s",
                "chosen_len": c,
                "rejected_len": r,
            }
            for i, (c, r) in enumerate(lens)
        ],
        "pairs",
    )


def test_monotone_length_reward_is_reported():
    scored = pl.DataFrame({"score": [1.0, 2.0, 3.0, 4.0], "n_tokens": [10, 20, 25, 90]})
    out = length_bias(scored, pairs([(30, 10), (20, 25), (50, 10), (12, 10)]))  # diffs 20, -5, 40, 2
    assert out["score_length_spearman"] == 1.0 and 0.8 < out["score_length_pearson"] < 1.0
    assert out["chosen_minus_rejected_len"] == {"mean": 14.25, "median": 11.0, "p10": -2.9, "p90": 34.0}
    assert out["chosen_longer_fraction"] == 0.75 and out["n_pairs"] == 4


def test_degenerate_inputs_give_nulls_not_errors():
    out = length_bias(pl.DataFrame({"score": [1.0, 1.0, 1.0], "n_tokens": [3, 4, 5]}), pairs([]))
    assert out["score_length_spearman"] is None and out["chosen_longer_fraction"] is None
