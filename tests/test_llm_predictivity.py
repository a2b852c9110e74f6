"""Ridge predictivity, noise ceiling and joint model-brain directions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from raybrain.align.predictivity import (
    cross_validated_ridge,
    fraction_explainable,
    joint_directions,
    noise_ceiling,
    predictivity,
    random_directions,
    spearman_brown,
    split_half_reliability,
)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


def _closed_form_ridge(x_tr, y_tr, x_te, lam):
    """(Xc'Xc + lam I)^-1 Xc'Yc on centred training data, intercept from the means."""
    mx, my = x_tr.mean(0), y_tr.mean(0)
    xc, yc = x_tr - mx, y_tr - my
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(x_tr.shape[1]), xc.T @ yc)
    return (x_te - mx) @ w + my


@pytest.mark.parametrize("standardize", [False, True])
def test_ridge_matches_the_closed_form_on_a_fixed_lambda(standardize):
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 7)) * np.arange(1, 8)
    y = x @ rng.standard_normal((7, 3)) + rng.standard_normal((40, 3))
    lam = 3.0
    pred, chosen = cross_validated_ridge(x, y, alphas=lam, n_splits=4, seed=5,
                                         standardize=standardize)
    assert np.all(chosen == lam)
    expected = np.zeros_like(y)
    for tr, te in KFold(4, shuffle=True, random_state=5).split(x):
        if standardize:
            mu, sd = x[tr].mean(0), x[tr].std(0)
            expected[te] = _closed_form_ridge((x[tr] - mu) / sd, y[tr], (x[te] - mu) / sd, lam)
        else:
            expected[te] = _closed_form_ridge(x[tr], y[tr], x[te], lam)
    np.testing.assert_allclose(pred, expected, rtol=1e-8, atol=1e-10)


def test_lambda_is_chosen_within_the_training_folds_only():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 10))
    y = x @ rng.standard_normal((10, 4)) + 2.0 * rng.standard_normal((60, 4))
    grid = np.logspace(-2, 4, 13)
    pred, chosen = cross_validated_ridge(x, y, alphas=grid, n_splits=3, seed=0)
    assert chosen.shape == (3, 4) and set(np.unique(chosen)) <= set(grid)
    # corrupting the responses of fold 0's test problems changes neither the lambdas of
    # fold 0 nor its predictions: the test problems never reach the lambda search
    from sklearn.model_selection import KFold

    tr, te = next(KFold(3, shuffle=True, random_state=0).split(x))
    y2 = y.copy()
    y2[te] = 1e3 * rng.standard_normal((te.size, 4))
    pred2, chosen2 = cross_validated_ridge(x, y2, alphas=grid, n_splits=3, seed=0)
    np.testing.assert_array_equal(chosen2[0], chosen[0])
    np.testing.assert_allclose(pred2[te], pred[te])
    assert not np.allclose(pred2[tr], pred[tr])  # the other folds trained on them


def test_spearman_brown_known_values():
    np.testing.assert_allclose(spearman_brown([0.0, 0.5, 1.0, 1 / 3]), [0.0, 2 / 3, 1.0, 0.5])
    np.testing.assert_allclose(spearman_brown(0.5, factor=3), 0.75)


@pytest.mark.parametrize("snr", [0.2, 1.0, 4.0])
def test_noise_ceiling_matches_the_theoretical_reliability(snr):
    """Two noisy repeats of a signal: the ceiling is var(S) / (var(S) + var(e) / 2)."""
    rng = np.random.default_rng(2)
    n, v = 1000, 50
    signal = rng.standard_normal((n, v))
    noise = rng.standard_normal((2, n, v)) / np.sqrt(snr)
    reps = signal[None] + noise
    theory = 1.0 / (1.0 + 1.0 / (2.0 * snr))
    ceiling = noise_ceiling(reps)
    assert ceiling.shape == (v,)
    assert abs(ceiling.mean() - theory) < 0.02
    # and the split half itself is the reliability of one repeat
    assert abs(split_half_reliability(reps).mean() - snr / (1 + snr)) < 0.02
    # a perfect model (the true signal) explains the whole explainable variance
    from raybrain.align.predictivity import pearson_columns

    r = pearson_columns(signal, reps.mean(0))
    assert abs(fraction_explainable(r, ceiling, 0.0) - 1.0) < 0.05


def test_noise_ceiling_with_four_repeats_uses_even_odd_halves():
    rng = np.random.default_rng(3)
    signal = rng.standard_normal((2000, 20))
    reps = signal[None] + rng.standard_normal((4, 2000, 20))  # snr 1 per repeat
    theory = 1.0 / (1.0 + 1.0 / 4.0)  # the mean of 4 repeats
    assert abs(noise_ceiling(reps).mean() - theory) < 0.02
    with pytest.raises(SpecError, match="at least 2 repeats"):
        noise_ceiling(reps[:1])


def test_fraction_explainable_definition():
    r = np.array([0.5, -0.4, 0.3, 0.9])
    c = np.array([0.5, 0.5, 0.05, 0.9])
    # voxel 2 is below min_ceiling; negative r explains nothing
    assert fraction_explainable(r, c, 0.1) == pytest.approx((0.25 + 0.0 + 0.81) / 1.9)
    assert np.isnan(fraction_explainable(r, c, 0.95))


def _layered(n=240, v=30, seed=0):
    """Layer 0: noise; layer 1: the signal's features (informative about responses)."""
    rng = np.random.default_rng(seed)
    types = np.array(["a", "b", "c"])[np.arange(n) % 3]
    offsets = {"a": -2.0, "b": 0.0, "c": 2.0}
    z = rng.standard_normal((n, 3)) * 0.5 + np.array([offsets[t] for t in types])[:, None]
    w = rng.standard_normal((3, v))
    signal = z @ w
    reps = signal[None] + rng.standard_normal((2, n, v)) * signal.std()
    states = np.stack([rng.standard_normal((n, 16)),
                       np.concatenate([z, rng.standard_normal((n, 13))], axis=1)])
    return states, reps, list(types)


def test_predictivity_per_layer_and_per_type():
    states, reps, types = _layered()
    res = predictivity(states, reps, types, layers=[3, 7], n_splits=4)
    assert res.layers == [3, 7] and res.fev.shape == (2,)
    assert res.fev[0] < 0.05 < 0.6 < res.fev[1] < 1.2
    # within a type, the between-type offsets are not credited: lower than aggregate
    for t in ("a", "b", "c"):
        assert res.fev_by_type[t][1] < res.fev[1]
        assert res.fev_by_type[t][1] > 0.2
    assert res.r.shape == (2, 30) and res.alphas.shape[:2] == (2, 4)
    m = res.metrics()
    assert m["predictivity/layer7"] == pytest.approx(res.fev[1])
    assert "predictivity/b/layer3" in m
    by_type = predictivity(states, reps, types, cv="type")
    assert by_type.alphas.shape[1] == 3  # one fold per held-out type
    with pytest.raises(SpecError, match="same problems"):
        predictivity(states[:, :10], reps, types)


def _planted(n=300, hidden=40, voxels=30, rank=2, informative=True, seed=0):
    """States: a shared latent along ``a`` (rank x hidden) plus a stronger nuisance along
    other directions; responses: the same latent (or an independent one) plus noise."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    a, nuis = q[:, :rank].T, q[:, rank:rank + 3].T
    z = rng.standard_normal((n, rank))
    x = z @ a * 1.0 + rng.standard_normal((n, 3)) @ nuis * 3.0 + 0.3 * rng.standard_normal(
        (n, hidden))
    zb = z if informative else rng.standard_normal((n, rank))
    y = zb @ rng.standard_normal((rank, voxels)) + 0.5 * rng.standard_normal((n, voxels))
    return x, y, a, z


@pytest.mark.parametrize("method,pca", [("pls", None), ("plssvd", None), ("cca", 10),
                                        ("ridge", None)])
def test_joint_directions_recover_a_planted_shared_subspace(method, pca):
    x, y, a, z = _planted()
    jd = joint_directions(x, y, rank=2, method=method, pca=pca)
    assert jd.basis.shape == (2, 40) and jd.brain_weights.shape == (30, 2)
    np.testing.assert_allclose(jd.basis @ jd.basis.T, np.eye(2), atol=1e-10)
    assert np.degrees(subspace_angles(jd.basis.T, a.T)).max() < 15
    # the brain coordinates span the latent, standardised on the fitting problems
    c = jd.brain_coordinates(y)
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(c.std(0), 1, atol=1e-10)
    from sklearn.linear_model import LinearRegression

    assert LinearRegression().fit(c, z).score(c, z) > 0.9
    # model coordinates of direction k follow brain coordinate k
    mc = jd.model_coordinates(x)
    for k in range(2):
        assert np.corrcoef(mc[:, k], c[:, k])[0, 1] > 0.8


@pytest.mark.parametrize("method,pca", [("pls", None), ("cca", 10), ("ridge", None)])
def test_joint_directions_do_not_find_structure_in_a_null_brain(method, pca):
    x, y, a, _ = _planted(informative=False)
    jd = joint_directions(x, y, rank=2, method=method, pca=pca)
    assert np.degrees(subspace_angles(jd.basis.T, a.T)).min() > 45


def test_ridge_directions_match_the_closed_form_reduced_rank_ridge():
    """W = (Xc'Xc + lam I)^-1 Xc'Yz by a linear solve; the brain side is the top right
    singular vectors of Xc W, the model side W V_r orthonormalised (same span, same
    order)."""
    from raybrain.align.predictivity import ridge_directions

    x, y, _, _ = _planted(n=80, hidden=12, voxels=9, rank=3, seed=3)
    lam = 7.0
    jd = ridge_directions(x, y, rank=3, ridge_lambda=lam)
    xc = x - x.mean(0)
    yz = (y - y.mean(0)) / y.std(0)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(12), xc.T @ yz)
    _, _, vt = np.linalg.svd(xc @ w, full_matrices=False)
    v = vt[:3].T
    signs = np.sign(np.sum(jd.brain_weights * v, axis=0))
    np.testing.assert_allclose(jd.brain_weights, v * signs, atol=1e-8)
    q, _ = np.linalg.qr(w @ v)
    for k in range(1, 4):  # nested spans: Gram-Schmidt in order
        np.testing.assert_allclose(jd.basis[:k].T @ jd.basis[:k], q[:, :k] @ q[:, :k].T,
                                   atol=1e-8)
    assert jd.method == "ridge" and jd.ridge_lambda == lam
    # without a lambda, RidgeCV's leave-one-out search picks one from the grid
    grid = (0.1, 10.0, 1000.0)
    chosen = ridge_directions(x, y, rank=3, alphas=grid)
    assert chosen.ridge_lambda in grid
    with pytest.raises(SpecError, match="ridge lambda must be"):
        ridge_directions(x, y, rank=3, ridge_lambda=-1.0)


def test_random_directions_are_orthonormal_and_unrelated():
    x, y, a, _ = _planted()
    rd = random_directions(x, y, 2, np.random.default_rng(0))
    np.testing.assert_allclose(rd.basis @ rd.basis.T, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(rd.brain_weights.T @ rd.brain_weights, np.eye(2), atol=1e-10)
    assert rd.method == "random"
    assert np.degrees(subspace_angles(rd.basis.T, a.T)).min() > 45
    again = random_directions(x, y, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(rd.basis, again.basis)


def test_rank_and_method_errors():
    x, y, _, _ = _planted(n=20, hidden=8, voxels=5)
    with pytest.raises(SpecError, match="number of voxels \\(5\\), got 6"):
        joint_directions(x, y, rank=6)
    with pytest.raises(SpecError, match="training problems - 1 \\(19"):
        joint_directions(x[:, :8], np.tile(y, (1, 5)), rank=20)
    with pytest.raises(SpecError, match="hidden size \\(8\\)"):
        joint_directions(x, np.tile(y, (1, 4)), rank=9)
    with pytest.raises(SpecError, match="rank must be an integer >= 1"):
        joint_directions(x, y, rank=0)
    with pytest.raises(SpecError, match="method"):
        joint_directions(x, y, rank=1, method="svd")
    big, ybig, _, _ = _planted(n=30, hidden=40, voxels=50)
    with pytest.raises(SpecError, match="CCA needs fewer dimensions"):
        joint_directions(big, ybig, rank=2, method="cca")
    with pytest.raises(SpecError, match="rank must be"):
        random_directions(x, y, 6, np.random.default_rng(0))
