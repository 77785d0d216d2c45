"""The drop funnel adds up: every stage's steps chain in a stated unit and the last step ends at the
published pair count, over generated configurations of the tiny config (filters on and off, every
pair strategy and aggregation, sources mixed, incremental increments summed).

No model runs: each stage's funnel comes from its real pure core (prompt loading, decontamination,
pairing, reward augmentation, the CHES filter) or its real funnel function over tables built here
with the schemas of pipeline/core/schemas.py, where the stage itself would need a model (generation,
judging, self-critique).
"""

import json
import random
from itertools import combinations

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.core import funnel, schemas
from pipeline.curation.aggregate import METHODS
from pipeline.errors import FunnelError
from pipeline.publish.shards import STAGES
from pipeline.stages.ches import apply_filter
from pipeline.stages.generate import generate_funnel
from pipeline.stages.judge import judge_funnel
from pipeline.stages.pair import add_sources, make_pairs
from pipeline.stages.prompt_filter import filter_prompts
from pipeline.stages.prompts import funnel as prompts_funnel
from pipeline.stages.prompts import load_prompts
from pipeline.stages.self_critique import critique_funnel
from tests.conftest import ROOT, TINY

SEED_ROWS = [json.loads(line) for line in (ROOT / "data" / "prompts" / "seed.jsonl").read_text().splitlines()]
STRATEGIES = ("best_vs_worst", "best_vs_random", "all_above_margin", "top_k_vs_bottom_k")
WORDS = "the a answer sleep budget focus plan rest water list step because often first then".split()


def make_config(rng: random.Random, case: int, tmp_path):
    """The tiny config with generated overrides; the strategy and aggregation cycle so each is covered."""
    method = METHODS[case % len(METHODS)]
    bench = tmp_path / f"bench-{case}.jsonl"
    bench.write_text("".join(json.dumps({"id": f"b{k}", "text": r["messages"][0]["content"]}) + "\n"
                             for k, r in enumerate(rng.sample(SEED_ROWS, 3))))
    sets = [
        f"pair.strategy={STRATEGIES[case % len(STRATEGIES)]}",
        f"pair.k={rng.randint(1, 3)}",
        f"pair.min_margin={rng.choice([0.0, 0.0, 0.05, 0.5])}",
        f"pair.tie_epsilon={rng.choice([1e-6, 0.1])}",
        f"pair.max_similarity={rng.choice([0.5, 0.9, 0.95])}",
        f"pair.max_length_ratio={rng.choice(['null', 2.0, 4.0])}",
        f"judge.aggregate={method}",
        f"judge.min_agreement={rng.choice(['null', 'null', 0.0, 0.3, 0.7])}",
        f"judge.templates={rng.choice(['[absolute-1to5-v1]', '[absolute-1to5-v1, ultrafeedback-helpfulness-v1]'])}",
        f"judge.pairwise_templates={rng.choice(['[]', '[pairwise-ab-v1]'])}",
        f"judge.reward_models={'[]' if method == 'mean' else rng.choice(['[]', '[rm]'])}",
        f"generate.n={rng.randint(2, 4)}",
        f"generate.verbalized_k={rng.choice([0, 0, 2, 3])}",
        f"input.limit={rng.randint(3, 12)}",
        "input.skip_invalid=true",
        f"input.path={tmp_path / 'prompts.jsonl'}",
        "curate.dedup.near_duplicates=false",  # the embedder is a model; its step is covered by the CLI runs
        f"curate.decontaminate.benchmarks={rng.choice(['[]', f'[{bench}]'])}",
        "curate.decontaminate.ngram=4",
        f"curate.ches.enabled={rng.choice(['true', 'false'])}",
        f"curate.ches.filter={rng.choice(['quantile', 'threshold', 'none'])}",
        "curate.ches.threshold=0.0",
        f"sources.self_critique.enabled={rng.choice(['true', 'false'])}",
        "sources.self_critique.reward_model=rm",
        f"sources.self_critique.drop_disagreeing={rng.choice(['true', 'false'])}",
        f"sources.reward_augmented.enabled={rng.choice(['true', 'false'])}",
        f"sources.reward_augmented.keep_original={rng.choice(['true', 'false'])}",
    ]
    return load_config(TINY, sets)


