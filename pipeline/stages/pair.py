"""Pair stage: preference pairs from judged candidates (-> pairs, no CHES or rationale yet).

Reads `prompts.{prompt_id, messages}`, `candidates.{prompt_id, candidate_id, text, n_tokens}`,
`judgments.{candidate_id, score, ok}`; writes the `pairs` table (pipeline/core/schemas.py).

Rules (docs/architecture.md rule 7). A candidate's score is its judges' aggregate (`judge.aggregate`, see
pipeline/curation/aggregate.py; a single judge's score by default; under `learned` the fit's report is the
meta's `aggregate_fit`); empty candidates and candidates with no ok judgment are never paired.
Prompts whose judges agree less than `judge.min_agreement`
(Krippendorff alpha) are dropped first. Within a prompt every two scored candidates form
a candidate pair, oriented so the higher score is chosen. The funnel (pipeline/core/funnel.py) is one
chain: prompts with candidates -> low_agreement -> too_few_scored (prompts) -> candidate_pairs
(prompts -> candidate pairs) -> the filters below (candidate pairs) -> strategy (-> pairs) ->
reward_augmented, self_critique (pairs added). Filters: ties (scores within `tie_epsilon`: ties
are a policy, never guessed), near-identical texts (character 5-gram Jaccard above
`max_similarity`; identical texts always), `min_margin`, and length control (`max_length_ratio`:
chosen at most r times longer than rejected). The strategy then selects among the admissible pairs:
  best_vs_worst      the highest-scored chosen with its lowest-scored admissible rejected
  best_vs_random     the highest-scored chosen with a seeded random admissible rejected
  all_above_margin   every admissible pair
  top_k_vs_bottom_k  chosen among the top k candidates, rejected among the bottom k
Selecting after filtering means a prompt whose extreme pair is a tie or a near-duplicate still
yields its best admissible pair. Every published row has chosen_score > rejected_score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import PairConfig, RunConfig, fingerprint
from pipeline.core import schemas
from pipeline.core.funnel import step
from pipeline.core.runner import Read, Stage, StageRun
from pipeline.curation.aggregate import aggregate_scores, agreement, verifier_scores
from pipeline.curation.label_quality import label_quality
from pipeline.curation.length_bias import length_bias
from pipeline.curation.pair_rules import check_pairs, similarity
from pipeline.curation.reward_augment import augment
from pipeline.stages.turns import with_turns

VERSION = "5"


def scored_candidates(candidates: pa.Table, judgments: pa.Table, method: str = "mean", *,
                      seed: int = 0) -> pl.DataFrame:
    """Non-empty candidates with their aggregated `score` (only candidates some judge scored)."""
    return aggregated_candidates(candidates, judgments, method, seed=seed)[0]


def aggregated_candidates(candidates: pa.Table, judgments: pa.Table, method: str, *,
                          seed: int = 0) -> tuple[pl.DataFrame, dict | None]:
    """(`scored_candidates`, the aggregation's fit report: `learned`'s weights and held-out accuracy, else None)."""
    cands = pl.from_arrow(candidates.select(["prompt_id", "candidate_id", "text", "n_tokens"]))
    cands = cands.filter(pl.col("text").str.strip_chars() != "")
    ids: dict[str, list[str]] = {}
    for pid, cid in zip(cands["prompt_id"].to_list(), cands["candidate_id"].to_list()):
        ids.setdefault(pid, []).append(cid)
    scores, fit = aggregate_scores(judgments, ids, method, seed=seed)
    table = pl.DataFrame({"candidate_id": list(scores), "score": list(scores.values())},
                         schema={"candidate_id": pl.String, "score": pl.Float64})
    return cands.join(table, on="candidate_id", how="inner"), fit


def _step(funnel: list, name: str, before: int, after: int, reason: str, *, unit: str = "candidate pairs",
          unit_in: str | None = None, adds: str | None = None) -> None:
    funnel.append(step("pair", name, before, after, reason, unit=unit, unit_in=unit_in, adds=adds))


def _select(pairs: pl.DataFrame, scored: pl.DataFrame, cfg: PairConfig, seed: int) -> pl.DataFrame:
    by_best = ["prompt_id", "score", "candidate_id"]
    if cfg.strategy == "all_above_margin":
        return pairs
    if cfg.strategy == "verified":  # the answer the verifier scores highest (then the judges), against the
        # best-scored answer it scores lower (the hardest negative)
        return (pairs.sort(["prompt_id", "_v", "score", "score_r", "candidate_id", "candidate_id_r"],
                           descending=[False, True, True, True, False, False])
                .group_by("prompt_id", maintain_order=True).first().drop("_v", "_v_r"))
    if cfg.strategy == "best_vs_worst":
        return (pairs.sort(["prompt_id", "score", "score_r", "candidate_id", "candidate_id_r"],
                           descending=[False, True, False, False, False])
                .group_by("prompt_id", maintain_order=True).first())
    if cfg.strategy == "best_vs_random":
        top = pairs.sort(by_best, descending=[False, True, False]).group_by("prompt_id", maintain_order=True).first()
        pool = pairs.join(top.select("prompt_id", "candidate_id"), on=["prompt_id", "candidate_id"])
        draw = pl.concat_str([pl.lit(str(seed)), pl.col("candidate_id_r")]).hash(seed=0)
        return pool.with_columns(draw.alias("_draw")).sort(["prompt_id", "_draw"]).group_by(
            "prompt_id", maintain_order=True).first().drop("_draw")
    ranks = scored.with_columns(
        pl.col("score").rank("ordinal", descending=True).over("prompt_id").alias("_top"),
        pl.col("score").rank("ordinal", descending=False).over("prompt_id").alias("_bottom"),
    )
    top = ranks.filter(pl.col("_top") <= cfg.k).select("candidate_id")
    bottom = ranks.filter(pl.col("_bottom") <= cfg.k).select(pl.col("candidate_id").alias("candidate_id_r"))
    return pairs.join(top, on="candidate_id").join(bottom, on="candidate_id_r")


def make_pairs(prompts: pa.Table, candidates: pa.Table, judgments: pa.Table, cfg: PairConfig, *, seed: int = 0,
               method: str = "mean", min_agreement: float | None = None) -> tuple[pa.Table, list[dict]]:
    """(pairs table, funnel entries) straight from the judgments."""
    scored = scored_candidates(candidates, judgments, method, seed=seed)
    return pairs_from_scores(prompts, scored, agreement(judgments)[0], cfg,
                             prompt_ids=candidate_prompts(candidates), seed=seed, min_agreement=min_agreement)


def candidate_prompts(candidates: pa.Table) -> list[str]:
    """Prompts that have candidates: the first funnel step's rows in."""
    return pc.unique(candidates.column("prompt_id")).to_pylist()


