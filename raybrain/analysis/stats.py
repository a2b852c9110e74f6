"""Statistics over arms and seeds: s.e.m., trajectory area, one-sided tests, Holm.

All tests are one-sided in the direction "a is greater than b"; pass the arm expected to
be better as ``a`` (for a loss, where lower is better, pass negated values).

Exactness: scipy's ``method="exact"`` for Mann-Whitney U and the Wilcoxon signed-rank
test assumes there are no ties (and, for Wilcoxon, no zero differences). When the data
have ties this module computes the exact permutation p-value of the same statistic
instead of using a null distribution that does not apply.

``scipy.stats`` is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from raybrain.errors import SpecError

__all__ = [
    "sem",
    "trajectory_area",
    "mann_whitney_greater",
    "wilcoxon_greater",
    "holm",
    "min_exact_mw_pvalue",
]

#: Largest number of splits C(n + m, n) enumerated exactly by the Mann-Whitney
#: permutation fallback; above it a Monte Carlo permutation test is used.
MAX_MW_ENUMERATION = 200_000
#: Number of random permutations when the Mann-Whitney split count exceeds
#: :data:`MAX_MW_ENUMERATION`.
MW_PERMUTATION_RESAMPLES = 100_000
#: Largest number of pairs for which the Wilcoxon sign-flip distribution is computed
#: exactly (all 2**n sign vectors) when there are ties or zero differences.
MAX_WILCOXON_EXACT_N = 20


def _as_1d(x: Sequence[float], name: str, *, allow_inf: bool) -> np.ndarray:
    """Convert to a 1-D float array; SpecError for other shapes, NaN (and inf unless allowed)."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise SpecError(f"{name} must be a 1-D sequence of numbers, but got {x!r}") from None
    if arr.ndim != 1:
        raise SpecError(f"{name} must be 1-D, but got an array of shape {arr.shape}")
    bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
    if bad.any():
        what = "NaN" if allow_inf else "NaN or inf"
        raise SpecError(
            f"{name} must not contain {what} (flag diverged runs before testing), "
            f"but got {arr.tolist()}"
        )
    return arr


def sem(x: Sequence[float]) -> float | None:
    """Standard error of the mean, ``std(x, ddof=1) / sqrt(n)``.

    Parameters
    ----------
    x : sequence of float, shape (n,)
        Finite values (e.g. one metric across seeds).

    Returns
    -------
    float or None
        The s.e.m.; None when ``n < 2``, where it is not computable (None rather than
        NaN so that "not computable" cannot be mistaken for a diverged value).

    Raises
    ------
    SpecError
        If ``x`` is not 1-D or contains NaN or inf.
    """
    arr = _as_1d(x, "sem: x", allow_inf=False)
    if arr.size < 2:
        return None
    return float(np.std(arr, ddof=1) / math.sqrt(arr.size))


def trajectory_area(values: Sequence[float]) -> float:
    """Normalised area under a metric trajectory over epochs 1..E.

    Defined as the mean of the per-epoch values, i.e. the rectangle-rule area with unit
    epoch width divided by the number of epochs E. It therefore lies within the range of
    the metric (a constant trajectory has the area of that constant) and is comparable
    between runs with different numbers of epochs. Higher means the metric was higher
    on average over training (for a loss, lower is better).

    Parameters
    ----------
    values : sequence of float, shape (E,)
        The metric after epochs 1, 2, ..., E; finite.

    Returns
    -------
    float

    Raises
    ------
    SpecError
        If ``values`` is empty, not 1-D, or contains NaN or inf.
    """
    arr = _as_1d(values, "trajectory_area: values", allow_inf=False)
    if arr.size == 0:
        raise SpecError("trajectory_area: needs at least 1 epoch, but got an empty trajectory")
    return float(arr.mean())


def _doubled_midranks(x: np.ndarray) -> np.ndarray:
    """Twice the mid-ranks (1-based) of ``x`` as integers, so rank sums are exact."""
    from scipy.stats import rankdata

    return np.rint(2 * rankdata(x, method="average")).astype(np.int64)


