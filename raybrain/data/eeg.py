"""EEG and MEG recordings through MNE: read, clean, cut into epochs or frame samples, write.

Formats (chosen by file suffix): FIF (``.fif``, ``.fif.gz``: raw MEG/EEG), EDF (``.edf``),
BioSemi BDF (``.bdf``), BrainVision (``.vhdr`` with its ``.vmrk`` and ``.eeg``) and EEGLAB
(``.set``, with its ``.fdt`` when the data are stored apart). Writing EDF/BDF, BrainVision
and EEGLAB goes through :func:`mne.export.export_raw`, which needs ``edfio``, ``pybv``
and ``eeglabio``.

Two ways to turn a recording into brain targets:

- **Frame samples** (:func:`frame_vectors`): one channel vector per video frame, the mean
  of the cleaned signal over the frame's window ``[t, t + 1/frame_rate)``. The B2M
  driving protocol pairs 8 Hz video frames with the EEG recorded while they were shown.
- **Epochs** (:func:`epochs_data`): windows around stimulus events, ``(n_epochs,
  n_channels, n_times)``, from which :mod:`raybrain.data.rdm` builds time-resolved RDMs
  per stimulus set.

Events are named either by an annotation description (BrainVision, EDF+, EEGLAB, FIF
annotations; ``"frame"`` also matches BrainVision's ``"Comment/frame"``) or by an
integer trigger code on a stim channel (BDF ``Status``, FIF ``STI 014``, an EDF trigger
channel). Every problem is a :class:`~raybrain.errors.SpecError` of one line naming the
file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError

__all__ = ["EEG_SUFFIXES", "EEGPrep", "read_raw", "preprocess", "event_times", "frame_vectors",
           "epochs_data", "write_raw", "recording_summary"]

#: Readable suffixes and the MNE reader used for each.
EEG_SUFFIXES = {".fif": "read_raw_fif", ".fif.gz": "read_raw_fif", ".edf": "read_raw_edf",
                ".bdf": "read_raw_bdf", ".vhdr": "read_raw_brainvision",
                ".set": "read_raw_eeglab"}
_WRITE = {".edf": "edf", ".bdf": "bdf", ".vhdr": "brainvision", ".set": "eeglab"}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".fif.gz" if name.endswith(".fif.gz") else path.suffix.lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_raw(path: str | os.PathLike, preload: bool = True):
    """Read a continuous recording.

    Parameters
    ----------
    path : str or os.PathLike
        A file with one of :data:`EEG_SUFFIXES`.
    preload : bool
        Load the samples now (True) so a truncated data file fails here, not later.

    Returns
    -------
    mne.io.BaseRaw
        With the measurement's subject information removed (it names a person).
    """
    import mne

    p = Path(path)
    where = f"EEG/MEG file '{os.fspath(path)}'"
    suffix = _suffix(p)
    if suffix not in EEG_SUFFIXES:
        raise SpecError(f"{where} has suffix {suffix or '(none)'!r}; expected one of "
                        f"{sorted(EEG_SUFFIXES)}")
    if not p.is_file():
        raise SpecError(f"{where} not found; expected an existing {suffix} file")
    if p.stat().st_size == 0:
        raise SpecError(f"{where} is empty (0 bytes); expected a {suffix} recording")
    reader = getattr(mne.io, EEG_SUFFIXES[suffix])
    try:
        raw = reader(p, preload=preload, verbose="ERROR")
    except Exception as exc:  # MNE raises many types for corrupt or truncated files
        raise SpecError(f"{where} could not be read by mne.io.{EEG_SUFFIXES[suffix]} "
                        f"({type(exc).__name__}: {_first_line(exc)}); the file may be corrupt "
                        f"or truncated") from None
    if raw.n_times < 2:
        raise SpecError(f"{where} holds {raw.n_times} sample(s); expected a recording")
    with raw.info._unlock():
        raw.info["subject_info"] = None
    return raw


@dataclass(frozen=True)
class EEGPrep:
    """Cleaning applied before cutting frames or epochs (all optional).

    Attributes
    ----------
    picks : str or list of str
        Channel types (``"eeg"``, ``"meg"``, ``"data"``) or channel names kept.
    bad_channels : list of str
        Channels marked bad and dropped (or interpolated when ``interpolate_bads`` and
        the recording has sensor positions).
    reference : ``"average"``, list of str or None
        Re-reference EEG to the average or to the named channels; None keeps it.
    l_freq, h_freq : float or None
        Band-pass edges in Hz (FIR, zero phase); None leaves that side open.
    notch : list of float
        Line-noise frequencies removed (Hz).
    resample : float or None
        New sampling rate in Hz, applied after filtering.
    """

    picks: str | tuple[str, ...] = "data"
    bad_channels: tuple[str, ...] = ()
    interpolate_bads: bool = False
    reference: str | tuple[str, ...] | None = None
    l_freq: float | None = None
    h_freq: float | None = None
    notch: tuple[float, ...] = ()
    resample: float | None = None

    def settings(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def preprocess(raw, prep: EEGPrep, where: str = "recording"):
    """Apply :class:`EEGPrep` to ``raw`` (in place, returned). Checks names and rates first."""
    import mne

    sfreq = raw.info["sfreq"]
    nyq = sfreq / 2
    missing = [c for c in prep.bad_channels if c not in raw.ch_names]
    if missing:
        raise SpecError(f"{where}: bad channel(s) {missing} are not in the recording; "
                        f"channels are {raw.ch_names[:8]}{'...' if len(raw.ch_names) > 8 else ''}")
    for name, f in (("l_freq", prep.l_freq), ("h_freq", prep.h_freq), *(("notch", n) for n in prep.notch)):
        if f is not None and not 0 < f < nyq:
            raise SpecError(f"{where}: {name} {f:g} Hz must lie in (0, {nyq:g}) Hz, the Nyquist "
                            f"band of its {sfreq:g} Hz sampling rate")
    if prep.l_freq and prep.h_freq and prep.l_freq >= prep.h_freq:
        raise SpecError(f"{where}: l_freq < h_freq must hold, got ({prep.l_freq}, {prep.h_freq})")
    if prep.resample is not None and prep.h_freq is not None:
        if prep.resample < 2 * prep.h_freq:
            raise SpecError(f"{where}: resampling to {prep.resample:g} Hz cannot keep h_freq "
                            f"{prep.h_freq:g} Hz (needs >= {2 * prep.h_freq:g} Hz)")
    raw.info["bads"] = list(dict.fromkeys([*raw.info["bads"], *prep.bad_channels]))
    try:
        if prep.interpolate_bads and raw.info["bads"]:
            raw.interpolate_bads(reset_bads=True, verbose="ERROR")
        picks = list(prep.picks) if isinstance(prep.picks, tuple) else prep.picks
        raw.pick(picks, exclude="bads", verbose="ERROR")
        if prep.reference is not None:
            ref = prep.reference if prep.reference == "average" else list(prep.reference)
            mne.set_eeg_reference(raw, ref, copy=False, verbose="ERROR")
        if prep.notch:
            raw.notch_filter(list(prep.notch), verbose="ERROR")
        if prep.l_freq is not None or prep.h_freq is not None:
            raw.filter(prep.l_freq, prep.h_freq, verbose="ERROR")
        if prep.resample is not None and prep.resample != sfreq:
            raw.resample(prep.resample, verbose="ERROR")
    except (ValueError, RuntimeError) as exc:
        raise SpecError(f"{where}: preprocessing failed ({_first_line(exc)})") from None
    if len(raw.ch_names) == 0:
        raise SpecError(f"{where}: no channels left after picks={prep.picks!r} and bad "
                        f"channels {raw.info['bads']}")
    return raw


def _stim_channels(raw) -> list[str]:
    kinds = raw.get_channel_types()
    named = [c for c, k in zip(raw.ch_names, kinds) if k == "stim"]
    if named:
        return named
    guesses = ("status", "trigger", "sti 014", "dtrig", "trig")
    return [c for c in raw.ch_names if any(g in c.lower() for g in guesses)]


def event_times(raw, event: str | int, where: str = "recording") -> np.ndarray:
    """Onset times (s from the first sample) of one kind of event.

    Parameters
    ----------
    raw : mne.io.BaseRaw
    event : str or int
        An annotation description (``"frame"`` also matches ``"Comment/frame"``) or an
        integer code on the recording's stim channel.

    Returns
    -------
    np.ndarray, shape (n_events,)
        Sorted onset times in seconds.
    """
    import mne

    if isinstance(event, str) and not event.lstrip("-").isdigit():
        desc = np.array([str(d) for d in raw.annotations.description], dtype=object)
        hit = np.array([d == event or d.rsplit("/", 1)[-1] == event for d in desc], dtype=bool)
        if not hit.any():
            found = sorted(set(desc.tolist()))
            raise SpecError(f"{where}: no event {event!r} among its annotations; found "
                            f"{found[:10] if found else 'no annotations'}")
        matched = sorted(set(desc[hit].tolist()))
        events, _ = mne.events_from_annotations(raw, event_id={d: 1 for d in matched},
                                                verbose="ERROR")
        return np.sort((events[:, 0] - raw.first_samp) / raw.info["sfreq"])
    code = int(event)
    stim = _stim_channels(raw)
    if not stim:
        raise SpecError(f"{where}: event code {code} needs a stim/trigger channel, but the "
                        f"recording has none; name an annotation instead")
    try:
        events = mne.find_events(raw, stim_channel=stim[0], shortest_event=1, verbose="ERROR")
    except ValueError as exc:
        raise SpecError(f"{where}: reading trigger channel {stim[0]!r} failed "
                        f"({_first_line(exc)})") from None
    hit = events[:, 2] == code
    if not hit.any():
        codes = sorted(set(events[:, 2].tolist()))
        raise SpecError(f"{where}: no event with code {code} on {stim[0]!r}; codes found: "
                        f"{codes[:12] if codes else 'none'}")
    return (events[hit, 0] - raw.first_samp) / raw.info["sfreq"]


def frame_vectors(raw, times: np.ndarray, frame_rate: float,
                  where: str = "recording", mode: str = "mean") -> np.ndarray:
    """One channel vector per frame: the mean signal over ``[t, t + 1/frame_rate)``
    (``mode="mean"``), or the sample nearest to ``t`` (``mode="sample"``).

    Parameters
    ----------
    raw : mne.io.BaseRaw
        Cleaned recording (preloaded).
    times : np.ndarray, shape (n_frames,)
        Frame onsets in seconds from the first sample.
    frame_rate : float
        Video frame rate in Hz (the B2M driving protocol: 8 Hz).

    Returns
    -------
    np.ndarray of float32, shape (n_frames, n_channels)

    Raises
    ------
    SpecError
        When the sampling rate gives fewer than one sample per frame, the frame events are
        not spaced at ``1 / frame_rate`` (median interval off by more than 10 %), or frames
        fall outside the recording.
    """
    sfreq = float(raw.info["sfreq"])
    times = np.asarray(times, dtype=float)
    if times.size == 0:
        raise SpecError(f"{where}: no frame events; expected one per video frame")
    per_frame = sfreq / frame_rate
    if per_frame < 1:
        raise SpecError(f"{where}: sampling rate {sfreq:g} Hz cannot be aligned to frames at "
                        f"{frame_rate:g} Hz (fewer than one sample per frame); expected a rate "
                        f">= {frame_rate:g} Hz")
    if times.size > 1:
        step = float(np.median(np.diff(times)))
        if abs(step * frame_rate - 1) > 0.1:
            raise SpecError(f"{where}: frame events are {step:.4g} s apart ({1 / step:.3g} Hz) "
                            f"but data.frame_rate is {frame_rate:g} Hz; the frames and the "
                            f"recording cannot be aligned")
    start = np.round(times * sfreq).astype(int)
    width = max(1, int(round(per_frame)))
    if start.min() < 0 or start.max() + width > raw.n_times:
        last = raw.n_times / sfreq
        raise SpecError(f"{where}: frames span {times.min():.3f}..{times.max() + 1 / frame_rate:.3f} s "
                        f"but the recording holds 0..{last:.3f} s; frames outside it cannot be "
                        f"paired (truncated file?)")
    if mode not in ("mean", "sample"):
        raise SpecError(f"frame vector mode must be 'mean' or 'sample', got {mode!r}")
    data = raw.get_data()  # (n_channels, n_times)
    if mode == "sample":
        return _finite(data[:, start].T.astype(np.float32), raw, where)
    csum = np.concatenate([np.zeros((data.shape[0], 1)), np.cumsum(data, axis=1)], axis=1)
    means = (csum[:, start + width] - csum[:, start]) / width  # (n_channels, n_frames)
    return _finite(means.T.astype(np.float32), raw, where)


def _finite(out: np.ndarray, raw, where: str) -> np.ndarray:
    if not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise SpecError(f"{where}: NaN/inf in the signal at frame {bad[0]}, channel "
                        f"{raw.ch_names[bad[1]]!r}; expected finite samples")
    return out


def epochs_data(raw, times: np.ndarray, labels: np.ndarray, tmin: float, tmax: float,
                baseline: tuple[float | None, float | None] | None = (None, 0.0),
                where: str = "recording") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut epochs around events with :class:`mne.Epochs`.

    Parameters
    ----------
    times : np.ndarray, shape (n_events,)
        Event onsets in seconds from the first sample.
    labels : np.ndarray of int, shape (n_events,)
        Condition (stimulus) of each event.
    tmin, tmax : float
        Window around each onset in seconds.

    Returns
    -------
    data : np.ndarray of float32, shape (n_epochs, n_channels, n_times)
    labels : np.ndarray, shape (n_epochs,)
        Conditions of the epochs kept (epochs running past the recording are dropped).
    epoch_times : np.ndarray, shape (n_times,)
        Seconds relative to the onset.
    """
    import mne

    times = np.asarray(times, dtype=float)
    labels = np.asarray(labels)
    if times.shape != labels.shape:
        raise SpecError(f"{where}: {times.size} event times but {labels.size} labels; "
                        f"expected one label per event")
    if times.size == 0:
        raise SpecError(f"{where}: no events to cut epochs around")
    codes = {v: i + 1 for i, v in enumerate(sorted(set(labels.tolist())))}
    samples = np.round(times * raw.info["sfreq"]).astype(int) + raw.first_samp
    events = np.column_stack([samples, np.zeros_like(samples), [codes[v] for v in labels]])
    try:
        ep = mne.Epochs(raw, events, event_id={str(k): c for k, c in codes.items()},
                        tmin=tmin, tmax=tmax, baseline=baseline, preload=True,
                        reject_by_annotation=False, on_missing="ignore", verbose="ERROR")
    except ValueError as exc:
        raise SpecError(f"{where}: epochs could not be cut ({_first_line(exc)})") from None
    if len(ep) == 0:
        raise SpecError(f"{where}: every epoch ({tmin:g}..{tmax:g} s around {times.size} "
                        f"events) runs outside the recording")
    inverse = {c: k for k, c in codes.items()}
    kept = np.array([inverse[c] for c in ep.events[:, 2]])
    return ep.get_data(copy=False).astype(np.float32), kept, ep.times.copy()


def write_raw(raw, path: str | os.PathLike) -> Path:
    """Write ``raw`` in the format of ``path``'s suffix (FIF natively, the rest exported)."""
    import mne

    p = Path(path)
    suffix = _suffix(p)
    if suffix in (".fif", ".fif.gz"):
        raw.save(p, overwrite=True, verbose="ERROR")
    elif suffix in _WRITE:
        mne.export.export_raw(p, raw, fmt=_WRITE[suffix], overwrite=True, verbose="ERROR")
    else:
        raise SpecError(f"cannot write EEG to '{p}': suffix {suffix!r}; expected one of "
                        f"{sorted(EEG_SUFFIXES)}")
    return p


def recording_summary(raw) -> dict[str, Any]:
    """Shape and rate of a recording, for provenance and the CLI (no samples, no names)."""
    kinds = raw.get_channel_types()
    return {"n_channels": len(raw.ch_names), "sfreq": float(raw.info["sfreq"]),
            "n_times": int(raw.n_times), "duration_s": round(float(raw.n_times / raw.info["sfreq"]), 3),
            "channel_types": {k: kinds.count(k) for k in sorted(set(kinds))}}
