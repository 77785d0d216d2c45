"""Loss values against the papers' formulas, written here independently in plain Python math."""

import math
import random

import pytest
import torch

from pipeline.train.losses import PairLogps, combined_loss, preference_term, reward_metrics


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def reference(name, pc, pr, rc_, rr_, lc, lr, beta, eps=0.0, avg=True):
    """One pair, from the papers: DPO Eq. 7 (+ cDPO smoothing), IPO Eq. 17, robust DPO Eq. 9, SLiC hinge."""
    d = (pc - rc_) - (pr - rr_)
    if name == "sigmoid":
        return -(1 - eps) * logsig(beta * d) - eps * logsig(-beta * d)
    if name == "ipo":
        h = (pc - rc_) / lc - (pr - rr_) / lr if avg else d
        return (h - 1 / (2 * beta)) ** 2
    if name == "robust":
        return ((1 - eps) * -logsig(beta * d) - eps * -logsig(-beta * d)) / (1 - 2 * eps)
    if name == "hinge":
        return max(0.0, 1 - beta * d)
    raise AssertionError(name)


def batch(rows):
    t = lambda i: torch.tensor([r[i] for r in rows], dtype=torch.float64)  # noqa: E731
    return PairLogps(t(0), t(1), t(2), t(3), t(4), t(5))


@pytest.fixture
def rows():
    rng = random.Random(3)
    out = [(rng.uniform(-80, -5), rng.uniform(-80, -5), rng.uniform(-80, -5), rng.uniform(-80, -5),
            rng.randint(1, 60), rng.randint(1, 60)) for _ in range(32)]
    out.append((-10.0, -10.0, -10.0, -10.0, 5, 5))  # zero margin
    out.append((-1.0, -300.0, -300.0, -1.0, 7, 300))  # huge positive margin: logsigmoid must not overflow
    return out


@pytest.mark.parametrize("name", ["sigmoid", "ipo", "robust", "hinge"])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.2)])
def test_terms_match_the_papers(rows, name, beta, eps):
    got = preference_term(name, batch(rows), beta=beta, label_smoothing=eps)
    want = [reference(name, *r, beta=beta, eps=eps) for r in rows]
    assert got.tolist() == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_ipo_without_length_average_uses_summed_log_ratios(rows):
    got = preference_term("ipo", batch(rows), beta=0.1, ipo_length_average=False)
    assert got.tolist() == pytest.approx([reference("ipo", *r, beta=0.1, avg=False) for r in rows], rel=1e-9)
    assert got.tolist() != pytest.approx(preference_term("ipo", batch(rows), beta=0.1).tolist(), rel=1e-3)


def test_conservative_dpo_reduces_to_dpo_without_smoothing(rows):
    lp = batch(rows)
    assert torch.allclose(preference_term("sigmoid", lp, beta=0.1, label_smoothing=0.0),
                          preference_term("robust", lp, beta=0.1, label_smoothing=0.0))


def test_combined_loss_is_a_weighted_mean_and_splits_into_micro_batches(rows):
    lp = batch(rows)
    lp.rationale = torch.tensor([-12.0, -30.0], dtype=torch.float64)
    losses = {"sigmoid": 1.0, "hinge": 0.5, "nll": 0.2, "rationale": 0.1}
    total, sums = combined_loss(lp, losses, beta=0.1, label_smoothing=0.0, ipo_length_average=True,
                                n_pairs=len(rows), n_rationales=2)
    n = len(rows)
    want = (sum(reference("sigmoid", *r, beta=0.1) for r in rows) / n
            + 0.5 * sum(reference("hinge", *r, beta=0.1) for r in rows) / n
            + 0.2 * sum(-r[0] / r[4] for r in rows) / n  # RPO: per-token NLL of chosen
            + 0.1 * (12.0 + 30.0) / 2)  # DCPO: -log pi(r | x, y+ > y-), mean over pairs with a rationale
    assert float(total) == pytest.approx(want, rel=1e-9)
    assert set(sums) == set(losses)
    # the same step split in two micro batches (each divided by the whole step's counts) sums to it
    half = n // 2
    parts = []
    for sl, rat in ((slice(0, half), torch.tensor([-12.0], dtype=torch.float64)),
                    (slice(half, n), torch.tensor([-30.0], dtype=torch.float64))):
        p = batch(rows[sl])
        p.rationale = rat
        parts.append(combined_loss(p, losses, beta=0.1, label_smoothing=0.0, ipo_length_average=True,
                                   n_pairs=n, n_rationales=2)[0])
    assert float(sum(parts)) == pytest.approx(float(total), rel=1e-12)


def test_reward_metrics_use_trl_names_and_definitions(rows):
    m = reward_metrics(batch(rows), beta=0.1)
    r = rows[0]
    assert float(m["rewards/chosen"][0]) == pytest.approx(0.1 * (r[0] - r[2]))
    assert float(m["rewards/margins"][0]) == pytest.approx(0.1 * ((r[0] - r[2]) - (r[1] - r[3])))
    assert m["rewards/accuracies"].tolist() == [float(0.1 * ((a - c) - (b - d)) > 0) for a, b, c, d, *_ in rows]
    assert float(m["rewards/accuracies"][-2]) == 0.0  # a tie is not accurate


def test_rdpo_soft_target_matches_hand_computed_values_and_is_dpo_at_confidence_one():
    # one pair: d = (-10 - -12) - (-20 - -19) = 3, beta = 0.5 -> b d = 1.5
    lp = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -20.0, -12.0, -19.0, 5, 5)))
    for c, want in ((1.0, 0.2014132779827524), (0.8, 0.5014132779827524), (0.5, 0.9514132779827524),
                    (0.0, 1.7014132779827524)):
        # -c log s(1.5) - (1-c) log s(-1.5), with log s(1.5) = -0.20141327798 and log s(-1.5) = -1.70141327798
        lp.confidence = torch.tensor([c], dtype=torch.float64)
        assert float(preference_term("rdpo", lp, beta=0.5)) == pytest.approx(want, rel=1e-9)
    lp.confidence = torch.tensor([1.0], dtype=torch.float64)
    assert float(preference_term("rdpo", lp, beta=0.5)) == pytest.approx(
        float(preference_term("sigmoid", lp, beta=0.5))
    )
    lp.confidence = None  # rows without a confidence are hard labels
    assert float(preference_term("rdpo", lp, beta=0.5)) == pytest.approx(0.2014132779827524, rel=1e-9)
