"""pipeline/loop/iterate.py without a model: held-out and per-round prompts, round configs, the trainer keys, the early
stop and the rounds card."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.loop.iterate import plan_prompts, round_config, stop_reason, train_config, write_card
from pipeline.sampling.pools import pool_plan
from pipeline.stages.prompts import stage_fingerprint
from tests.conftest import TINY


def _ids(path) -> list[str]:
    return pq.read_table(path).column("prompt_id").to_pylist()


@pytest.mark.parametrize("mode", ["fresh", "fixed"])
def test_held_out_and_round_prompts(tmp_path, mode):
    cfg = load_config(TINY, ["eval.limit=5", f"iterate.prompts={mode}"])  # input.limit=4
    held, rounds = plan_prompts(cfg, tmp_path, 3)
    held, rounds = _ids(held), [_ids(p) for p in rounds]
    assert len(held) == 5 and all(len(r) == 4 and not set(r) & set(held) for r in rounds)
    if mode == "fresh":
        assert len(set().union(*rounds)) == 12  # each round its own prompts
    else:
        assert rounds[0] == rounds[1] == rounds[2]
    assert plan_prompts(cfg, tmp_path / "again", 3)[0].exists() and _ids(tmp_path / "again/prompts/held_out.parquet")\
        == held  # seeded: the same split every time
    r1 = round_config(cfg, 1, "some/policy", tmp_path / "prompts" / "round-1.parquet")
    assert (r1.generate.model, r1.judge_model, r1.input.limit) == ("some/policy", cfg.generate.model, None)


def test_too_few_prompts_and_bad_trainer_keys_are_config_errors(tmp_path):
    cfg = load_config(TINY, ["input.limit=100", "eval.limit=100"])
    with pytest.raises(ConfigError, match=r"input.limit=100 .*fix: lower input.limit"):
        plan_prompts(cfg, tmp_path, 3)
    with pytest.raises(ConfigError, match=r"iterate.train.steps: .*fix:"):
        train_config(load_config(TINY, ["iterate.train={steps: 0}"]), "m")
    with pytest.raises(ConfigError, match="iterate.train.model"):
        train_config(load_config(TINY, ["iterate.train={model: x}"]), "m")
    assert train_config(load_config(TINY, ["iterate.train={steps: 3}"]), "pol").model_dump()["model"] == "pol"
    base = load_config(TINY, ["iterate.reference=base"])
    assert train_config(base, "pol").reference == base.generate.model  # a fixed KL anchor from round 1 on
    assert train_config(base, base.generate.model).reference is None  # round 0: the policy is the base
    assert train_config(load_config(TINY), "pol").reference is None  # previous: the policy at step 0


def _row(r: int, win_prev: float | None) -> dict:
    return {"round": r, "policy": f"p{r}", "trained": f"p{r + 1}", "run_dir": "x", "train_dir": "y", "pairs": 3,
            "steps": 2, "win_rate_vs_base": 0.6, "win_low_vs_base": 0.4, "win_high_vs_base": 0.8,
            "lc_win_rate_vs_base": 0.55, "win_rate_vs_previous": win_prev, "win_low_vs_previous": None,
            "win_high_vs_previous": None, "lc_win_rate_vs_previous": None, "mean_tokens": 10.0,
            "base_mean_tokens": 9.0, "verifier_accuracy": None, "base_verifier_accuracy": None, "topk_entropy": 1.0,
            "topk_mass": 0.9, "stop": None}


def test_early_stop_and_card(tmp_path):
    assert stop_reason(_row(0, 0.4), {}) is None  # round 0's previous is the base: judged by the next round
    assert stop_reason(_row(1, 0.7), {"warnings": []}) is None
    assert "does not beat policy 1" in stop_reason(_row(1, 0.5), {})
    assert "watch fired" in stop_reason(_row(1, 0.9), {"warnings": [{"step": 3, "warning": "top-k mass fell"}]})
    rows = [_row(0, 0.6), {**_row(1, 0.4), "stop": "policy 2 does not beat policy 1"}]
    card = write_card(tmp_path, rows, config="tiny.yaml").read_text()
    assert (tmp_path / "rounds.png").stat().st_size > 0 and "| 2 | 3 | 2 | 0.600 [0.400, 0.800]" in card
    assert "Stopped after round 1" in card


def test_mixture_gives_each_prompt_its_share_of_base_candidates(tmp_path):
    """iterate.mixture (IPO-MD): from round 1, round(mixture * n) of each prompt's candidates come from the base."""
    cfg = load_config(TINY, ["generate.n=4", "iterate.mixture=0.25"])
    base = cfg.generate.model
    assert round_config(cfg, 0, base, tmp_path / "p.parquet").generate.pool == []  # round 0: the policy is the base
    g = round_config(cfg, 1, "some/policy", tmp_path / "p.parquet").generate
    assert g.model == "some/policy" and sorted(m.model for m in g.pool) == [base] + ["some/policy"] * 3
    for pid in ("a", "b", "c"):
        models = [g.pool[m].model for m, _, _ in pool_plan(pid, g, cfg.seed)]
        assert models.count(base) == 1 and len(models) == 4
    with pytest.raises(ConfigError, match=r"iterate.mixture=0.1: .*fix: raise generate.n"):
        round_config(load_config(TINY, ["generate.n=2", "iterate.mixture=0.1"]), 1, "p", tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"iterate.mixture .*generate.pool"):
        pooled = ["generate.n=2", "iterate.mixture=0.5", "generate.pool=[{model: a}, {model: b}]"]
        round_config(load_config(TINY, pooled), 1, "p", tmp_path / "p.parquet")


def test_planning_again_leaves_identical_prompt_files_untouched(tmp_path):
    """Issue 39: a rerun of a finished iterate rewrote prompts/round-0.parquet, whose mtime is in the round's prompts
    fingerprint, so every run stage of round 0 was redone. Identical files are kept; changed ones rewritten."""
    cfg = load_config(TINY, ["eval.limit=5"])
    held, rounds = plan_prompts(cfg, tmp_path, 2)
    stamps = [p.stat().st_mtime_ns for p in (held, *rounds)]
    fps = [stage_fingerprint(round_config(cfg, 0, "bundled:smollm2-135m-instruct", p)) for p in rounds]
    held2, rounds2 = plan_prompts(cfg, tmp_path, 2)
    assert [p.stat().st_mtime_ns for p in (held2, *rounds2)] == stamps
    assert [stage_fingerprint(round_config(cfg, 0, "bundled:smollm2-135m-instruct", p)) for p in rounds2] == fps
    rounds[1].write_bytes(b"damaged")
    plan_prompts(cfg, tmp_path, 2)
    assert pq.read_table(rounds[1]).num_rows == 4
