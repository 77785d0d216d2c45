"""Aggregation and agreement statistics against hand-computed small cases."""

import math

import pytest

from judges.agreement import (bradley_terry, cohen_kappa, kendall_tau_b, krippendorff_alpha_interval,
                              krippendorff_alpha_nominal, majority, median, outcome, zscore)


def test_zscore_and_median():
    assert zscore([1.0, 3.0]) == [-1.0, 1.0]
    assert zscore([2.0, 2.0]) == [0.0, 0.0]
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_majority_needs_more_than_half():
    assert majority([1, 1, -1]) == 1 and majority([-1, -1, 0]) == -1
    assert majority([1, -1, 0]) == 0 and majority([1, -1]) == 0 and majority([1, 0]) == 0
    assert outcome(2.0, 1.0) == 1 and outcome(1.0, 2.0) == -1 and outcome(1.0, 1.0) == 0


def test_bradley_terry_two_items_by_hand():
    # item 0 beats item 1 three times out of four: MLE strength ratio p0/p1 = 3
    s = bradley_terry(2, [(0, 1, 1)] * 3 + [(0, 1, -1)], prior=0.0)
    assert abs((s[0] - s[1]) - math.log(3)) < 1e-6 and abs(s[0] + s[1]) < 1e-12


def test_bradley_terry_ties_count_half_and_order_matches_wins():
    s = bradley_terry(2, [(0, 1, 0), (0, 1, 1)], prior=0.0)  # 1.5 vs 0.5 wins -> ratio 3
    assert abs((s[0] - s[1]) - math.log(3)) < 1e-6
    s = bradley_terry(3, [(0, 1, 1), (1, 2, 1), (0, 2, 1)])
    assert s[0] > s[1] > s[2] and all(math.isfinite(x) for x in s)  # the winless item stays finite


def test_kendall_tau_b_by_hand():
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    # pairs: (0,1) C, (0,2) C, (1,2) tie in y only -> nc=2, nd=0, tx=0, ty=1: 2 / sqrt(2*3)
    assert abs(kendall_tau_b([1, 2, 3], [1, 2, 2]) - 2 / math.sqrt(6)) < 1e-12
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_kendall_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    x, y = [3.1, 1.0, 2.2, 2.2, 5.0, 4.0], [2.0, 1.5, 1.5, 3.0, 4.0, 4.5]
    assert abs(kendall_tau_b(x, y) - stats.kendalltau(x, y).statistic) < 1e-12


def test_krippendorff_alpha_by_hand():
    # units [1,2] and [3,3]: D_o = 2/4, D_e = 22/12 -> alpha = 1 - (1/2)/(11/6) = 8/11
    assert abs(krippendorff_alpha_interval([[1, 2], [3, 3]]) - 8 / 11) < 1e-12
    assert krippendorff_alpha_interval([[1, 1], [2, 2], [5, 5]]) == 1.0
    # a unit with one value is not pairable; missing values are skipped
    assert abs(krippendorff_alpha_interval([[1, 2, None], [3, 3], [7, None]]) - 8 / 11) < 1e-12
    assert krippendorff_alpha_interval([[1, None]]) is None
    # one unit (a prompt with a single candidate): D_e is built from D_o's own values, alpha undefined (not 0)
    assert krippendorff_alpha_interval([[1, 3]]) is None and krippendorff_alpha_interval([[1, 3], [2, None]]) is None


def test_krippendorff_alpha_nominal_matches_krippendorffs_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", nominal example: 4 coders x 12 units,
    # alpha = 0.743 (published to three places)
    coders = ["1 2 3 3 2 1 4 1 2 . . .", "1 2 3 3 2 2 4 1 2 5 . 3", ". 3 3 3 2 3 4 2 2 5 1 .", "1 2 3 3 2 4 4 1 2 5 1 ."]
    rows = [[None if v == "." else v for v in c.split()] for c in coders]
    units = [list(u) for u in zip(*rows)]
    assert round(krippendorff_alpha_nominal(units), 3) == 0.743
    assert krippendorff_alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0
    assert krippendorff_alpha_nominal([["a", "a"], ["a", "a"]]) is None  # one category: undefined
    assert krippendorff_alpha_nominal([["a", "b"], ["x", None]]) is None  # one pairable unit


def test_cohen_kappa_by_hand():
    # confusion [[20, 5], [10, 15]] (Wikipedia's example): p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert abs(cohen_kappa(a, b) - 0.4) < 1e-12
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None and cohen_kappa([], []) is None
