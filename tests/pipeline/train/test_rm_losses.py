"""The reward-model loss against TRL's RewardTrainer on identical rewards (pure tensors: fast tier).

The reference is TRL itself (trl 1.16.0, trl/trainer/reward_trainer.py, `RewardTrainer.compute_loss`): its method
runs unbound on a stand-in trainer (a model returning the given rewards as logits, an accelerator that gathers
nothing), so the comparison is with the code users run, not a transcription of it."""

from __future__ import annotations

import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.rm_losses import bt_loss, reward_spread, rm_loss, rm_metrics

trl_reward = pytest.importorskip("trl.trainer.reward_trainer")


def trl_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin=None, center=None) -> float:
    """TRL's RewardTrainer.compute_loss on rewards given as the model's logits (chosen rows first, as its
    collator stacks them)."""
    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    model = types.SimpleNamespace(training=False)
    identity = lambda x: x  # noqa: E731
    fake = types.SimpleNamespace(
        model=model,
        args=types.SimpleNamespace(center_rewards_coefficient=center),
        accelerator=types.SimpleNamespace(gather=identity, gather_for_metrics=identity),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {"input_ids": None}
    if margin is not None:
        inputs["margin"] = margin

    def forward(**kw):
        return types.SimpleNamespace(logits=logits)

    return float(trl_reward.RewardTrainer.compute_loss(fake, forward, inputs))


def rewards(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * 2, torch.randn(n, generator=g, dtype=torch.float64) * 2


def test_plain_loss_equals_trl():
    c, r = rewards()
    ours, _ = rm_loss(c, r, n_pairs=len(c))
    assert float(ours) == pytest.approx(trl_loss(c, r), rel=1e-12, abs=1e-12)


def test_margin_loss_equals_trl():
    c, r = rewards(seed=1)
    m = torch.linspace(0, 3, len(c), dtype=torch.float64)
    ours, _ = rm_loss(c, r, n_pairs=len(c), margin=m)
    assert float(ours) == pytest.approx(trl_loss(c, r, margin=m), rel=1e-12, abs=1e-12)
    assert float(ours) > float(rm_loss(c, r, n_pairs=len(c))[0])  # a margin asks for more separation


def test_centring_term_equals_trl():
    c, r = rewards(seed=2)
    ours, sums = rm_loss(c, r, n_pairs=len(c), center=0.01)
    assert float(ours) == pytest.approx(trl_loss(c, r, center=0.01), rel=1e-12, abs=1e-12)
    assert set(sums) == {"bt", "center"}


def test_accumulated_micro_batches_equal_the_whole_batch():
    c, r = rewards(seed=3)
    whole = float(rm_loss(c, r, n_pairs=16)[0])
    parts = sum(float(rm_loss(c[s : s + 4], r[s : s + 4], n_pairs=16)[0]) for s in range(0, 16, 4))
    assert parts == pytest.approx(whole, rel=1e-12)


def test_soft_labels():
    c, r = rewards(seed=4)
    d = c - r
    assert torch.allclose(bt_loss(c, r, confidence=torch.ones_like(d)), bt_loss(c, r))
    conf = torch.full_like(d, 0.8)
    want = -(0.8 * F.logsigmoid(d) + 0.2 * F.logsigmoid(-d))
    assert torch.allclose(bt_loss(c, r, confidence=conf), want)
    # c = 1/2 says nothing about the order: the loss is symmetric in chosen and rejected
    half = torch.full_like(d, 0.5)
    assert torch.allclose(bt_loss(c, r, confidence=half), bt_loss(r, c, confidence=half))


def test_metrics():
    c = torch.tensor([1.0, 0.0, 2.0])
    r = torch.tensor([0.0, 1.0, 1.0])
    m = rm_metrics(c, r)
    assert m["accuracy"].tolist() == [1.0, 0.0, 1.0]
    assert m["margin"].tolist() == [1.0, -1.0, 1.0]
    spread = reward_spread(c, r)
    assert spread["reward_mean"] == pytest.approx(5 / 6)
    assert spread["reward_std"] == pytest.approx(float(torch.cat([c, r]).std()))
