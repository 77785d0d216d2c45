"""Reward-model losses and metrics over scalar rewards of (chosen, rejected) pairs.

Bradley-Terry (Bradley & Terry 1952; the reward-model loss of Ouyang et al. 2022, Eq. 1): with d = r(x, y+) - r(x, y-),
the negative log-likelihood of the preference is -log s(d).
- margin (Llama 2, Touvron et al. 2023, Eq. 2): -log s(d - m), m the pair's margin (here the pairs table's `margin`
  column times `RMConfig.margin`); the model must separate pairs with a larger judged gap by more.
- soft labels (label smoothing; `label_confidence` c, the probability that y+ is really preferred):
  -(c log s(d) + (1 - c) log s(-d)); c = 1 is the plain loss.
- centring (TRL's `center_rewards_coefficient`, Eisenstein et al. 2023): + w * mean((r+ + r-)^2), which keeps the
  rewards near zero mean without changing the preferences they encode.
Every term is a sum over pairs divided by the step's pair count, so gradient accumulation equals the big batch. With
c = 1 and w = 0 it equals TRL 1.16's RewardTrainer.compute_loss on the same rewards
(tests/pipeline/train/test_rm_losses.py checks it against TRL itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | None = None,
            confidence: torch.Tensor | None = None) -> torch.Tensor:
    """Per-pair Bradley-Terry loss of rewards (n,) with optional margins (n,) and soft labels c (n,) in [0, 1]."""
    d = chosen - rejected
    if margin is not None:
        d = d - margin
    if confidence is None:
        return -F.logsigmoid(d)
    return -(confidence * F.logsigmoid(d) + (1 - confidence) * F.logsigmoid(-d))


def rm_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, n_pairs: int, margin: torch.Tensor | None = None,
            confidence: torch.Tensor | None = None, center: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """A micro batch's loss divided by the step's pair count, and its unweighted term sums (for logging)."""
    bt = bt_loss(chosen, rejected, margin=margin, confidence=confidence).sum()
    total, sums = bt / n_pairs, {"bt": float(bt.detach())}
    if center:
        # TRL's term is a mean over the batch's pairs of (r+ + r-)^2: the same sum over the step's pairs
        c = ((chosen + rejected) ** 2).sum()
        total = total + center * c / n_pairs
        sums["center"] = float(c.detach())
    return total, sums


def rm_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair values averaged by the caller: accuracy (r+ > r-), margin r+ - r-, and the pair's rewards."""
    with torch.no_grad():
        return {
            "accuracy": (chosen > rejected).float(),
            "margin": chosen - rejected,
            "rewards/chosen": chosen.detach(),
            "rewards/rejected": rejected.detach(),
        }


def reward_spread(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation over every reward (chosen and rejected): what centring a reward model needs."""
    r = torch.cat([chosen, rejected]).double()
    return {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if len(r) > 1 else 0.0}