def pairs_from_scores(prompts: pa.Table, scored: pl.DataFrame, per_prompt: dict[str, float | None], cfg: PairConfig, *,
                      prompt_ids: Collection[str], seed: int = 0, min_agreement: float | None = None,
                      passed: dict[str, float] | None = None) -> tuple[pa.Table, list[dict]]:
    """Pure core: pairs from aggregated candidate scores (`scored_candidates`) and per-prompt agreement;
    `prompt_ids` are the prompts that have candidates, where the funnel starts. `passed`: the verifier's
    score per candidate_id (1.0 pass, 0.0 fail; the fraction of instruction constraints met), for strategy
    'verified': chosen is the candidate the verifier scores higher."""
    funnel: list[dict] = []
    present = set(prompt_ids)
    scored = scored.filter(pl.col("prompt_id").is_in(sorted(present)))
    if min_agreement is not None:
        low = {p for p, a in per_prompt.items() if a is not None and a < min_agreement} & present
        _step(funnel, "low_agreement", len(present), len(present) - len(low),
              f"prompts whose judges agree below judge.min_agreement={min_agreement} (Krippendorff alpha on "
              "per-judge z-scores; prompts without an alpha are kept)", unit="prompts")
        present -= low
        scored = scored.filter(pl.col("prompt_id").is_in(sorted(present)))
    enough = scored.group_by("prompt_id").len().filter(pl.col("len") >= 2)["prompt_id"]
    scored = scored.filter(pl.col("prompt_id").is_in(enough.implode()))
    _step(funnel, "too_few_scored", len(present), len(enough),
          "prompts with fewer than 2 non-empty candidates with an ok judgment", unit="prompts")

    both = scored.join(scored, on="prompt_id", suffix="_r").filter(pl.col("candidate_id") < pl.col("candidate_id_r"))
    total = both.height
    _step(
        funnel,
        "candidate_pairs",
        len(enough),
        total,
        "every two scored candidates of a prompt form a candidate pair",
        unit_in="prompts",
    )
    if cfg.strategy == "verified":  # ordered by the verifier, not by the judges' scores
        passed = passed or {}
        verified = pl.DataFrame({"candidate_id": list(passed), "_v": [float(v) for v in passed.values()]},
                                schema={"candidate_id": pl.String, "_v": pl.Float64})
        with_v = scored.join(verified, on="candidate_id", how="inner")
        pairs = with_v.join(with_v, on="prompt_id", suffix="_r").filter(pl.col("_v") > pl.col("_v_r"))
        _step(funnel, "not_verified_split", total, pairs.height,
              "candidate pairs that the verifier does not split into a better and a worse answer (pass and fail, "
              "or more and fewer instruction constraints met)")
    else:
        pairs = scored.join(scored, on="prompt_id", suffix="_r").filter(
            pl.col("score") - pl.col("score_r") > cfg.tie_epsilon
        )
        _step(funnel, "ties", total, pairs.height,
              f"candidate pairs scored within pair.tie_epsilon={cfg.tie_epsilon} (ties are not paired)")
    before = pairs.height
    sims = [similarity(a, b) for a, b in zip(pairs["text"].to_list(), pairs["text_r"].to_list())]
    pairs = (
        pairs.with_columns(pl.Series("_sim", sims, dtype=pl.Float64))
        .filter(pl.col("_sim") <= cfg.max_similarity)
        .drop("_sim")
    )
    _step(
        funnel,
        "near_identical",
        before,
        pairs.height,
        f"chosen and rejected near-identical (5-gram Jaccard > {cfg.max_similarity})",
    )
    pairs = pairs.with_columns((pl.col("score") - pl.col("score_r")).alias("margin"))
    if cfg.strategy != "verified":  # a verified pair's margin may be negative: the judges were wrong on it
        before = pairs.height
        pairs = pairs.filter(pl.col("margin") >= cfg.min_margin)
        _step(funnel, "min_margin", before, pairs.height, f"margin below pair.min_margin={cfg.min_margin}")
    if cfg.max_length_ratio is not None:
        before = pairs.height
        pairs = pairs.filter(pl.col("n_tokens") <= cfg.max_length_ratio * pl.col("n_tokens_r"))
        _step(
            funnel,
            "length_ratio",
            before,
            pairs.height,
            f"chosen over pair.max_length_ratio={cfg.max_length_ratio} x rejected length",
        )
    before = pairs.height
    pairs = _select(pairs, scored, cfg, seed)
    _step(
        funnel,
        "strategy",
        before,
        pairs.height,
        f"admissible candidate pairs not selected by {cfg.strategy}",
        unit="pairs",
        unit_in="candidate pairs",
    )

    messages = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    rows = [
        {
            "prompt": messages[r["prompt_id"]],
            "chosen": [{"role": "assistant", "content": r["text"]}],
            "rejected": [{"role": "assistant", "content": r["text_r"]}],
            "prompt_id": r["prompt_id"],
            "chosen_id": r["candidate_id"],
            "rejected_id": r["candidate_id_r"],
            "chosen_score": r["score"],
            "rejected_score": r["score_r"],
            "margin": r["margin"],
            "pair_strategy": cfg.strategy,
            "chosen_len": r["n_tokens"],
            "rejected_len": r["n_tokens_r"],
            "judge_agreement": per_prompt.get(r["prompt_id"]),
        }
        for r in pairs.sort(["prompt_id", "candidate_id", "candidate_id_r"]).iter_rows(named=True)
    ]
    table = schemas.from_rows(rows, "pairs")
    check_pairs(table)
    return table, funnel


