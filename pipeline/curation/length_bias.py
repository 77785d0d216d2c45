"""Length-bias report: do judges reward length, and are chosen responses systematically longer?

Judges (human and LLM) are known to prefer longer answers, and DPO then learns length instead of
quality (Park et al. 2024, "Disentangling Length from Quality in DPO"). Reported per run, in the
manifest and card: the Pearson and Spearman correlations of candidate score with token length,
and the distribution of chosen-minus-rejected length over the published pairs.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa


def _round(x) -> float | None:
    return None if x is None or x != x else round(float(x), 4)


def length_bias(scored: pl.DataFrame, pairs: pa.Table) -> dict:
    """`scored` has `score` and `n_tokens` per candidate; `pairs` is the pairs table."""
    corr = {"score_length_pearson": None, "score_length_spearman": None}
    if scored.height >= 3 and scored["n_tokens"].n_unique() > 1 and scored["score"].n_unique() > 1:
        row = scored.select(
            pl.corr("score", "n_tokens", method="pearson").alias("p"),
            pl.corr("score", "n_tokens", method="spearman").alias("s"),
        ).row(0)
        corr = {"score_length_pearson": _round(row[0]), "score_length_spearman": _round(row[1])}
    diff = pl.from_arrow(pairs.select(["chosen_len", "rejected_len"])).select(
        (pl.col("chosen_len").cast(pl.Int64) - pl.col("rejected_len").cast(pl.Int64)).alias("d"))["d"]
    if diff.len() == 0:
        dist = {"mean": None, "median": None, "p10": None, "p90": None}
        longer = None
    else:
        dist = {"mean": _round(diff.mean()), "median": _round(diff.median()),
                "p10": _round(diff.quantile(0.1, "linear")), "p90": _round(diff.quantile(0.9, "linear"))}
        longer = _round((diff > 0).mean())
    return {**corr, "chosen_minus_rejected_len": dist, "chosen_longer_fraction": longer, "n_candidates": scored.height,
            "n_pairs": diff.len()}
