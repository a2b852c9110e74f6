"""RISE saliency maps: masks, a planted salient patch, MEG maps at chosen time points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raybrain.errors import SpecError
from raybrain.models.saliency import meg_saliency, rise_masks, rise_saliency

pytestmark = pytest.mark.unit



def test_masks_shape_range_keep_rate_and_seed():
    m = rise_masks(400, (24, 20), grid=4, p_keep=0.3, seed=1)
    assert m.shape == (400, 24, 20) and m.dtype == np.float32
    assert m.min() >= 0 and m.max() <= 1
    assert abs(m.mean() - 0.3) < 0.03  # bilinear upsampling keeps the expected keep rate
    np.testing.assert_array_equal(m, rise_masks(400, (24, 20), grid=4, p_keep=0.3, seed=1))
    assert not np.array_equal(m, rise_masks(400, (24, 20), grid=4, p_keep=0.3, seed=2))
    with pytest.raises(SpecError, match="p_keep"):
        rise_masks(10, 8, p_keep=0.0)


def test_rise_equals_its_formula():
    image = torch.rand(3, 8, 8)
    weights = torch.rand(3, 8, 8)

    def score(x):  # (n, 2): a linear score and its square
        s = (x * weights).sum(dim=(1, 2, 3))
        return torch.stack([s, s ** 2], dim=1)

    got = rise_saliency(score, image, n_masks=30, grid=3, p_keep=0.5, seed=4, batch_size=7,
                        mode="output")
    masks = rise_masks(30, 8, grid=3, p_keep=0.5, seed=4)
    s = score(image[None] * torch.from_numpy(masks)[:, None]).numpy()  # (30, 2)
    expected = np.einsum("nk,nhw->khw", s, masks) / (30 * 0.5)
    assert got.shape == (2, 8, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_rise_finds_a_planted_salient_patch():
    """The output depends only on a 6 x 6 patch: the map is highest there."""
    torch.manual_seed(0)
    image = torch.randn(3, 32, 32)
    rows, cols = slice(4, 10), slice(20, 26)
    proj = torch.randn(3 * 36, 8)

    def embed(x):  # (n, 8) embedding of the patch only
        return torch.tanh(x[:, :, rows, cols].reshape(len(x), -1) @ proj / 10)

    sal = rise_saliency(embed, image, n_masks=300, grid=6, p_keep=0.5, seed=0, batch_size=100)
    assert sal.shape == (32, 32)
    # the most salient 6 x 6 window is the planted patch (within a pixel or two)
    windows = np.lib.stride_tricks.sliding_window_view(sal, (6, 6)).mean(axis=(2, 3))
    top = np.unravel_index(np.argmax(windows), windows.shape)
    assert abs(top[0] - 4) <= 2 and abs(top[1] - 20) <= 2, top
    inside = np.zeros((32, 32), bool)
    inside[rows, cols] = True
    assert sal[inside].mean() > np.percentile(sal[~inside], 95)
    # a patch elsewhere moves the map: RISE follows the model, not the image
    def embed_other(x):
        return torch.tanh(x[:, :, 22:28, 2:8].reshape(len(x), -1) @ proj / 10)

    other = rise_saliency(embed_other, image, n_masks=300, grid=6, p_keep=0.5, seed=0,
                          batch_size=100)
    w2 = np.lib.stride_tricks.sliding_window_view(other, (6, 6)).mean(axis=(2, 3))
    top2 = np.unravel_index(np.argmax(w2), w2.shape)
    assert abs(top2[0] - 22) <= 2 and abs(top2[1] - 2) <= 2, top2


def test_meg_saliency_on_the_tiny_model_shape_determinism_alpha():
    from raybrain.models.clip import TINY_MODEL
    from raybrain.models.clip_meg import build_meg_model

    torch.manual_seed(0)
    alpha = np.array([0.0, 0.5, 1.0, 1.0])
    model, _ = build_meg_model(TINY_MODEL, ["red object", "round thing", "dark pattern"], 4,
                               rank=2, alpha=alpha, noise_level=np.full(4, 0.5), half_width=0)
    model.train()
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(n_masks=40, grid=4, seed=3, batch_size=20)
    maps = meg_saliency(model, image, [1, 2, 0], **kw)
    assert maps.shape == (3, 32, 32) and np.isfinite(maps).all()
    assert model.training  # restored; the maps were made without training noise
    np.testing.assert_array_equal(maps, meg_saliency(model, image, [1, 2, 0], **kw))
    assert np.all(maps[2] == 0)  # alpha = 0 before onset
    raw = meg_saliency(model, image, [1, 2], scale_by_alpha=False, **kw)
    np.testing.assert_allclose(maps[:2], raw * alpha[[1, 2]][:, None, None], rtol=1e-6)
