"""Bradley-Terry against an independent optimiser of the same penalised likelihood.

The reference below is written from the likelihood alone (per game, not per pair of items) and
solved by scipy's trust-region method with its own derivatives, so it shares no code or algorithm
with judges/agreement.py's Newton iteration.
"""

import math
import random

import numpy as np
import pytest

from judges.agreement import bradley_terry, bradley_terry_fit
from pipeline.errors import ConvergenceError

optimize = pytest.importorskip("scipy.optimize")

PRIOR = 0.1


def likelihood(n, games, prior):
    """Minus the log-likelihood sum_games [w log s(ti - tj) + (1 - w) log s(tj - ti)]
    + prior * sum_i [log s(ti) + log s(-ti)] (one win and one loss against theta = 0), its gradient and Hessian."""
    i = np.array([g[0] for g in games], dtype=int)
    j = np.array([g[1] for g in games], dtype=int)
    w = np.array([1.0 if g[2] > 0 else 0.5 if g[2] == 0 else 0.0 for g in games])

    def negative(theta):
        d = theta[i] - theta[j]
        ll = -(w * np.logaddexp(0.0, -d) + (1 - w) * np.logaddexp(0.0, d)).sum()
        ll -= prior * (np.logaddexp(0.0, -theta) + np.logaddexp(0.0, theta)).sum()
        return -ll

    def gradient(theta):
        p = 1 / (1 + np.exp(-(theta[i] - theta[j])))  # P(i beats j)
        g = np.zeros(n)
        np.add.at(g, i, w - p)
        np.add.at(g, j, p - w)
        g += prior * (1 - 2 / (1 + np.exp(-theta)))
        return -g

    def hessian(theta):
        p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
        v = p * (1 - p)
        h = np.zeros((n, n))
        np.add.at(h, (i, i), v)
        np.add.at(h, (j, j), v)
        np.add.at(h, (i, j), -v)
        np.add.at(h, (j, i), -v)
        s = 1 / (1 + np.exp(-theta))
        return h + np.diag(2 * prior * s * (1 - s))

    return negative, gradient, hessian


def solve(n, negative, gradient, hessian):
    """The minimum of a strongly convex objective, certified to within 1e-8."""
    res = optimize.minimize(negative, np.zeros(n), jac=gradient, hess=hessian, method="trust-exact",
                            options={"gtol": 1e-12, "maxiter": 1000})
    # trust-exact stops where objective values differ by float rounding; polish by solving
    # gradient = 0 with MINPACK's hybrid method, which never compares objective values
    root = optimize.root(gradient, res.x, jac=hessian, method="hybr", options={"xtol": 1e-14})
    x = root.x if np.linalg.norm(gradient(root.x)) < np.linalg.norm(gradient(res.x)) else res.x
    # strongly convex objective: |x - optimum| <= |gradient| / smallest Hessian eigenvalue, a
    # certificate that the reference itself is within 1e-8
    bound = np.linalg.norm(gradient(x)) / np.linalg.eigvalsh(hessian(x))[0]
    assert bound < 1e-8, (res.message, root.message, bound)
    return x


def reference(n, games, prior=PRIOR):
    """argmax of the penalised likelihood, centred."""
    x = solve(n, *likelihood(n, games, prior))
    return x - x.mean()


def reference_mle(n, games):
    """argmax of the plain likelihood (prior 0), centred: flat along theta + t, so solved with theta_0 pinned
    at 0 over the other n - 1 strengths, where it is strongly convex when a maximum exists."""
    negative, gradient, hessian = likelihood(n, games, 0.0)

    def full(free):
        return np.concatenate([[0.0], free])

    x = full(solve(n - 1, lambda f: negative(full(f)), lambda f: gradient(full(f))[1:],
                   lambda f: hessian(full(f))[1:, 1:]))
    return x - x.mean()