def add_sources(
    pairs: pa.Table, funnel: list[dict], *, aggregate: str, augment_cfg, critiqued: pa.Table | None
) -> pa.Table:
    """The judged pairs plus their reward-augmented rewrites (`sources.reward_augmented`) and the
    self-critique stage's pairs (`critiqued`, when that stage is on); each a funnel step in pairs."""
    if augment_cfg.enabled:
        pairs, entry = augment(pairs, aggregate=aggregate, keep_original=augment_cfg.keep_original)
        funnel.append(entry)
    if critiqued is not None:
        before = pairs.num_rows
        pairs = schemas.concat([pairs, critiqued], "pairs")
        _step(
            funnel,
            "self_critique",
            before,
            pairs.num_rows,
            "revision pairs of the self_critique stage joined",
            unit="pairs",
            adds="self_critique",
        )
    return pairs


def ranked_candidates(prompts: pa.Table, scored: pl.DataFrame) -> pa.Table:
    """Listwise view: per prompt, every scored candidate best first (ties by candidate_id)."""
    messages = dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("messages").to_pylist()))
    grouped = (
        scored.sort(["prompt_id", "score", "candidate_id"], descending=[False, True, False])
        .group_by("prompt_id", maintain_order=True)
        .agg(pl.struct("candidate_id", "text", "score", "n_tokens").alias("candidates"))
    )
    rows = [
        {"prompt_id": r["prompt_id"], "prompt": messages[r["prompt_id"]], "candidates": r["candidates"]}
        for r in grouped.iter_rows(named=True)
    ]
    return schemas.from_rows(rows, "ranked")


