"""DoRA on open_clip: the layer against its formula, and training on every placement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from raybrain.errors import SpecError
from raybrain.models.clip import TINY_MODEL, CLIPHBABehavior, build_clip, tokenize_labels
from raybrain.models.dora import (
    PLACEMENTS,
    DoRAProjection,
    adapter_parameters,
    adapter_state_dict,
    adapters_disabled,
    apply_dora,
    dora_weight,
    load_adapter_state_dict,
)

pytestmark = pytest.mark.unit


LABELS = ["red object", "round thing", "striped texture", "bright shape", "dark pattern"]


@pytest.fixture(scope="module")
def base_clip():
    torch.manual_seed(0)
    return build_clip(TINY_MODEL)


@pytest.fixture(scope="module")
def tokens():
    return tokenize_labels(TINY_MODEL, LABELS)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 32, 32, generator=g)


def _adapted(base, placement, **kw):
    clip = copy.deepcopy(base)
    info = apply_dora(clip, placement=placement, **{"n_vision": 2, "n_text": 1, "rank": 4, **kw})
    return clip, info


# -- the layer ------------------------------------------------------------------------------

def test_dora_layer_matches_formula_and_norms_rows():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    layer = DoRAProjection(lin, rank=3, alpha=6.0)
    w0 = lin.weight.detach().numpy().astype(np.float64)
    # at initialisation: exactly the base weight (B = 0, m = row norms)
    assert torch.equal(layer.weight, lin.weight)
    np.testing.assert_allclose(layer.dora_magnitude.detach().numpy(),
                               np.sqrt((w0 ** 2).sum(axis=1)), rtol=1e-6)
    with torch.no_grad():
        layer.dora_B.normal_()
        layer.dora_magnitude.uniform_(0.5, 2.0)
    a = layer.dora_A.detach().numpy().astype(np.float64)
    b = layer.dora_B.detach().numpy().astype(np.float64)
    m = layer.dora_magnitude.detach().numpy().astype(np.float64)
    v = w0 + (6.0 / 3) * b @ a
    expected = m[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)  # one norm per output row
    got = layer.weight.detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # each output row's norm is its magnitude: the decomposition is per output unit
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), m, rtol=1e-5)
    x = torch.randn(4, 7)
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               (x.numpy() @ expected.T + lin.bias.detach().numpy()), rtol=1e-4,
                               atol=1e-5)


def test_dora_layer_gradcheck():
    torch.manual_seed(0)
    layer = DoRAProjection(nn.Linear(5, 4).double(), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.dora_B.normal_()
    args = tuple(t.detach().clone().requires_grad_(True)
                 for t in (layer.dora_magnitude, layer.dora_A, layer.dora_B))
    w0 = layer.base_weight.detach()
    assert torch.autograd.gradcheck(lambda m, a, b: dora_weight(w0, m, a, b, layer.scaling), args,
                                    eps=1e-6, atol=1e-5)
    # the property is that function of the parameters
    assert torch.equal(layer.weight, dora_weight(w0, *(t.detach() for t in args), layer.scaling))


def test_dora_dropout_acts_on_the_update_in_training_only():
    torch.manual_seed(0)
    layer = DoRAProjection(nn.Linear(16, 16), rank=4, dropout=0.5)
    with torch.no_grad():
        layer.dora_B.normal_()
    layer.eval()
    assert torch.equal(layer.weight, layer.weight)
    layer.train()
    assert not torch.equal(layer.weight, layer.weight)  # fresh masks on the update
    with torch.no_grad():
        layer.dora_B.zero_()
    assert torch.equal(layer.weight, layer.base_weight)  # B = 0: dropout changes nothing


def test_rank_above_width_and_bad_settings_are_one_line_errors(base_clip):
    clip = copy.deepcopy(base_clip)
    for kwargs, pattern in [({"rank": 65}, r"rank must be <= the layer width \(64"),
                            ({"rank": 0}, "positive integer"),
                            ({"placement": "qkv"}, "placement must be one of"),
                            ({"n_vision": 5}, r"vision blocks must be an integer in \[0, 4\]"),
                            ({"n_vision": 0, "n_text": 0}, "at least one adapted block"),
                            ({"dropout": 1.0}, "dropout")]:
        with pytest.raises(SpecError, match=pattern) as exc:
            apply_dora(clip, **{"placement": "both", "rank": 4, **kwargs})
        assert "\n" not in str(exc.value)
    assert not adapter_parameters(clip)  # nothing was changed by a refused call
    apply_dora(clip, rank=4)
    with pytest.raises(SpecError, match="already carries"):
        apply_dora(clip, rank=4)


def test_peft_targets_are_exact_not_suffixes(base_clip):
    """The text tower's 'transformer.resblocks.1.mlp.c_fc' is a suffix of the vision tower's
    'visual.transformer.resblocks.1.mlp.c_fc': only the chosen blocks may be adapted."""
    clip, info = _adapted(base_clip, "mlp", n_vision=0, n_text=1)
    assert info.modules == ("transformer.resblocks.1.mlp.c_fc",
                            "transformer.resblocks.1.mlp.c_proj")
    names = {n.rsplit(".lora_", 1)[0] for n in adapter_parameters(clip)}
    assert names == set(info.modules)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_text_tower_rank_of_its_own(placement, base_clip):
    """e.g. vision rank 6 under the behaviour model's rank-32 text adapters."""
    clip, info = _adapted(base_clip, placement, rank=3, text_rank=5)
    assert (info.rank, info.text_rank) == (3, 5)
    for name, p in adapter_parameters(clip).items():
        if "dora_A" in name or "lora_A" in name:
            assert p.shape[0] == (3 if name.startswith("visual.") else 5), name
    with pytest.raises(SpecError, match=r"rank must be <= the layer width \(64 .*"
                                        r"transformer\.resblocks\.1"):
        _adapted(base_clip, placement, rank=3, text_rank=65)


