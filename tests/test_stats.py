"""Tests for raybrain.analysis.stats against hand-computed cases and brute force."""

from __future__ import annotations

import math
from itertools import combinations, product

import numpy as np
import pytest

from raybrain.analysis import stats
from raybrain.analysis.stats import (
    _exact_permutation_u_pvalue,
    holm,
    mann_whitney_greater,
    min_exact_mw_pvalue,
    sem,
    trajectory_area,
    wilcoxon_greater,
)
from raybrain.errors import SpecError


def brute_force_u_pvalue(a, b):
    """P(U >= U_obs) over all splits, U counted pair by pair (no ranks)."""

    def u(x, y):
        return sum((xi > yj) + 0.5 * (xi == yj) for xi in x for yj in y)

    pooled = list(a) + list(b)
    n = len(a)
    observed = u(a, b)
    hits = total = 0
    for idx in combinations(range(len(pooled)), n):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += u(x, y) >= observed - 1e-12
        total += 1
    return hits / total


def brute_force_signed_rank_pvalue(d):
    """P(T+ >= T+_obs) over all 2**n sign vectors; zeros dropped, mid-ranks by hand."""
    d = [x for x in d if x != 0]
    absd = [abs(x) for x in d]
    order = sorted(absd)
    ranks = []
    for v in absd:  # mid-rank: mean of the 1-based positions holding v
        pos = [i + 1 for i, w in enumerate(order) if w == v]
        ranks.append(sum(pos) / len(pos))
    observed = sum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    hits = 0
    for signs in product([0, 1], repeat=len(d)):
        hits += sum(r for r, s in zip(ranks, signs, strict=True) if s) >= observed - 1e-12
    return hits / 2 ** len(d)


# --------------------------------------------------------------------------- sem, area


@pytest.mark.unit
def test_sem_hand_values():
    assert sem([1, 2, 3]) == pytest.approx(1 / math.sqrt(3))
    assert sem([5.0, 5.0]) == 0.0
    assert sem([2.0]) is None
    assert sem([]) is None
    with pytest.raises(SpecError, match="NaN or inf"):
        sem([1.0, float("nan")])
    with pytest.raises(SpecError, match="1-D"):
        sem([[1.0, 2.0]])


@pytest.mark.unit
def test_trajectory_area():
    assert trajectory_area([0.7] * 13) == pytest.approx(0.7)
    assert trajectory_area([0.0, 1.0, 0.5]) == pytest.approx(0.5)
    # comparable across epoch counts: same shape sampled twice as often, same area
    assert trajectory_area([0, 0, 1, 1]) == trajectory_area([0, 1])
    with pytest.raises(SpecError, match="at least 1 epoch"):
        trajectory_area([])
    with pytest.raises(SpecError, match="NaN or inf"):
        trajectory_area([0.5, float("inf")])


# --------------------------------------------------------------------------- Mann-Whitney