def text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def candidates_for(rng, prompts: pa.Table, cfg) -> tuple[pa.Table, dict[str, str]]:
    """What generate would write: n sampled candidates per answered prompt (some empty, some copies)
    plus up to verbalized_k parsed verbalized answers; some prompts skipped as over the context."""
    rows, skipped = [], {}
    for pid in prompts.column("prompt_id").to_pylist():
        if rng.random() < 0.1:
            skipped[pid] = "prompt over generate.max_prompt_tokens"
            continue
        texts = [rng.choice(["", text(rng)]) if rng.random() < 0.1 else text(rng) for _ in range(cfg.generate.n)]
        if rng.random() < 0.2:
            texts[-1] = texts[0]  # an identical pair
        modes = ["sample"] * len(texts)
        verbalized = rng.randint(0, cfg.generate.verbalized_k)
        texts += [text(rng) for _ in range(verbalized)]
        modes += ["verbalized"] * verbalized
        for k, (t, mode) in enumerate(zip(texts, modes)):
            rows.append(
                {
                    "prompt_id": pid,
                    "candidate_id": f"{pid}-{k:02d}",
                    "generator": "g",
                    "text": t,
                    "n_tokens": max(1, len(t.split())),
                    "finish_reason": "stop",
                    "sampling": {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 16, "seed": k, "mode": mode},
                }
            )
    return schemas.from_rows(rows, "candidates"), skipped


def judgments_for(rng, candidates: pa.Table, cfg) -> pa.Table:
    """Every configured judge on every candidate (pairwise: every pair of non-empty ones); empty texts
    and a few others ok=false, as the judge stage writes them."""
    rows = []
    by_prompt: dict[str, list[dict]] = {}
    for c in candidates.to_pylist():
        by_prompt.setdefault(c["prompt_id"], []).append(c)
        quality = rng.uniform(1, 5)
        for judge, kind in [
            *((t, "absolute") for t in cfg.judge.templates),
            *((r, "reward_model") for r in cfg.judge.reward_models),
        ]:
            ok = bool(c["text"].strip()) and rng.random() > 0.05
            score = min(5.0, max(1.0, quality + rng.gauss(0, 1))) if kind == "absolute" else quality * 2 - 6
            rows.append(
                {
                    "prompt_id": c["prompt_id"],
                    "candidate_id": c["candidate_id"],
                    "judge": judge,
                    "kind": kind,
                    "aspect": "overall",
                    "score": round(score, 1) if ok else None,
                    "ok": ok,
                }
            )
    for judge in cfg.judge.pairwise_templates:
        for pid, cands in by_prompt.items():
            for x, y in combinations([c for c in cands if c["text"].strip()], 2):
                ok = rng.random() > 0.05
                rows.append(
                    {
                        "prompt_id": pid,
                        "candidate_id": f"{x['candidate_id']}|{y['candidate_id']}",
                        "judge": judge,
                        "kind": "pairwise",
                        "aspect": "pairwise",
                        "score": rng.choice([0.1, 0.5, 0.9]) if ok else None,
                        "ok": ok,
                        "position_consistent": rng.random() < 0.8 if ok else None,
                    }
                )
    return schemas.from_rows(rows, "judgments")


def critique_for(rng, prompts: pa.Table, cfg) -> tuple[pa.Table, list[dict]]:
    """What self-critique would produce: each prompt dropped at most once, one pair per prompt left."""
    if not cfg.sources.self_critique.enabled:
        return None, []
    drops = {"no_answer": 0, "no_critique_or_revision": 0, "revision_identical": 0, "reward_model_failed": 0}
    rows = []
    for r in prompts.to_pylist():
        fate = rng.choice([*drops, "kept", "kept", "kept"])
        if fate != "kept":
            drops[fate] += 1
            continue
        pid = r["prompt_id"]
        rows.append(
            {
                "prompt": r["messages"],
                "prompt_id": pid,
                "chosen": [{"role": "assistant", "content": f"rev {pid}"}],
                "rejected": [{"role": "assistant", "content": f"orig {pid}"}],
                "chosen_id": f"{pid}-revision",
                "rejected_id": f"{pid}-original",
                "chosen_score": 1.0,
                "rejected_score": 0.0,
                "margin": 1.0,
                "label_confidence": rng.random(),
                "pair_strategy": "self_critique:safety",
                "rationale": "Principle: safety.",
                "chosen_len": 3,
                "rejected_len": 3,
            }
        )
    return critique_funnel(
        prompts.num_rows,
        drops,
        schemas.from_rows(rows, "pairs"),
        drop_disagreeing=cfg.sources.self_critique.drop_disagreeing,
    )