def _exact_permutation_u_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided permutation p-value of the Mann-Whitney U statistic, valid with ties.

    ``U = #{(i, j): a_i > b_j} + 0.5 #{(i, j): a_i == b_j}``, which equals the mid-rank
    sum of ``a`` in the pooled sample minus ``n (n + 1) / 2``. Under the null every way
    of choosing which ``n`` of the ``n + m`` pooled values form ``a`` is equally likely;
    the p-value is the fraction of those splits whose U is at least the observed U.

    All C(n + m, n) splits are enumerated when there are at most
    :data:`MAX_MW_ENUMERATION` of them; otherwise ``scipy.stats.permutation_test`` draws
    :data:`MW_PERMUTATION_RESAMPLES` random splits (fixed seed, so the result is
    reproducible; scipy's estimate counts the observed split, so it is never 0).

    Parameters
    ----------
    a : np.ndarray, shape (n,)
    b : np.ndarray, shape (m,)

    Returns
    -------
    float
        P(U >= U_observed) under random splitting.
    """
    n, m = a.size, b.size
    pooled = np.concatenate([a, b])
    n_splits = math.comb(n + m, n)
    if n_splits <= MAX_MW_ENUMERATION:
        ranks2 = _doubled_midranks(pooled)  # rank sums of a are sums of n of these
        observed = int(ranks2[:n].sum())
        idx = np.fromiter(
            combinations(range(n + m), n), dtype=np.dtype((np.intp, n)), count=n_splits
        )
        sums = ranks2[idx].sum(axis=1)
        return float(np.count_nonzero(sums >= observed) / n_splits)

    from scipy.stats import permutation_test, rankdata

    def u_statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        ranks = rankdata(np.concatenate([x, y], axis=axis), axis=axis)
        nx = x.shape[axis]
        return np.take(ranks, np.arange(nx), axis=axis).sum(axis=axis) - nx * (nx + 1) / 2

    res = permutation_test(
        (a, b),
        u_statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=MW_PERMUTATION_RESAMPLES,
        alternative="greater",
        rng=np.random.default_rng(0),
    )
    return float(res.pvalue)


def mann_whitney_greater(a: Sequence[float], b: Sequence[float]) -> float | None:
    """One-sided exact Mann-Whitney U p-value for "a tends to be greater than b".

    Without ties in the pooled sample this is
    ``scipy.stats.mannwhitneyu(a, b, alternative="greater", method="exact")``. With
    ties, scipy's exact null distribution (which assumes none) does not apply, and the
    exact permutation p-value of the mid-rank U statistic is returned instead (see
    :func:`_exact_permutation_u_pvalue`).

    Parameters
    ----------
    a : sequence of float, shape (n,)
        The arm expected to be greater (e.g. brain), one value per seed. ``-inf``/``inf``
        are allowed (e.g. diverged runs ranked worst); NaN is not.
    b : sequence of float, shape (m,)
        The comparison arm.

    Returns
    -------
    float or None
        The p-value; None when either sample has fewer than 2 values.

    Raises
    ------
    SpecError
        If an input is not 1-D or contains NaN.
    """
    x = _as_1d(a, "mann_whitney_greater: a", allow_inf=True)
    y = _as_1d(b, "mann_whitney_greater: b", allow_inf=True)
    if x.size < 2 or y.size < 2:
        return None
    pooled = np.concatenate([x, y])
    if np.unique(pooled).size < pooled.size:
        return _exact_permutation_u_pvalue(x, y)
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(x, y, alternative="greater", method="exact").pvalue)


def _sign_flip_pvalue(d: np.ndarray) -> float:
    """Exact one-sided p-value of the signed-rank statistic over all 2**n sign flips.

    Zero differences are dropped (the usual "wilcox" convention, also scipy's default)
    and the rest ranked by ``|d|`` with mid-ranks for ties. The statistic is
    ``T+ = sum of the ranks of the positive differences``; under the null each sign is
    +/- with probability 1/2 independently, so the p-value is
    ``#{sign vectors with T+ >= observed} / 2**n``. The count over all ``2**n`` vectors
    is obtained exactly by convolving the per-pair choices (rank or 0), which gives the
    same number as listing the vectors one by one.

    Parameters
    ----------
    d : np.ndarray, shape (n,)
        Paired differences ``a - b``, not all zero.

    Returns
    -------
    float
    """
    from scipy.stats import rankdata

    nz = d[d != 0]
    ranks2 = np.rint(2 * rankdata(np.abs(nz), method="average")).astype(np.int64)
    observed = int(ranks2[nz > 0].sum())
    counts = np.zeros(int(ranks2.sum()) + 1, dtype=np.int64)  # counts[s]: vectors with 2T+ = s
    counts[0] = 1
    for r in ranks2:
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[: counts.size - r]
        counts = counts + shifted
    return float(counts[observed:].sum() / 2**nz.size)


def wilcoxon_greater(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Paired one-sided Wilcoxon signed-rank p-value for ``a - b > 0``.

    ``a[i]`` and ``b[i]`` share seed ``i``. Without zero differences and without ties
    among ``|a - b|`` this is
    ``scipy.stats.wilcoxon(a, b, alternative="greater", method="exact")``. Otherwise
    zero differences are dropped, the rest ranked with mid-ranks, and the p-value is the
    exact sign-flip permutation p-value of the signed-rank statistic for up to
    :data:`MAX_WILCOXON_EXACT_N` pairs, and scipy's normal approximation (with its tie
    correction, ``method="approx"``) above that.

    Parameters
    ----------
    a : sequence of float, shape (n,)
        The arm expected to be greater, one value per seed.
    b : sequence of float, shape (n,)
        The comparison arm, same seeds in the same order.

    Returns
    -------
    float or None
        The p-value; 1.0 when every difference is zero; None when ``n < 2``.

    Raises
    ------
    SpecError
        If the inputs are not 1-D, differ in length, or a difference is NaN (which
        includes ``inf - inf``).
    """
    x = _as_1d(a, "wilcoxon_greater: a", allow_inf=True)
    y = _as_1d(b, "wilcoxon_greater: b", allow_inf=True)
    if x.size != y.size:
        raise SpecError(
            f"wilcoxon_greater: a and b must be paired (same length), but got "
            f"len(a)={x.size} and len(b)={y.size}"
        )
    if x.size < 2:
        return None
    with np.errstate(invalid="ignore"):
        d = x - y
    if np.isnan(d).any():
        raise SpecError(
            f"wilcoxon_greater: a - b must not be NaN (inf - inf), but got {d.tolist()}"
        )
    if not np.any(d != 0):
        return 1.0
    abs_d = np.abs(d)
    has_zero = bool(np.any(d == 0))
    has_ties = np.unique(abs_d).size < abs_d.size
    from scipy.stats import wilcoxon

    if not has_zero and not has_ties:
        return float(wilcoxon(x, y, alternative="greater", method="exact").pvalue)
    if np.count_nonzero(d) <= MAX_WILCOXON_EXACT_N:
        return _sign_flip_pvalue(d)
    return float(
        wilcoxon(x, y, zero_method="wilcox", alternative="greater", method="approx").pvalue
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values.

    With the ``m`` non-None p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the
    adjusted value of ``p_(k)`` is ``max_{j <= k} min(1, (m - j + 1) p_(j))``. Rejecting
    the hypotheses whose adjusted p is at most the level controls the family-wise error
    rate at that level.

    Parameters
    ----------
    pvalues : sequence of float or None, shape (k,)
        Raw p-values in [0, 1]; None entries (tests that could not be computed) are
        not counted in ``m`` and come back as None in the same position.

    Returns
    -------
    list of float or None, length k
        Adjusted p-values, in the input order.

    Raises
    ------
    SpecError
        If a p-value is not a number in [0, 1].
    """
    present = [(i, p) for i, p in enumerate(pvalues) if p is not None]
    for i, p in present:
        if not (isinstance(p, (int, float, np.floating, np.integer)) and 0.0 <= p <= 1.0):
            raise SpecError(f"holm: p-values must be in [0, 1] or None, but got {p!r} at {i}")
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * float(p)))
        out[i] = running
    return out


def min_exact_mw_pvalue(n: int) -> float:
    """Smallest one-sided exact Mann-Whitney p-value with ``n`` values per arm.

    It is ``1 / C(2n, n)``, reached when the arms are fully separated: n = 3 gives 0.05,
    n = 4 about 0.014, n = 5 gives 1/252 (about 0.004).

    Parameters
    ----------
    n : int
        Values (seeds) per arm, >= 1.

    Returns
    -------
    float

    Raises
    ------
    SpecError
        If ``n`` is not an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SpecError(f"min_exact_mw_pvalue: n must be an integer >= 1, but got {n!r}")
    return 1.0 / math.comb(2 * int(n), int(n))


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], paired: bool,
                      level: float = 0.95, n_resamples: int = 9999,
                      seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of ``mean(a) - mean(b)``.

    Parameters
    ----------
    a, b : sequence of float, shape (n,) and (m,)
        Finite values; with ``paired`` True, ``a[i]`` and ``b[i]`` share seed ``i``
        (``n == m``) and seeds are resampled together (the interval of the mean paired
        difference); otherwise each sample is resampled on its own.
    level : float
        Confidence level in (0, 1).
    n_resamples : int
    seed : int
        Seed of the resampling (the interval is reproducible).

    Returns
    -------
    (low, high) or None
        None when either sample has fewer than 2 values (not computable). When every
        resample gives the same difference the interval is that single value.
    """
    from scipy import stats

    x = _as_1d(a, "bootstrap_diff_ci: a", allow_inf=False)
    y = _as_1d(b, "bootstrap_diff_ci: b", allow_inf=False)
    if len(x) < 2 or len(y) < 2:
        return None
    if paired and len(x) != len(y):
        raise SpecError(f"bootstrap_diff_ci: paired samples must have equal length, "
                        f"got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    if paired:
        d = x - y
        if np.all(d == d[0]):
            return float(d[0]), float(d[0])
        res = stats.bootstrap((d,), np.mean, confidence_level=level, n_resamples=n_resamples,
                              method="percentile", random_state=rng)
    else:
        if np.all(x == x[0]) and np.all(y == y[0]):
            return float(x[0] - y[0]), float(x[0] - y[0])
        res = stats.bootstrap((x, y), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis),
                              confidence_level=level, n_resamples=n_resamples,
                              method="percentile", random_state=rng, vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