def random_prompt(rng: random.Random, kind: str) -> tuple[int, list[tuple[int, int, int]]]:
    n = rng.randint(4 if kind == "disconnected" else 2, 8)
    strength = [rng.gauss(0, 2) for _ in range(n)]
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    if kind == "disconnected":  # two groups of at least two that never meet
        cut = rng.randint(2, n - 2)
        pairs = [(a, b) for a, b in pairs if (a < cut) == (b < cut)]
    games = []
    for a, b in pairs:
        if rng.random() < 0.3 and kind != "disconnected":
            continue  # not every pair is compared
        for _ in range(rng.randint(1, 6)):
            if kind == "ties" and rng.random() < 0.5:
                r = 0
            else:
                r = 1 if rng.random() < 1 / (1 + math.exp(strength[b] - strength[a])) else -1
            games.append((a, b, r) if rng.random() < 0.5 else (b, a, -r))
    if kind == "dominant":  # candidate 0 wins every game it plays, and plays everyone
        games = [g for g in games if 0 not in g[:2]] + [
            (0, k, 1) for k in range(1, n) for _ in range(rng.randint(1, 20))
        ]
    if kind == "cycle":  # 0 > 1 > ... > n-1 > 0, each edge won the same number of times
        games = [(k, (k + 1) % n, 1) for k in range(n) for _ in range(3)]
    if not games:
        games = [(0, 1, 1)]
    return n, games


KINDS = ("random", "ties", "dominant", "cycle", "disconnected")


def test_matches_an_independent_optimiser_on_250_prompts():
    rng = random.Random(20240611)
    worst, seen = 0.0, {k: 0 for k in KINDS}
    for case in range(250):
        kind = KINDS[case % len(KINDS)]
        n, games = random_prompt(rng, kind)
        fit = bradley_terry_fit(n, games, prior=PRIOR)
        ref = reference(n, games)
        assert fit.converged, (kind, n, games)
        gap = max(abs(a - b) for a, b in zip(fit.log_strengths, ref))
        worst = max(worst, gap)
        assert gap < 1e-6, (kind, n, games, fit.log_strengths, list(ref))
        # the same order wherever the reference separates two candidates
        for a in range(n):
            for b in range(n):
                if ref[a] - ref[b] > 1e-6:
                    assert fit.log_strengths[a] > fit.log_strengths[b], (kind, games)
        if kind == "disconnected":
            assert fit.components == 2
        seen[kind] += 1
    assert all(v == 50 for v in seen.values()) and worst < 1e-6


def test_audit_cases_by_hand():
    # twenty wins of 0 over 1: d l/d t0 = 20 + 0.1 - 20 s - 0.2 s(t0) = 0 with t1 = -t0 (symmetric) -> gap 5.4267
    s = bradley_terry(2, [(0, 1, 1)] * 20)
    ref = reference(2, [(0, 1, 1)] * 20)
    assert abs((s[0] - s[1]) - (ref[0] - ref[1])) < 1e-9 and abs((s[0] - s[1]) - 5.42675) < 1e-5
    # a chain 0 > 1 > 2 with equal counts is symmetric under reversal: the middle one is exactly average
    s = bradley_terry(3, [(0, 1, 1)] * 20 + [(1, 2, 1)] * 20)
    assert abs(s[1]) < 1e-9 and abs(s[0] + s[2]) < 1e-9
    # a cycle: everyone equal
    assert max(abs(x) for x in bradley_terry(3, [(0, 1, 1), (1, 2, 1), (2, 0, 1)] * 4)) < 1e-9


def test_disconnected_components_meet_only_through_the_prior():
    # {0 beat 1 twice} and {2 beat 3 once}: no game links them, so each winner sits as far above the
    # virtual opponent as its own record puts it; the 2-0 winner ranks above the 1-0 winner
    fit = bradley_terry_fit(4, [(0, 1, 1), (0, 1, 1), (2, 3, 1)])
    s = fit.log_strengths
    assert fit.components == 2 and s[0] > s[2] > s[3] > s[1]
    assert abs(s[0] + s[1] - s[2] - s[3]) < 1e-9  # each component is symmetric about the virtual opponent


