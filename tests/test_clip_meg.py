"""CLIP-HBA-MEG model: layer features, reweighting on the simplex, curves, noise, a run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from raybrain.align.temporal import MEGLoss, pearson_rdm
from raybrain.errors import SpecError
from raybrain.models.clip import TINY_MODEL, CLIPHBABehavior, build_clip, tokenize_labels
from raybrain.models.clip_meg import (
    CLIPHBAMEG,
    build_meg_model,
    project_rows_to_simplex,
    window_matrix,
)
from raybrain.models.dora import apply_dora

pytestmark = pytest.mark.unit

LABELS = ["red object", "round thing", "striped texture", "bright shape"]



@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    c = build_clip(TINY_MODEL)
    apply_dora(c, placement="attn_out", n_vision=4, n_text=0, rank=4)
    return c


@pytest.fixture(scope="module")
def tokens():
    return tokenize_labels(TINY_MODEL, LABELS)


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))


def _model(clip, tokens, n_times=6, **kw):
    return CLIPHBAMEG(copy.deepcopy(clip), tokens, n_times, **kw)


def test_layer_features_are_cls_tokens_through_ln_post_and_proj(clip, tokens, images):
    model = _model(clip, tokens)
    with torch.no_grad():
        feats = model.layer_features(images)
        assert feats.shape == (4, 5, 64)
        # last layer = CLIP's own image embedding
        torch.testing.assert_close(feats[-1], clip.encode_image(images))
        # an earlier layer = its CLS token after that block, by a forward hook
        seen = {}
        h = clip.visual.transformer.resblocks[1].register_forward_hook(
            lambda m, i, o: seen.setdefault("x", o))
        clip.encode_image(images)
        h.remove()
        cls = seen["x"][:, 0]
        torch.testing.assert_close(feats[1], clip.visual.ln_post(cls) @ clip.visual.proj)


def test_at_init_every_time_point_is_the_behaviour_prediction(clip, tokens, images):
    model = _model(clip, tokens, n_times=3).eval()
    behaviour = CLIPHBABehavior(model.clip, tokens)
    with torch.no_grad():
        out = model(images)
        expected = torch.relu(behaviour(images))
    assert out.embeddings.shape == (3, 5, 4) and out.rdms.shape == (3, 5, 5)
    for t in range(3):
        torch.testing.assert_close(out.embeddings[t], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rdms, pearson_rdm(out.embeddings))


def test_window_matrix_averages_clipped_windows():
    a = window_matrix(6, np.array([0, 2, 5]), 1).numpy()
    expected = np.zeros((3, 6))
    expected[0, 0:2] = 1 / 2
    expected[1, 1:4] = 1 / 3
    expected[2, 4:6] = 1 / 2
    np.testing.assert_allclose(a, expected)
    np.testing.assert_allclose(window_matrix(4, np.arange(4), 0).numpy(), np.eye(4))


def test_simplex_projection_is_the_closest_point():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (6, 5))
    got = project_rows_to_simplex(torch.from_numpy(w)).numpy()
    for row, p in zip(w, got):
        res = minimize(lambda q: ((q - row) ** 2).sum(), np.full(5, 0.2), method="SLSQP",
                       bounds=[(0, None)] * 5,
                       constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}],
                       options={"ftol": 1e-12})
        np.testing.assert_allclose(p, res.x, atol=1e-5)
    on = torch.tensor([[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(project_rows_to_simplex(on), on)


def test_reweighting_gets_gradients_at_the_one_hot_init_and_stays_on_the_simplex(
        clip, tokens, images):
    torch.manual_seed(0)
    model = _model(clip, tokens, n_times=5, half_width=1).train()
    target = pearson_rdm(torch.rand(5, 5, 4))
    opt = torch.optim.AdamW(model.reweighting_parameters(), lr=0.05)
    for step in range(6):
        opt.zero_grad()
        out = model(images)
        MEGLoss()(out.rdms, target).total.backward()
        if step == 0:
            g = model.reweighting.grad
            # the zero entries of the one-hot rows get gradients too (clamp passes at 0)
            assert float(g[:, :-1].abs().max()) > 1e-4
        opt.step()
        w = model.layer_weights().detach()  # effective weights: on the simplex before projecting
        assert float(w.min()) >= 0 and torch.allclose(w.sum(1), torch.ones(5))
        model.project_reweighting_()
        p = model.reweighting.detach()
        assert float(p.min()) >= 0
        torch.testing.assert_close(p.sum(1), torch.ones(5))
    assert float(model.reweighting.detach()[:, :-1].max()) > 0  # it moved off the last layer


def test_curves_validate_and_alpha_zero_gives_a_constant_rdm(clip, tokens, images):
    with pytest.raises(SpecError, match=r"shape \(6,\)"):
        _model(clip, tokens, alpha=np.ones(5))
    with pytest.raises(SpecError, match=">= 0"):
        _model(clip, tokens, beta=-np.ones(6))
    with pytest.raises(SpecError, match="half-width"):
        _model(clip, tokens, half_width=-1)
    with pytest.raises(SpecError, match="time_index"):
        _model(clip, tokens, time_index=[0, 6])
    with pytest.raises(SpecError, match="target dimension"):
        _model(clip, tokens, target_dim=66)
    alpha = np.array([0, 0, 0, 1, 1, 1.0])
    model = _model(clip, tokens, alpha=alpha, half_width=0).eval()
    with torch.no_grad():
        out = model(images)
    assert torch.isfinite(out.rdms).all()
    assert float(out.embeddings[:3].abs().max()) == 0.0
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.all(out.rdms[:3][:, off] == 1.0)
    # beta rescales the embeddings, not the (scale-free) Pearson RDMs
    scaled = _model(clip, tokens, beta=np.full(6, 3.0)).eval()
    with torch.no_grad():
        out3, out1 = scaled(images), _model(clip, tokens).eval()(images)
    torch.testing.assert_close(out3.embeddings, 3 * out1.embeddings)
    torch.testing.assert_close(out3.rdms, out1.rdms, atol=1e-5, rtol=1e-5)


def test_noise_in_training_only_and_reproducible_with_a_generator(clip, tokens, images):
    model = _model(clip, tokens, noise_level=np.full(6, 0.5))
    with torch.no_grad():
        model.eval()
        a, b = model(images), model(images)
        torch.testing.assert_close(a.embeddings, b.embeddings)  # evaluation: deterministic
        model.train()
        c = model(images, generator=torch.Generator().manual_seed(1))
        d = model(images, generator=torch.Generator().manual_seed(1))
        e = model(images, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(c.embeddings, d.embeddings)
    assert not torch.allclose(c.embeddings, e.embeddings)
    assert not torch.allclose(c.embeddings, a.embeddings)
    quiet = _model(clip, tokens).train()  # noise level 0: training equals evaluation
    with torch.no_grad():
        torch.testing.assert_close(quiet(images).embeddings, a.embeddings)


def test_stage_switch_checkpoint_round_trip(clip, tokens, images):
    model = _model(clip, tokens)
    adapters = model.adapter_parameters()
    assert adapters and all(n.startswith("clip.visual.") for n in adapters)
    model.set_adapters_trainable(False)
    assert not any(p.requires_grad for p in adapters.values())
    model.set_adapters_trainable(True, magnitude=False)
    assert all(p.requires_grad == ("magnitude" not in n) for n, p in adapters.items())
    with pytest.raises(SpecError, match="towers"):
        model.set_adapters_trainable(True, towers=("audio",))
    with torch.no_grad():
        model.reweighting.uniform_()
        model.project_reweighting_()
        for p in adapters.values():
            p.add_(0.1 * torch.randn_like(p))
    state = model.trainable_state_dict()
    fresh = _model(clip, tokens)
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images).rdms, model.eval()(images).rdms)
    bad = dict(state, reweighting=torch.zeros(3, 4))
    with pytest.raises(SpecError, match="time points x layers"):
        fresh.load_trainable_state_dict(bad)


def test_meg_route_stage1_then_stage2_lowers_the_loss_on_informative_synthetic_data():
    from raybrain.data.clip_synthetic import synthetic_clip_data
    from raybrain.data.images import ImageSet
    from raybrain.data.meg_targets import (
        generalization_curve,
        noise_level_curve,
        richness_curve,
        target_batch,
    )

    data = synthetic_clip_data(40, n_dims=12, n_triplets=0, seed=0, times_ms=(-100, 500, 50))
    x = torch.from_numpy(ImageSet(data.images, [], "clip").batch(np.arange(40)))
    target = torch.from_numpy(target_batch(data.rdms, np.arange(40)))
    beta = generalization_curve(data.rdms, data.times)
    torch.manual_seed(0)
    model, info = build_meg_model(TINY_MODEL, data.labels, len(data.times), rank=4,
                                  alpha=richness_curve(data.rdms, data.times), beta=beta,
                                  noise_level=noise_level_curve(beta, noise_scale=0.2),
                                  half_width=1, target_dim=12)
    assert len(info.modules) == 4  # every vision block, no text block
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"reweighting"}
    loss = MEGLoss((1.0, 0.1, 0.15))
    with torch.no_grad():
        loss.set_initial_from([(model.eval()(x).rdms, target)])
    model.train()
    history = []
    for stage, steps in ((1, 6), (2, 10)):
        if stage == 2:
            model.set_adapters_trainable(True)
        opt = torch.optim.AdamW([
            {"params": model.reweighting_parameters(), "lr": 3e-2},
            {"params": [p for p in model.adapter_parameters().values() if p.requires_grad],
             "lr": 1e-2}])
        for _ in range(steps):
            opt.zero_grad()
            total = loss(model(x, generator=torch.Generator().manual_seed(0)).rdms, target).total
            total.backward()
            opt.step()
            model.project_reweighting_()
            history.append(float(total.detach()))
    with torch.no_grad():
        final = float(loss(model.eval()(x).rdms, target).total)
    assert final < 0.9 * (1.0 + 0.1 + 0.15), (final, history)


def test_behaviour_text_adapters_load_into_an_meg_model():
    """The MEG route reuses the behaviour model's text adapters (rank 8) under vision rank 2."""
    from raybrain.models.clip import build_behavior_model
    from raybrain.models.dora import (
        adapter_parameters,
        adapter_state_dict,
        load_adapter_state_dict,
    )

    torch.manual_seed(0)
    behaviour, _ = build_behavior_model(TINY_MODEL, LABELS, rank=8, n_vision=2, n_text=1)
    with torch.no_grad():
        for p in adapter_parameters(behaviour).values():
            p.add_(0.1 * torch.randn_like(p))
    text_state = {k: v for k, v in adapter_state_dict(behaviour).items()
                  if k.startswith("clip.transformer.")}
    torch.manual_seed(0)
    meg, info = build_meg_model(TINY_MODEL, LABELS, 3, rank=2, text_rank=8, n_text=1)
    assert (info.rank, info.text_rank) == (2, 8)
    loaded = load_adapter_state_dict(meg, text_state, strict=False)
    assert sorted(loaded) == sorted(text_state)
    with torch.no_grad():
        torch.testing.assert_close(meg.text(), behaviour.text())
