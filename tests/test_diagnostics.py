"""Tests for raybrain.align.diagnostics: RDMs, RSA, linear CKA, item subsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

from raybrain.align import linear_cka, rdm, rsa, subsample_items
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthogonal(dim: int, seed: int) -> np.ndarray:
    """A random (dim, dim) orthogonal matrix (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(_rng(seed).standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _orthogonal_fixing_ones(dim: int, seed: int) -> np.ndarray:
    """A random orthogonal matrix Q with Q @ 1 = 1 (a rotation of the complement of 1)."""
    ones = np.ones((dim, 1)) / np.sqrt(dim)
    # Orthonormal basis of the complement of the all-ones direction.
    basis, _, _ = np.linalg.svd(np.eye(dim) - ones @ ones.T)
    comp = basis[:, : dim - 1]
    return ones @ ones.T + comp @ _orthogonal(dim - 1, seed) @ comp.T


def naive_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: normalised HSIC of linear kernels with an explicit centring matrix H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k = x @ x.T
    l_ = y @ y.T
    hsic_kl = np.trace(k @ h @ l_ @ h)
    hsic_kk = np.trace(k @ h @ k @ h)
    hsic_ll = np.trace(l_ @ h @ l_ @ h)
    return float(hsic_kl / np.sqrt(hsic_kk * hsic_ll))


def _correlated_pair(seed: int, n: int = 40, p: int = 6, q: int = 9, noise: float = 1.0):
    """x (n, p) and y (n, q) sharing a latent signal."""
    g = _rng(seed)
    latent = g.standard_normal((n, p))
    x = latent + 0.3 * g.standard_normal((n, p))
    y = latent @ g.standard_normal((p, q)) + noise * g.standard_normal((n, q))
    return x, y


# ---------------------------------------------------------------------------- rdm


def test_rdm_matches_scipy_and_is_a_distance_matrix():
    x = _rng(0).standard_normal((7, 5))
    for metric in ("correlation", "euclidean"):
        d = rdm(x, metric)
        assert d.shape == (7, 7) and d.dtype == np.float64
        np.testing.assert_allclose(d, d.T)
        np.testing.assert_array_equal(np.diag(d), 0.0)
        iu = np.triu_indices(7, k=1)
        np.testing.assert_allclose(d[iu], pdist(x, metric), atol=1e-12)


def test_rdm_correlation_known_answer():
    # Item 1 = 2 * item 0 + 5 (r = 1); item 2 = -item 0 (r = -1).
    x = np.array([[1.0, 2.0, 4.0], [7.0, 9.0, 13.0], [-1.0, -2.0, -4.0]])
    d = rdm(x)
    np.testing.assert_allclose(d, [[0, 0, 2], [0, 0, 2], [2, 2, 0]], atol=1e-12)
    assert d.min() >= 0.0  # rounding never gives negative dissimilarities


def test_rdm_constant_pattern_gets_one_not_nan():
    x = _rng(1).standard_normal((5, 4))
    x[2] = 3.0
    x[4] = 3.0  # two identical constant items: still "no information"
    d = rdm(x, "correlation")
    assert np.isfinite(d).all()
    np.testing.assert_array_equal(np.diag(d), 0.0)
    for i in (2, 4):
        others = [j for j in range(5) if j != i]
        np.testing.assert_array_equal(d[i, others], 1.0)
        np.testing.assert_array_equal(d[others, i], 1.0)
    # The other pairs are untouched.
    keep = [0, 1, 3]
    np.testing.assert_allclose(d[np.ix_(keep, keep)], rdm(x[keep]), atol=1e-12)
    # Euclidean distances are defined for constant patterns and are not altered.
    np.testing.assert_allclose(rdm(x, "euclidean")[2, 4], 0.0)


def test_rdm_accepts_torch_tensors_with_grad():
    t = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(rdm(t), rdm(t.detach().numpy()))


def test_rdm_errors():
    x = _rng(2).standard_normal((4, 3))
    with pytest.raises(SpecError, match=r"metric must be one of .* but got 'cosine'"):
        rdm(x, "cosine")
    with pytest.raises(SpecError, match=r"2-D .* but got shape \(4,\)"):
        rdm(x[:, 0])
    with pytest.raises(SpecError, match=r"at least 2 items .* but got shape \(1, 3\)"):
        rdm(x[:1])
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(SpecError, match="must be finite, but got 1 NaN/inf"):
        rdm(bad)


# ---------------------------------------------------------------------------- rsa


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_matches_direct_scipy_computation(metric):
    x, y = _correlated_pair(3, n=30, noise=2.0)
    expected = spearmanr(pdist(x, metric), pdist(y, metric)).statistic
    assert rsa(x, y, metric) == pytest.approx(expected, abs=1e-12)
    assert 0.1 < rsa(x, y, metric) < 0.99  # a non-trivial case


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_of_a_representation_with_itself_is_one(metric):
    x = _rng(4).standard_normal((25, 8))
    assert rsa(x, x, metric) == pytest.approx(1.0, abs=1e-12)


def test_rsa_euclidean_invariant_to_rotation_scaling_translation():
    x, y = _correlated_pair(5, n=30, p=6, q=6, noise=2.0)
    transformed = 3.7 * y @ _orthogonal(6, seed=6) + 11.0
    assert rsa(y, transformed, "euclidean") == pytest.approx(1.0, abs=1e-12)
    assert rsa(x, transformed, "euclidean") == pytest.approx(rsa(x, y, "euclidean"), abs=1e-12)


def test_rsa_correlation_invariant_to_per_item_affine_maps():
    x, y = _correlated_pair(7, n=30, noise=2.0)
    g = _rng(8)
    scale = g.uniform(0.1, 10.0, size=(30, 1))  # a_i > 0, one per item
    shift = g.normal(0.0, 5.0, size=(30, 1))
    transformed = scale * y + shift
    assert rsa(y, transformed) == pytest.approx(1.0, abs=1e-12)
    assert rsa(x, transformed) == pytest.approx(rsa(x, y), abs=1e-12)


def test_rsa_correlation_rotation_invariance_holds_only_when_ones_are_fixed():
    x, y = _correlated_pair(9, n=30, p=6, q=6, noise=2.0)
    # Orthogonal maps fixing the all-ones direction keep every item's mean and
    # centred norm, so the correlation RDM is unchanged.
    fixed = y @ _orthogonal_fixing_ones(6, seed=10)
    np.testing.assert_allclose(rdm(fixed), rdm(y), atol=1e-12)
    assert rsa(x, fixed) == pytest.approx(rsa(x, y), abs=1e-12)
    # A general rotation mixes the item means into the patterns: the RDM changes.
    general = y @ _orthogonal(6, seed=11)
    assert np.abs(rdm(general) - rdm(y)).max() > 0.1
    assert rsa(y, general) < 0.99


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_of_independent_data_is_near_zero(metric):
    g = _rng(13)
    x = g.standard_normal((200, 10))
    y = g.standard_normal((200, 12))
    assert abs(rsa(x, y, metric)) < 0.1


def test_rsa_constant_triangle_returns_zero():
    x = _rng(14).standard_normal((10, 4))
    same_items = np.tile(_rng(15).standard_normal((1, 4)), (10, 1))  # all distances 0
    assert rsa(x, same_items, "euclidean") == 0.0
    assert rsa(same_items, x, "euclidean") == 0.0
    constant_patterns = np.arange(10.0)[:, None] * np.ones((1, 4))  # every row constant
    assert rsa(x, constant_patterns, "correlation") == 0.0


def test_rsa_accepts_torch_tensors():
    x, y = _correlated_pair(16, n=20)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.tensor(y, dtype=torch.float32)
    assert rsa(tx, ty) == pytest.approx(rsa(x, y.astype(np.float32)), abs=1e-12)


def test_rsa_errors():
    x = _rng(17).standard_normal((10, 4))
    with pytest.raises(SpecError, match=r"same number of items .* but got 10 and 9"):
        rsa(x, x[:9])
    with pytest.raises(SpecError, match=r"at least 3 items .* but got shape \(2, 4\)"):
        rsa(x[:2], x[:2])
    with pytest.raises(SpecError, match="metric must be one of"):
        rsa(x, x, metric="spearman")
    with pytest.raises(SpecError, match="brain must be 2-D"):
        rsa(x, x[None])


# ---------------------------------------------------------------------------- linear CKA


@pytest.mark.parametrize(
    "n, p, q",
    [(40, 6, 9), (12, 30, 5), (10, 10, 10)],  # feature-space form, Gram form, boundary
)
def test_linear_cka_matches_naive_hsic(n, p, q):
    g = _rng(18 + n)
    latent = g.standard_normal((n, 3))
    x = latent @ g.standard_normal((3, p)) + g.standard_normal((n, p))
    y = latent @ g.standard_normal((3, q)) + g.standard_normal((n, q)) + 4.0
    expected = naive_linear_cka(x, y)
    assert linear_cka(x, y) == pytest.approx(expected, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(expected, abs=1e-12)


def test_linear_cka_of_a_representation_with_itself_is_one():
    x = _rng(19).standard_normal((30, 7))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    wide = _rng(20).standard_normal((8, 50))  # Gram path
    assert linear_cka(wide, wide) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x, y = _correlated_pair(21, n=40, p=6, q=9, noise=1.5)
    base = linear_cka(x, y)
    assert 0.1 < base < 0.95
    transformed = 0.01 * y @ _orthogonal(9, seed=22) + 100.0
    assert linear_cka(x, transformed) == pytest.approx(base, abs=1e-12)
    assert linear_cka(y, transformed) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_not_invariant_to_non_isotropic_scaling():
    x, y = _correlated_pair(23, n=40, p=6, q=9, noise=1.5)
    scales = np.array([20.0] + [1.0] * 8)
    stretched = y * scales
    assert linear_cka(x, stretched) == pytest.approx(naive_linear_cka(x, stretched), abs=1e-12)
    assert abs(linear_cka(x, stretched) - linear_cka(x, y)) > 0.05
    assert linear_cka(y, stretched) < 0.9


def test_linear_cka_of_independent_data_is_small():
    g = _rng(24)
    # Linear CKA is biased upward when features are many relative to items: keep 5 << 200.
    assert linear_cka(g.standard_normal((200, 5)), g.standard_normal((200, 5))) < 0.1


def test_linear_cka_constant_input_returns_zero():
    x = _rng(25).standard_normal((10, 4))
    constant = np.full((10, 3), 0.1)  # 0.1 does not centre to exactly 0 in floating point
    assert linear_cka(x, constant) == 0.0
    assert linear_cka(constant, x) == 0.0
    # A constant column contributes nothing; the others still count.
    with_constant_col = np.hstack([x, np.full((10, 1), 0.1)])
    assert linear_cka(with_constant_col, x) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_accepts_torch_tensors():
    x, y = _correlated_pair(26)
    got = linear_cka(torch.tensor(x, requires_grad=True), torch.tensor(y))
    assert got == pytest.approx(linear_cka(x, y), abs=1e-12)


def test_linear_cka_errors():
    x = _rng(27).standard_normal((10, 4))
    with pytest.raises(SpecError, match=r"same number of items .* but got 10 and 8"):
        linear_cka(x, x[:8])
    with pytest.raises(SpecError, match=r"y must be 2-D .* but got shape \(10,\)"):
        linear_cka(x, x[:, 0])
    bad = x.copy()
    bad[3, 2] = np.inf
    with pytest.raises(SpecError, match="x must be finite, but got 1 NaN/inf"):
        linear_cka(bad, x)


# ---------------------------------------------------------------------------- subsample_items


def test_subsample_items_is_sorted_unique_and_deterministic():
    a = subsample_items(1000, 50, np.random.default_rng(7))
    b = subsample_items(1000, 50, np.random.default_rng(7))
    c = subsample_items(1000, 50, 7)  # an int seed means default_rng(seed)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert a.shape == (50,) and a.dtype == np.int64
    assert (np.diff(a) > 0).all()
    assert a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(a, subsample_items(1000, 50, np.random.default_rng(8)))


def test_subsample_items_keeps_all_when_small():
    np.testing.assert_array_equal(subsample_items(30, 30, 0), np.arange(30))
    np.testing.assert_array_equal(subsample_items(5, 100, 0), np.arange(5))
    assert subsample_items(0, 10, 0).shape == (0,)


def test_subsample_items_feeds_rsa():
    g = _rng(28)
    x = g.standard_normal((500, 6))
    y = x @ g.standard_normal((6, 8)) + 0.1 * g.standard_normal((500, 8))
    idx = subsample_items(500, 80, g)
    assert rsa(x[idx], y[idx], "euclidean") > 0.5


def test_subsample_items_errors():
    with pytest.raises(SpecError, match="n_items must be an int >= 0, but got -1"):
        subsample_items(-1, 5, 0)
    with pytest.raises(SpecError, match="max_items must be an int >= 1, but got 0"):
        subsample_items(10, 0, 0)
    with pytest.raises(SpecError, match="max_items must be an int >= 1, but got 2.5"):
        subsample_items(10, 2.5, 0)
    with pytest.raises(SpecError, match="rng must be a numpy.random.Generator or an int"):
        subsample_items(10, 5, None)


@pytest.mark.unit
def test_memory_alignment_per_step_tells_brain_from_shuffled_where_bins_cannot():
    """Known answer for the memory task's alignment: a model embedding that carries the
    brain's step-to-step signal (plus the within-step time course every step shares) and
    one that carries a step-shuffled copy of it look the same over time bins, which the
    shared time course dominates, but per step (bins averaged) only the first aligns."""
    from raybrain.tasks.b2m_memory import _step_means

    rng = np.random.default_rng(0)
    n_ep, n_steps_per_ep, bins, dim = 12, 6, 5, 7
    step_signal = rng.normal(size=(n_ep * n_steps_per_ep, dim))
    time_course = 6.0 * rng.normal(size=(bins, dim))          # shared by every step
    brain_steps = step_signal[:, None, :] + time_course[None]  # (n_steps, bins, dim)
    shuffled = step_signal[rng.permutation(len(step_signal))][:, None, :] + time_course[None]

    def to_time(steps):  # (n_steps, bins, dim) -> (n_ep, T, dim) with a context bin first
        x = np.zeros((n_ep, 1 + n_steps_per_ep * bins, dim), np.float32)
        x[:, 1:] = steps.reshape(n_ep, n_steps_per_ep * bins, dim)
        return torch.from_numpy(x)

    mask = torch.zeros(n_ep, 1 + n_steps_per_ep * bins, dtype=torch.bool)
    mask[:, 1:] = True
    brain = _step_means(to_time(brain_steps), mask, bins)
    assert np.allclose(brain, step_signal + time_course.mean(0), atol=1e-5)
    aligned, other = _step_means(to_time(brain_steps), mask, bins), _step_means(
        to_time(shuffled), mask, bins)
    assert linear_cka(aligned, brain) == pytest.approx(1.0)
    assert linear_cka(other, brain) < 0.2
    # over bins both look aligned: the time course is what they share
    flat = lambda s: s.reshape(-1, dim)  # noqa: E731
    assert linear_cka(flat(brain_steps), flat(brain_steps)) == pytest.approx(1.0)
    assert linear_cka(flat(shuffled), flat(brain_steps)) > 0.8
