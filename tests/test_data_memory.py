"""Tests of raybrain.data for the B2M memory task: simulator, encoding, synthetic brain,
controls and the npz loader."""

from __future__ import annotations

import numpy as np
import pytest

from raybrain.data import (
    Episodes,
    MemoryTaskConfig,
    encode_inputs,
    episodes_from_sequences,
    load_memory_npz,
    phase_randomise,
    save_memory_npz,
    shuffle_steps,
    simulate_episodes,
    step_bins_to_time,
    synthetic_brain,
    time_to_step_bins,
)
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


def _rng(seed=0):
    return np.random.default_rng(seed)


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- config


def test_config_defaults_and_bins_per_step():
    cfg = MemoryTaskConfig()
    assert (cfg.pre_bins, cfg.post_bins, cfg.context_bins, cfg.response_bins) == (5, 5, 5, 1)
    assert (cfg.min_steps, cfg.max_steps) == (4, 12)
    assert cfg.bins_per_step == 10
    assert MemoryTaskConfig(pre_bins=3, post_bins=7).bins_per_step == 10


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"pre_bins": 0}, "pre_bins must be an integer >= 1, got 0"),
        ({"post_bins": -2}, "post_bins must be an integer >= 1, got -2"),
        ({"context_bins": 0}, "context_bins"),
        ({"response_bins": 0}, "response_bins"),
        ({"min_steps": 0}, "min_steps"),
        ({"pre_bins": 2.5}, "got 2.5"),
        ({"pre_bins": True}, "got True"),
        ({"min_steps": 5, "max_steps": 3}, "min_steps=5, max_steps=3"),
        ({"response_bins": 6, "post_bins": 5}, "response_bins=6, post_bins=5"),
    ],
)
def test_config_validation(kwargs, needle):
    with pytest.raises(SpecError) as exc:
        MemoryTaskConfig(**kwargs)
    assert needle in _one_line(exc)


# ------------------------------------------------------------------------ simulator


def _reference_rule(first_target, stimuli):
    """Independent re-derivation: targets and responses of one episode."""
    targets, responses = [], []
    target = int(first_target)
    for s in stimuli:
        targets.append(target)
        if s == target:
            responses.append(1.0)
            target = 1 - target
        else:
            responses.append(-1.0)
    return targets, responses


