import pytest
import torch

from judges.reward_model import RewardModelJudge, build_seeded_reward_model

pytestmark = pytest.mark.slow
CONV = [{"role": "user", "content": "What is the capital of France?"}]


def test_rewards_are_batch_invariant_and_match_a_plain_forward(seeded_rm):
    judge = RewardModelJudge(seeded_rm, batch_size=3)
    items = [(CONV, "Paris."), (CONV, "The capital of France is Paris, a city on the Seine."), (CONV, "no idea")]
    batched = judge.score(items)
    assert all(j.ok for j in batched) and len({round(j.score, 6) for j in batched}) == 3
    # independent check: the model's own forward on each unpadded sequence (its pooling is exact without padding)
    model, tok = judge.model, judge.tokenizer
    for (conv, resp), j in zip(items, batched):
        ids = tok.apply_chat_template(
            [*conv, {"role": "assistant", "content": resp}], tokenize=True, return_dict=False
        )
        with torch.inference_mode():
            hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            want = float(model.score(hidden))
        assert abs(j.score - want) < 1e-4


def test_same_seed_same_head(seeded_rm, tmp_path):
    again = build_seeded_reward_model("bundled:smollm2-135m-instruct", str(tmp_path / "rm2"), seed=3)
    a, b = RewardModelJudge(seeded_rm), RewardModelJudge(again)
    assert torch.equal(a.model.score.weight, b.model.score.weight)


def test_overlong_input_is_not_ok(seeded_rm):
    j = RewardModelJudge(seeded_rm, max_input_tokens=16).score([(CONV, "word " * 50)])[0]
    assert j.score is None and not j.ok and "judge.max_input_tokens=16" in j.raw
