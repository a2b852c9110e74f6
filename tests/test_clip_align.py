"""CLIP-HBA-MEG loss terms and evaluation against direct numpy/scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from scipy.stats import spearmanr

from raybrain.align.temporal import (
    MEGLoss,
    individual_differences,
    pearson_rdm,
    rdm_mse_loss,
    rdm_pearson_loss,
    rsa_area,
    temporal_rsa,
    time_generalization,
    time_generalization_loss,
    upper_triangle,
)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit



def _stack(seed, t=5, n=6, d=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return pearson_rdm(torch.randn(t, n, d, generator=g, dtype=dtype))


def _upper_np(r):
    i, j = np.triu_indices(r.shape[-1], k=1)
    return r[..., i, j]


def _corr(a, b):
    return np.corrcoef(a, b)[0, 1]


def test_pearson_rdm_matches_scipy_and_gradchecks():
    x = torch.randn(3, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = pearson_rdm(x).numpy()
    for t in range(3):
        np.testing.assert_allclose(got[t], squareform(pdist(x[t].numpy(), "correlation")),
                                   atol=1e-12)
    assert torch.autograd.gradcheck(pearson_rdm, (x[0].clone().requires_grad_(True),))
    # a constant row correlates 0 with everything: dissimilarity 1, no NaN, diagonal 0
    y = x[0].clone()
    y[2] = 3.0
    r = pearson_rdm(y)
    assert torch.isfinite(r).all()
    np.testing.assert_allclose(r[2, [0, 1, 3, 4, 5, 6]].numpy(), 1.0)
    assert float(r.diagonal().abs().max()) == 0.0


def test_upper_triangle_is_row_major_like_pdist():
    r = squareform(np.arange(1, 11, dtype=float))
    np.testing.assert_array_equal(upper_triangle(torch.from_numpy(r)).numpy(),
                                  np.arange(1, 11))


def test_pearson_loss_is_one_long_vector_over_all_times():
    p, t = _stack(1), _stack(2)
    expected = 1 - _corr(_upper_np(p.numpy()).ravel(), _upper_np(t.numpy()).ravel())
    assert float(rdm_pearson_loss(p, t)) == pytest.approx(expected, abs=1e-12)
    # not the mean of per-time correlations
    per_time = np.mean([1 - _corr(_upper_np(p[k].numpy()), _upper_np(t[k].numpy()))
                        for k in range(5)])
    assert abs(per_time - expected) > 1e-3
    assert float(rdm_pearson_loss(t, t)) == pytest.approx(0.0, abs=1e-12)
    assert torch.autograd.gradcheck(lambda a: rdm_pearson_loss(a, t),
                                    (p.clone().requires_grad_(True),))


def test_mse_loss_is_mean_of_slice_mses():
    p, t = _stack(3), _stack(4)
    pu, tu = _upper_np(p.numpy()), _upper_np(t.numpy())
    expected = np.mean([np.mean((pu[k] - tu[k]) ** 2) for k in range(len(pu))])
    assert float(rdm_mse_loss(p, t)) == pytest.approx(expected, rel=1e-12)
    assert torch.autograd.gradcheck(lambda a: rdm_mse_loss(a, t),
                                    (p.clone().requires_grad_(True),))


def test_time_generalization_profile_and_loss():
    p, t = _stack(5, t=6), _stack(6, t=6)
    for s in (p, t):
        expected = np.corrcoef(_upper_np(s.numpy())).mean(axis=1)  # row means of the T x T RSM
        np.testing.assert_allclose(time_generalization(s).numpy(), expected, atol=1e-12)
    gp = np.corrcoef(_upper_np(p.numpy())).mean(1)
    gt = np.corrcoef(_upper_np(t.numpy())).mean(1)
    assert float(time_generalization_loss(p, t)) == pytest.approx(1 - _corr(gp, gt), abs=1e-12)
    assert torch.autograd.gradcheck(lambda a: time_generalization_loss(a, t),
                                    (p.clone().requires_grad_(True),))
    # the CLIP-HBA code's profile (population z-scores / (n_pairs - 1)) is a multiple of ours,
    # so the loss (a correlation of profiles) is the same
    u = _upper_np(p.numpy())
    z = (u - u.mean(1, keepdims=True)) / u.std(1, keepdims=True)
    authors = (z @ z.T / (u.shape[1] - 1)).mean(1)
    np.testing.assert_allclose(authors / time_generalization(p).numpy(),
                               u.shape[1] / (u.shape[1] - 1), rtol=1e-10)
    with pytest.raises(SpecError, match="at least 2 time points"):
        time_generalization_loss(p[:1], t[:1])


def test_meg_loss_normalises_by_initial_values_and_weights():
    p, t = _stack(7), _stack(8)
    loss = MEGLoss(weights=(1.0, 0.1, 0.15))
    raw = [float(v) for v in loss.terms(p, t)]
    assert float(loss(p, t).total) == pytest.approx(raw[0] + 0.1 * raw[1] + 0.15 * raw[2])
    p0 = loss.set_initial_from([(p, t)])
    assert p0 == pytest.approx(tuple(raw))
    out = loss(p, t)
    assert float(out.total) == pytest.approx(1.0 + 0.1 + 0.15)  # each term / itself
    assert set(out.items()) == {"loss", "pearson_loss", "mse_loss", "generalization_loss"}
    loss.set_initial(2.0, 4.0, 8.0)
    assert float(loss(p, t).total) == pytest.approx(raw[0] / 2 + 0.1 * raw[1] / 4
                                                    + 0.15 * raw[2] / 8)
    for bad in [(1, -1, 0), (0, 0, 0), (1, 2)]:
        with pytest.raises(SpecError, match="weights"):
            MEGLoss(weights=bad)
    with pytest.raises(SpecError, match="initial MSE loss must be finite and > 0"):
        loss.set_initial(1.0, 0.0, 1.0)
    with pytest.raises(SpecError, match="shape"):
        loss(p, t[:, :5, :5])


def test_meg_loss_gradient_reaches_parameters_and_they_move():
    """A linear embedding -> RDMs -> MEGLoss: gradients of meaningful size, a step lowers it."""
    torch.manual_seed(0)
    x = torch.randn(8, 10)
    target = pearson_rdm(torch.randn(4, 8, 6))
    lin = torch.nn.Linear(10, 6 * 4)
    loss = MEGLoss()

    def pred():
        return pearson_rdm(lin(x).reshape(8, 4, 6).transpose(0, 1))

    loss.set_initial_from([(pred(), target)])
    before = lin.weight.detach().clone()
    opt = torch.optim.SGD(lin.parameters(), lr=0.05)
    first = None
    for _ in range(20):
        opt.zero_grad()
        total = loss(pred(), target).total
        total.backward()
        if first is None:
            first = float(total.detach())
            rel = float(lin.weight.grad.norm() / lin.weight.detach().norm())
            assert rel > 1e-3, rel
        opt.step()
    assert not torch.equal(lin.weight, before)
    with torch.no_grad():
        assert float(loss(pred(), target).total) < first


def test_temporal_rsa_is_spearman_per_time_point_and_area():
    rng = np.random.default_rng(0)
    t = squareform_stack(rng, 4, 7)
    p = t + 0.3 * squareform_stack(rng, 4, 7)
    curve = temporal_rsa(p, t)
    for k in range(4):
        assert curve[k] == pytest.approx(spearmanr(_upper_np(p[k]), _upper_np(t[k])).statistic)
    static = temporal_rsa(p[0], t)
    for k in range(4):
        assert static[k] == pytest.approx(spearmanr(_upper_np(p[0]), _upper_np(t[k])).statistic)
    assert rsa_area(np.full(5, 0.5), np.linspace(0, 1, 5)) == pytest.approx(0.5)
    assert rsa_area([0.0, 1.0, 0.0], [0.0, 0.1, 0.3]) == pytest.approx(0.5 * 0.1 + 0.5 * 0.2)
    assert rsa_area([0.2, 0.4]) == pytest.approx(0.3)
    flat = t.copy()
    flat[1] = 0.0
    assert np.isnan(temporal_rsa(p, flat)[1])
    with pytest.raises(SpecError, match="non-finite"):
        rsa_area([0.1, np.nan])


def squareform_stack(rng, t, n):
    return np.stack([squareform(rng.uniform(0, 1, n * (n - 1) // 2)) for _ in range(t)])


def test_individual_differences_against_a_direct_loop():
    rng = np.random.default_rng(5)
    parts = np.stack([squareform_stack(rng, 3, 6) for _ in range(4)])  # (4, 3, 6, 6)
    models = parts + 0.2 * np.stack([squareform_stack(rng, 3, 6) for _ in range(4)])
    m, p, rho = individual_differences(models, parts)
    i, j = np.triu_indices(6, k=1)
    for a in range(4):
        for b in range(4):
            expect = 1 - _corr(models[a][:, i, j].ravel(), models[b][:, i, j].ravel())
            assert m[a, b] == pytest.approx(expect, abs=1e-12)
            assert p[a, b] == pytest.approx(1 - _corr(parts[a][:, i, j].ravel(),
                                                      parts[b][:, i, j].ravel()), abs=1e-12)
    iu = np.triu_indices(4, k=1)
    assert rho == pytest.approx(spearmanr(m[iu], p[iu]).statistic)
    with pytest.raises(SpecError, match="same"):
        individual_differences(models[:3], parts)
