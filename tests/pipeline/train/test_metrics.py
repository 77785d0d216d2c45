"""The over-optimisation watch (noise-aware rule, no model needed), bootstrap noise and the metrics log."""

import json
import math

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.train.config import TrainConfig, load_train_config
from pipeline.train.metrics import MetricsLog, OverOptConfig, OverOptimisationWatch, bootstrap, noise_multiple


def feed(entropy=None, mass=None, *, se=0.01, n=10_000, **cfg):
    """Alarms per evaluation (steps 0, 10, 20, ...) for indicator levels; the change is since the first
    evaluation, which has se 0 (nothing changed yet), later ones `se`. One series may be left flat.
    n: eval pairs; 10,000 makes the noise multiple z itself (to 0.1%), so thresholds read as z * se.
    The shared drift is off unless asked for: these series test the between-prompt rule, window and floor."""
    length = len(entropy or mass)
    series = {"topk_entropy": entropy or [1.0] * length, "topk_mass": mass or [0.8] * length}
    w = OverOptimisationWatch(OverOptConfig(**{"drift": False, **cfg}))
    out = []
    for i in range(length):
        points = {k: {"value": v[i], "change": v[i] - v[0], "se": se if i else 0.0} for k, v in series.items()}
        out.append(w.update(10 * i, points, eval_pairs=n))
    return out, w


def fired_at(alarms):
    return [i for i, a in enumerate(alarms) if a]


def pairs(rng, n=10):
    """Heterogeneous eval pairs: per-pair indicator levels and response tokens."""
    return {"topk_entropy": rng.uniform(0.8, 1.8, n), "topk_mass": rng.uniform(0.6, 0.95, n)}, rng.integers(20, 120, n)


def observe_all(w, levels_per_eval, tokens):
    return [w.observe(10 * i, {k: v * tokens for k, v in lv.items()}, tokens, seed=i)[1]
            for i, lv in enumerate(levels_per_eval)]


@pytest.mark.parametrize("min_change", [0.0, 0.02])
def test_a_flat_noisy_series_never_warns(min_change):
    # a model that wanders without moving: each pair's indicators move by zero-mean noise at every evaluation
    # after the first (the reference model); with the floor off, the noise rule alone holds over 150 runs of 40
    # evaluations. A single-evaluation peak as reference, or z=2 with window 1, fire on such series
    rng = np.random.default_rng(0)
    for _ in range(150):
        base, tokens = pairs(rng)
        w = OverOptimisationWatch(OverOptConfig(min_change=min_change, resamples=200))
        evals = [base] + [{k: v + 0.02 * rng.standard_normal(len(v)) for k, v in base.items()} for _ in range(39)]
        assert not any(observe_all(w, evals, tokens))


def test_the_change_is_paired_so_the_spread_between_prompts_does_not_hide_it():
    rng = np.random.default_rng(2)
    base, tokens = pairs(rng)
    shifted = {k: v - 0.05 + 0.005 * rng.standard_normal(len(v)) for k, v in base.items()}
    w = OverOptimisationWatch()
    w.observe(0, {k: v * tokens for k, v in base.items()}, tokens)
    changes, _ = w.observe(10, {k: v * tokens for k, v in shifted.items()}, tokens)
    level = bootstrap(shifted["topk_mass"] * tokens, tokens)
    mass = changes["topk_mass"]
    assert mass.value == pytest.approx(level.value - np.dot(base["topk_mass"], tokens) / tokens.sum())
    assert mass.se < level.se / 10 and mass.hi < 0  # a clear shift, though within the levels' spread
    assert w.series["topk_mass"][1]["change"] == mass.value and w.series["topk_mass"][0]["se"] == 0.0


