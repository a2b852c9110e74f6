"""Time-resolved target RDMs for CLIP-HBA-MEG: checks, batches, and the temporal curves.

Targets are stacks ``(T, N, N)`` or ``(P, T, N, N)`` (participants x time x stimuli x
stimuli), as :func:`raybrain.data.rdm.load_rdm` returns them: in memory, or memory-mapped
when large (THINGS-MEG: 4 x 281 x 1854 x 1854). Nothing here reads a stack whole: batches
are gathered row by row and the curves are accumulated over blocks of rows.

Curves from the target RDMs (paper section 4.3.4; CLIP-HBA code ``get_richness``,
``compute_rdm_generalization``, ``compute_noise_level``):

- :func:`richness_curve` ``alpha_T``: per-time mean dissimilarity (upper triangle),
  averaged over participants, min-max scaled to [0, 1], 0 at and before stimulus onset.
- :func:`generalization_curve` ``beta_T``: per participant, the row mean of the T x T
  Pearson correlation between the time points' upper triangles, min-max scaled; averaged
  over participants, 0 at and before onset.
- :func:`noise_level_curve`: ``1 - beta`` smoothed with a Gaussian (sigma in samples,
  3 in the CLIP-HBA code) and min-max scaled to ``[0, noise_scale]``.

"Before onset" is ``times <= onset``, as the CLIP-HBA code (which zeroes every index up to
and including the 0 ms sample). A curve with no range (max == min) scales to 1 everywhere
(then 0 at and before onset), not to NaN. The CLIP-HBA code computes the curves over all
1,854 stimuli including its test split; here the caller passes the stimuli to use
(``stimuli``), so they can be the training stimuli only.
"""

from __future__ import annotations

import numpy as np

from raybrain.errors import SpecError

__all__ = ["check_stimuli", "check_time_axis", "generalization_curve", "noise_level_curve",
           "rdm_value_range", "richness_curve", "target_batch", "time_axis"]


def time_axis(start_ms: float, stop_ms: float, step_ms: float) -> np.ndarray:
    """Sample times in seconds from ``start_ms`` to ``stop_ms`` inclusive.

    Returns
    -------
    np.ndarray of float64, shape (T,)
        ``T = (stop_ms - start_ms) / step_ms + 1`` (281 for -100..1300 ms at 5 ms).
    """
    if not step_ms > 0 or not stop_ms >= start_ms:
        raise SpecError(f"time axis needs step_ms > 0 and stop_ms >= start_ms, got start "
                        f"{start_ms}, stop {stop_ms}, step {step_ms}")
    n = (stop_ms - start_ms) / step_ms
    if abs(n - round(n)) > 1e-6:
        raise SpecError(f"time axis: (stop_ms - start_ms) / step_ms must be a whole number, got "
                        f"({stop_ms} - {start_ms}) / {step_ms} = {n:g}")
    return (start_ms + step_ms * np.arange(int(round(n)) + 1)) / 1000.0


def _stack(rdms, where: str) -> tuple[np.ndarray, bool]:
    """(P, T, N, N) view of a (T, N, N) or (P, T, N, N) stack, and whether it had P."""
    shape = np.shape(rdms)
    if len(shape) not in (3, 4) or shape[-1] != shape[-2] or shape[-1] < 2:
        raise SpecError(f"{where}: expected RDMs of shape (T, N, N) or (participants, T, N, N) "
                        f"with N >= 2, got {shape}")
    return (rdms if len(shape) == 4 else rdms[None]), len(shape) == 4


def check_time_axis(rdms, times: np.ndarray, where: str = "target RDMs") -> None:
    """Refuse RDMs whose time axis differs in length from the spec's.

    Parameters
    ----------
    rdms : array, shape (T, N, N) or (P, T, N, N)
    times : np.ndarray, shape (T_spec,)
        The spec's time axis (:func:`time_axis`).
    """
    arr, _ = _stack(rdms, where)
    if arr.shape[1] != len(times):
        lo, hi = 1000 * float(times[0]), 1000 * float(times[-1])
        raise SpecError(f"{where} have {arr.shape[1]} time points but the spec's time axis "
                        f"({lo:g}..{hi:g} ms, {len(times)} samples) has {len(times)}; expected "
                        f"the same axis")


