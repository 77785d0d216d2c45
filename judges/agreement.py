"""Aggregating several judges and measuring how much they agree. Pure functions over plain lists.

Aggregation (per prompt, over its candidates):
- `zscore`: each judge's scores standardised over the whole run, so a 1-5 judge and an unbounded
  reward model can be averaged ("mean of normalised scores") or taken as a median.
- `majority`: per candidate pair, the outcome most judges give (a tie when no majority).
- `bradley_terry`: strengths from all pairwise outcomes of a prompt by Hunter's (2004) MM
  algorithm, p_i <- W_i / sum_j n_ij / (p_i + p_j); a tie counts half a win each way; a small
  pseudo-count against a virtual opponent keeps an all-losing candidate finite. Returned as
  log-strengths centred at 0.
Agreement:
- `kendall_tau_b`: rank correlation of two judges over the same candidates, tie-corrected (tau-b).
- `krippendorff_alpha_interval`: alpha = 1 - D_o / D_e over units (candidates) x coders (judges)
  with missing values, interval metric (Krippendorff 2011, "Computing Krippendorff's Alpha").
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence


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


def bradley_terry(n_items: int, outcomes: Sequence[tuple[int, int, int]], *, prior: float = 0.1,
                  iters: int = 200, tol: float = 1e-10) -> list[float]:
    """Log-strengths (centred) from (i, j, result) with result +1 (i wins), -1 (j wins) or 0 (tie)."""
    wins = [prior] * n_items  # pseudo-wins against a virtual opponent of strength 1
    games: dict[tuple[int, int], float] = {}
    for i, j, r in outcomes:
        wins[i] += 1.0 if r > 0 else 0.5 if r == 0 else 0.0
        wins[j] += 1.0 if r < 0 else 0.5 if r == 0 else 0.0
        key = (min(i, j), max(i, j))
        games[key] = games.get(key, 0.0) + 1.0
    p = [1.0] * n_items
    for _ in range(iters):
        new = []
        for i in range(n_items):
            denom = 2 * prior / (p[i] + 1.0)  # games against the virtual opponent (one won, one lost)
            denom += sum(n / (p[i] + p[b if a == i else a]) for (a, b), n in games.items() if i in (a, b))
            new.append(wins[i] / denom)
        done = max(abs(a - b) for a, b in zip(new, p)) < tol
        p = new
        if done:
            break
    logs = [math.log(x) for x in p]
    centre = sum(logs) / n_items
    return [x - centre for x in logs]


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
    if n < 2:
        return None
    d_o = sum(sum((a - b) ** 2 for a in vals for b in vals) / (len(vals) - 1) for vals in pairable) / n
    everything = [v for vals in pairable for v in vals]
    d_e = sum((a - b) ** 2 for a in everything for b in everything) / (n * (n - 1))
    return None if d_e == 0 else 1.0 - d_o / d_e