def test_the_issue_series_a_small_consistent_mass_decline_is_normal_movement():
    # 0.8688 -> 0.8665 warned under the old rule (tol 1e-3, patience 2). Every pair moving alike gives it a tiny
    # paired se, so the noise rule alone fires on it; the floor (2% of the first value, 0.0174) is what holds
    rng = np.random.default_rng(3)
    base, tokens = pairs(rng)
    base["topk_mass"] += 0.8688 - np.dot(base["topk_mass"], tokens) / tokens.sum()
    evals = [{"topk_entropy": base["topk_entropy"], "topk_mass": base["topk_mass"] + d}
             for d in (0.0, -0.0012, -0.0023, -0.0030)]
    assert not any(observe_all(OverOptimisationWatch(), evals, tokens))
    no_floor = OverOptConfig(min_change=0.0, drift=False)  # the between-prompt rule alone
    assert fired_at(observe_all(OverOptimisationWatch(no_floor), evals, tokens)) == [2]


def test_a_sustained_mass_decline_beyond_the_noise_warns_once_with_its_evidence():
    alarms, w = feed(mass=[0.87, 0.86, 0.85, 0.83, 0.82, 0.78], se=0.01)
    # needs a change below -max(3 * sqrt(0 + 0.01^2), 0.02 * 0.87) = -0.030: 0.83 (-0.04) and 0.82 (-0.05)
    assert fired_at(alarms) == [4]
    (alarm,) = alarms[4]
    assert alarm["indicator"] == "topk_mass" and alarm["step"] == 40
    assert [p["step"] for p in alarm["window"]] == [30, 40]
    text = alarm["warning"]
    assert "from 0.8700 at step 0" in text
    assert "0.8200 at step 40 (change -0.0500, se 0.0100, needed < -0.0300)" in text
    assert ("max(3.00 x noise (z 3 widened to Student's t for 10000 eval pairs), 0.02 x the first value = 0.0174) "
            "on 2 evaluation(s) in a row") in text
    assert w.fired == [alarm] and w.holding == ["topk_mass"]  # still holding at 0.78, not announced again


def test_entropy_decreasing_from_the_start_beyond_the_noise_warns():
    # the pattern bench/overopt.py measured: entropy fell from the first step and never rose
    alarms, _ = feed(entropy=[1.20, 1.19, 1.16, 1.14, 1.12], se=0.01)
    assert fired_at(alarms) == [3]  # -0.04 and -0.06 below the first, beyond max(0.03, 0.024)
    assert alarms[3][0]["rule"] == "fell_below_first" and "top-k entropy decreased" in alarms[3][0]["warning"]


def test_a_rise_then_fall_of_entropy_warns_even_above_its_start():
    # the first's threshold is max(3 * 0.01, 0.02) = 0.03, two later evaluations' 3 * sqrt(2) * 0.01 = 0.042:
    # 1.06-1.08 rose beyond it and held; falling back to 1.04-1.05 stays within the noise of every risen pair
    assert not any(feed(entropy=[1.00, 1.06, 1.07, 1.08, 1.05, 1.04, 1.05], se=0.01)[0])
    alarms, _ = feed(entropy=[1.00, 1.06, 1.07, 1.08, 1.05, 1.02, 1.01], se=0.01)
    assert fired_at(alarms) == [6]  # 1.02 and 1.01 are both below 1.07 - 0.042 (and 1.08 - 0.042)
    (alarm,) = alarms[6]
    assert alarm["rule"] == "turned_down_after_rise" and [p["step"] for p in alarm["reference"]] == [20, 30]
    assert "turned down after a sustained rise" in alarm["warning"]


def test_entropy_moving_within_the_noise_or_rising_only_once_is_not_the_pattern():
    assert not any(feed(entropy=[1.00, 1.02, 1.03, 0.99, 0.98, 0.99])[0])  # all within 0.03 of the first
    # one-evaluation rises, then back to the start: a single peak would fire (1.10 - 1.00 > 0.042), a run does not
    assert not any(feed(entropy=[1.00, 1.10, 1.00, 1.10, 1.00, 1.00])[0])
    assert fired_at(feed(entropy=[1.00, 1.10, 1.10, 1.00, 1.00])[0]) == [4]


