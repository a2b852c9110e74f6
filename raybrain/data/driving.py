"""Driving sessions for the B2M driving protocol: video frames paired with EEG.

A *session* is one drive: an EEG recording (any format :mod:`raybrain.data.eeg` reads)
with one event per video frame, and the frames themselves as a ``.npy`` array of shape
``(n_frames, height, width, 3)`` (uint8, 0..255) or ``(n_frames, 3, height, width)``
(float, 0..1), in the order they were shown. The B2M paper pairs 8 Hz frames of a
virtual-reality drive with 64-channel BioSemi EEG; each (frame, EEG vector) is one
example of the *human set*.

:func:`prepare_driving_pairs` reads every session through MNE, cleans the EEG
(:class:`~raybrain.data.eeg.EEGPrep`), takes one channel vector per frame, resizes frames
to the model's image size and caches the result (:mod:`raybrain.data.cache`), so a sweep
reads the recordings once.

:func:`synthesize_driving_session` is the default data path: it renders a drive with
:func:`raybrain.data.driving_scenes.render_sequence` and writes a synthetic EEG recording
*through MNE* in a real format, so the real loader is what a default sweep exercises. Its
EEG is a mixture of scene factors (fog, curvature, horizon, lane offset, obstacles) and
background activity; ``generator="null"`` draws the factors from an independent drive,
so the EEG has the same statistics and no information about the frames.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.data.cache import cached_arrays, file_lock
from raybrain.data.eeg import (EEGPrep, event_times, frame_vectors, preprocess, read_raw,
                               recording_summary, write_raw)
from raybrain.errors import SpecError

__all__ = ["DrivingSession", "DrivingPairs", "frames_header", "load_frames",
           "prepare_driving_pairs", "synthesize_driving_session", "SYNTHETIC_FORMATS"]

#: Formats the synthetic generator can write (all read back by :func:`read_raw`).
SYNTHETIC_FORMATS = (".bdf", ".edf", ".vhdr", ".set", ".fif")


@dataclass(frozen=True)
class DrivingSession:
    """One drive: EEG file, frames file and (optionally) who drove."""

    eeg: str
    frames: str
    participant: str | None = None


@dataclass
class DrivingPairs:
    """The human set: frames and the EEG vector recorded with each.

    Attributes
    ----------
    frames : np.ndarray of uint8, shape (n_pairs, 3, height, width)
    eeg : np.ndarray of float32, shape (n_pairs, n_channels)
        Cleaned EEG, one vector per frame (not yet standardised).
    session : np.ndarray of int, shape (n_pairs,)
        Index of the session each pair comes from.
    provenance : dict
        Settings, input fingerprints (pseudonymised paths), recording shapes and rates.
    cache_path : Path
        The cache entry these arrays came from.
    computed : bool
        True when this call read the recordings (False: served from the cache).
    """

    frames: np.ndarray
    eeg: np.ndarray
    session: np.ndarray
    provenance: dict[str, Any]
    cache_path: Path
    computed: bool


def frames_header(path: str | os.PathLike, max_bytes: int = 4 * 2**30) -> np.ndarray:
    """A frames ``.npy`` memory-mapped, its header checked (nothing read): a readable file,
    within ``max_bytes``, shaped ``(n, height, width, 3)`` or ``(n, 3, height, width)``,
    uint8 or float.

    Raises
    ------
    SpecError
        One line naming the file.
    """
    where = f"frames file '{os.fspath(path)}'"
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{where} not found; expected a .npy of shape (n_frames, height, "
                        f"width, 3)")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SpecError(f"{where} could not be read by numpy.load ({str(exc).splitlines()[0]}); "
                        f"expected a .npy of shape (n_frames, height, width, 3)") from None
    if arr.nbytes > max_bytes:
        raise SpecError(f"{where} holds {arr.nbytes / 2**30:.1f} GiB, over the "
                        f"{max_bytes / 2**30:.1f} GiB limit; downsample the frames first")
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[3]):
        raise SpecError(f"{where}: expected shape (n_frames, height, width, 3) or "
                        f"(n_frames, 3, height, width), got {arr.shape}")
    if arr.dtype != np.uint8 and arr.dtype.kind != "f":
        raise SpecError(f"{where}: frames must be uint8 (0..255) or float (0..1), got "
                        f"{arr.dtype}")
    return arr


def load_frames(path: str | os.PathLike, image_size: tuple[int, int],
                max_bytes: int = 4 * 2**30) -> np.ndarray:
    """Read a frames ``.npy`` and return uint8 frames ``(n, 3, height, width)``.

    Frames of another size are resized (bilinear, antialiased) to ``image_size``.
    """
    import torch
    import torch.nn.functional as F

    where = f"frames file '{os.fspath(path)}'"
    arr = frames_header(path, max_bytes)
    x = np.asarray(arr)
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise SpecError(f"{where}: frames contain NaN/inf; expected finite pixel values")
        if x.min() < 0 or x.max() > 1:
            raise SpecError(f"{where}: float frames must lie in [0, 1], got "
                            f"[{x.min():.3g}, {x.max():.3g}]")
        x = x.astype(np.float32)
    else:
        raise SpecError(f"{where}: frames must be uint8 (0..255) or float (0..1), got {x.dtype}")
    if x.shape[2:] != tuple(image_size):
        t = F.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=tuple(image_size),
                          mode="bilinear", antialias=True, align_corners=False)
        x = t.clamp(0, 1).numpy()
    return np.round(x * 255).astype(np.uint8)


def _session_pairs(s: DrivingSession, frame_event: str | int, frame_rate: float,
                   prep: EEGPrep, image_size: tuple[int, int], where: str
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    raw = read_raw(s.eeg)
    before = recording_summary(raw)
    times = event_times(raw, frame_event, where)
    frames = load_frames(s.frames, image_size)
    if len(times) != len(frames):
        raise SpecError(f"{where}: {len(times)} frame events ({frame_event!r}) but "
                        f"{len(frames)} frames in '{s.frames}'; expected one event per frame")
    preprocess(raw, prep, where)
    eeg = frame_vectors(raw, times, frame_rate, where)
    info = {"recording": before, "cleaned": recording_summary(raw), "n_frames": len(frames),
            "frame_rate_hz": frame_rate,
            "frame_span_s": [round(float(times[0]), 4), round(float(times[-1]), 4)]}
    return frames, eeg, info


def prepare_driving_pairs(sessions: list[DrivingSession], *, frame_event: str | int = "frame",
                          frame_rate: float = 8.0, prep: EEGPrep | None = None,
                          image_size: tuple[int, int] = (80, 160),
                          cache_dir: str | os.PathLike | None = None) -> DrivingPairs:
    """Read, clean and pair every session's frames and EEG; cached by settings and inputs.

    Parameters
    ----------
    sessions : list of DrivingSession
        All sessions must give the same channels after cleaning.
    frame_event : str or int
        Annotation description or trigger code marking each frame's onset.
    frame_rate : float
        Video frame rate in Hz; frame events must be spaced accordingly.
    prep : EEGPrep or None
        Cleaning (default: none beyond picking data channels).
    image_size : (height, width)
    cache_dir : path or None
        Default: ``.raybrain-cache`` beside the first session's EEG file.

    Returns
    -------
    DrivingPairs
    """
    from raybrain.privacy import pseudonym

    if not sessions:
        raise SpecError("driving data needs at least one session (eeg + frames files)")
    prep = prep or EEGPrep()
    settings = {"frame_event": frame_event, "frame_rate": frame_rate, "prep": prep.settings(),
                "image_size": list(image_size)}
    inputs: list[str] = []
    for s in sessions:
        inputs += [s.eeg, s.frames]
        for kind, path in (("EEG", s.eeg), ("frames", s.frames)):
            if not Path(path).is_file():
                raise SpecError(f"session {kind} file '{path}' not found")

    def build():
        frames, eeg, sess, infos = [], [], [], []
        n_ch = None
        for i, s in enumerate(sessions):
            where = f"EEG file '{s.eeg}'"
            f, e, info = _session_pairs(s, frame_event, frame_rate, prep, image_size, where)
            if n_ch is not None and e.shape[1] != n_ch:
                raise SpecError(f"{where}: {e.shape[1]} channels after cleaning, but the first "
                                f"session has {n_ch}; sessions must share their channels")
            n_ch = e.shape[1]
            frames.append(f)
            eeg.append(e)
            sess.append(np.full(len(f), i, dtype=np.int64))
            info["participant"] = (pseudonym(s.participant, "participant")
                                   if s.participant else None)
            infos.append(info)
        arrays = {"frames": np.concatenate(frames), "eeg": np.concatenate(eeg),
                  "session": np.concatenate(sess)}
        return arrays, {"sessions": infos}

    entry = cached_arrays("driving-pairs", settings, inputs, build, cache_dir)
    a = entry.arrays
    return DrivingPairs(frames=a["frames"], eeg=a["eeg"], session=a["session"],
                        provenance=entry.provenance, cache_path=entry.path,
                        computed=entry.computed)


# -- synthetic sessions --------------------------------------------------------------------
def _background(n_channels: int, n_times: int, sfreq: float, rng: np.random.Generator) -> np.ndarray:
    """Pink-ish background (AR(1) per channel, shared sources) plus a 10 Hz alpha rhythm."""
    from scipy.signal import lfilter

    n_src = 16
    white = rng.standard_normal((n_src, n_times))
    ar = lfilter([1.0], [1.0, -0.9], white, axis=1)
    ar /= ar.std(axis=1, keepdims=True)
    mix = rng.standard_normal((n_channels, n_src)) / np.sqrt(n_src)
    t = np.arange(n_times) / sfreq
    envelope = 1 + 0.5 * np.sin(2 * np.pi * 0.1 * t + rng.uniform(0, 2 * np.pi))
    alpha = envelope * np.sin(2 * np.pi * 10.0 * t + rng.uniform(0, 2 * np.pi))
    topo = rng.standard_normal(n_channels)
    noise = rng.standard_normal((n_channels, n_times))
    return mix @ ar + 0.5 * np.outer(topo, alpha) + 0.3 * noise


def synthesize_driving_session(out_dir: str | os.PathLike, *, n_frames: int, seed: int,
                               frame_rate: float = 8.0, sfreq: float = 256.0,
                               n_channels: int = 64, fmt: str = ".bdf",
                               generator: str = "informative", snr: float = 1.0,
                               image_size: tuple[int, int] = (80, 160),
                               lead_s: float = 1.0) -> DrivingSession:
    """Render a drive and write its EEG through MNE; returns the session's files.

    The EEG (volts) is ``A @ z(F) * snr * s + background``: ``F`` (n_frames, k) the scene
    factors of each frame (:func:`~raybrain.data.driving_scenes.scene_factors_matrix`),
    standardised, held for the frame's 1/frame_rate s and delayed by 40 ms (a visual
    response latency); ``A`` a random (n_channels, k) topography; ``background`` pink-ish
    shared sources, a 10 Hz alpha rhythm and sensor noise; ``s`` scales the per-sample
    standard deviations so the scene part has ``snr`` times the background's. Frame onsets
    are annotations ``"frame"``, starting ``lead_s`` after the first sample. The frames are
    saved as uint8 ``(n_frames, height, width, 3)`` in ``frames.npy``. Files already
    written with the same settings are reused.

    Returns
    -------
    DrivingSession
        Paths of ``eeg<fmt>`` and ``frames.npy`` in ``out_dir``.
    """
    if fmt not in SYNTHETIC_FORMATS:
        raise SpecError(f"synthetic EEG format {fmt!r} is not supported; expected one of "
                        f"{list(SYNTHETIC_FORMATS)}")
    if generator not in ("informative", "null"):
        raise SpecError(f"synthetic EEG generator must be 'informative' or 'null', got "
                        f"{generator!r}")
    out = Path(out_dir)
    settings = {"n_frames": n_frames, "seed": seed, "frame_rate": frame_rate, "sfreq": sfreq,
                "n_channels": n_channels, "fmt": fmt, "generator": generator, "snr": snr,
                "image_size": list(image_size), "lead_s": lead_s, "version": 1}
    eeg_path = out / ("eeg_raw.fif" if fmt == ".fif" else f"eeg{fmt}")
    frames_path = out / "frames.npy"
    stamp = out / "settings.json"
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".write.lock"):  # concurrent trials: one writes, the others reuse
        if not (stamp.exists() and json.loads(stamp.read_text()) == settings
                and eeg_path.exists() and frames_path.exists()):
            stamp.unlink(missing_ok=True)
            _write_synthetic(eeg_path, frames_path, settings)
            stamp.write_text(json.dumps(settings))
    return DrivingSession(str(eeg_path), str(frames_path))


def _write_synthetic(eeg_path: Path, frames_path: Path, settings: dict[str, Any]) -> None:
    import mne

    from raybrain.data.driving_scenes import render_sequence, scene_factors_matrix

    n_frames, seed, sfreq = settings["n_frames"], settings["seed"], settings["sfreq"]
    frame_rate, n_channels, snr = settings["frame_rate"], settings["n_channels"], settings["snr"]
    h, w = settings["image_size"]
    rng = np.random.default_rng([seed, 31])
    scenes = render_sequence(n_frames, rng, height=h, width=w)
    factors = scene_factors_matrix(scenes)
    if settings["generator"] == "null":  # same statistics, an independent drive
        factors = scene_factors_matrix(render_sequence(n_frames, np.random.default_rng([seed, 32]),
                                                       height=h, width=w))
    z = (factors - factors.mean(0)) / np.where(factors.std(0) > 0, factors.std(0), 1.0)
    per_frame = int(round(sfreq / frame_rate))
    lead = int(round(settings["lead_s"] * sfreq))
    latency = int(round(0.04 * sfreq))
    n_times = lead + n_frames * per_frame + lead
    topo = rng.standard_normal((n_channels, z.shape[1])) / np.sqrt(z.shape[1])
    held = np.zeros((z.shape[1], n_times))
    held[:, lead + latency:lead + latency + n_frames * per_frame] = np.repeat(z.T, per_frame, axis=1)
    signal = topo @ held
    background = _background(n_channels, n_times, sfreq, rng)
    scale = snr * background.std() / max(signal.std(), 1e-12)
    data = (scale * signal + background) * 10e-6  # ~10 microvolts
    names = [f"EEG{i + 1:03d}" for i in range(n_channels)]
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, "eeg"), verbose="ERROR")
    onsets = (lead + np.arange(n_frames) * per_frame) / sfreq
    raw.set_annotations(mne.Annotations(onsets, 0.0, ["frame"] * n_frames))
    write_raw(raw, eeg_path)
    frames = np.round(scenes.images.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    np.save(frames_path, frames)
