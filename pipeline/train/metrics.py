"""Training metrics: a JSONL log (plus TensorBoard), bootstrap noise of eval means, the over-optimisation watch.

Indicators follow "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms"
(Shi et al. 2024): on the eval split, at every response position, the top-k (k=10) probability
mass (the share of probability on the k likeliest next tokens) and the top-k entropy (entropy of
those k probabilities renormalised). The paper finds a slightly lower completion likelihood healthy
(more diverse outputs generalise better) and names two signs of harm: decreasing top-k entropy
and diminishing top-k mass. DPO moves both a little on every run, so the watch counts a change
only when it is larger than its noise and than normal movement, and lasts a window.

Noise: each eval value is a mean over the eval pairs (token-weighted for the indicators). A
bootstrap over the pairs (Efron & Tibshirani 1993: resample pairs with replacement, recompute
the mean) gives each value's standard error and 95% BCa interval (`eval/topk_mass_se`,
`_lo`, `_hi`; `_se` for every eval mean). The watch judges the change since the first evaluation,
`eval/topk_mass_change`, bootstrapped over the per-pair changes (`_change_se`): the eval pairs
are the same at every evaluation, so a paired estimate removes the spread between prompts, which
says nothing about change (bench/README.md: with 10 eval pairs the unpaired se hid a 12% entropy
collapse).

Rule (`OverOptConfig`; defaults from bench/overopt.py, figures in bench/README.md). With c the
change since the first evaluation (c = 0, se = 0 there) and se its paired standard error, b is
below a "beyond the noise" when c_a - c_b > max(k * sqrt(se_a^2 + se_b^2), min_change * |v_first|):
larger than the noise and than normal movement (the floor: a slightly lower value is healthy).
k = noise_multiple(z, eval pairs): z, widened to the exact Student's t because se comes from few pairs
(measured: z = 3, window 1, no floor fired on 119 of 150 simulated flat runs with 10 pairs unwidened,
on 22 widened; `bench/overopt.py --simulate` prints the rates of the rule as it is, bench/README.md).
Shared drift (`drift`, on by default; issue 38): a shift common to every eval prompt moves the mean and
not the paired se, so the watch also reads the series' own step-to-step movement as a random walk of
variance tau^2 per evaluation. tau^2 is von Neumann's mean square successive difference (1941) of the
steps, halved: mean((s_i - s_(i-1))^2) / 2 over the steps s_i = c_i - c_(i-1). A steady or slowly
changing trend cancels in the differences of the steps, so a decline that decelerates (bench/overopt.py's
over-optimised run) is not read as drift, as the plain variance of the steps read it; its degrees of
freedom are Satterthwaite's 2m^2 / (3m - 1) for m differences. b is below a when c_a - c_b exceeds the
largest of k * sqrt(se_a^2 + se_b^2) (between prompts), k_d * sqrt(|i_a - i_b| tau^2) (shared drift; k_d
the exact t multiple for its degrees of freedom) and the floor: the larger noise, not the root sum of
both, since the steps already hold each evaluation's between-prompt noise. Measured
(tests/pipeline/train/test_metrics.py, 100 simulated healthy runs of 40 evaluations on 10 eval pairs per
case): a shared shift of 0.5% or 1.5% of the level per evaluation, independent or accumulating, fires on 0
of 100 in each case (0, 57, 46 and 95 of 100 without the drift term); a steady fall of 2% per evaluation
under 0.5% drift fires on 20 of 20 runs, at evaluation 3-15; bench/overopt.py's recorded over-optimised
series fires at step 11 (step 2 without the drift term). The price: the watch needs four evaluations (three
steps) before it can fire, and fires later on a short, sharp decline. `drift: false` restores the
between-prompt rule alone.
With W = `window`, the watch fires when
- top-k mass kept diminishing: the last W evaluations are each below the first beyond the noise;
- top-k entropy decreased: the last W evaluations are each below the first beyond the noise, or
  below every one of W earlier consecutive evaluations that each stood above the first beyond the
  noise (turned down after a sustained rise, even when still above its start).
A rise must be sustained over W evaluations: the highest of many noisy evaluations sits above the
true level, and a single-evaluation peak made iid noise fire on long runs (test_metrics.py). Both
rules compare with the first evaluation or a sustained level, never with the window's start, so a
slow decline fires whatever `eval_every` is. With fewer than `min_eval_pairs` eval pairs the noise
cannot be estimated and the watch stays off (said in the log and the provenance).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
from pydantic import Field

from pipeline.config import _Section
from pipeline.train.tdist import t_quantile, upper_tail

INDICATORS = ("topk_entropy", "topk_mass")


class OverOptConfig(_Section):
    window: int = Field(2, ge=1, description="Consecutive evaluations a change must hold before the over-optimisation "
                        "watch fires.")
    z: float = Field(3.0, gt=0, description="Noise multiple: a change counts beyond z * its bootstrap standard error "
                     "(paired over the eval pairs).")
    min_change: float = Field(0.02, ge=0.0, description="Normal movement, as a fraction of the indicator's first "
                              "value: smaller changes never count (a slightly lower likelihood is healthy).")
    drift: bool = Field(True, description="Count the drift shared by every eval prompt (which the paired bootstrap "
                        "cannot see), estimated from the series' own step-to-step movement (mean square successive "
                        "difference of the steps); the watch then needs four evaluations before it can fire. false: "
                        "the between-prompt rule alone, which fires earlier and also on shared drift.")
    min_eval_pairs: int = Field(3, ge=2, description="Eval pairs needed to estimate the noise; with fewer the "
                                "watch is off (raise eval_fraction).")
    resamples: int = Field(1000, ge=100, description="Bootstrap resamples per eval mean (noise estimates).")


@dataclass(frozen=True)
class Estimate:
    value: float
    se: float  # bootstrap standard error over the eval pairs
    lo: float  # 95% BCa interval (bca_interval)
    hi: float
    n: int  # pairs resampled


def bootstrap(sums, weights=None, *, resamples: int = 1000, seed: int = 0) -> Estimate:
    """sum(sums) / sum(weights) with its bootstrap standard error and 95% interval over the units
    (pairs); weights default to 1 (a plain mean). Deterministic for a seed."""
    sums = np.asarray(sums, dtype=np.float64)
    weights = np.ones_like(sums) if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(sums)
    value = float(sums.sum() / max(weights.sum(), 1e-12)) if n else float("nan")
    if n < 2:  # one unit has no spread to resample
        return Estimate(value, float("nan"), value, value, n)
    rng = np.random.default_rng(seed)
    stats, block = [], max(1, 4_000_000 // n)  # bounded memory for large eval splits
    for start in range(0, resamples, block):
        idx = rng.integers(0, n, size=(min(block, resamples - start), n))
        stats.append(sums[idx].sum(1) / np.maximum(weights[idx].sum(1), 1e-12))
    stats = np.concatenate(stats)
    lo, hi = bca_interval(stats, sums, weights, value)
    return Estimate(value, float(stats.std(ddof=1)), lo, hi, n)


def bca_interval(stats: np.ndarray, sums: np.ndarray, weights: np.ndarray, value: float) -> tuple[float, float]:
    """The 95% BCa interval (Efron 1987) of the ratio sum(sums) / sum(weights) from its bootstrap replicates:
    percentiles shifted by the bias (share of replicates below the estimate) and the acceleration (jackknife
    skewness). At 12 prompts it covered 0.91-0.97 where the plain percentile interval covered 0.79-0.93
    (simulated win/tie/loss mixes, tests/pipeline/train/test_metrics.py)."""
    normal = NormalDist()
    below = float(np.mean(stats < value) + 0.5 * np.mean(stats == value))
    z0 = normal.inv_cdf(min(max(below, 1 / len(stats)), 1 - 1 / len(stats)))
    jack = (sums.sum() - sums) / np.maximum(weights.sum() - weights, 1e-12)
    d = jack.mean() - jack
    denom = 6 * float((d**2).sum()) ** 1.5
    a = float((d**3).sum()) / denom if denom > 0 else 0.0
    levels = [normal.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in (normal.inv_cdf(0.025), normal.inv_cdf(0.975))]
    lo, hi = np.quantile(stats, levels)
    return float(lo), float(hi)


def noise_multiple(z: float, n: int) -> float:
    """The multiple of a bootstrap se over n pairs that has the tail of z known-noise standard errors.
    The se is itself estimated from n pairs, so z becomes Student's t quantile of the same tail with n - 1
    degrees of freedom (exact: `t_quantile`), times sqrt(n / (n - 1)): the bootstrap's plug-in variance is
    (n - 1) / n of the unbiased one. 3 pairs at z = 3: 23.5 (the Cornish-Fisher expansion used before gave 18.2)."""
    return t_quantile(upper_tail(z), n - 1) * math.sqrt(n / (n - 1))


def drift(series: list[dict]) -> tuple[float, float] | None:
    """(variance per evaluation, degrees of freedom) of the drift shared by every eval prompt, from the series'
    own step-to-step movement: half the mean square successive difference of the steps c_i - c_(i-1) (von
    Neumann 1941), in which a steady or slowly changing trend cancels (the plain variance of the steps read a
    decelerating decline as drift). For m differences of iid steps it is unbiased with variance
    (3m - 1) / m^2 tau^4, so Satterthwaite's 2m^2 / (3m - 1) degrees of freedom. It also holds the eval pairs'
    own step noise: conservative. None below two differences (four evaluations)."""
    steps = np.diff([p["change"] for p in series])
    if len(steps) < 3:
        return None
    d = np.diff(steps)
    m = len(d)
    return float(np.mean(d**2) / 2), 2 * m * m / (3 * m - 1)


def decline(series: list[dict], *, window: int, threshold, after_rise: bool) -> list[dict] | None:
    """What the last `window` points of a series ({change, se, ...} each, the first with change 0) fell
    below: [first point], or with `after_rise` the latest run of `window` earlier points that each stood
    above the first (a sustained rise); None when they did not. b is below a when
    a.change - b.change > threshold(a, b)."""
    if len(series) <= window:
        return None
    first, last = series[0], series[-window:]

    def below(ref: list[dict], points: list[dict]) -> bool:
        return all(r["change"] - p["change"] > threshold(r, p) for r in ref for p in points)

    if below([first], last):
        return [first]
    if after_rise:
        runs = [series[i : i + window] for i in range(1, len(series) - 2 * window + 1)]
        return next((r for r in reversed(runs) if below(r, [first]) and below(r, last)), None)
    return None


class MetricsLog:
    """Appends one JSON object per record to `metrics.jsonl`; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, resume_step: int = 0):
        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():  # a resumed run drops records past its checkpoint: no step is logged twice
            kept = [line for line in self.path.read_text().splitlines()
                    if resume_step and line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: `pip install tensorboard` (the `train` extra)
                self.note = "tensorboard is not installed; metrics go to metrics.jsonl only"
            else:
                purge = resume_step + 1 if resume_step else None
                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
        if self.writer is not None:
            for key, value in record.items():
                if (
                    key not in ("step", "time")
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                ):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class OverOptimisationWatch:
    """Feeds on each evaluation's per-pair indicator sums; returns the alarms that start at it.

    An alarm is a dict: indicator, rule, step, the first evaluation, the reference it fell below
    (the first evaluation, or a sustained rise) and the window's evaluations (each {step, value,
    change, se}), z, min_change, and `warning` (the text, with the thresholds each had to clear).
    An alarm is returned when its rule starts to hold; while it keeps holding `holding` names it.
    """

    def __init__(self, cfg: OverOptConfig | None = None):
        self.cfg = cfg or OverOptConfig()
        self.first: dict[str, list[float]] | None = None  # per-pair sums (and tokens) at the first evaluation
        self.series: dict[str, list[dict]] = {name: [] for name in INDICATORS}
        self.fired: list[dict] = []  # every alarm so far (kept in checkpoints: a resumed run reports them too)
        self.holding: list[str] = []
        self.eval_pairs: int | None = None

    @property
    def active(self) -> bool:
        return self.eval_pairs is not None and self.eval_pairs >= self.cfg.min_eval_pairs

    def note(self) -> str | None:
        if self.eval_pairs is None or self.active:
            return None
        return (
            f"over-optimisation watch off: the eval split has {self.eval_pairs} pair(s) and the noise estimate "
            f"needs at least {self.cfg.min_eval_pairs} (overopt.min_eval_pairs); fix: raise eval_fraction"
        )

    def state(self) -> dict:
        return {
            "first": self.first,
            "series": self.series,
            "fired": self.fired,
            "holding": self.holding,
            "eval_pairs": self.eval_pairs,
        }

    def load(self, state: dict) -> None:
        # a checkpoint from before noise estimates holds bare values: its history cannot be judged, so it restarts
        if "first" in state:
            self.first, self.series = state["first"], {name: list(state["series"][name]) for name in INDICATORS}
            self.fired, self.holding = list(state["fired"]), list(state["holding"])
            self.eval_pairs = state["eval_pairs"]

    def summary(self) -> dict:
        """For the provenance: the rule, its settings and whether it could run (alarms go in `fired`)."""
        return {
            "rule": "change c since the first evaluation, paired bootstrap se over the eval pairs; b is below a "
            "when c_a - c_b > max(k sqrt(se_a^2 + se_b^2), k_d sqrt(|i_a - i_b| tau^2), min_change * |first "
            "value|), k = z widened to Student's t for the eval pairs, tau^2 the shared drift per evaluation "
            "(half the mean square successive difference of the steps; with `drift`), k_d its t multiple; mass: "
            "`window` evaluations in a "
            "row below the first; entropy: the same, or below every one of `window` earlier evaluations in a row "
            "that stood above the first "
            "(pipeline/train/metrics.py)",
            **self.cfg.model_dump(),
            "eval_pairs": self.eval_pairs,
            "active": self.active,
            "note": self.note(),
        }

    def observe(self, step: int, sums: dict, tokens, *, seed: int = 0) -> tuple[dict[str, Estimate], list[dict]]:
        """One evaluation's per-pair sums {indicator: array} and response tokens per pair (same pairs, same
        order every time) -> ({indicator: change since the first evaluation, paired bootstrap}, new alarms)."""
        tokens = np.asarray(tokens, dtype=np.float64)
        if self.first is None:
            self.first = {
                "tokens": tokens.tolist(),
                **{k: np.asarray(sums[k], dtype=np.float64).tolist() for k in INDICATORS},
            }
        if len(self.first["tokens"]) != len(tokens):
            raise ValueError(
                f"the eval split has {len(tokens)} pairs, the first evaluation had "
                f"{len(self.first['tokens'])}; the watch compares the same pairs"
            )
        changes, points = {}, {}
        for k in INDICATORS:
            now = np.asarray(sums[k], dtype=np.float64)
            changes[k] = bootstrap(now - np.asarray(self.first[k]), tokens, resamples=self.cfg.resamples, seed=seed)
            se = changes[k].se if len(tokens) > 1 else float("nan")
            points[k] = {"value": float(now.sum() / max(tokens.sum(), 1e-12)), "change": changes[k].value, "se": se}
        return changes, self.update(step, points, eval_pairs=len(tokens))

    def update(self, step: int, points: dict[str, dict], *, eval_pairs: int) -> list[dict]:
        """Add one evaluation ({indicator: {value, change, se}}); return the alarms whose rule starts holding now."""
        self.eval_pairs = eval_pairs
        for name in INDICATORS:
            p = points[name]
            self.series[name].append({"step": step, "value": p["value"], "change": p["change"], "se": p["se"]})
        if not self.active:
            return []
        alarms = [a for a in (self._check(name) for name in INDICATORS) if a]
        new = [a for a in alarms if a["indicator"] not in self.holding]
        self.holding = [a["indicator"] for a in alarms]
        self.fired += new
        return new

    def _threshold(self, name: str, a: dict, b: dict, shared=None) -> float:
        """max(k_n sqrt(se_a^2 + se_b^2), k_d sqrt(|i_a - i_b| tau^2), min_change * |first value|): the
        between-prompt noise, with `drift` the shared drift over the evaluations between a and b (a random walk of
        variance tau^2 per evaluation), each widened by its own exact Student t multiple, and the floor."""
        floor = self.cfg.min_change * abs(self.series[name][0]["value"])
        noise = noise_multiple(self.cfg.z, self.eval_pairs) * math.sqrt(a["se"] ** 2 + b["se"] ** 2)
        if self.cfg.drift:
            if shared is None:
                return math.inf  # too few evaluations to know the drift: nothing is beyond it yet
            index, (tau2, df) = shared
            apart = abs(index[id(a)] - index[id(b)])
            noise = max(noise, t_quantile(upper_tail(self.cfg.z), df) * math.sqrt(apart * tau2))
        return max(noise, floor)

    def _shared(self, name: str):
        """The drift of the series as `_threshold` reads it: ({id(point): evaluation index}, drift(series))."""
        s = self.series[name]
        d = drift(s) if self.cfg.drift else None
        return None if d is None else ({id(p): i for i, p in enumerate(s)}, d)

    def _check(self, name: str) -> dict | None:
        s, shared = self.series[name], self._shared(name)
        ref = decline(
            s,
            window=self.cfg.window,
            threshold=lambda a, b: self._threshold(name, a, b, shared),
            after_rise=name == "topk_entropy",
        )
        return None if ref is None else self._alarm(name, ref, s[-self.cfg.window :])

    def _alarm(self, name: str, ref: list[dict], window: list[dict]) -> dict:
        s, z, w = self.series[name], self.cfg.z, self.cfg.window
        first, risen = s[0], ref != [s[0]]
        fmt = lambda p: f"{p['value']:.4f} at step {p['step']}"  # noqa: E731
        shared = self._shared(name)
        need = [min(r["change"] - self._threshold(name, r, p, shared) for r in ref) for p in window]
        shown = ", ".join(
            f"{fmt(p)} (change {p['change']:+.4f}, se {p['se']:.4f}, needed < {n:+.4f})" for p, n in zip(window, need)
        )
        k, n = noise_multiple(z, self.eval_pairs), self.eval_pairs
        drifted = ""
        if shared is not None:
            tau2, df = shared[1]
            drifted = (f", {t_quantile(upper_tail(z), df):.2f} x the shared drift (sd {math.sqrt(tau2):.4f} per "
                       f"evaluation from {len(self.series[name]) - 1} steps, times sqrt(evaluations apart))")
        rule = (
            f"below max({k:.2f} x noise (z {z:g} widened to Student's t for {n} eval pairs){drifted}, "
            f"{self.cfg.min_change:g} x the first value = "
            f"{self.cfg.min_change * abs(first['value']):.4f}) on {w} evaluation(s) in a row"
        )
        if name == "topk_mass":
            text = f"top-k mass kept diminishing: from {fmt(first)}, {rule}: {shown}"
        elif risen:
            text = (
                f"top-k entropy turned down after a sustained rise: from {fmt(first)} up to "
                + ", ".join(f"{fmt(p)} (change {p['change']:+.4f}, se {p['se']:.4f})" for p in ref)
                + f", then {rule}: {shown}"
            )
        else:
            text = f"top-k entropy decreased: from {fmt(first)}, {rule}: {shown}"
        return {
            "indicator": name,
            "rule": "turned_down_after_rise" if risen else "fell_below_first",
            "step": window[-1]["step"],
            "first": first,
            "reference": ref,
            "window": window,
            "z": z,
            "min_change": self.cfg.min_change,
            "warning": text + "; likely over-optimisation",
        }