def check_stimuli(n_images: int, rdms, where: str = "target RDMs",
                  image_names=None, stimulus_names=None) -> None:
    """Refuse images and RDM stimuli that do not correspond.

    Parameters
    ----------
    n_images : int
    rdms : array, shape (..., N, N)
    image_names, stimulus_names : sequence of str or None
        When both are given they must be equal element-wise (same stimuli, same order).
    """
    n = np.shape(rdms)[-1]
    if n_images != n:
        raise SpecError(f"{where} describe {n} stimuli but {n_images} images were given; "
                        f"expected one image per RDM row, in the same order")
    if image_names is not None and stimulus_names is not None:
        for k, (a, b) in enumerate(zip(image_names, stimulus_names)):
            if a != b:
                raise SpecError(f"image {k} is {a!r} but RDM stimulus {k} is {b!r}; expected "
                                f"images in the RDM's stimulus order")


def target_batch(rdms, index, participants=None, time_index=None) -> np.ndarray:
    """Target RDMs of a batch of stimuli, averaged over participants.

    Parameters
    ----------
    rdms : array, shape (T, N, N) or (P, T, N, N)
        May be memory-mapped; only the batch's rows are read.
    index : array_like of int, shape (B,)
        Stimuli of the batch, in batch order.
    participants : array_like of int or None
        Participants averaged (None: all).
    time_index : array_like of int or None
        Time points kept (None: all).

    Returns
    -------
    np.ndarray of float32, shape (T_out, B, B)
    """
    arr, _ = _stack(rdms, "target_batch")
    idx = np.asarray(index, dtype=np.int64)
    n = arr.shape[-1]
    if idx.ndim != 1 or idx.size < 2 or idx.min() < 0 or idx.max() >= n:
        raise SpecError(f"target_batch: index must be >= 2 stimulus indices in [0, {n}), got "
                        f"{idx.tolist()[:5]}")
    parts = range(arr.shape[0]) if participants is None else np.asarray(participants).tolist()
    tix = slice(None) if time_index is None else np.asarray(time_index, dtype=np.int64)
    order = np.argsort(idx)
    rows_sorted = idx[order]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    out = None
    for p in parts:
        block = np.asarray(arr[p][:, rows_sorted], dtype=np.float64)  # (T, B, N): sorted rows
        block = block[tix][:, inverse][:, :, idx]
        out = block if out is None else out + block
    return (out / len(parts)).astype(np.float32)


