"""Control transforms of brain data for the comparison arms (DESIGN.md section 4).

Both transforms act on per-step brain arrays of shape ``(n_steps, n_bins, dim)`` (one
embedding per time bin of every step) and keep what a brain signal looks like while
destroying its correspondence to the task:

``shuffled`` arm -> :func:`shuffle_steps`
    Whole steps are permuted across the step axis. Each step keeps its own time course,
    so the marginal distribution and the within-step dynamics are exactly those of the
    data; only which step a brain response is paired with changes.

``noise`` arm -> :func:`phase_randomise`
    Multivariate phase-randomised surrogates (Prichard & Theiler 1994) of the whole
    recording: the steps are laid end to end in their order into one time series, its
    Fourier transform along time is rotated by random phases shared by all dimensions,
    and the result is cut back into steps. Amplitudes are untouched, so the series keeps
    its mean, the (circular) auto-correlation of every dimension and the (circular)
    cross-correlation between dimensions, lag-0 covariance included; the time course is
    replaced. The transform is deliberately *not* done step by step: a step's mean is
    the zero-frequency term of its own spectrum, which a per-step surrogate keeps, and
    when the brain encodes the task (the current target, the stimulus) the step means
    carry that information. A per-step surrogate would therefore keep part of the
    correspondence the control is meant to destroy (measured: a per-step "noise" arm
    trained as well as the real brain arm on the informative synthetic data).

Draw the ``rng`` from the sweep's data seed so every seed of a config sees the same
control data.
"""

from __future__ import annotations

import numpy as np

from raybrain.errors import SpecError

__all__ = ["shuffle_steps", "phase_randomise"]


def _check_steps(brain_steps, who: str) -> np.ndarray:
    arr = np.asarray(brain_steps)
    if arr.ndim != 3:
        raise SpecError(
            f"{who} expects brain data of shape (n_steps, n_bins, dim), got shape "
            f"{arr.shape}")
    if arr.shape[1] < 1:
        raise SpecError(f"{who} expects at least one time bin per step, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpecError(f"{who} expects real-valued brain data, got dtype {arr.dtype}")
    return arr


def shuffle_steps(brain_steps: np.ndarray, rng: np.random.Generator,
                  return_permutation: bool = False):
    """Permute whole steps of a brain array.

    Parameters
    ----------
    brain_steps : np.ndarray, shape (n_steps, n_bins, dim)
    rng : np.random.Generator
        The permutation is ``rng.permutation(n_steps)`` (a uniform random permutation, so
        on average one step stays in place).
    return_permutation : bool
        Also return the permutation.

    Returns
    -------
    shuffled : np.ndarray, shape (n_steps, n_bins, dim)
        ``shuffled[k] = brain_steps[perm[k]]`` (a new array, same dtype).
    perm : np.ndarray of int64, shape (n_steps,)
        Only if ``return_permutation`` is True.
    """
    arr = _check_steps(brain_steps, "shuffle_steps")
    perm = rng.permutation(arr.shape[0]).astype(np.int64)
    shuffled = arr[perm]
    if return_permutation:
        return shuffled, perm
    return shuffled


def phase_randomise(brain_steps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multivariate phase-randomised surrogate of the whole recording.

    The steps are concatenated in order into one series of ``n_steps * n_bins`` time
    points; its real FFT along time has every non-zero frequency multiplied by
    ``exp(i * phi_f)`` with ``phi_f`` uniform on ``[0, 2 pi)``, the same ``phi_f`` for all
    ``dim`` dimensions; the zero-frequency term is left alone; for an even length the
    Nyquist term gets phase 0 or pi (chosen at random) so it stays real; the inverse real
    FFT with the original length is cut back into steps.

    Parameters
    ----------
    brain_steps : np.ndarray, shape (n_steps, n_bins, dim)
    rng : np.random.Generator

    Returns
    -------
    np.ndarray, shape (n_steps, n_bins, dim)
        Same dtype as the input for floating inputs (float64 for integer inputs). The
        concatenated series keeps its per-dimension mean, its lag-0 covariance between
        dimensions and the circular auto-correlation of every dimension (up to
        rounding); step means, and with them the task information they carry, are not
        kept.
    """
    arr = _check_steps(brain_steps, "phase_randomise")
    out_dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    n_steps, n_bins, dim = arr.shape
    n = n_steps * n_bins
    series = arr.astype(np.float64).reshape(n, dim)
    spec = np.fft.rfft(series, axis=0)  # (n//2 + 1, dim)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=spec.shape[0])
    rot = np.exp(1j * phases)
    rot[0] = 1.0
    if n % 2 == 0:
        rot[-1] = 1.0 if rng.integers(0, 2) == 0 else -1.0
    surrogate = np.fft.irfft(spec * rot[:, None], n=n, axis=0)
    return surrogate.reshape(n_steps, n_bins, dim).astype(out_dtype, copy=False)
