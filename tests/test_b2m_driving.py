"""The B2M driving task: synthetic drives written through MNE and read back, pairing,
controls, evidence that the transfer term reaches the VAE, resume, divergence, privacy
and bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import raybrain.tasks as tasks
from raybrain.data.driving import (DrivingSession, prepare_driving_pairs,
                                   synthesize_driving_session)
from raybrain.data.eeg import EEGPrep, read_raw, recording_summary
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit

SMALL = (32, 64)


def _data(tmp_path, **over):
    d = {"source": "synthetic", "synthetic_dir": str(tmp_path / "synth"), "synthetic_frames": 96,
         "synthetic_sfreq": 128.0, "image_height": SMALL[0], "image_width": SMALL[1],
         "n_train_scenes": 48, "n_val_scenes": 16, "n_test_scenes": 16, "diagnostic_pairs": 12,
         "prep": {"picks": "eeg", "reference": "average", "l_freq": 0.1, "h_freq": 30.0}}
    d.update(over)
    return d


P_TINY = {"base_channels": 2, "fc_units": 16, "latent_dim": 64, "epochs": 3, "batch_size": 16,
          "pair_batch_size": 16, "lr": 3e-3, "dropout": 0.0}


@pytest.fixture
def task():
    return tasks.get("b2m-driving")


def _forward_r2(factors, eeg, n_train):
    """Held-out R^2 (mean over channels) of a linear map from scene factors to EEG."""
    x = np.column_stack([factors, np.ones(len(factors))])
    w, *_ = np.linalg.lstsq(x[:n_train], eeg[:n_train], rcond=None)
    y, pred = eeg[n_train:], x[n_train:] @ w
    return float(np.mean(1 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)))


def test_synthetic_session_is_a_real_recording_that_encodes_the_scenes(tmp_path):
    from raybrain.data.driving_scenes import render_sequence, scene_factors_matrix

    out = {}
    for gen in ("informative", "null"):
        s = synthesize_driving_session(tmp_path / gen, n_frames=256, seed=3, sfreq=128.0,
                                       generator=gen, image_size=SMALL)
        raw = read_raw(s.eeg)
        summary = recording_summary(raw)
        assert s.eeg.endswith(".bdf") and summary["n_channels"] == 64 and summary["sfreq"] == 128.0
        pairs = prepare_driving_pairs([s], prep=EEGPrep(picks="eeg", reference="average",
                                                        l_freq=0.1, h_freq=30.0),
                                      image_size=SMALL)
        assert pairs.frames.shape == (256, 3, *SMALL) and pairs.frames.dtype == np.uint8
        assert pairs.eeg.shape == (256, 64)
        factors = scene_factors_matrix(render_sequence(256, np.random.default_rng([3, 31]),
                                                       height=SMALL[0], width=SMALL[1]))
        out[gen] = _forward_r2(factors, pairs.eeg, 192)
    # the frames' scene factors predict the informative EEG on held-out frames, not the null
    assert out["informative"] > 0.1, out
    assert out["null"] < 0.0, out


@pytest.mark.parametrize("fmt", [".edf", ".vhdr", ".set", ".fif"])
def test_every_synthetic_format_gives_the_same_pairs(tmp_path, fmt):
    ref = synthesize_driving_session(tmp_path / "bdf", n_frames=48, seed=1, sfreq=128.0,
                                     image_size=SMALL)
    other = synthesize_driving_session(tmp_path / fmt[1:], n_frames=48, seed=1, sfreq=128.0,
                                       fmt=fmt, image_size=SMALL)
    a = prepare_driving_pairs([ref], image_size=SMALL)
    b = prepare_driving_pairs([other], image_size=SMALL)
    np.testing.assert_array_equal(a.frames, b.frames)
    scale = np.abs(a.eeg).max()
    np.testing.assert_allclose(b.eeg, a.eeg, atol=scale * (1e-3 if fmt == ".edf" else 1e-5))


def test_pairs_are_cached_and_reused(tmp_path):
    s = synthesize_driving_session(tmp_path / "s", n_frames=32, seed=2, sfreq=128.0,
                                   image_size=SMALL)
    first = prepare_driving_pairs([DrivingSession(s.eeg, s.frames, "sub-42")], image_size=SMALL)
    again = prepare_driving_pairs([DrivingSession(s.eeg, s.frames, "sub-42")], image_size=SMALL)
    assert first.computed and not again.computed and again.cache_path == first.cache_path
    np.testing.assert_array_equal(first.eeg, again.eeg)
    text = first.cache_path.with_suffix(".json").read_text()
    assert "sub-42" not in text and str(tmp_path) not in text  # pseudonyms only
    prov = json.loads(text)
    assert prov["sessions"][0]["participant"].startswith("participant-")
    assert prov["sessions"][0]["recording"]["sfreq"] == 128.0
    # other frame size: another entry
    other = prepare_driving_pairs([s], image_size=(16, 32))
    assert other.computed and other.frames.shape[2:] == (16, 32)


def test_load_data_standardises_holds_out_and_projects(tmp_path, task):
    data = task.parse_data(_data(tmp_path))
    d = task.load_data(data, data_seed=0)
    assert d.train.shape == (48, 3, *SMALL) and d.test.shape == (16, 3, *SMALL)
    assert 0.0 <= float(d.train.min()) and float(d.train.max()) <= 1.0
    n_held = round(0.2 * 96)
    assert d.pair_eeg.shape == (96 - n_held, 64) and d.held_eeg.shape == (n_held, 64)
    np.testing.assert_allclose(d.pair_eeg.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(d.pair_eeg.std(0), 1, atol=1e-3)
    real, shuf, noise = (d.brain_view(s).numpy() for s in ("real", "shuffled", "noise"))
    assert sorted(map(tuple, shuf)) == sorted(map(tuple, real)) and not np.array_equal(shuf, real)
    np.testing.assert_allclose(noise.mean(0), real.mean(0), atol=1e-4)
    assert not np.allclose(noise, real)
    # channel count vs latent: an error with both numbers, or an explicit projection
    with pytest.raises(SpecError, match=r"EEG vectors have 64 dimensions but the VAE latent has 8"):
        task.build(d, {**P_TINY, "latent_dim": 8}, None, seed=0)
    proj = task.load_data(task.parse_data(_data(tmp_path, projection="pca")), data_seed=0)
    run = task.build(proj, {**P_TINY, "latent_dim": 64, "alpha": 0.1}, "real", seed=0)
    assert run.data.pair_eeg.shape[1] == 64


def test_transfer_term_reaches_the_encoder_not_the_decoder(tmp_path, task):
    """gradcheck of the transfer term through the encoder's first conv, and where its
    gradient goes: every encoder layer, never the decoder."""
    from raybrain.align.latent import latent_mse

    d = task.load_data(task.parse_data(_data(tmp_path)), data_seed=0)
    run = task.build(d, {**P_TINY, "alpha": 0.5}, "real", seed=0)
    vae = run.model.double().eval()
    frames = d.pair_frames[:4].double() / 255.0
    target = run.brain_target[:4].double()
    name = next(n for n, _ in vae.named_parameters() if "weight" in n)
    params = dict(vae.named_parameters())

    def term(w):
        return latent_mse(_mu(vae, {**params, name: w}, frames), target)

    w0 = params[name].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(term, (w0,), eps=1e-6, atol=1e-5)
    vae.zero_grad()
    run.transfer_term(frames, target).backward()
    # every encoder layer on the path to mu (the logvar head is not on it)
    enc = [p.grad for n, p in vae.named_parameters()
           if n.startswith("enc") and not n.startswith("enc_logvar")]
    dec = [p.grad for n, p in vae.named_parameters() if n.startswith("dec")]
    assert enc and all(g is not None and torch.isfinite(g).all() for g in enc)
    assert all(float(g.abs().sum()) > 0 for g in enc)
    assert all(g is None or float(g.abs().sum()) == 0 for g in dec)


def _mu(vae, params, frames):
    """The latent mean of ``frames`` with ``params`` swapped into ``vae``."""
    from torch.func import functional_call

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.encode(x)[0]

    return functional_call(Enc(vae), {f"m.{k}": v for k, v in params.items()}, (frames,))


def test_brain_term_moves_the_weights_and_training_learns(tmp_path, task):
    """One step from the same initialisation and batch: the decoder's gradient is exactly
    (1 - alpha) times the no-brain one, the encoder's differs by alpha times the transfer
    gradient, which is non-zero in every layer on the path to mu; the weights then move."""
    d = task.load_data(task.parse_data(_data(tmp_path)), data_seed=0)
    one = {**P_TINY, "steps_per_epoch": 1}
    alpha = 0.5
    with_brain = task.build(d, {**one, "alpha": alpha}, "real", seed=0)
    without = task.build(d, one, None, seed=0)
    w0 = {n: p.detach().clone() for n, p in without.model.named_parameters()}
    for n, p in with_brain.model.named_parameters():
        assert torch.equal(p, w0[n])  # seed k: the same initialisation in every arm
    grads = {}
    for name, run in (("with", with_brain), ("without", without)):
        step = run.optimizer.step

        def capture(run=run, name=name, step=step):
            grads[name] = {n: p.grad.clone() for n, p in run.model.named_parameters()
                           if p.grad is not None}
            step()

        run.optimizer.step = capture
    m1 = with_brain.train_epoch()
    without.train_epoch()
    g, g0 = grads["with"], grads["without"]
    for n in g0:
        if n.startswith("dec"):
            torch.testing.assert_close(g[n], (1 - alpha) * g0[n], rtol=1e-4, atol=1e-10)
    on_path = [n for n in g0 if n.startswith("enc") and not n.startswith("enc_logvar")]
    assert len(on_path) >= 8
    for n in on_path:
        extra = g[n] - (1 - alpha) * g0[n]  # alpha * d(transfer)/d(weight)
        assert torch.isfinite(extra).all() and float(extra.norm()) > 1e-3 * float(g[n].norm()), n
    moved = [n for n, p in with_brain.model.named_parameters() if not torch.equal(p, w0[n])]
    assert set(on_path) <= set(moved)
    assert {"recon_loss", "kl", "task_loss", "train_transfer", "transfer_loss", "loss"} <= set(m1)
    with_brain.p["steps_per_epoch"] = 0
    first = with_brain.evaluate()
    for _ in range(2):
        with_brain.train_epoch()
    last = with_brain.evaluate()
    assert set(last) == {"test_loss", "val_loss", "align_rsa", "align_cka"}
    assert all(np.isfinite(v) for v in last.values())
    assert last["test_loss"] < first["test_loss"]


def test_transfer_alone_pulls_the_latent_to_its_targets(tmp_path, task):
    """alpha = 1 trains only the transfer term; with targets the frames determine (each
    frame's mean colour, standardised, repeated over the 64 dimensions) the latent MSE falls
    far below its starting value."""
    d = task.load_data(task.parse_data(_data(tmp_path)), data_seed=0)
    run = task.build(d, {**P_TINY, "alpha": 1.0, "epochs": 8, "steps_per_epoch": 10,
                         "lr": 1e-2}, "real", seed=1)
    colour = d.pair_frames.float().mean(dim=(2, 3))  # (n_pairs, 3)
    colour = (colour - colour.mean(0)) / colour.std(0)
    run.brain_target = colour.repeat(1, 22)[:, :64].contiguous()
    before = run.train_epoch()["train_transfer"]
    for _ in range(7):
        after = run.train_epoch()["train_transfer"]
    assert after < 0.5 * before, (before, after)


def test_resume_continues_exactly(tmp_path, task):
    d = task.load_data(task.parse_data(_data(tmp_path)), data_seed=0)
    p = {**P_TINY, "alpha": 0.2, "dropout": 0.1}
    a = task.build(d, p, "noise", seed=3)
    a.train_epoch()
    state = copy.deepcopy(a.state_dict())  # a checkpoint is a copy, not live tensors
    expected = a.train_epoch()
    b = task.build(d, p, "noise", seed=3)
    b.load_state_dict(state)
    got = b.train_epoch()
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-6), k


def test_divergence_is_the_papers_rule(task):
    from raybrain.sweep.execute import RunProgress, divergence_rule

    assert divergence_rule(task) == ("test_loss", 1.0)

    class Fake:
        epoch, epochs = 3, 3

    prog = RunProgress(None, Fake(), "test_loss", divergence_rule(task), "min")
    prog.history = {"test_loss": [0.2, 1.5, 0.4]}
    assert not prog.has_diverged()  # came back below 1
    prog.history = {"test_loss": [0.2, 1.5, 1.2]}
    assert prog.has_diverged()
    prog.history = {"test_loss": [0.3, 0.2, 0.25], "test_loss_auc": [0.3, 0.25, 0.25]}
    assert prog.summary()["best_test_loss"] == 0.2  # lower is better for this task


def test_tracked_spec_pseudonymises_sessions(tmp_path, task):
    from raybrain.sweep import parse_spec
    from raybrain.sweep.driver import tracked_spec

    s = synthesize_driving_session(tmp_path / "s", n_frames=32, seed=2, sfreq=128.0,
                                   image_size=SMALL)
    spec = parse_spec({"name": "drive", "task": "b2m-driving",
                       "data": {"source": "files", "image_height": 32, "image_width": 64,
                                "sessions": [{"eeg": s.eeg, "frames": s.frames,
                                              "participant": "sub-42"}]},
                       "params": {"alpha": {"grid": [0.1]}}, "seeds": 2})
    text = json.dumps(tracked_spec(spec, task))
    assert "sub-42" not in text and str(tmp_path) not in text
    assert '"participant": "participant-' in text and '"eeg": "file-' in text