@pytest.mark.parametrize("window", [1, 2, 3])
def test_the_window_edge_a_drop_held_one_evaluation_short_does_not_warn(window):
    low = [0.80] * (window - 1)
    assert not any(feed(mass=[0.87] + low + [0.87, 0.87], window=window)[0])  # back before the window filled
    assert fired_at(feed(mass=[0.87] + low + [0.80, 0.87], window=window)[0]) == [window]  # held exactly `window`


@pytest.mark.parametrize("z", [1.0, 3.0])
def test_the_noise_edge_a_drop_just_inside_the_threshold_does_not_warn(z):
    se_a, se_b = 0.01, 0.02  # unequal se: the threshold adds them in quadrature
    edge = noise_multiple(z, 8) * math.hypot(se_a, se_b)  # 8 eval pairs: z widened for an estimated se

    def run(drop):
        w = OverOptimisationWatch(OverOptConfig(z=z, window=2, min_change=0.0, drift=False))
        pts = [(0.87, 0.0, 0.0), (0.87, 0.0, se_a), (0.87 - drop, -drop, se_b), (0.87 - drop, -drop, se_b)]
        # entropy: a sustained level with se_a at step 10 and 20 (held out of the window), then the drop
        ent = [(1.0, 0.0, 0.0), (1.5, 0.5, se_a), (1.5, 0.5, se_a), (1.5 - drop, 0.5 - drop, se_b),
               (1.5 - drop, 0.5 - drop, se_b)]
        out = []
        for i, (e, m) in enumerate(zip(ent, pts + [pts[-1]])):
            out.append(w.update(10 * i, {"topk_entropy": dict(zip(("value", "change", "se"), e)),
                                         "topk_mass": dict(zip(("value", "change", "se"), m))}, eval_pairs=8))
        return out

    inside, outside = run(edge * 0.999), run(edge * 1.001)
    assert not any(a["indicator"] == "topk_entropy" for alarms in inside for a in alarms)
    assert [i for i, alarms in enumerate(outside) if any(a["indicator"] == "topk_entropy" for a in alarms)] == [4]
    # mass against the first (se 0): its threshold is the multiple times se alone
    edge = noise_multiple(z, 8) * se_b
    for factor, expected in ((0.999, []), (1.001, [2])):
        drop = factor * edge
        assert fired_at(feed(mass=[0.87, 0.87 - drop, 0.87 - drop], se=se_b, n=8, z=z, min_change=0.0)[0]) == expected


def test_the_noise_multiple_is_students_t_for_an_se_estimated_from_few_pairs():
    # exact t quantiles at the tail of z = 3 (one-sided 0.99865), times sqrt(n / (n - 1)) for the plug-in se
    for n, t in ((10, 4.0943), (20, 3.4472), (50, 3.1605)):
        assert noise_multiple(3.0, n) == pytest.approx(t * math.sqrt(n / (n - 1)), rel=0.005)
    assert noise_multiple(3.0, 3) > 10  # three pairs: only a collapse counts
    assert noise_multiple(3.0, 100_000) == pytest.approx(3.0, rel=1e-3)


def test_the_floor_edge_a_change_within_normal_movement_does_not_warn():
    floor = 0.02 * 0.87  # min_change x the first value; the noise term made negligible
    assert not any(feed(mass=[0.87] + [0.87 - 0.999 * floor] * 3, se=1e-6)[0])
    assert fired_at(feed(mass=[0.87] + [0.87 - 1.001 * floor] * 3, se=1e-6)[0]) == [2]


def test_too_few_eval_pairs_turn_the_watch_off_and_say_how_to_fix_it():
    alarms, w = feed(mass=[0.87, 0.5, 0.4, 0.3], n=2)  # a collapse, but two pairs cannot give a noise estimate
    assert not any(alarms) and not w.active
    assert "2 pair(s)" in w.note() and "fix: raise eval_fraction" in w.note()
    assert w.summary()["active"] is False
    alarms, w = feed(mass=[0.87, 0.5, 0.4, 0.3], n=3)
    assert w.active and fired_at(alarms) == [2] and w.note() is None


