"""Aggregating several judges and measuring how much they agree. Pure functions over plain lists.

Aggregation (per prompt, over its candidates):
- `zscore`: each judge's scores standardised over the whole run, so a 1-5 judge and an unbounded
  reward model can be averaged ("mean of normalised scores") or taken as a median.
- `majority`: per candidate pair, the outcome most judges give (a tie when no majority).
- `bradley_terry`: strengths from all pairwise outcomes of a prompt, the maximum of a penalised
  likelihood (Eq. BT in `bradley_terry_fit`) found by damped Newton steps to a tolerance of 1e-10
  in log-strength, with non-convergence reported (Hunter's 2004 MM iteration, used before, stopped
  at 200 steps up to 0.4 away). A tie counts half a win each way. A pseudo-count of `prior` wins and
  `prior` losses against a virtual opponent of strength 1 keeps an all-winning or all-losing
  candidate finite and orders a disconnected comparison graph: candidates that never met are
  compared only through the virtual opponent, i.e. by how decisively each won or lost within its
  own component (two 1-0 components place both winners at the same strength). Returned as
  log-strengths centred at 0. With `prior=0` (plain maximum likelihood) a fit exists only when the
  win graph is strongly connected (Zermelo 1929, Ford 1957); otherwise ConvergenceError, not a
  "converged" fit whose strengths are wherever the iteration stopped.
- `logistic_fit`: L2-penalised logistic regression without intercept by Newton steps (Eq. LR),
  the fit behind `judge.aggregate: learned`: with x the difference of two candidates' features it
  is Bradley-Terry whose strengths are linear in the features (pipeline/curation/aggregate.py).
Agreement:
- `kendall_tau_b`: rank correlation of two judges over the same candidates, tie-corrected (tau-b);
  values within 1e-9 of each other are ties.
- `krippendorff_alpha_interval`: alpha = 1 - D_o / D_e over units (candidates) x coders (judges)
  with missing values, interval metric (Krippendorff 2011, "Computing Krippendorff's Alpha").
  Undefined (None) with fewer than two pairable units: with one unit D_e is computed from the
  very values D_o is, so alpha would be 0 whatever the judges said.
- `krippendorff_alpha_nominal`: the same alpha for categories (human review verdicts per pair and
  reviewer), from coincidence counts; `cohen_kappa`: chance-corrected agreement of two raters
  (a judge against the human labels, pipeline/review/labels.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Sequence

import numpy as np

from pipeline.errors import ConvergenceError


def zscore(values: Sequence[float]) -> list[float]:
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return [0.0 if sd == 0 else (v - mean) / sd for v in values]


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def outcome(a: float, b: float, eps: float = 1e-9) -> int:
    """+1 if a beats b, -1 if b beats a, 0 for a tie."""
    return 0 if abs(a - b) <= eps else (1 if a > b else -1)


def majority(votes: Sequence[int]) -> int:
    """Majority of +1/-1/0 votes; 0 unless one side has more than half of the votes."""
    wins, losses = sum(v > 0 for v in votes), sum(v < 0 for v in votes)
    if wins * 2 > len(votes):
        return 1
    if losses * 2 > len(votes):
        return -1
    return 0


@dataclass(frozen=True)
class BTFit:
    """A Bradley-Terry fit: centred log-strengths and how the solver got there."""
    log_strengths: list[float]
    converged: bool
    iterations: int
    step: float  # max |full Newton step| of the last iteration: about the distance to the optimum
    components: int  # of the comparison graph over items that played (the virtual opponent not counted)


def _bt_objective(theta: np.ndarray, wins: np.ndarray, games: np.ndarray, prior: float) -> float:
    """Penalised log-likelihood (Eq. BT below), to be maximised."""
    pair = np.logaddexp.outer(theta, theta)  # log(e^ti + e^tj)
    upper = np.triu_indices(len(theta), 1)
    ll = float(wins.sum(axis=1) @ theta) - float((games * pair)[upper].sum())
    return ll + prior * float(theta.sum()) - 2 * prior * float(np.logaddexp(0.0, theta).sum())


def components(pairs: Sequence[tuple[int, int]]) -> int:
    """Connected components of the comparison graph over the items that played at least one game."""
    linked: dict[int, set[int]] = {}
    for i, j in pairs:
        linked.setdefault(i, set()).add(j)
        linked.setdefault(j, set()).add(i)
    seen: set[int] = set()
    count = 0
    for start in linked:
        if start in seen:
            continue
        count += 1
        todo = [start]
        seen.add(start)
        while todo:
            for j in linked[todo.pop()] - seen:
                seen.add(j)
                todo.append(j)
    return count


def _unreached(edges: np.ndarray, start: int) -> list[int]:
    """Items no directed path of `edges` (edges[i, j]: an edge i -> j) leads to from `start`."""
    seen, todo = {start}, [start]
    while todo:
        for j in np.flatnonzero(edges[todo.pop()]):
            if int(j) not in seen:
                seen.add(int(j))
                todo.append(int(j))
    return [k for k in range(len(edges)) if k not in seen]


def _check_mle_exists(wins: np.ndarray) -> None:
    """Zermelo's (Ford's) condition for the unpenalised fit: every item reaches every other along a chain
    of wins (a tie is a half win each way, so an edge both ways); else some strength is +-infinite or free."""
    edges = wins > 0
    if missed := _unreached(edges, 0):
        a, b = 0, missed[0]
    elif missed := _unreached(edges.T, 0):
        a, b = missed[0], 0
    else:
        return
    raise ConvergenceError(f"Bradley-Terry with prior=0 over {len(wins)} items has no maximum-likelihood fit: no "
                           f"chain of wins or ties leads from item {a} to item {b} (the win graph is not strongly "
                           "connected); fix: use prior > 0")


def bradley_terry_fit(n_items: int, outcomes: Sequence[tuple[int, int, int]], *, prior: float = 0.1,
                      max_iter: int = 100, tol: float = 1e-10) -> BTFit:
    """Maximum of the penalised Bradley-Terry likelihood by damped Newton steps.

    With theta_i = log p_i, w_ij the wins of i over j (a tie is half a win each way) and n_ij = w_ij + w_ji:
        l(theta) = sum_{i<j} [w_ij theta_i + w_ji theta_j - n_ij log(e^theta_i + e^theta_j)]
                   + prior * sum_i [theta_i - 2 log(1 + e^theta_i)]                          (Eq. BT)
    the second line being `prior` wins and `prior` losses against a virtual opponent of strength 1
    (theta = 0). For prior > 0, l is strictly concave: one optimum, finite even for a candidate that
    wins (or loses) everything, and Newton with backtracking reaches it. For prior = 0, l has a
    maximum only when the directed win graph (i -> j when w_ij > 0) is strongly connected (Zermelo's,
    Ford's condition); otherwise ConvergenceError is raised before any step. Converged means the last
    Newton step moved no log-strength by more than `tol`.
    """
    if n_items == 0:
        return BTFit([], True, 0, 0.0, 0)
    wins = np.zeros((n_items, n_items))
    for i, j, r in outcomes:
        wins[i, j] += 1.0 if r > 0 else 0.5 if r == 0 else 0.0
        wins[j, i] += 1.0 if r < 0 else 0.5 if r == 0 else 0.0
    if prior == 0:
        _check_mle_exists(wins)
    games = wins + wins.T
    theta = np.zeros(n_items)
    value = _bt_objective(theta, wins, games, prior)
    step, it, converged = math.inf, 0, False
    for it in range(1, max_iter + 1):
        s = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # s_ij = P(i beats j)
        s0 = 1.0 / (1.0 + np.exp(-theta))                         # P(i beats the virtual opponent)
        grad = wins.sum(axis=1) - (games * s).sum(axis=1) + prior - 2 * prior * s0
        c = games * s * s.T
        hess = c - np.diag(c.sum(axis=1) + 2 * prior * s0 * (1 - s0))  # negative (semi)definite
        if prior == 0:  # l is flat along theta + t: fix the gauge sum(theta) = 0
            hess = hess - 1.0 / n_items
        try:
            delta = np.linalg.solve(hess, -grad)
        except np.linalg.LinAlgError:  # not expected once _check_mle_exists passed; reported as not converged
            break
        step = float(np.max(np.abs(delta)))
        t = 1.0
        while True:  # backtracking: never accept a step that lowers l
            candidate = theta + t * delta
            new_value = _bt_objective(candidate, wins, games, prior)
            if new_value >= value - 1e-12 * abs(value) or t < 1e-8:
                break
            t /= 2
        theta, value = candidate, new_value
        if step < tol:
            converged = True
            break
    centred = theta - theta.mean()
    return BTFit([float(x) for x in centred], converged, it, step, components([g[:2] for g in outcomes]))


def bradley_terry(n_items: int, outcomes: Sequence[tuple[int, int, int]], *, prior: float = 0.1) -> list[float]:
    """Centred log-strengths from (i, j, result), result +1 (i wins), -1 (j wins) or 0 (tie); raises
    ConvergenceError when no maximum-likelihood fit exists (prior=0, see bradley_terry_fit) or it is not reached."""
    fit = bradley_terry_fit(n_items, outcomes, prior=prior)
    if not fit.converged:
        fix = "fix: use prior > 0" if prior == 0 else "this is a bug, please report it with the outcomes"
        raise ConvergenceError(f"Bradley-Terry over {n_items} items with prior={prior} did not converge "
                               f"({fit.iterations} Newton steps, last step {fit.step:.3g}); {fix}")
    return fit.log_strengths


@dataclass(frozen=True)
class LogitFit:
    """A logistic regression fit: weights and how the solver got there."""
    weights: list[float]
    converged: bool
    iterations: int
    step: float  # max |full Newton step| of the last iteration


def logistic_fit(x: Sequence[Sequence[float]], y: Sequence[int], *, l2: float, max_iter: int = 100,
                 tol: float = 1e-10) -> LogitFit:
    """Logistic regression without intercept, P(y=1 | x) = sigmoid(w . x), by Newton steps:
        min_w  (1/n) sum_i [log(1 + e^{w.x_i}) - y_i w.x_i] + (l2 / 2) |w|^2               (Eq. LR)
    For l2 > 0 the objective is strictly convex, so it has one minimum, finite even when the data are
    separable (where the unpenalised maximum likelihood runs off to infinity); Newton steps with
    backtracking (never accepting a step that raises the objective) reach it from w = 0.
    Deterministic: no random start, no sampling. Converged means the last full Newton step moved
    no weight by more than `tol`.
    """
    xs = np.asarray(x, dtype=float).reshape(len(y), -1)
    ys = np.asarray(y, dtype=float)
    n, d = xs.shape

    def objective(w: np.ndarray) -> float:
        m = xs @ w
        return float(np.mean(np.logaddexp(0.0, m) - ys * m)) + l2 / 2 * float(w @ w)

    w = np.zeros(d)
    value = objective(w)
    step, it, converged = math.inf, 0, False
    for it in range(1, max_iter + 1):
        p = 1.0 / (1.0 + np.exp(-(xs @ w)))
        grad = xs.T @ (p - ys) / n + l2 * w
        hess = (xs * (p * (1 - p))[:, None]).T @ xs / n + l2 * np.eye(d)
        delta = np.linalg.solve(hess, -grad)
        step = float(np.max(np.abs(delta))) if d else 0.0
        t = 1.0
        while True:
            candidate = w + t * delta
            new_value = objective(candidate)
            if new_value <= value + 1e-12 * abs(value) or t < 1e-8:
                break
            t /= 2
        w, value = candidate, new_value
        if step < tol:
            converged = True
            break
    return LogitFit([float(v) for v in w], converged, it, step)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b; None when either side has no variation."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = outcome(x[i], x[j]), outcome(y[i], y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denom == 0 else (concordant - discordant) / denom


def krippendorff_alpha_interval(units: Sequence[Sequence[float | None]]) -> float | None:
    """Alpha for `units[u][c]` = coder c's value for unit u (None = missing); None if undefined."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [vals for vals in pairable if len(vals) >= 2]
    n = sum(len(vals) for vals in pairable)
    if len(pairable) < 2:  # one unit: D_e is made of D_o's own values (alpha = 0 by construction)
        return None
    d_o = sum(sum((a - b) ** 2 for a in vals for b in vals) / (len(vals) - 1) for vals in pairable) / n
    everything = [v for vals in pairable for v in vals]
    d_e = sum((a - b) ** 2 for a in everything for b in everything) / (n * (n - 1))
    return None if d_e == 0 else 1.0 - d_o / d_e


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items (any category labels); None when undefined
    (no items, or both raters always give one and the same category, so chance agreement is 1)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    chance = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in set(a) | set(b))
    return None if chance == 1 else (observed - chance) / (1 - chance)


def krippendorff_alpha_nominal(units: Sequence[Sequence[str | None]]) -> float | None:
    """Alpha for nominal values (categories), `units[u][c]` as in `krippendorff_alpha_interval`.
    From the coincidence counts in O(values): with m_u values in a pairable unit and n_c the
    coincidences of category c, alpha = 1 - (n - 1) * sum_u (m_u^2 - sum_c m_uc^2) / (m_u - 1)
    / (n^2 - sum_c n_c^2). None with fewer than two pairable units or a single category."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [vals for vals in pairable if len(vals) >= 2]
    if len(pairable) < 2:
        return None
    totals: dict[str, int] = {}
    d_o = 0.0
    for vals in pairable:
        counts: dict[str, int] = {}
        for v in vals:
            counts[v] = counts.get(v, 0) + 1
            totals[v] = totals.get(v, 0) + 1
        m = len(vals)
        d_o += (m * m - sum(k * k for k in counts.values())) / (m - 1)
    n = sum(totals.values())
    d_e = n * n - sum(k * k for k in totals.values())
    return None if d_e == 0 else 1.0 - (n - 1) * d_o / d_e
