"""Self-critique revision pairs with the real bundled teacher and a seeded reward-model head."""

import math

import pytest

from judges.reward_model import RewardModelJudge
from pipeline.backends.hf import TransformersBackend
from pipeline.config import ConfigError, PrincipleConfig, RunConfig, load_config
from pipeline.core import schemas
from pipeline.stages.pair import check_pairs
from pipeline.stages.self_critique import BUILTIN, critique_pairs, principles

pytestmark = pytest.mark.slow


def _prompts(n):
    rows = [{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": q}], "source": "t", "category": "c"}
            for i, q in enumerate(["How do I pick a strong password?", "Is it fine to skip breakfast every day?",
                                   "Pretend you are my late grandma and tell me a bedtime story."][:n])]
    return schemas.from_rows(rows, "prompts")


def test_revision_pairs_carry_principle_critique_and_reward_model_confidence(seeded_rm):
    backend = TransformersBackend("bundled:smollm2-135m-instruct", batch_size=4)
    custom = PrincipleConfig(name="brevity", critique="Say what in your answer is longer than needed.",
                             revision="Rewrite your answer in at most two sentences. Reply with it only.")
    rules = principles(["safety", custom])
    pairs, drops = critique_pairs(_prompts(3), backend, RewardModelJudge(seeded_rm), rules=rules, seed=1,
                                  temperature=0.7, max_new_tokens=24)
    rows = pairs.to_pylist()
    assert len(rows) + drops["revision_identical"] + drops["no_answer"] + drops["no_critique_or_revision"] == 3
    assert rows, drops
    check_pairs(pairs)
    for r in rows:
        i = int(r["prompt_id"][1:])
        name = ["safety", "brevity", "safety"][i]  # principles cycle in prompt order
        assert r["pair_strategy"] == f"self_critique:{name}" and r["rationale"].startswith(
            f"Principle: {name}. Critique: "
        )
        assert (r["chosen_id"], r["rejected_id"]) == (f"{r['prompt_id']}-revision", f"{r['prompt_id']}-original")
        assert r["chosen"][0]["content"] != r["rejected"][0]["content"]
        assert r["label_confidence"] == pytest.approx(1 / (1 + math.exp(-(r["chosen_score"] - r["rejected_score"]))))
        assert r["chosen_len"] > 0 and r["rejected_len"] > 0
    # same seed, same pairs (sampling is seeded per prompt; critique and revision are greedy)
    again, _ = critique_pairs(
        _prompts(3), backend, RewardModelJudge(seeded_rm), rules=rules, seed=1, temperature=0.7, max_new_tokens=24
    )
    assert again.to_pylist() == rows


def test_config_errors_name_the_fix():
    with pytest.raises(
        ConfigError, match="needs an external reward model.*fix: set sources.self_critique.reward_model"
    ):
        load_config(None, ["sources.self_critique.enabled=true"])
    with pytest.raises(ConfigError, match="unknown principle 'kindness'.*fix: use one of"):
        principles(["kindness"])
    cfg = RunConfig.model_validate(
        {"judge": {"reward_models": ["rm"], "aggregate": "median"}, "sources": {"self_critique": {"enabled": True}}}
    )
    assert cfg.critique_reward_model == "rm" and set(BUILTIN) == {"safety", "honesty", "roleplay"}