def test_bootstrap_gives_the_standard_error_of_a_mean_and_of_a_token_weighted_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 1.0, 60)
    e = bootstrap(x, resamples=4000, seed=0)
    assert e.value == pytest.approx(x.mean()) and e.n == 60
    assert e.se == pytest.approx(x.std(ddof=1) / math.sqrt(60), rel=0.1)
    assert e.lo < e.value < e.hi and e.hi - e.lo == pytest.approx(2 * 1.96 * e.se, rel=0.15)
    assert bootstrap(x, seed=3) == bootstrap(x, seed=3)  # reproducible (and so after a resume)
    # token-weighted: a long pair counts for its tokens; one pair alone has no noise estimate
    w = bootstrap([9.0, 1.0], [10.0, 1.0], seed=0)
    assert w.value == pytest.approx(10 / 11) and w.se > 0
    assert math.isnan(bootstrap([0.5], [4.0]).se)


def test_watch_state_survives_a_resume():
    rng = np.random.default_rng(4)
    base, tokens = pairs(rng)
    evals = [{k: v - d for k, v in base.items()} for d in (0.0, 0.05, 0.1, 0.15)]  # steady: no drift noise
    a = OverOptimisationWatch()
    observe_all(a, evals[:3], tokens)
    b = OverOptimisationWatch()
    b.load(json.loads(json.dumps(a.state())))
    nxt = {k: v * tokens for k, v in evals[3].items()}
    assert b.observe(30, nxt, tokens, seed=3)[1] == a.observe(30, nxt, tokens, seed=3)[1] and a.fired == b.fired
    assert a.fired  # the comparison was of alarms, not of two empty lists
    c = OverOptimisationWatch()
    c.load({"entropy": [1.0, 1.2], "mass": [0.8, 0.8]})  # a checkpoint written before noise estimates: restarts
    assert c.first is None and c.series == {"topk_entropy": [], "topk_mass": []}
    with pytest.raises(ValueError, match="the first evaluation had 10"):
        a.observe(30, {k: v[:5] for k, v in nxt.items()}, tokens[:5])


def test_watch_settings_are_validated_and_enter_the_run_key_only_with_early_stop():
    with pytest.raises(ConfigError, match="overopt.window"):
        load_train_config(overrides=["overopt.window=0"])
    base, other = TrainConfig(), TrainConfig(overopt={"z": 2.0})
    assert base.weight_fields() == other.weight_fields()  # the watch only reads the eval: same weights
    stop = TrainConfig(early_stop=True)
    assert stop.weight_fields() != stop.model_copy(update={"overopt": OverOptConfig(z=2.0)}).weight_fields()