def scores_path(run_dir) -> Path:
    return Path(run_dir) / "tables" / "pair.scores.parquet"


def ranked_path(run_dir) -> Path:
    return Path(run_dir) / "tables" / "pair.ranked.parquet"


def fields(cfg: RunConfig) -> dict:
    """The config fields that change this stage's output (aggregation lives in judge.*, read here)."""
    return {
        "seed": cfg.seed,
        "aggregate": cfg.judge.aggregate,
        "min_agreement": cfg.judge.min_agreement,
        **cfg.pair.model_dump(),
        "reward_augmented": cfg.sources.reward_augmented.model_dump(),
    }


def stage_fingerprint(cfg: RunConfig, judgments_fp: str, sources_fp: str | None = None) -> str:
    return fingerprint("pair", VERSION, fields(cfg), judgments_fp, sources_fp)


def _build(run: StageRun):
    """Judged pairs (+ reward-augmented rewrites) plus the self-critique stage's pairs when that source is on."""
    cfg, run_dir = run.cfg, run.run_dir
    candidates, judgments, prompts = run.read("generate"), run.read("judge"), run.read("prompts")
    method = cfg.judge.aggregate
    scored, fit = aggregated_candidates(candidates, judgments, method, seed=cfg.seed)
    per_prompt, figures = agreement(judgments)
    pairs, funnel = pairs_from_scores(
        prompts,
        scored,
        per_prompt,
        cfg.pair,
        prompt_ids=candidate_prompts(candidates),
        seed=cfg.seed,
        min_agreement=cfg.judge.min_agreement,
        passed={cid: score for cid, (_, score) in verifier_scores(judgments).items()},
    )
    bias = length_bias(scored, pairs)
    quality = label_quality(
        judgments,
        dict(zip(scored["candidate_id"].to_list(), scored["score"].to_list())),
        dict(zip(prompts.column("prompt_id").to_pylist(), prompts.column("category").to_pylist())),
        seed=cfg.seed,
    )
    schemas.write_table(
        schemas.from_rows(
            [
                {
                    "prompt_id": r["prompt_id"],
                    "candidate_id": r["candidate_id"],
                    "score": r["score"],
                    "judge_agreement": per_prompt.get(r["prompt_id"]),
                }
                for r in scored.iter_rows(named=True)
            ],
            "scores",
        ),
        scores_path(run_dir),
        "scores",
    )
    if cfg.pair.keep_ranked:  # written before the meta, so the stage's commit point covers it
        schemas.write_table(ranked_candidates(prompts, scored), ranked_path(run_dir), "ranked")
    sources_fp = run.upstream[1] if len(run.upstream) > 1 else None
    critiqued = None if sources_fp is None else run.read("self_critique")
    pairs = add_sources(pairs, funnel, aggregate=method, augment_cfg=cfg.sources.reward_augmented, critiqued=critiqued)
    pairs = with_turns(pairs, prompts)
    run.log(
        f"pair: {pairs.num_rows} pairs ({cfg.pair.strategy}); score-length correlation "
        f"{bias['score_length_spearman']}, chosen longer in {bias['chosen_longer_fraction']} of pairs"
    )
    return pairs, {
        "funnel": funnel,
        "strategy": cfg.pair.strategy,
        "length_bias": bias,
        "aggregate": method,
        "aggregate_fit": fit,  # judge.aggregate learned: weights, pair counts, held-out accuracy (else None)
        "agreement": figures,
        "label_quality": quality,
    }


STAGE = Stage(
    name="pair",
    reads=(
        Read("prompts", "prompts", ("prompt_id", "messages", "category", "turn")),
        Read("generate", "candidates", ("prompt_id", "candidate_id", "text", "n_tokens")),
        Read(
            "judge", "judgments", ("prompt_id", "candidate_id", "judge", "kind", "score", "ok", "position_consistent")
        ),
        Read("self_critique", "pairs", tuple(schemas.PAIRS.names)),  # its pairs join ours when that source is on
    ),
    writes="pairs",
    # the self-critique stage's fingerprint enters only when its pairs are used
    after=lambda cfg: ("judge", "self_critique" if cfg.sources.self_critique.enabled else None),
    fields=fields,
    fingerprint=stage_fingerprint,
    build=_build,
)
run = STAGE.run
