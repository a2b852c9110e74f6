"""DrivingVAE and vae_loss: shapes, layout, parameter count, known answers, gradients, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raybrain.errors import SpecError
from raybrain.models.vae import DrivingVAE, vae_loss

pytestmark = pytest.mark.unit

SMALL = dict(channels=(3, 4, 8, 8, 16), fc_units=32, latent_dim=5, dropout=0.1,
             image_size=(32, 48))


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _linear(nin: int, nout: int) -> int:
    return nin * nout + nout


def test_paper_config_shapes_and_parameter_count():
    torch.manual_seed(0)
    model = DrivingVAE()
    n_params = sum(p.numel() for p in model.parameters())
    feat = 256 * 5 * 10
    hand = (_conv(3, 32, 4) + _conv(32, 64, 4) + _conv(64, 128, 4) + _conv(128, 256, 4)
            + _conv(256, 256, 3) + 2 * 256  # batch norm weight and bias
            + _linear(feat, 1024) + 2 * _linear(1024, 64)  # encoder fc, mu and logvar heads
            + _linear(64, 1024) + _linear(1024, feat)  # decoder fcs
            + _conv(256, 256, 3) + _conv(256, 128, 4) + _conv(128, 64, 4) + _conv(64, 32, 4)
            + _conv(32, 3, 4))
    print(f"paper DrivingVAE: {n_params:,} parameters")
    assert n_params == hand == 28_986_691
    assert model.feature_shape == (256, 5, 10)
    model.eval()
    x = torch.rand(2, 3, 80, 160)
    with torch.no_grad():
        recon, mu, logvar = model(x)
    assert recon.shape == (2, 3, 80, 160)
    assert mu.shape == logvar.shape == (2, 64)
    assert 0 <= recon.min() and recon.max() <= 1


@pytest.mark.parametrize("channels", [(3, 4, 8, 8, 16), (1, 4, 4, 8, 8)])
def test_small_config_shapes(channels):
    torch.manual_seed(0)
    model = DrivingVAE(**{**SMALL, "channels": channels})
    x = torch.rand(3, channels[0], 32, 48)
    recon, mu, logvar = model(x)
    assert recon.shape == x.shape
    assert mu.shape == logvar.shape == (3, 5)
    assert model.decode(torch.zeros(4, 5)).shape == (4, channels[0], 32, 48)
    z = DrivingVAE.reparameterize(mu, logvar)
    assert z.shape == mu.shape


def test_dropout_after_every_conv_and_fc_and_one_batch_norm_on_last_encoder_conv():
    model = DrivingVAE(**{**SMALL, "dropout": 0.25})
    seqs = [model.enc, model.enc_fc, model.dec_fc, model.dec]
    weighted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    for seq in seqs:
        mods = list(seq)
        for i, m in enumerate(mods):
            if not isinstance(m, weighted):
                continue
            if seq is model.dec and i == len(mods) - 2:  # output layer: sigmoid, no dropout
                assert isinstance(mods[i + 1], nn.Sigmoid) and i + 2 == len(mods)
                continue
            follow = mods[i + 1:i + 4]
            if isinstance(follow[0], nn.BatchNorm2d):
                follow = follow[1:]
            assert isinstance(follow[0], nn.LeakyReLU), (seq, i)
            assert isinstance(follow[1], nn.Dropout) and follow[1].p == 0.25, (seq, i)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 5 + 1 + 2 + 4  # encoder convs, encoder fc, decoder fcs, decoder convs
    # the heads are bare linear layers
    assert isinstance(model.enc_mu, nn.Linear) and isinstance(model.enc_logvar, nn.Linear)
    bns = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns == ["enc.13"]
    convs = [i for i, m in enumerate(model.enc) if isinstance(m, nn.Conv2d)]
    assert convs[-1] == 12 and model.enc[12].kernel_size == (3, 3)
    assert [model.enc[i].stride for i in convs] == [(2, 2)] * 4 + [(1, 1)]


def test_dropout_active_in_training_only_and_eval_deterministic():
    torch.manual_seed(0)
    model = DrivingVAE(**{**SMALL, "dropout": 0.5})
    x = torch.rand(4, 3, 32, 48)
    model.train()
    mu_a, _ = model.encode(x)
    mu_b, _ = model.encode(x)
    assert not torch.equal(mu_a, mu_b)
    model.eval()
    with torch.no_grad():
        r1, m1, l1 = model(x)
        r2, m2, l2 = model(x)
        assert torch.equal(r1, r2) and torch.equal(m1, m2) and torch.equal(l1, l2)
        assert torch.equal(r1, model.decode(m1))  # eval mode decodes the mean


def test_vae_loss_known_answers():
    x = torch.rand(3, 3, 4, 5)
    zero = torch.zeros(3, 6)
    loss, rec, kl = vae_loss(x.clone(), x, zero, zero, kl_weight=2.0)
    assert float(loss) == float(rec) == float(kl) == 0.0
    # recon off by 0.1 everywhere, mu = 1, logvar = 0: KL per image = latent_dim / 2
    loss, rec, kl = vae_loss(x + 0.1, x, torch.ones(3, 6), zero, kl_weight=0.5)
    npix = 3 * 4 * 5
    assert rec.item() == pytest.approx(0.01, rel=1e-5)
    assert kl.item() == pytest.approx(3.0 / npix, rel=1e-6)
    assert loss.item() == pytest.approx(0.01 + 0.5 * 3.0 / npix, rel=1e-5)
    assert DrivingVAE.vae_loss is vae_loss


def test_vae_loss_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 2, 3, generator=g)
    mu, logvar = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    _, _, kl = vae_loss(x, x, mu, logvar)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
        torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1).mean() / 6
    assert kl.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("output", [0, 1, 2])
def test_vae_loss_gradcheck(output):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 2, 3, generator=g, dtype=torch.float64)
    recon = torch.rand(2, 1, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda r, m, lv: vae_loss(r, x, m, lv, kl_weight=0.7)[output], (recon, mu, logvar))


def test_adam_moves_encoder_and_decoder_and_loss_falls():
    torch.manual_seed(0)
    model = DrivingVAE(channels=(3, 8, 8, 16, 16), fc_units=64, latent_dim=8, dropout=0.1,
                       image_size=(32, 48))
    # a fixed batch of structured images: bright top, dark bottom, varying per image
    rows = torch.linspace(0, 1, 32)[None, None, :, None]
    x = (0.2 + 0.6 * (1 - rows) * torch.rand(6, 3, 1, 1)).expand(6, 3, 32, 48).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first_enc, last_dec = model.enc[0].weight, model.dec[-2].weight
    before = [first_enc.detach().clone(), last_dec.detach().clone()]

    def fixed_loss() -> float:
        model.eval()
        with torch.no_grad():
            recon, mu, logvar = model(x)
            val = vae_loss(recon, x, mu, logvar, kl_weight=0.1)[0].item()
        model.train()
        return val

    start = fixed_loss()
    model.train()
    for step in range(30):
        recon, mu, logvar = model(x)
        loss = vae_loss(recon, x, mu, logvar, kl_weight=0.1)[0]
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for w in (first_enc, last_dec):
                rel = (w.grad.norm() / w.detach().norm()).item()
                print(f"relative gradient norm {rel:.2e}")
                assert rel > 1e-7, rel
        opt.step()
        if step == 0:
            assert not torch.equal(first_enc.detach(), before[0])
            assert not torch.equal(last_dec.detach(), before[1])
    end = fixed_loss()
    print(f"fixed-batch loss {start:.4f} -> {end:.4f} after 30 Adam steps")
    assert end < 0.75 * start


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(image_size=(80, 150)), "80 x 150"),
    (dict(image_size=(8, 16)), "8 x 16"),
    (dict(channels=(2, 32, 64, 128, 256)), "(2, 32, 64, 128, 256)"),
    (dict(channels=(3, 32, 64, 128)), "(3, 32, 64, 128)"),
    (dict(dropout=1.0), "1.0"),
    (dict(latent_dim=0), "latent_dim=0"),
])
def test_bad_config_raises_spec_error(kwargs, fragment):
    with pytest.raises(SpecError) as info:
        DrivingVAE(**{**SMALL, **kwargs})
    msg = str(info.value)
    assert "\n" not in msg and fragment in msg


def test_wrong_input_shape_raises_spec_error():
    model = DrivingVAE(**SMALL)
    with pytest.raises(SpecError, match=r"\(2, 3, 32, 64\)"):
        model.encode(torch.rand(2, 3, 32, 64))