def test_a_resumed_log_drops_records_past_the_checkpoint(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(5):
        log.write({"step": step, "loss": 1.0 / (step + 1)})
    MetricsLog(tmp_path, tensorboard=False, resume_step=2).write({"step": 3, "loss": 0.0})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    MetricsLog(tmp_path, tensorboard=False, resume_step=0)  # a fresh start: nothing kept
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_bundled_example_train_config_is_valid():
    from pipeline.stages.prompts import bundled_data_dir
    from pipeline.train.config import load_train_config

    cfg = load_train_config(bundled_data_dir() / "configs" / "train.yaml")
    assert cfg.losses == {"sigmoid": 1.0, "nll": 0.1} and cfg.micro_batch_size == 4


def test_a_single_eval_pair_logs_no_noise_fields():
    from pipeline.train.trainer import _noise

    one = bootstrap([0.7])  # one pair has no spread to resample: NaN se, which json would write as invalid NaN
    assert math.isnan(one.se) and _noise("eval/topk_mass", se=one.se, lo=one.lo, hi=one.hi) == {}
    assert _noise("eval/topk_mass", se=0.01, lo=0.6, hi=0.8) == {"eval/topk_mass_se": 0.01, "eval/topk_mass_lo": 0.6,
                                                                 "eval/topk_mass_hi": 0.8}


def test_the_t_quantile_is_exact():
    stats = pytest.importorskip("scipy.stats")
    from pipeline.train.tdist import t_quantile

    for df in (1, 2, 2.5, 9, 41.3, 1000):
        for tail in (0.5 * math.erfc(3 / math.sqrt(2)), 0.025, 0.3):
            assert t_quantile(tail, df) == pytest.approx(stats.t.isf(tail, df), rel=1e-9)
    assert noise_multiple(3.0, 3) == pytest.approx(23.52, abs=0.01)  # the Cornish-Fisher expansion gave 18.2


def simulate(runs, *, drift, shape, decline=0.0, n_evals=40, seed=0, drift_off=False):
    """Evaluation index of the first alarm (None: quiet) per simulated run: the flat runs above, plus a shift
    shared by every eval pair of `drift` x the indicator's level per evaluation, independent each evaluation
    ('iid') or accumulating ('walk'), plus a steady decline of `decline` x the level per evaluation."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(runs):
        base, tokens = pairs(rng)
        level = {k: np.dot(v, tokens) / tokens.sum() for k, v in base.items()}
        w = OverOptimisationWatch(OverOptConfig(resamples=200, drift=not drift_off))
        walk, first = dict.fromkeys(base, 0.0), None
        for i in range(n_evals):
            lv = dict(base)
            if i:
                for k, v in base.items():
                    shift = drift * level[k] * rng.standard_normal()
                    walk[k] = walk[k] + shift if shape == "walk" else shift
                    lv[k] = v + 0.02 * rng.standard_normal(len(v)) + walk[k] - decline * level[k] * i
            if w.observe(i, {k: v * tokens for k, v in lv.items()}, tokens, seed=i)[1]:
                first = i
                break
        out.append(first)
    return out


@pytest.mark.parametrize("shape", ["iid", "walk"])
@pytest.mark.parametrize("drift", [0.005, 0.015])
def test_drift_shared_by_every_prompt_rarely_fires_at_the_defaults(drift, shape):
    # issue 38: the paired bootstrap sees only the spread between prompts; a shift shared by all of them made
    # 54% of such runs fire (1.5%, with the floor). The default watch counts the series' own step-to-step movement:
    # <= 5% (measured: 0 of 100 in each case; without the drift term 0, 57, 46 and 95 of 100 for iid/walk at 0.5%/1.5%)
    assert OverOptConfig().drift
    fired = [f for f in simulate(100, drift=drift, shape=shape) if f is not None]
    assert len(fired) <= 5
    if (drift, shape) == (0.015, "iid"):  # the between-prompt rule alone: the issue's finding, reproduced
        assert sum(f is not None for f in simulate(40, drift=drift, shape=shape, drift_off=True)) >= 10


def test_a_steady_decline_under_shared_drift_still_fires():
    # over-optimisation as a steady fall of 2% of the level per evaluation, on top of 0.5% shared drift
    first = simulate(20, drift=0.005, shape="iid", decline=0.02, n_evals=20, seed=1)
    assert all(f is not None for f in first) and max(first) <= 16  # measured: evaluations 3-15, median 9


# bench/README.md, bench/overopt.py's over-optimised arm (2026-12-01): top-k entropy change since step 0 and its
# paired se at the evaluated steps (7 and 9 are not in the recorded table)
OVEROPT_STEPS = [0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12]
OVEROPT_ENTROPY = [(0.0, 0.0), (-0.0337, 0.0066), (-0.0507, 0.0094), (-0.0720, 0.0165), (-0.0903, 0.0199),
                   (-0.1015, 0.0238), (-0.1132, 0.0271), (-0.1286, 0.0301), (-0.1368, 0.0295), (-0.1405, 0.0303),
                   (-0.1444, 0.0316)]


def _replay(cfg: OverOptConfig) -> list[int]:
    w, fired = OverOptimisationWatch(cfg), []
    for step, (change, se) in zip(OVEROPT_STEPS, OVEROPT_ENTROPY):
        points = {"topk_entropy": {"value": 1.2270 + change, "change": change, "se": se},
                  "topk_mass": {"value": 0.8448, "change": 0.0, "se": 0.001 if step else 0.0}}
        fired += [step] if w.update(step, points, eval_pairs=10) else []
    return fired


def test_the_recorded_over_optimised_run_fires_at_the_defaults_though_its_decline_decelerates():
    """The decline's steps shrink (-0.034, -0.017, -0.021, -0.018, -0.011, ...): the variance of the steps read that
    as drift and never fired; the mean square successive difference of the steps does not, and fires at step 11.
    The between-prompt rule alone fires at step 2 (and again at 11), as recorded."""
    assert _replay(OverOptConfig()) == [11]
    assert _replay(OverOptConfig(drift=False)) == [2, 11]


def test_the_drift_estimate_ignores_a_steady_or_slowly_changing_trend():
    from pipeline.train.metrics import drift

    series = lambda cs: [{"change": c} for c in cs]  # noqa: E731
    assert drift(series([0.0, -0.1, -0.2])) is None  # three evaluations: one difference of steps, too few
    assert drift(series([0.0, -0.1, -0.2, -0.3, -0.4]))[0] == pytest.approx(0.0)  # a straight line: no drift
    decel = [0.0, -0.08, -0.14, -0.18, -0.20, -0.21]  # steps -0.08 ... -0.01, slowing steadily
    tau2, df = drift(series(decel))
    steps = np.diff(decel)
    assert tau2 == pytest.approx(np.mean(np.diff(steps) ** 2) / 2) and tau2 < np.var(steps, ddof=1) / 4
    assert df == pytest.approx(2 * 16 / 11)  # Satterthwaite for m = 4 differences: 2 m^2 / (3m - 1)
    rng = np.random.default_rng(0)  # a random walk: unbiased for its step variance
    est = [drift(series(np.cumsum(rng.normal(0, 0.1, 30))))[0] for _ in range(2000)]
    assert np.mean(est) == pytest.approx(0.01, rel=0.05)


def test_bootstrap_interval_is_bca_and_agrees_with_scipy():
    """The interval is BCa: on skewed win data it matches scipy.stats.bootstrap(method='BCa') to Monte Carlo error,
    and differs from the plain percentile interval."""
    from scipy import stats

    x = np.array([1.0] * 9 + [0.5] + [0.0] * 2)  # 12 prompts, mostly wins: a skewed bootstrap distribution
    est = bootstrap(x, resamples=40_000, seed=0)
    ref = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=40_000, random_state=0).confidence_interval
    assert est.lo == pytest.approx(ref.low, abs=0.02) and est.hi == pytest.approx(ref.high, abs=0.02)
    idx = np.random.default_rng(0).integers(0, len(x), size=(40_000, len(x)))
    plo, phi = np.percentile(x[idx].mean(1), [2.5, 97.5])
    assert est.lo < plo - 0.02  # BCa moves the interval away from the bound the estimate sits near


def test_bootstrap_interval_covers_at_small_counts():
    """Issue 38: the percentile interval covered 0.82-0.93 at 12 prompts (nominal 0.95); BCa comes close to 0.95.
    400 simulated eval sets of 12 prompts, wins 1 / ties 0.5 / losses 0 with a true win rate of 0.85."""
    rng = np.random.default_rng(1)
    probs, truth = [0.1, 0.1, 0.8], 0.85
    covered = 0
    for i in range(400):
        est = bootstrap(rng.choice([0.0, 0.5, 1.0], size=12, p=probs), resamples=1000, seed=i)
        covered += est.lo <= truth <= est.hi
    assert covered / 400 >= 0.89  # measured 0.92 here, the percentile interval 0.79 on the same sets
