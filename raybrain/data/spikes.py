"""Spike trains: a plain file format, binned rates, the B2M step alignment and causal
filter, and multi-session CEBRA embeddings with their provenance.

File format (``.npz``, plain arrays, read with ``allow_pickle=False``):

``spike_times`` float (n_spikes,)
    Every spike of every unit, seconds, sorted within each unit.
``unit_index`` int (n_spikes,)
    Unit of each spike, ``0 <= unit_index < n_units``.
``n_units`` int scalar
``event_times``, ``reaction_times`` float (n_steps,), optional
    Stimulus onsets and reaction times (s after onset) of each step (the B2M memory task).
``aux_times``, ``aux_values`` float (n_aux,) and (n_aux,) or (n_aux, d), optional
    A behavioural variable sampled over time (e.g. position on a track).

Other keys are kept in :attr:`SpikeRecording.extra` (e.g. the episode sequences of the
memory task, or ``unit_origin``, the MATLAB origin of each unit of a converted file).

Conversions, once, into this format (``raybrain data convert-spikes SRC DST [--key PATH]``),
validated before anything is written and written atomically:

- :func:`convert_mat_spikes`: per-cell spike-time vectors in a MATLAB ``.mat`` (v5-v7 or
  v7.3): a cell array of vectors (nested cells descended, e.g. day/epoch/tetrode/cell) or
  structs with a field of spike times, named by a field path (``spikes.time`` for
  MatClust's ``spikes{d}{e}{t}{c}.time``). One unit per non-empty vector, in MATLAB's
  order; empty entries (absent cells, cells without spikes) are skipped and counted.
- :func:`convert_nelpy_npz`: the rat hippocampus example (an object array of per-unit
  spike times, stored pickled), rebuilt admitting numpy's array classes only; raybrain
  never unpickles a data file with a general unpickler.

B2M pre-processing (paper appendix): spikes aligned to each stimulus, a pre-stimulus
window ``-1..0 s`` in 10 ms bins (100 bins) and the post-stimulus window ``0..reaction
time`` normalised into 100 bins, concatenated into one rate vector per step and neuron;
then a causal exponential filter (kernel: 20 zeros followed by ``exp(-0.5 x)``, ``x =
0, 0.5, ..., 10``) convolved within each step (:func:`causal_exp_filter`). CEBRA
(:func:`cebra_embed`) then maps every session into one shared low-dimensional space:
``offset10-model``, ``time_delta`` conditional, cosine distance, with the output
dimension, iterations, batch size and device always given explicitly (CEBRA's defaults
assume a GPU and 10,000 iterations).
"""

from __future__ import annotations

import json
import os
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError

__all__ = ["SpikeRecording", "save_spikes", "load_spikes", "convert_nelpy_npz",
           "convert_mat_spikes", "read_mat_spikes", "convert_spikes", "bin_rates",
           "aux_at", "align_steps", "causal_exp_filter", "EXP_KERNEL", "CebraResult",
           "cebra_embed", "save_embedding", "load_embedding"]

#: The B2M causal kernel: 20 zeros, then exp(-0.5 x) for x = 0, 0.5, ..., 10 (21 values).
EXP_KERNEL = np.concatenate([np.zeros(20), np.exp(-0.5 * np.arange(0, 10.5, 0.5))])


@dataclass
class SpikeRecording:
    """Spike times of ``n_units`` units and optional events and behaviour (see module)."""

    spike_times: np.ndarray
    unit_index: np.ndarray
    n_units: int
    event_times: np.ndarray | None = None
    reaction_times: np.ndarray | None = None
    aux_times: np.ndarray | None = None
    aux_values: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def duration(self) -> tuple[float, float]:
        return float(self.spike_times.min()), float(self.spike_times.max())

    def rates_hz(self) -> np.ndarray:
        """Mean firing rate of each unit over the recording, (n_units,)."""
        t0, t1 = self.duration
        return np.bincount(self.unit_index, minlength=self.n_units) / max(t1 - t0, 1e-9)

    def describe(self) -> str:
        t0, t1 = self.duration
        r = self.rates_hz()
        parts = [f"{self.n_units} units, {len(self.spike_times)} spikes over {t1 - t0:.1f} s, "
                 f"rates {r.min():.2f}..{r.max():.2f} Hz (mean {r.mean():.2f})"]
        if self.event_times is not None:
            parts.append(f"{len(self.event_times)} events")
        if self.aux_values is not None:
            parts.append(f"behaviour {tuple(self.aux_values.shape)} over "
                         f"{self.aux_times[-1] - self.aux_times[0]:.1f} s")
        return "; ".join(parts)