def _row_blocks(n: int, t: int, budget_bytes: int) -> int:
    return max(1, int(budget_bytes // max(1, 8 * t * n)))


def _upper_blocks(stack_p: np.ndarray, stim: np.ndarray, budget_bytes: int):
    """Yield (T, k) upper-triangle values of one participant's (T, N, N), block by block."""
    t = stack_p.shape[0]
    m = len(stim)
    step = _row_blocks(m, t, budget_bytes)
    for r0 in range(0, m - 1, step):
        rows = stim[r0:r0 + step]
        block = np.asarray(stack_p[:, rows], dtype=np.float64)[:, :, stim]  # (T, k, m)
        for a in range(len(rows)):
            yield block[:, a, r0 + a + 1:]


def _stimuli(stimuli, n: int) -> np.ndarray:
    if stimuli is None:
        return np.arange(n)
    s = np.unique(np.asarray(stimuli, dtype=np.int64))
    if s.size < 3 or s.min() < 0 or s.max() >= n:
        raise SpecError(f"curves need at least 3 stimulus indices in [0, {n}), got "
                        f"{np.asarray(stimuli).tolist()[:5]}")
    return s


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    return np.ones_like(x) if not hi > lo else (x - lo) / (hi - lo)


def _onset(curve: np.ndarray, times, onset: float) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.shape != curve.shape:
        raise SpecError(f"times must have one entry per time point ({curve.shape[0]}), got "
                        f"shape {t.shape}")
    out = curve.copy()
    out[t <= onset] = 0.0
    return out


def richness_curve(rdms, times, *, onset: float = 0.0, stimuli=None,
                   budget_bytes: int = 64 * 2**20) -> np.ndarray:
    """Visual scaler ``alpha_T``: min-max scaled mean dissimilarity per time point.

    Parameters
    ----------
    rdms : array, shape (T, N, N) or (P, T, N, N)
    times : array_like, shape (T,)
        Seconds; entries ``<= onset`` get 0.
    onset : float
        Stimulus onset (s).
    stimuli : array_like of int or None
        Stimuli whose pairs are used (None: all).
    budget_bytes : int
        Working memory per block of rows.

    Returns
    -------
    np.ndarray of float64, shape (T,), in [0, 1]
    """
    arr, _ = _stack(rdms, "richness_curve")
    stim = _stimuli(stimuli, arr.shape[-1])
    means = []
    for p in range(arr.shape[0]):
        total, count = np.zeros(arr.shape[1]), 0
        for u in _upper_blocks(arr[p], stim, budget_bytes):
            total += u.sum(axis=1)
            count += u.shape[1]
        means.append(total / count)
    return _onset(_minmax(np.mean(means, axis=0)), times, onset)


def generalization_curve(rdms, times, *, onset: float = 0.0, stimuli=None,
                         budget_bytes: int = 64 * 2**20) -> np.ndarray:
    """Binding strength ``beta_T``: min-max scaled time-generalisation profile.

    Per participant, ``g_t = mean_s corr(rdm_t, rdm_s)`` over the upper triangles (the
    T x T correlation accumulated block by block), min-max scaled; then averaged over
    participants and set to 0 at and before onset. A constant slice correlates 0.

    Parameters
    ----------
    As :func:`richness_curve`.

    Returns
    -------
    np.ndarray of float64, shape (T,), in [0, 1]
    """
    arr, _ = _stack(rdms, "generalization_curve")
    stim = _stimuli(stimuli, arr.shape[-1])
    t = arr.shape[1]
    profiles = []
    for p in range(arr.shape[0]):
        s, gram, n = np.zeros(t), np.zeros((t, t)), 0
        for u in _upper_blocks(arr[p], stim, budget_bytes):
            s += u.sum(axis=1)
            gram += u @ u.T
            n += u.shape[1]
        mu = s / n
        cov = gram / n - np.outer(mu, mu)
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        ok = sd > 1e-12 * max(1.0, float(np.abs(mu).max()))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(np.outer(ok, ok), cov / np.outer(np.where(ok, sd, 1.0),
                                                             np.where(ok, sd, 1.0)), 0.0)
        profiles.append(_minmax(corr.mean(axis=1)))
    return _onset(np.mean(profiles, axis=0), times, onset)


def noise_level_curve(beta, *, noise_scale: float = 1.0, sigma: float = 3.0) -> np.ndarray:
    """Noise level per time point from the binding strength.

    Parameters
    ----------
    beta : array_like, shape (T,)
    noise_scale : float
        Largest noise level (>= 0; 0 switches the noise off).
    sigma : float
        Gaussian smoothing width in samples (0: none).

    Returns
    -------
    np.ndarray of float64, shape (T,), in [0, noise_scale]
    """
    from scipy.ndimage import gaussian_filter1d

    b = np.asarray(beta, dtype=np.float64)
    if b.ndim != 1 or not np.isfinite(b).all():
        raise SpecError(f"beta must be a finite 1-D curve, got shape {b.shape}")
    if not noise_scale >= 0 or not sigma >= 0:
        raise SpecError(f"noise_scale and sigma must be >= 0, got {noise_scale!r} and {sigma!r}")
    x = 1.0 - b
    if sigma > 0:
        x = gaussian_filter1d(x, sigma)
    return _minmax(x) * float(noise_scale)


def rdm_value_range(rdms, budget_bytes: int = 64 * 2**20) -> tuple[float, float]:
    """(min, max) of a stack, ignoring NaN, read block by block (for global min-max scaling).

    The CLIP-HBA code scales its target stack to [0, 1] with the global min and max:
    ``(rdms - lo) / (hi - lo)``, applied per batch to the output of :func:`target_batch`.
    """
    arr, _ = _stack(rdms, "rdm_value_range")
    lo, hi = np.inf, -np.inf
    step = max(1, int(budget_bytes // max(1, 8 * arr.shape[-1] * arr.shape[-1])))
    for p in range(arr.shape[0]):
        for t0 in range(0, arr.shape[1], step):
            block = np.asarray(arr[p, t0:t0 + step], dtype=np.float64)
            if np.isfinite(block).any():
                lo = min(lo, float(np.nanmin(block)))
                hi = max(hi, float(np.nanmax(block)))
    if not np.isfinite([lo, hi]).all():
        raise SpecError("rdm_value_range: the stack holds no finite value")
    return lo, hi