@pytest.mark.unit
def test_mw_full_separation_n5():
    p = mann_whitney_greater([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert p == pytest.approx(1 / 252, rel=1e-12)
    assert p == pytest.approx(min_exact_mw_pvalue(5), rel=1e-12)


@pytest.mark.unit
def test_mw_full_separation_n3_and_direction():
    assert mann_whitney_greater([0.9, 0.8, 0.85], [0.1, 0.2, 0.3]) == pytest.approx(0.05)
    # reversed direction: every split has U >= 0
    assert mann_whitney_greater([0.1, 0.2, 0.3], [0.9, 0.8, 0.85]) == pytest.approx(1.0)


@pytest.mark.unit
def test_mw_no_ties_hand_case():
    # a = [2, 4], b = [1, 3]: U = #{a > b} = 3 (2>1, 4>1, 4>3). Of the C(4, 2) = 6 splits
    # the U values are {0, 1, 2, 2, 3, 4}; P(U >= 3) = 2/6.
    assert mann_whitney_greater([2, 4], [1, 3]) == pytest.approx(2 / 6)


@pytest.mark.unit
@pytest.mark.parametrize(
    "a, b",
    [
        ([0.8, 0.8, 0.9, 0.7], [0.7, 0.6, 0.8, 0.5]),
        ([1, 1, 2], [1, 0, 0]),
        ([3, 3, 3, 3, 3], [3, 3, 2, 3, 1]),
        ([0.5, -np.inf, 0.9], [0.4, -np.inf, 0.1, 0.2]),  # diverged runs ranked worst
    ],
)
def test_mw_with_ties_matches_brute_force(a, b):
    assert mann_whitney_greater(a, b) == pytest.approx(brute_force_u_pvalue(a, b), rel=1e-12)


@pytest.mark.unit
def test_mw_ties_hand_case():
    # a = [1, 1], b = [1, 0]: U = (0.5 + 1) * 2 = 3. Pooled {1, 1, 1, 0}; splits of 2:
    # the three that leave out 0 give U = 3, the three that include it give U = 1.
    assert mann_whitney_greater([1, 1], [1, 0]) == pytest.approx(0.5)


@pytest.mark.unit
def test_mw_all_identical_is_one():
    assert mann_whitney_greater([1, 1, 1], [1, 1, 1]) == 1.0


@pytest.mark.unit
def test_mw_none_and_errors():
    assert mann_whitney_greater([1.0], [0.0, 2.0]) is None
    assert mann_whitney_greater([1.0, 2.0], []) is None
    with pytest.raises(SpecError, match="NaN"):
        mann_whitney_greater([1.0, float("nan")], [0.0, 2.0])


@pytest.mark.unit
def test_mw_monte_carlo_fallback(monkeypatch):
    a = np.array([3, 3, 4, 5, 5, 6, 2], dtype=float)
    b = np.array([1, 2, 3, 3, 2, 4, 1], dtype=float)
    exact = _exact_permutation_u_pvalue(a, b)
    assert exact == pytest.approx(brute_force_u_pvalue(a, b), rel=1e-12)
    monkeypatch.setattr(stats, "MAX_MW_ENUMERATION", 10)
    monkeypatch.setattr(stats, "MW_PERMUTATION_RESAMPLES", 20_000)
    approx = _exact_permutation_u_pvalue(a, b)
    assert approx == pytest.approx(exact, abs=0.01)
    assert approx > 0


@pytest.mark.unit
def test_min_exact_mw_pvalue():
    assert min_exact_mw_pvalue(3) == pytest.approx(0.05)
    assert min_exact_mw_pvalue(5) == pytest.approx(1 / 252)
    assert min_exact_mw_pvalue(10) == pytest.approx(1 / 184756)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(SpecError, match="integer >= 1"):
            min_exact_mw_pvalue(bad)


# --------------------------------------------------------------------------- Wilcoxon


@pytest.mark.unit
def test_wilcoxon_all_positive_distinct():
    a = [1.1, 2.2, 3.3, 4.4, 5.5]
    b = [1.0, 2.0, 3.0, 4.0, 5.0]  # differences 0.1 .. 0.5, all distinct and positive
    assert wilcoxon_greater(a, b) == pytest.approx(1 / 32)


@pytest.mark.unit
def test_wilcoxon_one_negative_smallest():
    # differences -1, 2, 3, 4, 5: T+ = 14; sign vectors with T+ >= 14 are the all-positive
    # one (15) and the observed one (14): p = 2/32.
    assert wilcoxon_greater([-1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(2 / 32)


@pytest.mark.unit
@pytest.mark.parametrize(
    "d",
    [
        [1.0, 1.0, 2.0, 3.0, -1.0],  # ties in |d|, including across signs
        [0.0, 2.0, 3.0, -1.0, 4.0],  # a zero difference
        [0.0, 0.0, 1.0, 1.0, 2.0, -2.0, 3.0],
        [5.0, -5.0, 5.0, 5.0],
    ],
)
def test_wilcoxon_ties_and_zeros_match_brute_force(d):
    # b = 0 so that a - b is exactly d (no rounding breaking or creating ties)
    want = brute_force_signed_rank_pvalue(d)
    assert wilcoxon_greater(d, [0.0] * len(d)) == pytest.approx(want, rel=1e-12)


@pytest.mark.unit
def test_wilcoxon_hand_case_with_zero():
    # differences 0, 1, 2: the zero is dropped; ranks 1, 2; T+ = 3 is the maximum,
    # reached by 1 of the 4 sign vectors.
    assert wilcoxon_greater([5, 6, 7], [5, 5, 5]) == pytest.approx(1 / 4)


@pytest.mark.unit
def test_wilcoxon_edge_cases():
    assert wilcoxon_greater([1.0, 2.0], [1.0, 2.0]) == 1.0  # all differences zero
    assert wilcoxon_greater([1.0], [0.0]) is None
    with pytest.raises(SpecError, match="same length"):
        wilcoxon_greater([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(SpecError, match="inf - inf"):
        wilcoxon_greater([np.inf, 1.0], [np.inf, 0.0])


@pytest.mark.unit
def test_wilcoxon_large_n_with_ties_uses_approximation():
    rng = np.random.default_rng(0)
    d = np.round(rng.normal(0.5, 1.0, size=30), 1)  # rounding makes ties
    assert np.unique(np.abs(d)).size < d.size
    p = wilcoxon_greater(d, np.zeros_like(d))
    assert 0.0 < p < 0.05  # a clear positive shift


# --------------------------------------------------------------------------- Holm


@pytest.mark.unit
def test_holm_hand_example():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 ->
    # monotone max 0.06)
    got = holm([0.03, 0.01, 0.04, 0.02])
    assert got == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # capped at 1, None passes through and is not counted in m
    # m = 3 (None not counted): 0.01 -> 0.03, 0.6 -> min(1, 1.2) = 1.0, 0.7 -> max(1.0, 0.7)
    got = holm([0.6, None, 0.01, 0.7])
    assert got[1] is None
    assert got == [pytest.approx(1.0), None, pytest.approx(0.03), pytest.approx(1.0)]
    assert holm([]) == []
    assert holm([None]) == [None]
    with pytest.raises(SpecError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])
    with pytest.raises(SpecError, match=r"\[0, 1\]"):
        holm([float("nan")])


def test_bootstrap_diff_ci_known_cases():
    from raybrain.analysis.stats import bootstrap_diff_ci

    # constant paired difference: the interval is that difference
    assert bootstrap_diff_ci([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], paired=True) == (0.5, 0.5)
    assert bootstrap_diff_ci([1.0], [0.0], paired=False) is None
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    lo, hi = bootstrap_diff_ci(a, b, paired=False)
    d = a.mean() - b.mean()
    half = 1.96 * np.sqrt(a.var(ddof=1) / 200 + b.var(ddof=1) / 200)
    assert lo < d < hi
    assert (hi - lo) == pytest.approx(2 * half, rel=0.1)  # close to the normal-theory width
    assert bootstrap_diff_ci(a, b, paired=False) == (lo, hi)  # reproducible
    lo_p, hi_p = bootstrap_diff_ci(a, a - 0.3 + rng.normal(0, 0.01, 200), paired=True)
    assert lo_p < 0.3 < hi_p and hi_p - lo_p < 0.01
