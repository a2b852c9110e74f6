"""EEG/MEG through MNE: real files in ../shared/data, every format written and read back,
cleaning, frame samples, epochs, and bad input (one-line errors naming the file)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raybrain.data.eeg import (EEGPrep, epochs_data, event_times, frame_vectors, preprocess,
                               read_raw, recording_summary, write_raw)
from raybrain.errors import SpecError
from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.unit

EEG_DIR = SHARED_DATA / "eeg"
FORMATS = [".fif", ".edf", ".bdf", ".vhdr", ".set"]
SEEN = ROOT / "tests" / "artifacts" / "real_files.json"


def _note(name: str, info: dict) -> None:
    """Keep what each real file gave (shapes, rates) for the README and the closing note."""
    SEEN.parent.mkdir(parents=True, exist_ok=True)
    seen = json.loads(SEEN.read_text()) if SEEN.exists() else {}
    seen[name] = info
    SEEN.write_text(json.dumps(seen, indent=1, sort_keys=True))


def _real(rel: str):
    path = EEG_DIR / rel
    if not path.exists():
        pytest.skip(f"shared data file {rel} is absent")
    return path


# -- real files ------------------------------------------------------------------------
@pytest.mark.parametrize("rel, n_channels, sfreq, seconds", [
    ("mne_testdata/test.vhdr", 32, 1000.0, 7.9),
    ("mne_testdata/test.bdf", 73, 2048.0, 1.0),
    ("mne_testdata/test_bdf_stim_channel.bdf", 4, 500.0, 10.0),
    ("mne_testdata/test.edf", 139, 512.0, 6.0),  # 140 signals, one is EDF+ annotations
    ("mne_testdata/test_edf_stim_channel.edf", 25, 128.0, 9.6),
    ("mne_testdata/test_ctf_comp_raw.fif", 340, 480.0, 0.5),
    ("eeglab_tutorial/eeglab_data.set", 32, 128.0, 238.3),
])
def test_real_recordings_read(rel, n_channels, sfreq, seconds):
    raw = read_raw(_real(rel))
    s = recording_summary(raw)
    assert s["n_channels"] == n_channels
    assert s["sfreq"] == sfreq
    assert s["duration_s"] == pytest.approx(seconds, abs=0.1)
    assert raw.info["subject_info"] is None  # names a person: dropped on read
    assert np.isfinite(raw.get_data()).all()
    _note(rel, s)


def test_real_events_annotations_and_trigger_codes():
    vhdr = read_raw(_real("mne_testdata/test.vhdr"))
    np.testing.assert_allclose(event_times(vhdr, "S253"), [0.486, 4.935])
    bdf = read_raw(_real("mne_testdata/test_bdf_stim_channel.bdf"))
    ones = event_times(bdf, 1)
    assert len(ones) >= 3 and np.all(np.diff(ones) > 0)
    np.testing.assert_allclose(ones[:3], [1.904, 3.212, 4.498])
    with pytest.raises(SpecError, match=r"no event with code 99 on 'Status'; codes found: \["):
        event_times(bdf, 99)


def test_real_eeglab_epochs_to_time_resolved_rdm():
    """EEGLAB tutorial: 80 'square' onsets split by the stimulus position the .set stores."""
    import scipy.io

    from raybrain.data.rdm_compute import decoding_rdm

    path = _real("eeglab_tutorial/eeglab_data.set")
    raw = read_raw(path)
    onsets = event_times(raw, "square")
    assert len(onsets) == 80
    events = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["EEG"].event
    position = np.array([int(e.position) for e in events if e.type == "square"])
    assert sorted(set(position.tolist())) == [1, 2]
    preprocess(raw, EEGPrep(picks="eeg", reference="average", l_freq=1.0, h_freq=30.0))
    data, labels, times = epochs_data(raw, onsets, position, tmin=-0.2, tmax=0.8)
    assert data.shape == (80, 32, len(times)) and len(times) == 129
    rdm, order = decoding_rdm(data, labels, n_folds=5, rng=np.random.default_rng(0))
    assert rdm.shape == (len(times), 2, 2)
    np.testing.assert_allclose(rdm, rdm.transpose(0, 2, 1))
    assert np.all(np.diagonal(rdm, axis1=1, axis2=2) == 0)
    pre, post = rdm[times < 0, 0, 1].mean(), rdm[(times > 0.1) & (times < 0.5), 0, 1].mean()
    _note("eeglab_tutorial/eeglab_data.set (epochs)",
          {"epochs": list(data.shape), "conditions": "position 1/2 of 'square'",
           "decoding distance pre-stimulus": round(float(pre), 3),
           "decoding distance 0.1-0.5 s": round(float(post), 3)})
    assert abs(pre) < 0.15  # no information before the stimulus (chance = 0)


def test_real_evoked_fif_correlation_rdm():
    """MNE sample subject: 4 evoked conditions -> a time-resolved correlation RDM."""
    import mne

    from raybrain.data.rdm_compute import correlation_rdm

    path = _real("mne_testdata/test-ave.fif.gz")
    evokeds = mne.read_evokeds(path, verbose="ERROR")
    assert [e.comment for e in evokeds] == ["Left Auditory", "Right Auditory", "Left visual",
                                            "Right visual"]
    patterns = np.stack([e.copy().pick("eeg").data for e in evokeds])  # (4, ch, t)
    rdm = correlation_rdm(patterns.transpose(2, 0, 1))  # (t, 4, 4)
    assert rdm.shape == (patterns.shape[2], 4, 4)
    np.testing.assert_allclose(np.diagonal(rdm, axis1=1, axis2=2), 0, atol=1e-12)
    _note("mne_testdata/test-ave.fif.gz", {"evoked": [len(evokeds), *patterns.shape[1:]],
                                           "sfreq": evokeds[0].info["sfreq"]})


# -- formats written by raybrain ---------------------------------------------------------
def _frame_raw(sfreq=256.0, n_ch=6, n_frames=40, frame_rate=8.0, lead=1.0):
    """Channel c holds c + frame index (scaled to volts) during each frame."""
    import mne

    per = int(sfreq / frame_rate)
    n = int(lead * sfreq) * 2 + n_frames * per
    data = np.zeros((n_ch, n))
    start = int(lead * sfreq)
    for k in range(n_frames):
        data[:, start + k * per:start + (k + 1) * per] = (np.arange(n_ch)[:, None] + k) * 1e-6
    raw = mne.io.RawArray(data, mne.create_info([f"E{c}" for c in range(n_ch)], sfreq, "eeg"),
                          verbose="ERROR")
    onsets = lead + np.arange(n_frames) / frame_rate
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["frame"] * n_frames))
    expected = (np.arange(n_ch)[None, :] + np.arange(n_frames)[:, None]) * 1e-6
    return raw, onsets, expected


@pytest.mark.parametrize("suffix", FORMATS)
def test_each_format_round_trips_frames_and_events(tmp_path, suffix):
    raw, onsets, expected = _frame_raw()
    path = write_raw(raw, tmp_path / ("rec_raw.fif" if suffix == ".fif" else f"rec{suffix}"))
    back = read_raw(path)
    assert recording_summary(back)["n_channels"] == 6 and back.info["sfreq"] == 256.0
    times = event_times(back, "frame")
    np.testing.assert_allclose(times, onsets, atol=1 / 256)
    vec = frame_vectors(back, times, 8.0)
    assert vec.shape == (40, 6) and vec.dtype == np.float32
    # EDF stores 16-bit samples: resolution ~ range / 65536
    np.testing.assert_allclose(vec, expected, atol=2e-9 if suffix == ".edf" else 1e-10)


def test_preprocess_reference_resample_bads_and_filter():
    import mne

    sfreq = 500.0
    t = np.arange(int(10 * sfreq)) / sfreq
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5, t.size)) * 1e-6 + np.sin(2 * np.pi * 50 * t) * 5e-6
    raw = mne.io.RawArray(data, mne.create_info(["A", "B", "C", "D", "E"], sfreq, "eeg"),
                          verbose="ERROR")
    before = np.abs(np.fft.rfft(raw.get_data()[0]))
    preprocess(raw, EEGPrep(picks="eeg", bad_channels=("E",), reference="average",
                            notch=(50.0,), l_freq=1.0, h_freq=40.0, resample=200.0))
    assert raw.ch_names == ["A", "B", "C", "D"] and raw.info["sfreq"] == 200.0
    x = raw.get_data()
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-12)  # average reference
    after = np.abs(np.fft.rfft(x[0]))
    f_before, f_after = np.fft.rfftfreq(t.size, 1 / sfreq), np.fft.rfftfreq(x.shape[1], 1 / 200.0)
    line_before = before[np.argmin(np.abs(f_before - 50))] / t.size
    line_after = after[np.argmin(np.abs(f_after - 50))] / x.shape[1]
    assert line_after < line_before / 100  # the 50 Hz line is gone


def test_frame_vectors_average_each_frame_window():
    raw, onsets, expected = _frame_raw(sfreq=512.0)
    vec = frame_vectors(raw, onsets, 8.0)
    np.testing.assert_allclose(vec, expected, atol=1e-12)


def test_epochs_drop_windows_outside_the_recording():
    raw, onsets, _ = _frame_raw()
    times = np.array([0.05, 2.0, 3.0, raw.n_times / 256.0 - 0.01])
    data, labels, ep_times = epochs_data(raw, times, np.array([1, 2, 1, 2]), -0.1, 0.2,
                                         baseline=None)
    assert data.shape[0] == 2 and labels.tolist() == [2, 1]
    assert ep_times[0] == pytest.approx(-0.1, abs=1 / 256)


# -- bad input ---------------------------------------------------------------------------
def test_missing_unsupported_empty_and_corrupt_files(tmp_path):
    with pytest.raises(SpecError, match=r"'.*nope\.bdf' not found"):
        read_raw(tmp_path / "nope.bdf")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(SpecError, match=r"suffix '\.csv'; expected one of"):
        read_raw(tmp_path / "x.csv")
    (tmp_path / "empty.edf").write_bytes(b"")
    with pytest.raises(SpecError, match=r"empty \(0 bytes\)"):
        read_raw(tmp_path / "empty.edf")
    for suffix in (".edf", ".bdf", ".vhdr", ".set", ".fif"):
        bad = tmp_path / f"corrupt{suffix}"
        bad.write_bytes(np.random.default_rng(1).bytes(3000))
        with pytest.raises(SpecError) as err:
            read_raw(bad)
        msg = str(err.value)
        assert f"corrupt{suffix}" in msg and "\n" not in msg


def test_truncated_recording_cannot_pair_its_frames(tmp_path):
    raw, onsets, _ = _frame_raw()
    path = write_raw(raw, tmp_path / "rec.vhdr")
    data_file = tmp_path / "rec.eeg"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    back = read_raw(path)
    with pytest.raises(SpecError, match=r"frames span .* but the recording holds .*truncated"):
        frame_vectors(back, event_times(back, "frame"), 8.0)
    bdf = write_raw(raw, tmp_path / "rec.bdf")
    bdf.write_bytes(bdf.read_bytes()[:1200])  # header cut short
    with pytest.raises(SpecError, match=r"rec\.bdf' could not be read"):
        read_raw(bdf)


def test_missing_events_unaligned_rates_and_nans():
    import mne

    raw, onsets, _ = _frame_raw()
    with pytest.raises(SpecError, match=r"no event 'stimulus' among its annotations; found \['frame'\]"):
        event_times(raw, "stimulus")
    with pytest.raises(SpecError, match=r"needs a stim/trigger channel"):
        event_times(raw, 5)
    slow = mne.io.RawArray(np.zeros((2, 40)), mne.create_info(["a", "b"], 4.0, "eeg"),
                           verbose="ERROR")
    with pytest.raises(SpecError, match=r"4 Hz cannot be aligned to frames at 8 Hz"):
        frame_vectors(slow, np.arange(4) / 8.0, 8.0)
    with pytest.raises(SpecError, match=r"0\.2 s apart \(5 Hz\) but data\.frame_rate is 8 Hz"):
        frame_vectors(raw, 1.0 + np.arange(10) * 0.2, 8.0)
    data = raw.get_data()
    data[2, 300] = np.nan
    nan_raw = mne.io.RawArray(data, raw.info, verbose="ERROR")
    with pytest.raises(SpecError, match=r"NaN/inf in the signal at frame \d+, channel 'E2'"):
        frame_vectors(nan_raw, onsets, 8.0)


def test_preprocess_refuses_bad_settings():
    raw, _, _ = _frame_raw()
    with pytest.raises(SpecError, match=r"bad channel\(s\) \['Fz'\] are not in the recording"):
        preprocess(raw.copy(), EEGPrep(bad_channels=("Fz",)))
    with pytest.raises(SpecError, match=r"h_freq 200 Hz must lie in \(0, 128\) Hz"):
        preprocess(raw.copy(), EEGPrep(h_freq=200.0))
    with pytest.raises(SpecError, match=r"resampling to 50 Hz cannot keep h_freq 40 Hz"):
        preprocess(raw.copy(), EEGPrep(h_freq=40.0, resample=50.0))
    assert math.isfinite(raw.get_data().sum())


def test_frame_vectors_sample_mode_and_bad_mode():
    raw, onsets, expected = _frame_raw()
    np.testing.assert_allclose(frame_vectors(raw, onsets, 8.0, mode="sample"), expected,
                               atol=1e-12)
    with pytest.raises(SpecError, match="mode must be 'mean' or 'sample'"):
        frame_vectors(raw, onsets, 8.0, mode="median")


def test_epoch_rdms_prepared_once_from_a_written_recording(tmp_path):
    """Two stimulus events with opposite topographies: correlation distance ~2 after onset
    (anti-correlated), ~1 before (unrelated noise); cached, and a changed setting is a new
    entry."""
    import mne

    from raybrain.data.eeg_rdm import prepare_epoch_rdms

    sfreq, rng = 200.0, np.random.default_rng(0)
    n = int(60 * sfreq)
    data = rng.standard_normal((8, n)) * 1e-6
    onsets = 1.0 + np.arange(40) * 1.4
    kinds = np.array(["A", "B"] * 20)
    a = rng.standard_normal(8)
    topo = {"A": a, "B": -a}
    for t, k in zip(onsets, kinds):
        i = int(t * sfreq)
        data[:, i + 20:i + 60] += topo[k][:, None] * 3e-6
    raw = mne.io.RawArray(data, mne.create_info([f"E{i}" for i in range(8)], sfreq, "eeg"),
                          verbose="ERROR")
    raw.set_annotations(mne.Annotations(onsets, 0.0, kinds))
    path = write_raw(raw, tmp_path / "stim.set")
    out = prepare_epoch_rdms(path, events=["A", "B"], tmin=-0.1, tmax=0.4,
                             cache_dir=tmp_path / "cache")
    assert out.computed and out.rdms.shape == (len(out.times), 2, 2)
    assert out.counts.tolist() == [20, 20]
    pre, post = out.rdms[out.times < 0, 0, 1].mean(), out.rdms[(out.times > 0.12) & (out.times < 0.28), 0, 1].mean()
    assert post > 1.8 and abs(pre - 1) < 0.6, (pre, post)
    dec = prepare_epoch_rdms(path, events=["A", "B"], tmin=-0.1, tmax=0.4, method="decoding",
                             cache_dir=tmp_path / "cache")
    assert dec.computed and dec.rdms[(dec.times > 0.12) & (dec.times < 0.28), 0, 1].mean() > 0.4
    again = prepare_epoch_rdms(path, events=["A", "B"], tmin=-0.1, tmax=0.4,
                               cache_dir=tmp_path / "cache")
    assert not again.computed
    np.testing.assert_array_equal(again.rdms, out.rdms)
    with pytest.raises(SpecError, match="no event 'C'"):
        prepare_epoch_rdms(path, events=["A", "C"], cache_dir=tmp_path / "cache2")
    assert not list((tmp_path / "cache2").glob("*.npz"))
