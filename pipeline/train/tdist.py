"""Student's t quantiles without scipy (not a dependency): the regularised incomplete beta function by its
continued fraction, inverted by bisection; used by the over-optimisation watch (metrics.py)."""

from __future__ import annotations

import math
from functools import lru_cache


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz), converging for
    x < (a + 1) / (a + b + 2)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    out = d = 1 / (d if abs(d) > tiny else tiny)
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            out *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return out


def _beta_inc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


@lru_cache(maxsize=1024)
def t_quantile(tail: float, df: float) -> float:
    """The t with P(T > t) = tail for Student's t with `df` degrees of freedom (tail < 0.5): the upper tail
    is I_{df / (df + t^2)}(df / 2, 1 / 2) / 2, solved by bisection to float precision (scipy is no dependency;
    tests/pipeline/train/test_metrics.py checks it against scipy.stats.t.ppf)."""
    upper = lambda t: _beta_inc(df / 2, 0.5, df / (df + t * t)) / 2  # noqa: E731
    lo, hi = 0.0, 1.0
    while upper(hi) > tail:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if upper(mid) > tail else (lo, mid)
    return (lo + hi) / 2


def upper_tail(z: float) -> float:  # P(Z > z), standard normal
    return 0.5 * math.erfc(z / math.sqrt(2))