def run_funnel(rng: random.Random, cfg, source_rows: list) -> tuple[list[dict], int]:
    """One run's manifest funnel and published pair count, stage by stage as the flow runs them."""
    path = cfg.input.path
    with open(path, "w") as fh:
        fh.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in source_rows))
    metas = {s: {"funnel": []} for s in STAGES}
    prompts, report = load_prompts(cfg.input, seed=cfg.seed)
    metas["prompts"]["funnel"] = prompts_funnel(report, prompts.num_rows)
    kept, metas["prompt_filter"]["funnel"], _ = filter_prompts(prompts, cfg.curate.dedup, cfg.curate.decontaminate)
    critiqued, metas["self_critique"]["funnel"] = critique_for(rng, kept, cfg)
    candidates, skipped = candidates_for(rng, kept, cfg)
    metas["generate"]["funnel"] = generate_funnel(kept.num_rows, skipped, candidates, cfg.generate.verbalized_k)
    judgments = judgments_for(rng, candidates, cfg)
    metas["judge"]["funnel"] = judge_funnel(candidates.num_rows, judgments)
    pairs, steps = make_pairs(
        kept,
        candidates,
        judgments,
        cfg.pair,
        seed=cfg.seed,
        method=cfg.judge.aggregate,
        min_agreement=cfg.judge.min_agreement,
    )
    pairs = add_sources(
        pairs, steps, aggregate=cfg.judge.aggregate, augment_cfg=cfg.sources.reward_augmented, critiqued=critiqued
    )
    metas["pair"]["funnel"] = steps
    if cfg.curate.ches.enabled:
        ln = pa.array([rng.gauss(0, 1) for _ in range(pairs.num_rows)], pa.float64())
        pairs = pairs.set_column(pairs.schema.get_field_index("ln_ches"), schemas.PAIRS.field("ln_ches"), ln)
        pairs, entry = apply_filter(pairs, cfg.curate.ches)
        entry.pop("cut")
        metas["ches"]["funnel"] = [entry]
    return funnel.collect(metas, STAGES), pairs.num_rows


def source(rng: random.Random, seed_rows: list) -> list:
    """Prompt rows as a user's file: some invalid lines and exact duplicates among them."""
    rows = list(seed_rows)
    for _ in range(rng.randint(0, 3)):
        rows.insert(rng.randrange(len(rows) + 1), rng.choice(['{"messages": []}', "not json", {"prompt": 3}]))
    for _ in range(rng.randint(0, 3)):
        rows.insert(rng.randrange(len(rows) + 1), rng.choice(seed_rows))
    return rows


def test_the_funnel_chains_over_60_generated_configurations(tmp_path):
    rng = random.Random(22)
    seen_units, seen_filters, increments_summed = set(), set(), 0
    for case in range(60):
        cfg = make_config(rng, case, tmp_path)
        pool = rng.sample(SEED_ROWS, 40)
        steps, published = run_funnel(rng, cfg, source(rng, pool[:20]))
        assert funnel.problems(steps, published) == [], (case, cfg.model_dump(), steps)
        seen_units |= {funnel.unit_label(f) for f in steps}
        seen_filters |= {f"{f['stage']}.{f['filter']}" for f in steps}
        # an incremental dataset: further increments on new prompts, some under a changed config
        # (filters and sources switched on or off between increments), summed as merge() does
        runs, total = [steps], published
        for k in range(rng.randint(0, 2)):
            inc_cfg = cfg if rng.random() < 0.5 else make_config(rng, case + 1 + k, tmp_path)
            inc_steps, inc_published = run_funnel(rng, inc_cfg, source(rng, pool[20 + 10 * k : 30 + 10 * k]))
            runs.append(inc_steps)
            total += inc_published
        if len(runs) > 1:
            increments_summed += 1
            summed = funnel.sum_funnels(runs, STAGES)
            assert funnel.problems(summed, total) == [], (case, summed)
    assert increments_summed >= 20
    assert {
        "prompts",
        "candidates",
        "judgments",
        "candidate pairs",
        "pairs",
        "prompts -> candidates",
        "candidates -> judgments",
        "prompts -> candidate pairs",
        "candidate pairs -> pairs",
        "prompts -> pairs",
    } <= seen_units
    assert {
        "pair.low_agreement",
        "pair.length_ratio",
        "pair.reward_augmented",
        "pair.self_critique",
        "self_critique.reward_model_disagrees",
        "generate.verbalized_unparsed",
        "prompt_filter.decontaminate",
        "ches.ches_quantile",
        "ches.ches_threshold",
        "ches.ches_none",
    } <= seen_filters