def test_known_episode_by_hand():
    ep = episodes_from_sequences([1], [5], [0, 1, 2, 0, 0])
    np.testing.assert_array_equal(ep.targets[0], [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(ep.responses[0], [-1, 1, -1, 1, -1])


def test_simulate_shapes_padding_and_rule():
    cfg = MemoryTaskConfig(min_steps=2, max_steps=6)
    ep = simulate_episodes(300, cfg, _rng(1))
    n, L = ep.n_episodes, ep.max_len
    assert n == 300 and L == ep.lengths.max() == 6
    for name, dtype in [("first_target", np.int64), ("lengths", np.int64),
                        ("stimuli", np.int64), ("targets", np.int64),
                        ("responses", np.float32)]:
        assert getattr(ep, name).dtype == dtype, name
    assert ep.stimuli.shape == ep.targets.shape == ep.responses.shape == (n, L)
    # lengths uniform on [min_steps, max_steps] inclusive
    assert set(np.unique(ep.lengths)) == set(range(2, 7))
    assert set(np.unique(ep.first_target)) == {0, 1}
    assert ep.n_steps == ep.lengths.sum()
    mask = ep.step_mask
    assert set(np.unique(ep.stimuli[mask])) == {0, 1, 2}
    assert (ep.stimuli[~mask] == -1).all() and (ep.targets[~mask] == -1).all()
    assert (ep.responses[~mask] == 0).all()
    for i in range(n):
        length = ep.lengths[i]
        targets, responses = _reference_rule(ep.first_target[i], ep.stimuli[i, :length])
        np.testing.assert_array_equal(ep.targets[i, :length], targets)
        np.testing.assert_array_equal(ep.responses[i, :length], responses)
        assert ep.targets[i, 0] == ep.first_target[i]
    # responses: +1 exactly when the stimulus is the current target
    np.testing.assert_array_equal(ep.responses[mask] == 1, ep.stimuli[mask] == ep.targets[mask])
    # with uniform stimuli about a third of steps are accepts
    assert abs((ep.responses[mask] == 1).mean() - 1 / 3) < 0.05


def test_simulate_is_deterministic_and_step_index_order():
    cfg = MemoryTaskConfig()
    a = simulate_episodes(20, cfg, _rng(7))
    b = simulate_episodes(20, cfg, _rng(7))
    for name in ("first_target", "lengths", "stimuli", "targets", "responses"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    idx = a.step_index()
    assert idx.shape == (a.n_steps, 2) and idx.dtype == np.int64
    expected = [(i, s) for i in range(a.n_episodes) for s in range(a.lengths[i])]
    np.testing.assert_array_equal(idx, expected)


def test_episodes_from_sequences_matches_simulator():
    ep = simulate_episodes(30, MemoryTaskConfig(), _rng(3))
    again = episodes_from_sequences(ep.first_target, ep.lengths, ep.stimuli[ep.step_mask])
    for name in ("first_target", "lengths", "stimuli", "targets", "responses"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ep, name))
    # integral floats are accepted
    again = episodes_from_sequences([0.0], [2.0], [1.0, 0.0])
    np.testing.assert_array_equal(again.targets[0], [0, 0])


@pytest.mark.parametrize(
    "args, needle",
    [
        (([0], [2], [0, 3]), "stimuli_flat must take values in {0, 1, 2}"),
        (([0], [2], [0, -1]), "got -1 at index 1"),
        (([2], [2], [0, 1]), "first_target must take values in {0, 1}"),
        (([0, 1], [2, 0], [0, 1]), "lengths must be >= 1 step per episode, got 0 for episode 1"),
        (([0, 1], [2], [0, 1]), "need one entry per episode, got 2 and 1"),
        (([0], [3], [0, 1]), "sum(lengths) = 3 entries, got 2"),
        (([[0]], [2], [0, 1]), "first_target must be a 1-D array, got shape (1, 1)"),
        (([0], [2], [0.5, 1]), "stimuli_flat must hold integers, got 0.5 at index 0"),
        (([0], [2], ["a", "b"]), "stimuli_flat must hold integers, got dtype"),
        (([], [], []), "at least one episode"),
    ],
)
def test_episodes_from_sequences_rejects(args, needle):
    with pytest.raises(SpecError) as exc:
        episodes_from_sequences(*args)
    assert needle in _one_line(exc)


def test_simulate_rejects_bad_count():
    with pytest.raises(SpecError, match="n_episodes must be an integer >= 1, got 0"):
        simulate_episodes(0, MemoryTaskConfig(), _rng())


# ------------------------------------------------------------------------- encoding


def test_encode_inputs_layout():
    cfg = MemoryTaskConfig(pre_bins=2, post_bins=3, context_bins=4, response_bins=2,
                           min_steps=1, max_steps=5)
    ep = simulate_episodes(40, cfg, _rng(5))
    enc = encode_inputs(ep, cfg)
    C, B = cfg.context_bins, cfg.bins_per_step
    T = C + ep.max_len * B
    x = enc["inputs"]
    assert x.shape == (ep.n_episodes, T, 4) and x.dtype == np.float32
    for key in ("time_mask", "brain_mask", "response_mask"):
        assert enc[key].shape == (ep.n_episodes, T) and enc[key].dtype == bool
    assert enc["response_target"].shape == (ep.n_episodes, T)
    assert enc["response_target"].dtype == np.float32

    for i in range(ep.n_episodes):
        end = C + ep.lengths[i] * B
        # every real bin exactly one active unit, padded bins all zero
        np.testing.assert_array_equal(x[i, :end].sum(axis=1), 1.0)
        assert set(np.unique(x[i, :end])) == {0.0, 1.0}
        assert (x[i, end:] == 0).all()
        assert (x[i, :C].argmax(axis=1) == ep.first_target[i]).all()
        assert enc["time_mask"][i, :end].all() and not enc["time_mask"][i, end:].any()
        assert not enc["brain_mask"][i, :C].any()
        assert enc["brain_mask"][i, C:end].all() and not enc["brain_mask"][i, end:].any()
        for s in range(ep.lengths[i]):
            start = C + s * B
            step = x[i, start:start + B]
            assert step.shape[0] == B
            assert (step[:cfg.pre_bins].argmax(axis=1) == 3).all()
            assert (step[cfg.pre_bins:].argmax(axis=1) == ep.stimuli[i, s]).all()
            rmask = enc["response_mask"][i, start:start + B]
            np.testing.assert_array_equal(rmask, [False] * (B - 2) + [True] * 2)
            rt = enc["response_target"][i, start:start + B]
            np.testing.assert_array_equal(rt, np.where(rmask, ep.responses[i, s], 0.0))
    assert enc["response_mask"].sum() == ep.n_steps * cfg.response_bins
    assert enc["brain_mask"].sum() == ep.n_steps * B
    assert not enc["response_target"][~enc["response_mask"]].any()


def test_step_bins_time_round_trip():
    cfg = MemoryTaskConfig(min_steps=1, max_steps=4)
    ep = simulate_episodes(15, cfg, _rng(2))
    B = cfg.bins_per_step
    steps = _rng(4).standard_normal((ep.n_steps, B, 3)).astype(np.float32)
    timed = step_bins_to_time(steps, ep, cfg)
    enc = encode_inputs(ep, cfg)
    assert timed.shape == (ep.n_episodes, enc["inputs"].shape[1], 3)
    assert timed.dtype == np.float32
    assert (timed[~enc["brain_mask"]] == 0).all()
    np.testing.assert_array_equal(time_to_step_bins(timed, ep, cfg), steps)
    # step k lands at its (episode, step) position
    for k, (i, s) in enumerate(ep.step_index()):
        start = cfg.context_bins + s * B
        np.testing.assert_array_equal(timed[i, start:start + B], steps[k])
    # no trailing axis also works (e.g. per-bin weights)
    flat = steps[..., 0]
    back = time_to_step_bins(step_bins_to_time(flat, ep, cfg), ep, cfg)
    np.testing.assert_array_equal(back, flat)
    with pytest.raises(SpecError, match=r"\(n_steps, bins_per_step, \.\.\.\)"):
        step_bins_to_time(steps[:-1], ep, cfg)
    with pytest.raises(SpecError, match="n_episodes, T"):
        time_to_step_bins(timed[:, 1:], ep, cfg)


# ------------------------------------------------------------------ synthetic brain


def _decode_accuracy(features, labels, rng):
    """Least-squares decoding of a binary label, trained on one half, tested on the other."""
    n = features.shape[0]
    order = rng.permutation(n)
    train, test = order[: n // 2], order[n // 2:]
    X = np.column_stack([features, np.ones(n)])
    y = np.where(labels == 1, 1.0, -1.0)
    w, *_ = np.linalg.lstsq(X[train], y[train], rcond=None)
    pred = np.where(X[test] @ w > 0, 1, 0)
    return (pred == labels[test]).mean(), max(labels[test].mean(), 1 - labels[test].mean())


@pytest.fixture(scope="module")
def brains():
    cfg = MemoryTaskConfig()
    ep = simulate_episodes(500, cfg, _rng(10))
    info = synthetic_brain(ep, cfg, _rng(11), snr=1.0, dim=7, informative=True)
    null = synthetic_brain(ep, cfg, _rng(11), snr=1.0, dim=7, informative=False)
    return cfg, ep, info, null


def test_synthetic_brain_shape_dtype(brains):
    cfg, ep, info, null = brains
    for arr in (info, null):
        assert arr.shape == (ep.n_steps, cfg.bins_per_step, 7)
        assert arr.dtype == np.float32
        assert np.isfinite(arr).all()
    other = synthetic_brain(ep, cfg, _rng(11), dim=3)
    assert other.shape == (ep.n_steps, cfg.bins_per_step, 3)
    np.testing.assert_array_equal(other, synthetic_brain(ep, cfg, _rng(11), dim=3))


@pytest.mark.parametrize("snr", [0.5, 2.0, 5.0])
def test_synthetic_brain_snr(brains, snr):
    cfg, ep, _, _ = brains
    # same rng state -> same projections and noise draws; at huge snr the output is the
    # clean signal, so the difference is the noise at the requested snr.
    clean = synthetic_brain(ep, cfg, _rng(3), snr=1e12).astype(np.float64)
    noisy = synthetic_brain(ep, cfg, _rng(3), snr=snr).astype(np.float64)
    noise = noisy - clean
    assert clean.var() / noise.var() == pytest.approx(snr, rel=1e-3)


def test_synthetic_brain_informative_vs_null(brains):
    cfg, ep, info, null = brains
    targets = ep.targets[ep.step_mask]
    rng = _rng(0)
    acc_info, chance = _decode_accuracy(info.mean(axis=1), targets, rng)
    acc_null, chance_null = _decode_accuracy(null.mean(axis=1), targets, _rng(0))
    assert acc_info > chance + 0.25, (acc_info, chance)
    assert acc_null < chance_null + 0.05, (acc_null, chance_null)
    # per-bin decoding works too (single bins, informative only)
    per_bin, chance_bin = _decode_accuracy(info[:, -1, :], targets, _rng(1))
    assert per_bin > chance_bin + 0.1
    # same marginal statistics per dimension
    m_i, m_n = info.mean(axis=(0, 1)), null.mean(axis=(0, 1))
    v_i, v_n = info.var(axis=(0, 1)), null.var(axis=(0, 1))
    assert np.all(np.abs(m_i - m_n) < 0.1 * np.sqrt(v_i))
    np.testing.assert_allclose(v_n, v_i, rtol=0.1)


def test_synthetic_brain_does_not_hold_the_response():
    # Nearly noise-free brain: the target is read out almost perfectly, but on steps
    # showing a candidate (0 or 1) the response is "stimulus == target", an interaction
    # that a linear read-out of the embedding cannot recover (R^2 ~ 0).
    cfg = MemoryTaskConfig()
    ep = simulate_episodes(400, cfg, _rng(20))
    brain = synthetic_brain(ep, cfg, _rng(21), snr=1e4).astype(np.float64)
    mask = ep.step_mask
    stim, targ, resp = ep.stimuli[mask], ep.targets[mask], ep.responses[mask]
    keep = stim < 2
    X = np.column_stack([brain[keep, -1, :], np.ones(keep.sum())])

    def r2(y):
        w, *_ = np.linalg.lstsq(X, y, rcond=None)
        return 1 - ((y - X @ w) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    assert r2(np.where(targ[keep] == 1, 1.0, -1.0)) > 0.99
    assert r2(resp[keep].astype(np.float64)) < 0.05


@pytest.mark.parametrize("kwargs, needle", [({"snr": 0}, "snr must be a finite number > 0"),
                                             ({"snr": float("inf")}, "got inf"),
                                             ({"dim": 0}, "dim must be an integer >= 1")])
def test_synthetic_brain_rejects(kwargs, needle):
    cfg = MemoryTaskConfig()
    ep = simulate_episodes(2, cfg, _rng())
    with pytest.raises(SpecError) as exc:
        synthetic_brain(ep, cfg, _rng(), **kwargs)
    assert needle in _one_line(exc)


# ------------------------------------------------------------------------- controls


def _smooth_steps(rng, n_steps, n_bins, dim):
    """Autocorrelated, cross-correlated, non-zero-mean test signals."""
    x = rng.standard_normal((n_steps, n_bins, dim))
    for t in range(1, n_bins):
        x[:, t] = 0.8 * x[:, t - 1] + x[:, t]
    mix = rng.standard_normal((dim, dim))
    return x @ mix + rng.standard_normal((n_steps, 1, dim)) * 3.0


def test_shuffle_steps_keeps_steps_and_breaks_order():
    x = _smooth_steps(_rng(0), 2000, 12, 3)
    out, perm = shuffle_steps(x, _rng(1), return_permutation=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, x[perm])
    np.testing.assert_array_equal(np.sort(perm), np.arange(x.shape[0]))
    # each output step equals some input step exactly (multiset kept)
    assert sorted(s.tobytes() for s in out) == sorted(s.tobytes() for s in x)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), x.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(out.var(axis=(0, 1)), x.var(axis=(0, 1)), rtol=1e-12)
    in_place = np.mean([np.array_equal(a, b) for a, b in zip(out, x)])
    assert in_place < 0.01
    step_means_x, step_means_o = x.mean(axis=1), out.mean(axis=1)
    for d in range(x.shape[2]):
        r = np.corrcoef(step_means_x[:, d], step_means_o[:, d])[0, 1]
        assert abs(r) < 0.1
    np.testing.assert_array_equal(shuffle_steps(x, _rng(1)), out)  # same seed, same result


def _circular_autocorr(series):
    """Naive circular autocorrelation of a (n, dim) series: (n_lags, dim)."""
    xc = series - series.mean(axis=0, keepdims=True)
    return np.stack([(xc * np.roll(xc, lag, axis=0)).sum(axis=0)
                     for lag in range(series.shape[0])], axis=0)


@pytest.mark.parametrize("n_bins", [16, 15])
def test_phase_randomise_keeps_moments_of_the_recording(n_bins):
    x = _smooth_steps(_rng(2), 40, n_bins, 3)
    y = phase_randomise(x, _rng(3))
    assert y.shape == x.shape and y.dtype == np.float64 and np.isfinite(y).all()
    sx, sy = x.reshape(-1, 3), y.reshape(-1, 3)
    np.testing.assert_allclose(sy.mean(0), sx.mean(0), atol=1e-9, rtol=0)
    np.testing.assert_allclose(np.cov(sy.T, bias=True), np.cov(sx.T, bias=True), rtol=1e-6)
    ac_x, ac_y = _circular_autocorr(sx), _circular_autocorr(sy)
    np.testing.assert_allclose(ac_y, ac_x, rtol=1e-6, atol=1e-9 * np.abs(ac_x).max())
    assert not np.allclose(sy, sx)  # the time course is replaced (correlation: next test)
    np.testing.assert_array_equal(phase_randomise(x, _rng(3)), y)  # deterministic


def test_phase_randomise_correlation_with_original_is_near_zero():
    x = _smooth_steps(_rng(7), 200, 20, 4)
    rs = []
    for k in range(20):
        y = phase_randomise(x, _rng(100 + k))
        rs.append(np.corrcoef((x - x.mean((0, 1))).ravel(), (y - y.mean((0, 1))).ravel())[0, 1])
    assert abs(np.mean(rs)) < 0.05


def test_phase_randomise_destroys_task_information_in_step_means():
    cfg = MemoryTaskConfig(pre_bins=2, post_bins=3)
    eps = simulate_episodes(300, cfg, _rng(8))
    brain = synthetic_brain(eps, cfg, _rng(9), snr=2.0)
    target = eps.targets[eps.step_mask]

    def decode(steps):
        """Held-out least-squares decoding accuracy of the current target from step means."""
        feats = np.c_[steps.mean(axis=1), np.ones(len(steps))]
        half = len(steps) // 2
        w, *_ = np.linalg.lstsq(feats[:half], target[:half] * 2.0 - 1, rcond=None)
        return np.mean((feats[half:] @ w > 0) == (target[half:] == 1))

    assert decode(brain) > 0.9
    assert decode(phase_randomise(brain, _rng(10))) < 0.6


def test_phase_randomise_dtype_and_edge_lengths():
    x = _smooth_steps(_rng(4), 10, 16, 2).astype(np.float32)
    y = phase_randomise(x, _rng(5))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.reshape(-1, 2).mean(0), x.reshape(-1, 2).mean(0), atol=1e-5)
    one = x[:1, :1]
    np.testing.assert_array_equal(phase_randomise(one, _rng(0)), one)  # DC only
    two = _smooth_steps(_rng(6), 1, 2, 2)
    out = phase_randomise(two, _rng(0))  # Nyquist only: sign flip of the demeaned part
    dm, do = two - two.mean(1, keepdims=True), out - out.mean(1, keepdims=True)
    assert np.isclose(do, dm).all() or np.isclose(do, -dm).all()
    with pytest.raises(SpecError, match=r"shape \(n_steps, n_bins, dim\), got shape \(3, 4\)"):
        phase_randomise(np.zeros((3, 4)), _rng())
    with pytest.raises(SpecError, match="got shape"):
        shuffle_steps(np.zeros(3), _rng())


# ------------------------------------------------------------------------------ npz


@pytest.fixture()
def saved(tmp_path):
    cfg = MemoryTaskConfig()
    ep = simulate_episodes(12, cfg, _rng(30))
    emb = synthetic_brain(ep, cfg, _rng(31), dim=7)
    path = save_memory_npz(tmp_path / "brain.npz", ep, emb)
    return cfg, ep, emb, path


def test_npz_round_trip(saved):
    cfg, ep, emb, path = saved
    assert path.name == "brain.npz" and path.is_file()
    ep2, emb2 = load_memory_npz(path, cfg, expected_dim=7)
    assert emb2.dtype == np.float32
    np.testing.assert_array_equal(emb2, emb)
    for name in ("first_target", "lengths", "stimuli", "targets", "responses"):
        np.testing.assert_array_equal(getattr(ep2, name), getattr(ep, name))
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"embeddings", "episode_lengths", "stimuli", "first_target"}
        assert z["stimuli"].shape == (ep.n_steps,)


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _arrays(saved):
    _, _, _, path = saved
    with np.load(path) as z:
        return {k: z[k].copy() for k in z.files}


def _load_error(path, cfg, dim=7) -> str:
    with pytest.raises(SpecError) as exc:
        load_memory_npz(path, cfg, expected_dim=dim)
    msg = _one_line(exc)
    assert f"'{path}'" in msg
    return msg


def test_npz_missing_file(tmp_path):
    path = tmp_path / "x.npz"
    msg = _load_error(path, MemoryTaskConfig())
    assert msg == (f"brain data file '{path}' not found; expected an .npz with keys "
                   "embeddings, episode_lengths, stimuli, first_target")


def test_npz_missing_key(saved, tmp_path):
    cfg = saved[0]
    arrays = _arrays(saved)
    del arrays["stimuli"]
    msg = _load_error(_write(tmp_path / "m.npz", **arrays), cfg)
    assert "lacks key 'stimuli'" in msg and "found embeddings, episode_lengths, first_target" in msg


@pytest.mark.parametrize("key, value, needle", [
    ("embeddings", np.zeros((4, 10)),
     "'embeddings' must be 3-D with shape (n_steps, bins_per_step, dim), got shape (4, 10)"),
    ("stimuli", np.zeros((2, 3), dtype=int), "'stimuli' must be 1-D"),
    ("episode_lengths", np.int64(3), "'episode_lengths' must be 1-D"),
    ("first_target", np.zeros((1, 1), dtype=int), "'first_target' must be 1-D"),
])
def test_npz_wrong_ndim(saved, tmp_path, key, value, needle):
    arrays = _arrays(saved)
    arrays[key] = value
    assert needle in _load_error(_write(tmp_path / "d.npz", **arrays), saved[0])


def test_npz_dimension_and_bins(saved, tmp_path):
    cfg, _, emb, path = saved
    msg = _load_error(path, cfg, dim=5)
    assert "brain embedding dimension 7 differs from the model's embedding dimension 5" in msg
    arrays = _arrays(saved)
    arrays["embeddings"] = arrays["embeddings"][:, :8]
    msg = _load_error(_write(tmp_path / "b.npz", **arrays), cfg)
    assert "8 time bins per step" in msg
    assert "bins_per_step = pre_bins + post_bins = 5 + 5 = 10" in msg
    arrays = _arrays(saved)
    arrays["embeddings"] = arrays["embeddings"][..., :5]
    msg = _load_error(_write(tmp_path / "e.npz", **arrays), cfg)
    assert "brain embedding dimension 5 differs from the model's embedding dimension 7" in msg


def test_npz_non_finite(saved, tmp_path):
    arrays = _arrays(saved)
    arrays["embeddings"][3, 2, 1] = np.nan
    arrays["embeddings"][5, 0, 0] = np.inf
    arrays["embeddings"][9, 9, 6] = -np.inf
    msg = _load_error(_write(tmp_path / "n.npz", **arrays), saved[0])
    assert "found 3 NaN/inf value(s), the first at index (3, 2, 1)" in msg


def test_npz_step_counts(saved, tmp_path):
    cfg, ep, _, _ = saved
    arrays = _arrays(saved)
    arrays["embeddings"] = arrays["embeddings"][:-1]
    msg = _load_error(_write(tmp_path / "c1.npz", **arrays), cfg)
    assert "step count does not match the episode sequences" in msg
    assert f"sum(episode_lengths) = {ep.n_steps}, embeddings have {ep.n_steps - 1} steps" in msg
    arrays = _arrays(saved)
    arrays["stimuli"] = arrays["stimuli"][:-2]
    msg = _load_error(_write(tmp_path / "c2.npz", **arrays), cfg)
    assert f"stimuli has {ep.n_steps - 2} entries" in msg
    arrays = _arrays(saved)
    arrays["episode_lengths"][0] += 1
    assert "step count does not match" in _load_error(_write(tmp_path / "c3.npz", **arrays), cfg)


@pytest.mark.parametrize("key, index, value, needle", [
    ("stimuli", 4, 3, "stimuli must take values in {0, 1, 2}"),
    ("stimuli", 0, -1, "got -1 at index 0"),
    ("first_target", 2, 2, "first_target must take values in {0, 1}"),
    ("episode_lengths", 1, 0, "episode_lengths must be >= 1 step per episode, got 0 for episode 1"),
])
def test_npz_bad_values(saved, tmp_path, key, index, value, needle):
    arrays = _arrays(saved)
    arrays[key][index] = value
    # value checks come before the step-count check, so a changed length still reports it
    assert needle in _load_error(_write(tmp_path / "v.npz", **arrays), saved[0])


def test_npz_bad_types_and_files(saved, tmp_path):
    cfg = saved[0]
    arrays = _arrays(saved)
    arrays["stimuli"] = arrays["stimuli"] + 0.5
    msg = _load_error(_write(tmp_path / "f.npz", **arrays), cfg)
    assert f"stimuli must hold integers, got {arrays['stimuli'][0]} at index 0" in msg
    arrays = _arrays(saved)
    arrays["first_target"] = np.array([object()] * arrays["first_target"].shape[0])
    _write(tmp_path / "o.npz", **arrays)
    assert "no pickled objects" in _load_error(tmp_path / "o.npz", cfg)
    arrays = _arrays(saved)
    arrays["embeddings"] = arrays["embeddings"].astype(str)
    assert "'embeddings' must hold real numbers" in _load_error(
        _write(tmp_path / "s.npz", **arrays), cfg)
    text = tmp_path / "t.npz"
    text.write_text("not an archive\n")
    assert "is truncated or unreadable by numpy.load" in _load_error(text, cfg)
    single = tmp_path / "a.npy"
    np.save(single, np.zeros(3))
    assert "holds a single array, not an .npz archive" in _load_error(single, cfg)


def test_save_rejects_mismatched_embeddings(saved, tmp_path):
    _, ep, emb, _ = saved
    with pytest.raises(SpecError, match=f"n_steps = {ep.n_steps}"):
        save_memory_npz(tmp_path / "z.npz", ep, emb[:-1])


def test_episodes_constructor_checks_shapes():
    with pytest.raises(SpecError, match="Episodes.targets must have shape"):
        Episodes(first_target=np.array([0]), lengths=np.array([2]),
                 stimuli=np.zeros((1, 2), np.int64), targets=np.zeros((1, 3), np.int64),
                 responses=np.zeros((1, 2), np.float32))


def test_episodes_split_keeps_steps_and_brain_rows_together():
    cfg = MemoryTaskConfig(pre_bins=1, post_bins=2)
    eps = simulate_episodes(12, cfg, _rng(20))
    brain = synthetic_brain(eps, cfg, _rng(21), dim=3)
    idx = np.array([7, 2, 9])
    sub, sub_brain = eps.split(idx, brain)
    assert sub.n_episodes == 3 and sub.max_len == eps.lengths[idx].max()
    np.testing.assert_array_equal(sub.lengths, eps.lengths[idx])
    starts = np.concatenate([[0], np.cumsum(eps.lengths)[:-1]])
    expected = np.concatenate([brain[starts[i]:starts[i] + eps.lengths[i]] for i in idx])
    np.testing.assert_array_equal(sub_brain, expected)
    for k, i in enumerate(idx):
        n = eps.lengths[i]
        np.testing.assert_array_equal(sub.stimuli[k, :n], eps.stimuli[i, :n])
        np.testing.assert_array_equal(sub.responses[k, :n], eps.responses[i, :n])
