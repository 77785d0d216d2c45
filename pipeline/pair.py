"""Pair stage: best-vs-worst preference pairs from judged candidates (-> pairs, no rationale yet).

Reads `prompts.{prompt_id, messages}`, `candidates.{prompt_id, candidate_id, text, n_tokens}`,
`judgments.{candidate_id, score, ok}`; writes the `pairs` table of shared/DESIGN.md.
Rules (DESIGN rule 7): a candidate's score is the mean of its ok judgments; a prompt needs two
scored, non-empty candidates; chosen is the highest score and rejected the lowest (ties broken
by candidate_id, so reruns agree); a pair is dropped when the two texts are identical, when the
margin is 0 (a tie: ties are dropped, not guessed), or when it is below `min_margin`. Every drop
is counted in the funnel with its reason. So every published row has chosen_score > rejected_score
and chosen != rejected.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa

from pipeline import schemas
from pipeline.config import PairConfig, RunConfig, fingerprint
from pipeline.errors import SchemaError
from pipeline.store import StageStore

VERSION = "1"
READS = ("prompts.prompt_id", "prompts.messages", "candidates.text", "candidates.n_tokens",
         "judgments.candidate_id", "judgments.score", "judgments.ok")
WRITES = tuple(schemas.PAIRS.names)


def _step(funnel: list, name: str, before: int, after: int, reason: str) -> None:
    funnel.append({"stage": "pair", "filter": name, "rows_in": before, "rows_out": after, "reason": reason})


def make_pairs(prompts: pa.Table, candidates: pa.Table, judgments: pa.Table, cfg: PairConfig) -> tuple[pa.Table, list[dict]]:
    """Pure core: (pairs table, funnel entries). Counts in the funnel are prompts/pairs."""
    funnel: list[dict] = []
    scores = (
        pl.from_arrow(judgments.select(["candidate_id", "score", "ok"]))
        .filter(pl.col("ok"))
        .group_by("candidate_id")
        .agg(pl.col("score").mean())
    )
    cands = pl.from_arrow(candidates.select(["prompt_id", "candidate_id", "text", "n_tokens"]))
    n_prompts = cands["prompt_id"].n_unique()
    scored = cands.filter(pl.col("text").str.strip_chars() != "").join(scores, on="candidate_id", how="inner")
    counts = scored.group_by("prompt_id").len()
    enough = counts.filter(pl.col("len") >= 2)["prompt_id"]
    scored = scored.filter(pl.col("prompt_id").is_in(enough.implode()))
    _step(funnel, "too_few_scored", n_prompts, len(enough), "fewer than 2 non-empty candidates with an ok judgment")

    ranked = scored.sort(["prompt_id", "score", "candidate_id"], descending=[False, True, False])
    best = ranked.group_by("prompt_id", maintain_order=True).first()
    worst = ranked.group_by("prompt_id", maintain_order=True).last()
    pairs = best.join(worst, on="prompt_id", suffix="_r").with_columns(
        (pl.col("score") - pl.col("score_r")).alias("margin")
    )
    before = pairs.height
    pairs = pairs.filter(pl.col("text").str.strip_chars() != pl.col("text_r").str.strip_chars())
    _step(funnel, "identical_texts", before, pairs.height, "chosen and rejected texts are identical")
    before = pairs.height
    pairs = pairs.filter(pl.col("margin") > 0)
    _step(funnel, "ties", before, pairs.height, "chosen and rejected scored the same (ties are dropped)")
    before = pairs.height
    pairs = pairs.filter(pl.col("margin") >= cfg.min_margin)
    _step(funnel, "min_margin", before, pairs.height, f"margin below pair.min_margin={cfg.min_margin}")

    messages = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    rows = [
        {
            "prompt": messages[r["prompt_id"]],
            "chosen": [{"role": "assistant", "content": r["text"]}],
            "rejected": [{"role": "assistant", "content": r["text_r"]}],
            "prompt_id": r["prompt_id"], "chosen_id": r["candidate_id"], "rejected_id": r["candidate_id_r"],
            "chosen_score": r["score"], "rejected_score": r["score_r"], "margin": r["margin"],
            "pair_strategy": cfg.strategy, "chosen_len": r["n_tokens"], "rejected_len": r["n_tokens_r"],
        }
        for r in pairs.sort("prompt_id").iter_rows(named=True)
    ]
    table = schemas.from_rows(rows, "pairs")
    check_pairs(table)
    return table, funnel


def check_pairs(table: pa.Table) -> None:
    """The invariants every published pairs table holds; raise SchemaError on the first broken one."""
    df = pl.from_arrow(table.select(["prompt_id", "chosen_id", "rejected_id", "chosen_score", "rejected_score"]))
    bad = df.filter((pl.col("chosen_score") <= pl.col("rejected_score")) | (pl.col("chosen_id") == pl.col("rejected_id")))
    if bad.height:
        raise SchemaError(f"pairs table breaks chosen_score > rejected_score / chosen != rejected for prompt_id {bad['prompt_id'][0]}")
    chosen = [m[0]["content"] for m in table.column("chosen").to_pylist()]
    rejected = [m[0]["content"] for m in table.column("rejected").to_pylist()]
    if any(c.strip() == r.strip() for c, r in zip(chosen, rejected)):
        raise SchemaError("pairs table has a row whose chosen text equals its rejected text")


def stage_fingerprint(cfg: RunConfig, judgments_fp: str) -> str:
    return fingerprint("pair", VERSION, cfg.stage_fields("pair"), judgments_fp)


def run(run_dir, cfg: RunConfig, judgments_fp: str, *, log=print) -> dict:
    store = StageStore(run_dir, "pair", "pairs", stage_fingerprint(cfg, judgments_fp))
    if (meta := store.meta()) is not None:
        log(f"pair: complete output exists for fingerprint {store.fingerprint}, reusing")
        return meta
    started = time.perf_counter()
    tables = f"{run_dir}/tables"
    pairs, funnel = make_pairs(
        schemas.read_table(f"{tables}/prompts.parquet", "prompts"),
        schemas.read_table(f"{tables}/generate.parquet", "candidates"),
        schemas.read_table(f"{tables}/judge.parquet", "judgments"),
        cfg.pair,
    )
    log(f"pair: {pairs.num_rows} pairs")
    return store.finish(pairs, {"seconds": round(time.perf_counter() - started, 2), "funnel": funnel})