def test_low_agreement_then_too_few_scored_count_each_prompt_once():
    """The reported bug: with judge.min_agreement, too_few_scored restarted from the prompts before
    low_agreement (8 -> 4 twice). Here 2 of 4 prompts disagree and 1 more has a single scored candidate."""
    prompts, cands, rows = [], [], []
    for p in range(4):
        pid = f"p{p}"
        prompts.append({"prompt_id": pid, "messages": [{"role": "user", "content": pid}]})
        for k in range(1 if p == 3 else 3):
            cid = f"{pid}-{k}"
            cands.append(
                {
                    "prompt_id": pid,
                    "candidate_id": cid,
                    "generator": "g",
                    "text": f"text {cid}",
                    "n_tokens": 2,
                    "finish_reason": "stop",
                }
            )
            for judge, score in (("A", 1.0 + k), ("B", (1.0 + k) if p in (0, 3) else 3.0 - k)):
                rows.append(
                    {
                        "prompt_id": pid,
                        "candidate_id": cid,
                        "judge": judge,
                        "kind": "absolute",
                        "aspect": "o",
                        "score": score,
                        "ok": True,
                    }
                )
    cfg = load_config(TINY, ["pair.min_margin=0"])
    pairs, steps = make_pairs(
        schemas.from_rows(prompts, "prompts"),
        schemas.from_rows(cands, "candidates"),
        schemas.from_rows(rows, "judgments"),
        cfg.pair,
        method="mean_normalised",
        min_agreement=0.5,
    )
    counts = {f["filter"]: (f["rows_in"], f["rows_out"]) for f in steps}
    assert counts["low_agreement"] == (4, 2)  # p1 and p2: the second judge reverses the order
    assert counts["too_few_scored"] == (2, 1)  # from the 2 left, not from 4; p3 has one candidate (no alpha)
    assert funnel.problems(steps, pairs.num_rows) == []


def test_a_broken_chain_fails_loudly_in_tests_and_is_logged_otherwise(monkeypatch, caplog):
    steps = [
        funnel.step("pair", "too_few_scored", 8, 4, "r", unit="prompts"),
        funnel.step("pair", "candidate_pairs", 8, 12, "r", unit="candidate pairs", unit_in="prompts"),
        funnel.step("pair", "ties", 12, 10, "r", unit="pairs"),
    ]
    errors = funnel.problems(steps, 9)
    assert any("candidate_pairs starts from 8 prompts but pair.too_few_scored ended at 4" in e for e in errors)
    assert any("pair.ties starts in pairs but pair.candidate_pairs ended in candidate pairs" in e for e in errors)
    assert any("ends at 10 but 9 pairs were published" in e for e in errors)
    with pytest.raises(FunnelError, match="does not add up"):
        funnel.verify(steps, 9)  # tests/conftest.py sets PREFSYNTH_STRICT_FUNNEL=1
    monkeypatch.delenv(funnel.STRICT_ENV)
    assert funnel.verify(steps, 9) == errors and "does not add up" in caplog.text
    # an old manifest's steps have no unit: readers show it blank, the check names it
    assert funnel.unit_label({"stage": "x", "filter": "y", "rows_in": 1, "rows_out": 1}) == ""
    assert funnel.problems([{"stage": "x", "filter": "y", "rows_in": 1, "rows_out": 1, "reason": ""}], 1) == [
        "x.y has no unit (got None; expected one of prompts, candidates, judgments, candidate pairs, pairs)"
    ]