# -- every placement ------------------------------------------------------------------------

def _kind(name: str) -> str:
    if "magnitude" in name:
        return "magnitude"
    return "A" if ("dora_A" in name or "lora_A" in name) else "B"


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_placement_equal_at_init_then_trains(placement, base_clip, tokens, images):
    base = CLIPHBABehavior(base_clip, tokens)
    with torch.no_grad():
        y_base = base(images)
        txt_base = base_clip.encode_text(tokens)
    clip, info = _adapted(base_clip, placement, dropout=0.1)
    model = CLIPHBABehavior(clip, tokens)
    model.train()  # dropout active: with B = 0 it must not matter
    with torch.no_grad():
        assert torch.allclose(model(images), y_base, atol=1e-5, rtol=1e-5)
        assert torch.allclose(clip.encode_text(tokens), txt_base, atol=1e-5, rtol=1e-5)
    n_layers = {"attn_out": 1, "mlp": 2, "both": 3}[placement] * 3  # 2 vision + 1 text block
    assert len(info.modules) == n_layers

    adapters = adapter_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapters)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in adapters.items()}
    opt = torch.optim.AdamW(list(adapters.values()), lr=1e-2)
    target = torch.rand(len(images), len(LABELS)) * 30
    grads = []
    for _ in range(2):
        opt.zero_grad()
        loss = ((model(images) - target) ** 2).mean()
        loss.backward()
        grads.append({n: float(p.grad.norm()) for n, p in adapters.items()})
        opt.step()
    first, second = grads
    for n, g in first.items():
        if _kind(n) == "A":  # B = 0: A's gradient is exactly zero on the first step
            assert g == 0.0, n
        else:
            # meaningful size: relative to the loss gradient scale, not ~1e-30
            assert g > 1e-3, (n, g)
    for n, g in second.items():
        assert g > 1e-3, (n, g)  # every factor and magnitude by the second step
    for n, p in adapters.items():
        assert not torch.equal(p, start[n]), f"{n} did not move"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} moved"
    with torch.no_grad():
        model.eval()
        y_after = model(images)
        assert (y_after - y_base).abs().max() > 1e-3
        with adapters_disabled(model):
            assert torch.allclose(model(images), y_base, atol=1e-5, rtol=1e-5)
        assert torch.equal(model(images), y_after)  # switched back on
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_adapter_state_dict_round_trip_and_mismatch(placement, base_clip, tokens, images):
    clip, _ = _adapted(base_clip, placement)
    with torch.no_grad():
        for p in adapter_parameters(clip).values():
            p.add_(0.05 * torch.randn_like(p))
    state = adapter_state_dict(clip)
    assert all(not t.requires_grad for t in state.values())
    assert set(state) == set(adapter_parameters(clip))
    fresh, _ = _adapted(base_clip, placement)
    loaded = load_adapter_state_dict(fresh, state)
    assert sorted(loaded) == sorted(state)
    with torch.no_grad():
        clip.eval()
        fresh.eval()
        assert torch.equal(clip.encode_image(images), fresh.encode_image(images))
    other, _ = _adapted(base_clip, placement, rank=2)
    with pytest.raises(SpecError, match="has shape") as exc:
        load_adapter_state_dict(other, state)
    assert "\n" not in str(exc.value)
    fewer, _ = _adapted(base_clip, placement, n_vision=1)
    with pytest.raises(SpecError, match="unexpected key"):
        load_adapter_state_dict(fewer, state)
    # non-strict: the keys both have are loaded
    assert len(load_adapter_state_dict(fewer, state, strict=False)) == len(
        adapter_parameters(fewer))
