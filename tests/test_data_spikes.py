"""Spikes: the plain file format, binning, the B2M step alignment and causal filter, and
CEBRA multi-session embeddings on synthetic sessions and on the real rat recording."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from raybrain.data.spikes import (EXP_KERNEL, SpikeRecording, align_steps, aux_at, bin_rates,
                                  causal_exp_filter, cebra_embed, convert_nelpy_npz,
                                  load_embedding, load_spikes, save_embedding, save_spikes)
from raybrain.errors import SpecError
from tests.conftest import ROOT, SHARED_DATA, WAIT_S

pytestmark = pytest.mark.unit

RAT = SHARED_DATA / "spikes" / "rat_hippocampus_linear_track" / "linear_track_parsed.npz"


def _rec(**kw):
    base = dict(spike_times=np.array([0.05, 0.15, 0.16, 0.35, 0.9]),
                unit_index=np.array([0, 1, 1, 0, 1]), n_units=2)
    base.update(kw)
    return SpikeRecording(**base)


def test_binning_known_answer():
    rates, centres = bin_rates(_rec(), 0.1, t_start=0.0, t_stop=1.0)
    counts = np.zeros((10, 2))
    counts[0, 0] = 1  # 0.05 s, unit 0
    counts[1, 1] = 2  # 0.15 and 0.16 s, unit 1
    counts[3, 0] = 1  # 0.35 s, unit 0
    counts[9, 1] = 1  # 0.9 s, unit 1
    np.testing.assert_allclose(rates, counts / 0.1)
    np.testing.assert_allclose(centres, np.arange(10) * 0.1 + 0.05)


def test_step_alignment_known_answer():
    rec = _rec(spike_times=np.array([0.5, 1.25, 1.95, 2.1, 2.9, 3.05]),
               unit_index=np.array([0, 0, 0, 1, 1, 0]),
               event_times=np.array([2.0]), reaction_times=np.array([1.0]))
    steps = align_steps(rec, pre_s=1.0, pre_bins=4, post_bins=2)
    assert steps.shape == (1, 6, 2)
    expected = np.zeros((6, 2))
    expected[1, 0] = expected[3, 0] = 1 / 0.25  # 1.25 in bin 1, 1.95 in bin 3 (of -1..0 s)
    expected[4, 1] = expected[5, 1] = 1 / 0.5  # 2.1 in the first, 2.9 in the second half
    np.testing.assert_allclose(steps[0], expected)


def test_causal_filter_kernel_and_causality():
    assert len(EXP_KERNEL) == 41 and np.all(EXP_KERNEL[:20] == 0) and EXP_KERNEL[20] == 1.0
    impulse = np.zeros((2, 30, 1))
    impulse[0, 3, 0] = 1.0
    y = causal_exp_filter(impulse, axis=1)
    np.testing.assert_allclose(y[0, 3:24, 0], np.exp(-0.25 * np.arange(21)), rtol=1e-6)
    assert np.all(y[0, :3] == 0) and np.all(y[0, 24:] == 0)
    assert np.all(y[1] == 0)  # no leak across steps
    x = np.random.default_rng(0).standard_normal((1, 50, 3))
    later = x.copy()
    later[0, 30:] += 5.0
    np.testing.assert_array_equal(causal_exp_filter(x)[0, :30], causal_exp_filter(later)[0, :30])


def test_round_trip_and_bad_files(tmp_path):
    rec = _rec(event_times=np.array([0.2, 0.6]), reaction_times=np.array([0.1, 0.2]),
               extra={"stimuli": np.array([0, 2])})
    back = load_spikes(save_spikes(tmp_path / "s.npz", rec))
    np.testing.assert_array_equal(back.spike_times, rec.spike_times)
    assert back.n_units == 2 and back.extra["stimuli"].tolist() == [0, 2]
    bad = {
        "nounits": ({"spike_times": [0.1], "unit_index": [0]}, "lacks 'n_units'"),
        "range": ({"spike_times": [0.1], "unit_index": [3], "n_units": 2}, r"in \[0, n_units = 2\)"),
        "neg": ({"spike_times": [-0.1], "unit_index": [0], "n_units": 1}, ">= 0 s"),
        "nan": ({"spike_times": [np.nan], "unit_index": [0], "n_units": 1}, "NaN/inf"),
        "rt": ({"spike_times": [0.1], "unit_index": [0], "n_units": 1, "event_times": [0.5, 1.0],
                "reaction_times": [0.2]}, "2 event_times but 1 reaction_times"),
        "rt0": ({"spike_times": [0.1], "unit_index": [0], "n_units": 1, "event_times": [0.5],
                 "reaction_times": [0.0]}, "reaction_times must be > 0 s"),
    }
    for name, (arrays, needle) in bad.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
        with pytest.raises(SpecError, match=needle) as err:
            load_spikes(path)
        assert f"{name}.npz" in str(err.value)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, spike_times=np.array([np.zeros(2)], dtype=object), unit_index=[0], n_units=1)
    with pytest.raises(SpecError, match=r"obj\.npz' holds pickled objects .*convert a trusted "
                                        r"file once with `raybrain data convert-spikes SRC DST`"):
        load_spikes(pickled)
    # a cut file is not a format to convert: it is truncated, and the error says so
    good = save_spikes(tmp_path / "good.npz", rec)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SpecError, match=r"cut\.npz' is truncated or unreadable") as err:
        load_spikes(cut)
    assert "convert" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SpecError, match=r"spike file '.*' is a directory"):
        load_spikes(tmp_path)


def test_cebra_multi_session_synthetic(tmp_path):
    """Two sessions with different neuron counts share one space of the requested size."""
    rng = np.random.default_rng(0)
    t = np.tile(np.arange(20), 30)
    latent = np.column_stack([np.sin(t / 3), np.cos(t / 3)])
    s1 = (latent @ rng.standard_normal((2, 12)) + 0.1 * rng.standard_normal((600, 12)))
    s2 = (latent @ rng.standard_normal((2, 9)) + 0.1 * rng.standard_normal((600, 9)))
    res = cebra_embed([s1.reshape(30, 20, 12), s2.reshape(30, 20, 9)], output_dimension=3,
                      max_iterations=60, batch_size=128, seed=1)
    assert [e.shape for e in res.embeddings] == [(30, 20, 3), (30, 20, 3)]
    assert all(np.isfinite(e).all() for e in res.embeddings)
    prov = res.provenance["cebra"]
    assert prov["model_architecture"] == "offset10-model" and prov["conditional"] == "time_delta"
    assert prov["max_iterations"] == 60 and prov["batch_size"] == 128 and prov["device"] == "cpu"
    path = save_embedding(tmp_path / "emb", res)
    again = load_embedding(path)
    np.testing.assert_array_equal(again.embeddings[1], res.embeddings[1])
    assert again.provenance["input_shapes"] == [[30, 20, 12], [30, 20, 9]]
    with pytest.raises(SpecError, match=r"output_dimension 10 exceeds the smallest session's "
                                        r"neuron count 9"):
        cebra_embed([s1, s2], output_dimension=10, max_iterations=1, batch_size=8,
                    labels=[t, t])
    with pytest.raises(SpecError, match="batch_size must be an integer >= 2"):
        cebra_embed([s1.reshape(30, 20, 12)], output_dimension=3, max_iterations=1,
                    batch_size=None)
    with pytest.raises(SpecError, match="share their time bins per step"):
        cebra_embed([s1.reshape(30, 20, 12), s2.reshape(20, 30, 9)], output_dimension=3,
                    max_iterations=1, batch_size=8)


def test_cebra_on_the_real_rat_recording(tmp_path):
    """31 hippocampal units on a linear track: binned rates of two disjoint halves of the
    units as two sessions of the same time span; the embedding carries position."""
    if not RAT.exists():
        pytest.skip("shared rat hippocampus recording is absent")
    rec = convert_nelpy_npz(RAT, tmp_path / "rat.npz")
    assert rec.n_units == 31 and len(rec.spike_times) == 28829
    rates, centres = bin_rates(rec, 0.1)
    pos = aux_at(rec, centres)
    units = [np.arange(0, 31, 2), np.arange(1, 31, 2)]
    t0 = time.perf_counter()
    res = cebra_embed([rates[:, u] for u in units], output_dimension=3, max_iterations=150,
                      batch_size=256, labels=[pos, pos], seed=0)
    seconds = time.perf_counter() - t0
    emb = res.embeddings[0]
    assert emb.shape == (len(rates), 3) and np.isfinite(emb).all()
    assert np.mean(res.loss[-20:]) < np.mean(res.loss[:20])
    # position decoded from the embedding (kNN, first 80 % -> last 20 %) beats the same
    # decoder on a time-shuffled embedding
    cut = int(0.8 * len(emb))

    def knn_error(e):
        d = ((e[cut:, None, :] - e[None, :cut:5, :]) ** 2).sum(-1)
        nearest = np.argsort(d, axis=1)[:, :10]
        return float(np.median(np.abs(pos[:cut:5][nearest].mean(1) - pos[cut:])))

    shuffled = emb[np.random.default_rng(0).permutation(len(emb))]
    real_err, shuf_err = knn_error(emb), knn_error(shuffled)
    assert real_err < 0.8 * shuf_err, (real_err, shuf_err)
    r = rec.rates_hz()
    out = {"file": "spikes/rat_hippocampus_linear_track/linear_track_parsed.npz",
           "units": rec.n_units, "spikes": int(len(rec.spike_times)),
           "duration_s": round(rec.duration[1] - rec.duration[0], 1),
           "rate_hz": {"min": round(float(r.min()), 3), "mean": round(float(r.mean()), 3),
                       "max": round(float(r.max()), 3)},
           "bins": list(rates.shape), "bin_s": 0.1, "sessions": [len(u) for u in units],
           "iterations": 150, "batch_size": 256, "seconds": round(seconds, 1),
           "s_per_iteration": round(seconds / 150, 4),
           "position_knn_median_error_px": {"embedding": round(real_err, 1),
                                             "shuffled": round(shuf_err, 1)}}
    print(json.dumps(out))
    art = ROOT / "tests" / "artifacts"
    art.mkdir(parents=True, exist_ok=True)
    (art / "cebra_timing.json").write_text(json.dumps(out, indent=1))


def test_cli_converts_the_pickled_example_once_and_inspects_it(tmp_path):
    import subprocess
    import sys

    if not RAT.exists():
        pytest.skip("shared rat hippocampus recording is absent")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "raybrain.cli", "data", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S)

    raw = cli("inspect", str(RAT), "--as", "spikes")
    assert raw.returncode == 2 and "raybrain data convert-spikes SRC DST" in raw.stderr
    out = cli("convert-spikes", str(RAT), str(tmp_path / "rat.npz"))
    assert out.returncode == 0, out.stderr
    assert "31 units, 28829 spikes over 1968.1 s" in out.stdout
    again = cli("inspect", str(tmp_path / "rat.npz"), "--as", "spikes")
    assert again.returncode == 0 and "rates 0.02..4.04 Hz (mean 0.47)" in again.stdout
    bad = cli("convert-spikes", str(tmp_path / "rat.npz"), str(tmp_path / "x.npz"))
    assert bad.returncode == 2 and "lacks ['spike_times_s', 'pos_time_s', 'pos_x_px']" in bad.stderr


class _RunsCode:
    """An object whose unpickling calls a function: what a crafted data file would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_convert_rebuilds_numeric_object_arrays_and_refuses_anything_else(tmp_path):
    units = [np.array([0.5, 1.5, 2.0]), np.array([0.25, 3.0])]
    spikes = np.empty(2, dtype=object)
    spikes[:] = units
    good = tmp_path / "nelpy.npz"
    np.savez(good, spike_times_s=spikes, pos_time_s=np.arange(4.0),
             pos_x_px=np.array([1, 2, 3, 4], dtype=np.uint16))
    rec = convert_nelpy_npz(good, tmp_path / "plain.npz")
    assert rec.n_units == 2
    np.testing.assert_array_equal(rec.spike_times, [0.25, 0.5, 1.5, 2.0, 3.0])
    np.testing.assert_array_equal(rec.unit_index, [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(rec.aux_values, [1, 2, 3, 4])

    marker = tmp_path / "code-ran"
    crafted = np.empty(2, dtype=object)
    crafted[:] = [np.zeros(2), _RunsCode(str(marker))]
    bad = tmp_path / "crafted.npz"
    np.savez(bad, spike_times_s=crafted, pos_time_s=np.arange(4.0), pos_x_px=np.arange(4))
    with pytest.raises(SpecError, match="refused global pathlib") as err:
        convert_nelpy_npz(bad, tmp_path / "out.npz")
    assert "\n" not in str(err.value)
    assert not marker.exists() and not (tmp_path / "out.npz").exists()