def test_non_convergence_is_reported():
    fit = bradley_terry_fit(3, [(0, 1, 1), (0, 1, 1), (1, 2, 1)], max_iter=1)
    assert not fit.converged and fit.iterations == 1
    # with a finite maximum it converges without the prior too: 3 wins to 1 -> ratio 3
    s = bradley_terry(2, [(0, 1, 1)] * 3 + [(0, 1, -1)], prior=0.0)
    assert abs((s[0] - s[1]) - math.log(3)) < 1e-9


@pytest.mark.parametrize("n, games, a, b", [
    (3, [(0, 1, 1), (0, 2, 1), (1, 2, 0)], 1, 0),  # 0 beats 1 and 2, 1 ties 2: 0's strength is infinite
    (2, [(0, 1, 1)] * 3, 1, 0),                     # a candidate that wins every game
    (3, [(0, 1, 1), (1, 0, 1)], 0, 2),               # item 2 never played: its strength is free
    (4, [(0, 1, 0), (2, 3, 0)], 0, 2),               # two components that never met
])
def test_no_maximum_likelihood_without_the_prior_is_an_error(n, games, a, b):
    """prior=0 and a win graph that is not strongly connected (Zermelo's condition fails): the maximum likelihood
    does not exist, so an error naming the cause and the fix, not a 'converged' fit (this case once gave
    [25.36, -12.68, -12.68] with converged=True)."""
    for fit in (bradley_terry_fit, bradley_terry):
        with pytest.raises(ConvergenceError) as err:
            fit(n, games, prior=0.0)
        message = str(err.value)
        assert "\n" not in message and "not strongly connected" in message and message.endswith("fix: use prior > 0")
        assert f"from item {a} to item {b}" in message
    fit = bradley_terry_fit(n, games, prior=PRIOR)  # the prior keeps every strength finite
    assert fit.converged and all(math.isfinite(x) for x in fit.log_strengths)
    assert max(abs(x - y) for x, y in zip(fit.log_strengths, reference(n, games))) < 1e-6


def test_plain_maximum_likelihood_matches_an_independent_optimiser():
    """prior=0 on strongly connected win graphs (a cycle with ties by hand, then random prompts): the fit agrees to
    1e-6 with scipy on the likelihood with one strength pinned; on random prompts it raises exactly where scipy's
    strongly connected components say the graph is not strongly connected."""
    from scipy.sparse.csgraph import connected_components

    games = [(0, 1, 1), (0, 1, 1), (1, 2, 1), (2, 0, 1), (0, 2, 0), (1, 2, 0), (3, 0, 1), (1, 3, 1), (3, 2, 0)]
    fit = bradley_terry_fit(4, games, prior=0.0)
    assert fit.converged and fit.components == 1
    assert max(abs(x - y) for x, y in zip(fit.log_strengths, reference_mle(4, games))) < 1e-6
    rng, fitted, refused = random.Random(38), 0, 0
    for case in range(100):
        n, games = random_prompt(rng, ("random", "ties")[case % 2])
        wins = np.zeros((n, n))
        for i, j, r in games:
            wins[i, j] += r >= 0
            wins[j, i] += r <= 0
        strong = connected_components(wins, directed=True, connection="strong")[0] == 1
        if not strong:
            with pytest.raises(ConvergenceError, match="not strongly connected"):
                bradley_terry_fit(n, games, prior=0.0)
            refused += 1
            continue
        fit = bradley_terry_fit(n, games, prior=0.0)
        gap = max(abs(x - y) for x, y in zip(fit.log_strengths, reference_mle(n, games)))
        assert fit.converged and gap < 1e-6, (n, games, fit, gap)
        fitted += 1
    print(f"prior=0 on random prompts: {fitted} fitted, {refused} refused")
    assert fitted >= 20 and refused >= 20, (fitted, refused)
