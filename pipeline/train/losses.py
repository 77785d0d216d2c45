"""Preference losses over sequence log-probs, selectable and combined with weights.

With rc = logp(y+) - ref_logp(y+), rr = logp(y-) - ref_logp(y-) and d = rc - rr:
- sigmoid (DPO, Rafailov et al. 2023, Eq. 7): -log s(b d). With label_smoothing e it is
  conservative DPO (Mitchell 2023): -(1-e) log s(b d) - e log s(-b d).
- ipo (Azar et al. 2024, Eq. 17): (d' - 1/(2b))^2 where d' uses per-token averaged log-ratios
  rc/|y+| - rr/|y-| when `ipo_length_average` (as TRL and the IPO authors' experiments), or d itself.
- robust (Chowdhury et al. 2024, Eq. 9): (-(1-e) log s(b d) + e log s(-b d)) / (1 - 2e).
- hinge (SLiC, Zhao et al. 2023): max(0, 1 - b d).
- rdpo (Gallego 2024, "Refined Direct Preference Optimization with Synthetic Data"): the pair's
  `label_confidence` c = sigmoid(r(y+) - r(y-)) from an external reward model is a soft target:
  -c log s(b d) - (1-c) log s(-b d). With c = 1 it is DPO; rows without a confidence use c = 1.
  (The paper's own equation could not be retrieved here: the search tool holds its abstract and the
  authors' scoring notebooks, not the loss. This is the soft-label form the paper describes.)
- nll (RPO, Pang et al. 2024): per-token mean negative log-likelihood of the chosen response.
- rationale (Just et al. 2024, "Data-Centric Human Preference Optimization with Rationales"):
  -log pi(r | x, y+ > y-), the summed log-likelihood of the pair's rationale, over rows with one.
Every term is a mean over pairs (the rationale term over pairs that carry a rationale), computed
as a sum divided by the step's pair count, so gradient accumulation equals the big batch.
Unlike TRL 1.16: its `sigmoid` ignores label_smoothing (here it is cDPO), and its `sft` term pools
the chosen tokens of the whole batch (here nll is a mean per response, then over pairs).
Metrics follow TRL's names: rewards/chosen = b rc, rewards/rejected = b rr, margins, accuracies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    chosen: torch.Tensor  # (n,) policy log-probs (LD-weighted when LD-DPO is on)
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # (n,) response lengths in tokens
    rejected_tokens: torch.Tensor
    rationale: torch.Tensor | None = None  # (m,) summed log-probs of the rationales present
    confidence: torch.Tensor | None = None  # (n,) label_confidence, the soft target of rdpo


def preference_term(name: str, lp: PairLogps, *, beta: float, label_smoothing: float = 0.0,
                    ipo_length_average: bool = True) -> torch.Tensor:
    """Per-pair loss of one preference term."""
    rc, rr = lp.chosen - lp.ref_chosen, lp.rejected - lp.ref_rejected
    d = rc - rr
    e = label_smoothing
    if name == "sigmoid":
        return -(1 - e) * F.logsigmoid(beta * d) - e * F.logsigmoid(-beta * d)
    if name == "ipo":
        if ipo_length_average:
            d = rc / lp.chosen_tokens.clamp(min=1) - rr / lp.rejected_tokens.clamp(min=1)
        return (d - 1 / (2 * beta)) ** 2
    if name == "robust":
        return (-(1 - e) * F.logsigmoid(beta * d) + e * F.logsigmoid(-beta * d)) / (1 - 2 * e)
    if name == "hinge":
        return torch.relu(1 - beta * d)
    if name == "rdpo":
        c = lp.confidence if lp.confidence is not None else torch.ones_like(d)
        return -c * F.logsigmoid(beta * d) - (1 - c) * F.logsigmoid(-beta * d)
    raise ValueError(f"unknown preference loss {name!r}")


def combined_loss(lp: PairLogps, losses: dict[str, float], *, beta: float, label_smoothing: float,
                  ipo_length_average: bool, n_pairs: int, n_rationales: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of weighted terms for a micro batch, each divided by the whole step's counts; the
    returned dict holds each term's unweighted micro-batch sum (for logging)."""
    total = lp.chosen.new_zeros(())
    sums: dict[str, float] = {}
    for name, weight in losses.items():
        if not weight:
            continue
        if name == "nll":
            per = -lp.chosen / lp.chosen_tokens.clamp(min=1)
            term, denom = per.sum(), n_pairs
        elif name == "rationale":
            if lp.rationale is None or not n_rationales:
                continue
            term, denom = -lp.rationale.sum(), n_rationales
        else:
            term = preference_term(name, lp, beta=beta, label_smoothing=label_smoothing,
                                   ipo_length_average=ipo_length_average).sum()
            denom = n_pairs
        total = total + weight * term / denom
        sums[name] = float(term.detach())
    return total, sums


def reward_metrics(lp: PairLogps, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair values behind TRL's metric names (averaged by the caller over a step or eval)."""
    with torch.no_grad():
        chosen = beta * (lp.chosen - lp.ref_chosen)
        rejected = beta * (lp.rejected - lp.ref_rejected)
        return {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (chosen > rejected).float(),
            "logps/chosen": lp.chosen.detach(),
            "logps/rejected": lp.rejected.detach(),
        }
