"""Tests for raybrain.align: InfoNCE (B2M eq. 2), latent MSE (eq. 3), mixing (eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

from raybrain.align import (
    TRANSFER_LOSSES,
    info_nce,
    latent_mse,
    latent_transfer,
    mix_losses,
)
from raybrain.errors import SpecError


def naive_info_nce(model_emb, brain_emb, mask, temperature):
    """Reference: one anchor at a time, plain Python loops over (batch, time)."""
    rows = []
    batch, time, _ = model_emb.shape
    for b in range(batch):
        for t in range(time):
            if mask is None or bool(mask[b, t]):
                rows.append((b, t))
    losses = []
    for b_i, t_i in rows:
        anchor = brain_emb[b_i, t_i]
        logits = [float(anchor @ model_emb[b_j, t_j]) / temperature for b_j, t_j in rows]
        positive = float(anchor @ model_emb[b_i, t_i]) / temperature
        top = max(logits)
        log_denominator = top + math.log(sum(math.exp(s - top) for s in logits))
        losses.append(log_denominator - positive)
    return sum(losses) / len(losses)


def _random_batch(seed, batch=3, time=5, emb=4, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    model = torch.randn(batch, time, emb, generator=gen, dtype=dtype)
    brain = torch.randn(batch, time, emb, generator=gen, dtype=dtype)
    mask = torch.rand(batch, time, generator=gen) > 0.3
    mask[0, 0] = mask[1, 0] = True  # at least 2 anchors
    return model, brain, mask


# --------------------------------------------------------------------------- info_nce


@pytest.mark.unit
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_info_nce_matches_naive_loop(temperature, seed):
    model, brain, mask = _random_batch(seed)
    assert not mask.all()  # the mask really drops positions
    got = info_nce(model, brain, mask, temperature=temperature)
    want = naive_info_nce(model, brain, mask, temperature)
    assert got.shape == ()
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)
    # mask=None means every position is an anchor
    got_all = info_nce(model, brain, None, temperature=temperature)
    assert float(got_all) == pytest.approx(
        naive_info_nce(model, brain, None, temperature), rel=1e-10
    )


@pytest.mark.unit
@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_info_nce_closed_form_identity(n, tau):
    # brain = model = identity rows: S = I / tau, every anchor has the same loss.
    eye = torch.eye(n, dtype=torch.float64)
    got = info_nce(eye.unsqueeze(0), eye.unsqueeze(0), temperature=tau)
    want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + n - 1))
    assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.mark.unit
def test_info_nce_stable_for_large_similarities():
    eye = 50.0 * torch.eye(8, dtype=torch.float32).unsqueeze(0)
    loss = info_nce(eye, eye, temperature=0.01)  # logits up to 250000
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.unit
def test_info_nce_masked_positions_change_nothing():
    model, brain, mask = _random_batch(3)
    base = info_nce(model, brain, mask)
    model2, brain2 = model.clone(), brain.clone()
    model2[~mask] = 1e3 * torch.randn_like(model2[~mask])
    brain2[~mask] = -1e3
    assert torch.equal(info_nce(model2, brain2, mask), base)
    assert torch.equal(latent_mse(model2, brain2, mask), latent_mse(model, brain, mask))
    # and no gradient reaches them
    model2.requires_grad_(True)
    info_nce(model2, brain2, mask).backward()
    assert torch.all(model2.grad[~mask] == 0)
    assert torch.any(model2.grad[mask] != 0)


@pytest.mark.unit
def test_info_nce_aligned_beats_shuffled_pairing():
    gen = torch.Generator().manual_seed(7)
    model = torch.randn(2, 10, 6, generator=gen, dtype=torch.float64)
    brain = model.clone()  # perfectly aligned pairs
    perm = torch.randperm(20, generator=gen)
    while torch.any(perm == torch.arange(20)):
        perm = torch.randperm(20, generator=gen)
    shuffled = brain.reshape(20, 6)[perm].reshape(2, 10, 6)
    aligned_loss = info_nce(model, brain)
    shuffled_loss = info_nce(model, shuffled)
    assert float(aligned_loss) < float(shuffled_loss)
    assert float(latent_mse(model, brain)) == 0.0 < float(latent_mse(model, shuffled))


@pytest.mark.unit
def test_info_nce_invariant_to_shifting_model_embeddings():
    # Row i of S gains the constant b_i . c, which the softmax over that row ignores.
    model, brain, mask = _random_batch(6)
    shift = torch.tensor([3.0, -2.0, 0.5, 7.0], dtype=torch.float64)
    assert float(info_nce(model + shift, brain, mask)) == pytest.approx(
        float(info_nce(model, brain, mask)), rel=1e-10
    )


@pytest.mark.unit
def test_info_nce_gradcheck():
    model, brain, mask = _random_batch(4, batch=2, time=3, emb=3)
    model.requires_grad_(True)
    brain.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m, b: info_nce(m, b, mask, temperature=0.3), (model, brain)
    )
    assert torch.autograd.gradcheck(lambda m, b: info_nce(m, b, None, 0.7), (model, brain))


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
    ],
)
def test_info_nce_bad_temperature(kwargs, match):
    model, brain, _ = _random_batch(0)
    with pytest.raises(SpecError, match=match):
        info_nce(model, brain, **kwargs)


@pytest.mark.unit
def test_info_nce_input_errors():
    model, brain, mask = _random_batch(0)
    with pytest.raises(SpecError, match=r"same shape.*\(3, 5, 4\).*\(3, 5, 3\)"):
        info_nce(model, brain[..., :3])
    with pytest.raises(SpecError, match=r"mask must have.*\(3, 5\).*\(3, 4\)"):
        info_nce(model, brain, mask[:, :4])
    with pytest.raises(SpecError, match="bool"):
        info_nce(model, brain, mask.float())
    one = torch.zeros(3, 5, dtype=torch.bool)
    one[1, 2] = True
    with pytest.raises(SpecError, match="at least 2 valid time points.*got 1"):
        info_nce(model, brain, one)
    with pytest.raises(SpecError, match="at least 2 valid.*got 0"):
        info_nce(model, brain, torch.zeros(3, 5, dtype=torch.bool))
    # SpecError is a ValueError
    with pytest.raises(ValueError):
        info_nce(model, brain, temperature=0)


# --------------------------------------------------------------------------- latent_mse


@pytest.mark.unit
def test_latent_mse_hand_computed():
    model = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]])  # (1, 3, 2)
    brain = torch.tensor([[[0.0, 0.0], [9.0, 9.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True]])
    # point 0: (1 + 4) / 2 = 2.5; point 2: (4 + 4) / 2 = 4.0; mean = 3.25
    assert float(latent_mse(model, brain, mask)) == pytest.approx(3.25)
    # all valid: point 1 adds (81 + 81) / 2 = 81 -> (2.5 + 81 + 4) / 3
    assert float(latent_mse(model, brain)) == pytest.approx((2.5 + 81 + 4) / 3)


@pytest.mark.unit
def test_latent_mse_gradcheck_and_errors():
    model, brain, mask = _random_batch(5, batch=2, time=3, emb=3)
    model.requires_grad_(True)
    brain.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m, b: latent_mse(m, b, mask), (model, brain))
    with pytest.raises(SpecError, match="same shape"):
        latent_mse(model, brain[:, :2])
    with pytest.raises(SpecError, match="at least 1 valid"):
        latent_mse(model, brain, torch.zeros(2, 3, dtype=torch.bool))


# --------------------------------------------------------------------------- training moves


@pytest.mark.unit
@pytest.mark.parametrize("name", ["contrastive", "latent"])
@pytest.mark.parametrize("optimiser", ["adam", "sgd"])
def test_one_step_moves_parameters(name, optimiser):
    torch.manual_seed(0)
    loss_fn = TRANSFER_LOSSES.get(name)
    layer = torch.nn.Linear(5, 4)
    x = torch.randn(2, 6, 5)
    brain = torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    before = [p.detach().clone() for p in layer.parameters()]
    opt = (
        torch.optim.Adam(layer.parameters(), lr=1e-2)
        if optimiser == "adam"
        else torch.optim.SGD(layer.parameters(), lr=1e-3)
    )
    loss = loss_fn(layer(x), brain, mask, 0.1)
    assert loss.shape == () and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    weight_ratio = float(layer.weight.grad.norm() / layer.weight.detach().norm())
    assert weight_ratio > 1e-3
    if name == "latent":
        assert float(layer.bias.grad.norm() / layer.bias.detach().norm()) > 1e-3
    else:
        # Each row of S = brain @ model.T / tau shifts by a constant when a common vector
        # is added to every model embedding, so the softmax (and the loss) cannot see
        # the projection's bias: its gradient is zero up to rounding.
        assert float(layer.bias.grad.norm()) < 1e-5 * float(layer.weight.grad.norm())
    opt.step()
    assert not torch.equal(before[0], layer.weight.detach())
    if name == "latent":
        assert not torch.equal(before[1], layer.bias.detach())
    # and the step lowered the loss (small step on a smooth objective)
    with torch.no_grad():
        assert float(loss_fn(layer(x), brain, mask, 0.1)) < float(loss)


# --------------------------------------------------------------------------- registry, mixing


@pytest.mark.unit
def test_registry_entries_and_signature():
    assert TRANSFER_LOSSES.names() == ["contrastive", "latent"]
    assert TRANSFER_LOSSES.get("contrastive") is info_nce
    assert TRANSFER_LOSSES.get("latent") is latent_transfer
    model, brain, mask = _random_batch(2)
    # latent ignores temperature
    a = TRANSFER_LOSSES.get("latent")(model, brain, mask, 0.1)
    b = TRANSFER_LOSSES.get("latent")(model, brain, mask, 123.0)
    assert torch.equal(a, b) and torch.equal(a, latent_mse(model, brain, mask))
    with pytest.raises(SpecError, match="unknown transfer loss"):
        TRANSFER_LOSSES.get("rsa")


@pytest.mark.unit
def test_mix_losses():
    task = torch.tensor(2.0)
    transfer = torch.tensor(10.0)
    assert mix_losses(task, transfer, 0) is task
    assert mix_losses(task, None, 0.0) is task
    assert float(mix_losses(task, transfer, 1)) == 10.0
    assert float(mix_losses(task, transfer, 0.25)) == pytest.approx(0.75 * 2 + 0.25 * 10)
    assert mix_losses(2.0, 10.0, 0.5) == 6.0
    for bad in (-0.1, 1.5, float("nan"), "x", True):
        with pytest.raises(SpecError, match="alpha"):
            mix_losses(task, transfer, bad)
    with pytest.raises(SpecError, match="transfer_loss is required"):
        mix_losses(task, None, 0.3)


@pytest.mark.unit
def test_align_import_does_not_load_heavy_frameworks():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, raybrain.align; "
        "bad = [m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == ""
