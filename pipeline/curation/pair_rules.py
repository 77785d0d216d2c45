"""What makes a pair admissible: the near-identity measure between two answers, and the invariants
every published pairs table holds (checked by the pair stage and again by publish)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.errors import SchemaError


def _shingles(text: str, n: int = 5) -> set[str]:
    t = " ".join(text.lower().split())
    return {t[i : i + n] for i in range(max(1, len(t) - n + 1))}


def similarity(a: str, b: str) -> float:
    """Character 5-gram Jaccard similarity (1.0 for texts equal up to case and whitespace)."""
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def check_pairs(table: pa.Table) -> None:
    """The invariants every published pairs table holds; raise SchemaError on the first broken one.
    Judge-ranked pairs have chosen_score > rejected_score; pairs labelled by construction do not
    need to: self-critique (revision chosen; the reward model's view is in label_confidence), the
    low-goal rows of reward-augmented pairs (chosen matches the stated lower score), verified pairs
    (chosen passes its prompt's check) and pairs a human reviewer flipped (pair_strategy `review_flip:...`)."""
    df = pl.from_arrow(
        table.select(["prompt_id", "chosen_id", "rejected_id", "chosen_score", "rejected_score", "pair_strategy"])
    )
    by_construction = (
        pl.col("pair_strategy").str.starts_with("self_critique:")
        | pl.col("pair_strategy").str.starts_with("reward_augmented:low:")
        | pl.col("pair_strategy").str.starts_with("review_flip:")
        | (pl.col("pair_strategy") == "verified")
    )
    bad = df.filter(
        ((pl.col("chosen_score") <= pl.col("rejected_score")) & ~by_construction)
        | (pl.col("chosen_id") == pl.col("rejected_id"))
    )
    if bad.height:
        raise SchemaError(
            "pairs table breaks chosen_score > rejected_score / chosen != rejected for prompt_id "
            f"{bad['prompt_id'][0]}"
        )
    dup = df.filter(df.select(["prompt_id", "chosen_id", "rejected_id", "pair_strategy"]).is_duplicated())
    if dup.height:
        raise SchemaError(
            f"pairs table holds the pair ({dup['chosen_id'][0]}, {dup['rejected_id'][0]}) more than once"
        )
    chosen = [m[0]["content"] for m in table.column("chosen").to_pylist()]
    rejected = [m[0]["content"] for m in table.column("rejected").to_pylist()]
    if any(c.strip() == r.strip() for c, r in zip(chosen, rejected)):
        raise SchemaError("pairs table has a row whose chosen text equals its rejected text")