_KNOWN = ("spike_times", "unit_index", "n_units", "event_times", "reaction_times",
          "aux_times", "aux_values")


def save_spikes(path: str | os.PathLike, rec: SpikeRecording) -> Path:
    """Write ``rec`` in the module's ``.npz`` format (exactly at ``path``)."""
    arrays = {"spike_times": np.asarray(rec.spike_times, dtype=np.float64),
              "unit_index": np.asarray(rec.unit_index, dtype=np.int64),
              "n_units": np.int64(rec.n_units)}
    for k in ("event_times", "reaction_times", "aux_times", "aux_values"):
        v = getattr(rec, k)
        if v is not None:
            arrays[k] = np.asarray(v, dtype=np.float64)
    arrays.update(rec.extra)
    out = Path(path)
    with open(out, "wb") as fh:
        np.savez(fh, **arrays)
    return out


_SPIKE_KEYS = "spike_times, unit_index, n_units"


def _read_error(where: str, exc: BaseException) -> SpecError:
    """The one-line error for an ``.npz`` numpy cannot read: pickled objects (convert the
    file once) or a truncated / corrupt archive (nothing to convert)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ValueError) and "pickle" in text:
        return SpecError(f"{where} holds pickled objects ({text}); expected an .npz of plain "
                         f"arrays: convert a trusted file once with `raybrain data "
                         f"convert-spikes SRC DST`")
    return SpecError(f"{where} is truncated or unreadable ({type(exc).__name__}: {text}); "
                     f"expected a complete .npz archive (numpy.savez) with {_SPIKE_KEYS}")


def load_spikes(path: str | os.PathLike) -> SpikeRecording:
    """Read and validate a spike file; one-line :class:`SpecError` naming the file.

    Errors say whether the file is missing, a directory, truncated or unreadable, holds
    pickled objects (then: convert it once with ``raybrain data convert-spikes``), or
    breaks the format (module docstring).
    """
    from raybrain.data.matfile import file_state

    where = f"spike file '{os.fspath(path)}'"
    p = file_state(path, where, f"an .npz with {_SPIKE_KEYS}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _read_error(where, exc) from None
    except Exception as exc:  # zlib.error and the like: a damaged member
        raise _read_error(where, exc) from None
    return _from_arrays(arrays, where)


def _from_arrays(arrays: dict[str, np.ndarray], where: str) -> SpikeRecording:
    """Validate the arrays of a spike file (module docstring) into a recording."""
    for k in ("spike_times", "unit_index", "n_units"):
        if k not in arrays:
            raise SpecError(f"{where} lacks '{k}'; found {sorted(arrays)}")
    nu = np.asarray(arrays["n_units"])
    if nu.ndim != 0 or nu.dtype.kind not in "iu" or int(nu) < 1:
        raise SpecError(f"{where}: n_units must be an integer scalar >= 1, got {nu.dtype} of "
                        f"shape {nu.shape}")
    n = int(nu)
    if arrays["spike_times"].dtype.kind not in "iuf":
        raise SpecError(f"{where}: spike_times must hold real numbers (seconds), got dtype "
                        f"{arrays['spike_times'].dtype}")
    t = np.asarray(arrays["spike_times"], dtype=np.float64)
    u = np.asarray(arrays["unit_index"])
    if t.ndim != 1 or u.shape != t.shape:
        raise SpecError(f"{where}: spike_times and unit_index must be 1-D of equal length, got "
                        f"{t.shape} and {u.shape}")
    if t.size == 0:
        raise SpecError(f"{where} holds no spikes")
    if not np.isfinite(t).all():
        first = int(np.argmax(~np.isfinite(t)))
        raise SpecError(f"{where}: spike_times hold NaN/inf (first at {first})")
    if (t < 0).any():
        raise SpecError(f"{where}: spike_times must be >= 0 s, got {t.min():.6g}")
    if u.dtype.kind not in "iu" or u.min() < 0 or u.max() >= n:
        raise SpecError(f"{where}: unit_index must be integers in [0, n_units = {n}), got "
                        f"{u.dtype} in [{u.min()}, {u.max()}]")
    rec = SpikeRecording(t, u.astype(np.int64), n,
                         extra={k: v for k, v in arrays.items() if k not in _KNOWN})
    for k in ("event_times", "reaction_times", "aux_times", "aux_values"):
        if k in arrays:
            v = np.asarray(arrays[k], dtype=np.float64)
            if not np.isfinite(v).all():
                raise SpecError(f"{where}: '{k}' holds NaN/inf; expected finite values")
            setattr(rec, k, v)
    if (rec.reaction_times is None) != (rec.event_times is None):
        raise SpecError(f"{where}: event_times and reaction_times go together; found only one")
    if rec.event_times is not None:
        if rec.event_times.shape != rec.reaction_times.shape:
            raise SpecError(f"{where}: {rec.event_times.size} event_times but "
                            f"{rec.reaction_times.size} reaction_times; expected one per step")
        if (rec.reaction_times <= 0).any():
            k = int(np.argmax(rec.reaction_times <= 0))
            raise SpecError(f"{where}: reaction_times must be > 0 s, step {k} has "
                            f"{rec.reaction_times[k]:.6g}")
        if (np.diff(rec.event_times) <= 0).any():
            raise SpecError(f"{where}: event_times must increase")
    if (rec.aux_times is None) != (rec.aux_values is None) or (
            rec.aux_times is not None and len(rec.aux_times) != len(rec.aux_values)):
        raise SpecError(f"{where}: aux_times and aux_values must both be present with one value "
                        f"per time")
    return rec


# the only globals an object array of plain numeric arrays needs (numpy 1.x and 2.x names)
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else: any other global (a function, a class
    that runs code on load) is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _read_npz_member(z: zipfile.ZipFile, key: str, where: str) -> np.ndarray:
    """One array of an ``.npz``; object arrays through :class:`_ArrayOnlyUnpickler`."""
    with z.open(f"{key}.npy") as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        if not dtype.hasobject:
            raw = fp.read()
            a = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)))
            return a.reshape(shape, order="F" if fortran else "C")
        try:
            a = _ArrayOnlyUnpickler(fp).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
            raise SpecError(f"{where}: '{key}' holds pickled objects other than numeric "
                            f"arrays ({exc}); expected per-unit arrays of spike times") from None
    if not isinstance(a, np.ndarray) or any(
            not isinstance(x, np.ndarray) or x.dtype.hasobject for x in a.ravel()):
        raise SpecError(f"{where}: '{key}' is not an array of numeric arrays")
    return a


def _arrays(rec: SpikeRecording) -> dict[str, np.ndarray]:
    """The arrays of the file format for ``rec`` (as :func:`save_spikes` writes them)."""
    arrays = {"spike_times": np.asarray(rec.spike_times, dtype=np.float64),
              "unit_index": np.asarray(rec.unit_index, dtype=np.int64),
              "n_units": np.int64(rec.n_units), **rec.extra}
    for k in ("event_times", "reaction_times", "aux_times", "aux_values"):
        if getattr(rec, k) is not None:
            arrays[k] = np.asarray(getattr(rec, k), dtype=np.float64)
    return arrays


def _write_checked(dst: str | os.PathLike, rec: SpikeRecording, where: str) -> SpikeRecording:
    """Validate ``rec`` as :func:`load_spikes` would, then write it atomically at ``dst``
    (a temporary file beside it, renamed into place): bad input writes nothing."""
    import tempfile

    out = Path(dst)
    if out.suffix.lower() != ".npz":
        raise SpecError(f"output '{os.fspath(dst)}' must end in .npz; expected a path for the "
                        f"plain spike file")
    if out.is_dir():
        raise SpecError(f"output '{os.fspath(dst)}' is a directory; expected a path for the "
                        f"plain spike .npz")
    if not out.resolve().parent.is_dir():
        raise SpecError(f"output folder '{out.resolve().parent}' not found; expected an "
                        f"existing folder for '{os.fspath(dst)}'")
    checked = _from_arrays(_arrays(rec), where)
    fd, tmp = tempfile.mkstemp(dir=out.resolve().parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_spikes(tmp, checked)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return checked


def _units_to_recording(per_unit: list[np.ndarray], **kw) -> SpikeRecording:
    times = np.concatenate(per_unit)
    units = np.concatenate([np.full(len(x), i, dtype=np.int64) for i, x in enumerate(per_unit)])
    order = np.argsort(times, kind="stable")
    return SpikeRecording(times[order], units[order], len(per_unit), **kw)


def convert_nelpy_npz(src: str | os.PathLike, dst: str | os.PathLike) -> SpikeRecording:
    """One-off conversion of nelpy's parsed example (per-unit object array) to our format.

    The per-unit spike times are an object array, stored pickled. They are rebuilt by an
    unpickler that admits numpy's array classes only, so a crafted file cannot run code;
    use the plain ``dst`` file from then on. Keys: ``spike_times_s`` (object array of
    per-unit times), ``pos_time_s``, ``pos_x_px``. Nothing is written when the input is bad.
    """
    from raybrain.data.matfile import file_state

    where = f"spike file '{os.fspath(src)}'"
    file_state(src, where, "nelpy's parsed .npz (spike_times_s, pos_time_s, pos_x_px)")
    try:
        z = zipfile.ZipFile(src)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SpecError(f"{where} is truncated or unreadable as an .npz "
                        f"({str(exc).splitlines()[0]}); expected nelpy's parsed .npz") from None
    with z:
        names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        missing = [k for k in ("spike_times_s", "pos_time_s", "pos_x_px") if k not in names]
        if missing:
            raise SpecError(f"{where} lacks {missing}; expected nelpy's parsed example keys "
                            f"spike_times_s, pos_time_s, pos_x_px")
        try:
            spikes = _read_npz_member(z, "spike_times_s", where)
            pos_t = np.asarray(_read_npz_member(z, "pos_time_s", where), dtype=np.float64)
            pos_x = np.asarray(_read_npz_member(z, "pos_x_px", where), dtype=np.float64)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise SpecError(f"{where} is truncated or unreadable ({str(exc).splitlines()[0]})") \
                from None
    per_unit = [np.asarray(x, dtype=np.float64).ravel() for x in spikes.ravel()]
    if not per_unit:
        raise SpecError(f"{where}: spike_times_s holds no units")
    rec = _units_to_recording(per_unit, aux_times=pos_t, aux_values=pos_x)
    return _write_checked(dst, rec, where)


def convert_mat_spikes(src: str | os.PathLike, dst: str | os.PathLike,
                       key: str | None = None) -> tuple[SpikeRecording, str]:
    """Per-cell spike times in a MATLAB file -> the plain spike format, once.

    Parameters
    ----------
    src : str or os.PathLike
        A ``.mat`` (v5-v7 or v7.3) whose variable holds one spike-time vector per cell:
        a cell array of vectors (nested cells are descended), or structs with a field of
        spike times (name it with a field path, e.g. ``key="spikes.time"`` for MatClust's
        ``spikes{day}{epoch}{tetrode}{cell}.time``). Times are taken as seconds.
    dst : str or os.PathLike
        The plain ``.npz`` to write (see the module docstring); written only when the input
        is valid.
    key : str or None
        Variable or field path (:mod:`raybrain.data.matfile`); None: the only variable.

    Returns
    -------
    rec : SpikeRecording
        As written: one unit per non-empty vector, in MATLAB's order. Each unit's origin
        (e.g. ``spikes{1}{1}{3}{2}.time``) is kept in the extra key ``unit_origin``.
    note : str
        Where the units came from and how many empty entries (absent cells, or cells
        without spikes) were skipped.

    Raises
    ------
    SpecError
        One line: unreadable file, missing or ambiguous key (a struct's fields and sizes
        are listed), an entry that is not a vector, no spikes at all, or an invalid result.
    """
    where = f"spike file '{os.fspath(src)}'"
    rec, note = read_mat_spikes(src, key)
    return _write_checked(dst, rec, where), note


def read_mat_spikes(src: str | os.PathLike, key: str | None = None) -> tuple[SpikeRecording, str]:
    """Per-cell spike times of a ``.mat`` file as a validated recording, nothing written.

    Same input, key and result as :func:`convert_mat_spikes` (which writes it).
    """
    from raybrain.data.matfile import file_state, mat_leaves

    where = f"spike file '{os.fspath(src)}'"
    file_state(src, where, "a .mat file holding per-cell spike times")
    leaves = mat_leaves(src, key, where)
    per_unit, origins, absent, silent = [], [], 0, 0
    for leaf in leaves:
        if leaf.kind == "empty":
            absent += leaf.absent
            silent += not leaf.absent
            continue
        arr = np.asarray(leaf.read())
        if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) > 1):
            raise SpecError(f"{where}: {leaf.origin} is a {'x'.join(map(str, arr.shape))} array; "
                            f"expected one vector of spike times per cell (a cell array of "
                            f"vectors, or a struct field holding them)")
        per_unit.append(arr.astype(np.float64).ravel())
        origins.append(leaf.origin)
    if not per_unit:
        raise SpecError(f"{where}: key {key or '(the only variable)'!r} reaches "
                        f"{len(leaves)} entries, all empty; expected spike times")
    rec = _from_arrays(_arrays(_units_to_recording(
        per_unit, extra={"unit_origin": np.array(origins)})), where)
    skipped = [f"{absent} absent entries"] * bool(absent) + \
        [f"{silent} cells without spikes"] * bool(silent)
    note = (f"{len(per_unit)} spike-time vectors {origins[0]} .. {origins[-1]}"
            + (f" ({' and '.join(skipped)} skipped)" if skipped else ""))
    return rec, note


def convert_spikes(src: str | os.PathLike, dst: str | os.PathLike,
                   key: str | None = None) -> tuple[SpikeRecording, str]:
    """``raybrain data convert-spikes``: a ``.mat`` through :func:`convert_mat_spikes`, an
    ``.npz`` (nelpy's parsed layout) through :func:`convert_nelpy_npz`.

    Returns
    -------
    rec : SpikeRecording
    note : str
        What was converted.
    """
    suffix = Path(src).suffix.lower()
    if os.path.abspath(src) == os.path.abspath(dst):
        raise SpecError(f"output '{os.fspath(dst)}' is the input file; expected a new path")
    if suffix == ".mat":
        return convert_mat_spikes(src, dst, key)
    if suffix == ".npz":
        if key is not None:
            raise SpecError(f"--key {key!r} applies to .mat files; '{os.fspath(src)}' is a "
                            f"nelpy-style .npz read by its fixed keys")
        rec = convert_nelpy_npz(src, dst)
        return rec, f"{rec.n_units} per-unit arrays of spike_times_s, position from pos_x_px"
    raise SpecError(f"spike file '{os.fspath(src)}' has suffix {suffix or '(none)'!r}; expected "
                    f".mat (per-cell spike times) or .npz (nelpy's parsed layout)")


def bin_rates(rec: SpikeRecording, bin_s: float, t_start: float | None = None,
              t_stop: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Firing rates in consecutive bins.

    Returns
    -------
    rates : np.ndarray of float32, shape (n_bins, n_units), spikes per second
    centres : np.ndarray, shape (n_bins,), bin centres in seconds
    """
    if not bin_s > 0:
        raise SpecError(f"bin width must be > 0 s, got {bin_s}")
    t0 = rec.duration[0] if t_start is None else t_start
    t1 = rec.duration[1] if t_stop is None else t_stop
    n_bins = int(np.floor((t1 - t0) / bin_s))
    if n_bins < 1:
        raise SpecError(f"window {t0:g}..{t1:g} s holds no full {bin_s:g} s bin")
    edges = t0 + bin_s * np.arange(n_bins + 1)
    keep = (rec.spike_times >= edges[0]) & (rec.spike_times < edges[-1])
    b = np.minimum(((rec.spike_times[keep] - t0) / bin_s).astype(np.int64), n_bins - 1)
    counts = np.zeros((n_bins, rec.n_units))
    np.add.at(counts, (b, rec.unit_index[keep]), 1)
    return (counts / bin_s).astype(np.float32), edges[:-1] + bin_s / 2


def aux_at(rec: SpikeRecording, times: np.ndarray) -> np.ndarray:
    """The behavioural variable linearly interpolated at ``times``, (n,) or (n, d)."""
    if rec.aux_times is None:
        raise SpecError("the recording has no behavioural variable (aux_times, aux_values)")
    v = rec.aux_values
    if v.ndim == 1:
        return np.interp(times, rec.aux_times, v)
    return np.column_stack([np.interp(times, rec.aux_times, v[:, k]) for k in range(v.shape[1])])


def align_steps(rec: SpikeRecording, pre_s: float = 1.0, pre_bins: int = 100,
                post_bins: int = 100) -> np.ndarray:
    """The B2M step alignment: rates per step, pre-stimulus then time-normalised response.

    Parameters
    ----------
    rec : SpikeRecording
        With ``event_times`` and ``reaction_times``.
    pre_s, pre_bins : the pre-stimulus window ``-pre_s..0`` in ``pre_bins`` equal bins
        (the paper: 1 s in 10 ms bins).
    post_bins : the window ``0..reaction time`` of each step in this many equal bins.

    Returns
    -------
    np.ndarray of float32, shape (n_steps, pre_bins + post_bins, n_units), spikes/s
    """
    if rec.event_times is None:
        raise SpecError("the recording has no stimulus events (event_times, reaction_times) "
                        "to align steps to")
    t0 = rec.duration[0]
    first = float(rec.event_times[0])
    if first - pre_s < t0 - 1e-9 and first - pre_s < 0:
        raise SpecError(f"the first event at {first:g} s leaves no {pre_s:g} s pre-stimulus "
                        f"window before the recording starts")
    n = len(rec.event_times)
    out = np.zeros((n, pre_bins + post_bins, rec.n_units))
    order = np.argsort(rec.spike_times, kind="stable")
    times, units = rec.spike_times[order], rec.unit_index[order]
    for k, (ev, rt) in enumerate(zip(rec.event_times, rec.reaction_times)):
        for lo, hi, nb, off in ((ev - pre_s, ev, pre_bins, 0), (ev, ev + rt, post_bins, pre_bins)):
            a, b = np.searchsorted(times, [lo, hi], side="left")
            width = (hi - lo) / nb
            idx = np.minimum(((times[a:b] - lo) / width).astype(np.int64), nb - 1)
            np.add.at(out[k], (off + idx, units[a:b]), 1.0 / width)
    return out.astype(np.float32)


def causal_exp_filter(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Convolve along ``axis`` with :data:`EXP_KERNEL`, causally and within each step.

    ``y[t] = sum_{j=0..20} x[t - j] * exp(-0.25 j)`` (inputs before the start count as 0),
    so an output never depends on a later input.
    """
    from scipy.signal import lfilter

    taps = EXP_KERNEL[20:]  # the causal half: exp(-0.5 * 0.5 j), j = 0..20
    return lfilter(taps, [1.0], np.asarray(x, dtype=np.float64), axis=axis).astype(np.float32)


@dataclass
class CebraResult:
    """Embeddings per session, the final loss, seconds and provenance."""

    embeddings: list[np.ndarray]
    loss: list[float]
    seconds: float
    provenance: dict[str, Any]


def cebra_embed(sessions: list[np.ndarray], *, output_dimension: int, max_iterations: int,
                batch_size: int, device: str = "cpu", learning_rate: float = 3e-4,
                temperature_mode: str = "auto", min_temperature: float = 0.1,
                time_offsets: int = 10, labels: list[np.ndarray] | None = None,
                seed: int = 0) -> CebraResult:
    """Multi-session CEBRA: one shared embedding space for sessions of different neurons.

    Parameters
    ----------
    sessions : list of np.ndarray
        Each ``(n_steps, n_times, n_neurons_i)`` (labels: the time within step, as the B2M
        paper does) or ``(n_samples, n_neurons_i)`` with ``labels`` given.
    output_dimension, max_iterations, batch_size, device : set explicitly, always.
    labels : list of np.ndarray or None
        Continuous auxiliary variable per sample, for 2-D sessions (e.g. position).

    Returns
    -------
    CebraResult
        ``embeddings[i]`` has the session's leading shape with ``output_dimension`` last.
    """
    import cebra
    import torch

    if not sessions:
        raise SpecError("cebra_embed needs at least one session")
    if batch_size is None or int(batch_size) < 2:
        raise SpecError(f"CEBRA batch_size must be an integer >= 2 (None means full batch, "
                        f"which multi-session training refuses), got {batch_size}")
    shapes = [np.shape(s) for s in sessions]
    ndims = {len(s) for s in shapes}
    if ndims not in ({2}, {3}):
        raise SpecError(f"sessions must all be (n_steps, n_times, n_neurons) or all "
                        f"(n_samples, n_neurons), got shapes {shapes}")
    if 3 in ndims and len({s[1] for s in shapes}) != 1:
        raise SpecError(f"sessions must share their time bins per step, got shapes {shapes}")
    smallest = min(s[-1] for s in shapes)
    if output_dimension > smallest:
        raise SpecError(f"CEBRA output_dimension {output_dimension} exceeds the smallest "
                        f"session's neuron count {smallest}")
    xs, ys = [], []
    for i, s in enumerate(sessions):
        x = np.asarray(s, dtype=np.float32)
        if not np.isfinite(x).all():
            raise SpecError(f"session {i}: NaN/inf in the input rates")
        if x.ndim == 3:
            y = np.tile(np.arange(x.shape[1], dtype=np.float32), x.shape[0])
            x = x.reshape(-1, x.shape[2])
        else:
            if labels is None or len(labels[i]) != len(x):
                raise SpecError(f"session {i}: 2-D sessions need labels with one value per "
                                f"sample ({len(x)})")
            y = np.asarray(labels[i], dtype=np.float32)
        xs.append(x)
        ys.append(y)
    settings = {"model_architecture": "offset10-model", "conditional": "time_delta",
                "distance": "cosine", "output_dimension": int(output_dimension),
                "max_iterations": int(max_iterations), "batch_size": int(batch_size),
                "device": device, "learning_rate": learning_rate,
                "temperature_mode": temperature_mode, "min_temperature": min_temperature,
                "time_offsets": int(time_offsets)}
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = cebra.CEBRA(**settings, verbose=False)
    t0 = time.perf_counter()
    model.fit(xs if len(xs) > 1 else xs[0], ys if len(ys) > 1 else ys[0])
    embs = []
    for i, (x, s) in enumerate(zip(xs, sessions)):
        e = model.transform(x, session_id=i) if len(xs) > 1 else model.transform(x)
        embs.append(np.asarray(e, dtype=np.float32).reshape(*np.shape(s)[:-1], output_dimension))
    seconds = time.perf_counter() - t0
    loss = [float(v) for v in getattr(model, "state_dict_", {}).get("loss", [])] or \
        [float(v) for v in model.solver_.log.get("total", [])]
    provenance = {"cebra": {**settings, "seed": seed}, "cebra_version": cebra.__version__,
                  "torch_version": torch.__version__, "input_shapes": [list(s) for s in shapes],
                  "seconds": round(seconds, 2), "final_loss": loss[-1] if loss else None}
    return CebraResult(embs, loss, seconds, provenance)


def save_embedding(path: str | os.PathLike, result: CebraResult) -> Path:
    """``<path>.npz`` (``session_0``, ``session_1``, ...) and ``<path>.json`` provenance."""
    p = Path(path).with_suffix(".npz")
    with open(p, "wb") as fh:
        np.savez(fh, **{f"session_{i}": e for i, e in enumerate(result.embeddings)},
                 loss=np.asarray(result.loss))
    p.with_suffix(".json").write_text(json.dumps(result.provenance, indent=1))
    return p


def load_embedding(path: str | os.PathLike) -> CebraResult:
    p = Path(path).with_suffix(".npz")
    with np.load(p, allow_pickle=False) as npz:
        n = len([k for k in npz.files if k.startswith("session_")])
        embs = [npz[f"session_{i}"] for i in range(n)]
        loss = npz["loss"].tolist()
    prov = json.loads(p.with_suffix(".json").read_text())
    return CebraResult(embs, loss, float(prov.get("seconds", 0.0)), prov)
