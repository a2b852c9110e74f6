"""The brain term of steering fine-tuning: reference values and gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from raybrain.align.steering import direction_alignment_loss  # noqa: E402

pytestmark = pytest.mark.unit


def _basis(hidden, rank, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((hidden, rank)))
    return q.T


def test_matches_scipy_pearson_per_direction():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(0)
    h = rng.standard_normal((20, 8))
    b = _basis(8, 3, 1)
    y = rng.standard_normal((20, 3))
    loss = direction_alignment_loss(torch.tensor(h), torch.tensor(b), torch.tensor(y))
    z = h @ b.T
    ref = 1.0 - np.mean([pearsonr(z[:, k], y[:, k])[0] for k in range(3)])
    assert float(loss) == pytest.approx(ref, abs=1e-10)


def test_known_values():
    rng = np.random.default_rng(1)
    b = _basis(6, 2, 0)
    y = rng.standard_normal((15, 2))
    # states whose coordinates on the basis are an affine image of y: loss 0; reversed: 2
    h = (3.0 * y + 1.0) @ b + 5.0
    t = lambda a: torch.tensor(a)  # noqa: E731
    assert float(direction_alignment_loss(t(h), t(b), t(y))) == pytest.approx(0.0, abs=1e-10)
    h_rev = (-2.0 * y) @ b
    assert float(direction_alignment_loss(t(h_rev), t(b), t(y))) == pytest.approx(2.0, abs=1e-10)
    # components outside the subspace do not matter
    q = _basis(6, 6, 3)
    outside = q - (q @ b.T) @ b
    h_out = h + rng.standard_normal((15, 6)) @ outside
    assert float(direction_alignment_loss(t(h_out), t(b), t(y))) == pytest.approx(0.0, abs=1e-9)


def test_gradcheck_and_gradient_lies_in_the_subspace():
    rng = np.random.default_rng(2)
    h = torch.tensor(rng.standard_normal((10, 5)), requires_grad=True)
    b = torch.tensor(_basis(5, 2, 0))
    y = torch.tensor(rng.standard_normal((10, 2)))
    assert torch.autograd.gradcheck(lambda x: direction_alignment_loss(x, b, y), (h,))
    direction_alignment_loss(h, b, y).backward()
    g = h.grad
    p = b.T @ b
    torch.testing.assert_close(g @ (torch.eye(5, dtype=g.dtype) - p), torch.zeros_like(g),
                               atol=1e-12, rtol=0)
    assert float(g.norm()) > 1e-3


def test_gradient_moves_a_linear_map_towards_the_targets():
    """A trained linear layer producing the states improves the loss after Adam steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=gen)
    y = x[:, :2] @ torch.randn(2, 2, generator=gen)
    b = torch.tensor(_basis(16, 2, 4), dtype=torch.float32)
    layer = torch.nn.Linear(12, 16)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        loss = direction_alignment_loss(layer(x), b, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        rel = float(layer.weight.grad.norm() / layer.weight.norm())
        assert rel > 1e-4
        opt.step()
    assert loss.item() < 0.1 < first


def test_shape_errors():
    b = torch.tensor(_basis(5, 2, 0))
    with pytest.raises(ValueError, match="shapes do not match"):
        direction_alignment_loss(torch.zeros(4, 5, dtype=b.dtype), b, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="at least 2"):
        direction_alignment_loss(torch.zeros(1, 5, dtype=b.dtype), b, torch.zeros(1, 2))
