"""Control transforms of brain data for the comparison arms (DESIGN.md section 4).

Both transforms act on per-step brain arrays of shape ``(n_steps, n_bins, dim)`` (one
embedding per time bin of every step) and keep what a brain signal looks like while
destroying its correspondence to the task:

``shuffled`` arm -> :func:`shuffle_steps`
    Whole steps are permuted across the step axis. Each step keeps its own time course,
    so the marginal distribution and the within-step dynamics are exactly those of the
    data; only which step a brain response is paired with changes.

``noise`` arm -> :func:`phase_randomise`
    Multivariate phase-randomised surrogates (Prichard & Theiler 1994), step by step:
    the Fourier transform along time of every dimension of a step is rotated by random
    phases that are shared by all dimensions of that step. Amplitudes are untouched, so
    each step keeps its mean, its (circular) auto-correlation per dimension and its
    (circular) cross-correlation between dimensions, the lag-0 covariance included;
    the time course itself is replaced.

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
    """Multivariate phase-randomised surrogate of every step.

    For each step: real FFT along the time axis (axis 1); every non-zero frequency is
    multiplied by ``exp(i * phi_f)`` with ``phi_f`` uniform on ``[0, 2 pi)``, the same
    ``phi_f`` for all ``dim`` dimensions of the step (independent across steps and
    frequencies); the zero-frequency term is left alone; for an even number of bins the
    Nyquist term gets phase 0 or pi (chosen at random) so it stays real; then the inverse
    real FFT with the original length.

    Parameters
    ----------
    brain_steps : np.ndarray, shape (n_steps, n_bins, dim)
    rng : np.random.Generator

    Returns
    -------
    np.ndarray, shape (n_steps, n_bins, dim)
        Same dtype as the input for floating inputs (float64 for integer inputs). Each
        step keeps its per-dimension mean, its lag-0 covariance between dimensions and
        the circular auto-correlation of every dimension (up to rounding).
    """
    arr = _check_steps(brain_steps, "phase_randomise")
    out_dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    n_steps, n_bins, _ = arr.shape
    spec = np.fft.rfft(arr.astype(np.float64), axis=1)  # (n_steps, n_bins//2 + 1, dim)
    n_freq = spec.shape[1]
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_steps, n_freq))
    phases[:, 0] = 0.0
    if n_bins % 2 == 0:
        phases[:, -1] = np.pi * rng.integers(0, 2, size=n_steps)
    rot = np.exp(1j * phases)
    if n_bins % 2 == 0:
        rot[:, -1] = rot[:, -1].real  # exactly +1 or -1
    rot[:, 0] = 1.0
    surrogate = np.fft.irfft(spec * rot[:, :, None], n=n_bins, axis=1)
    return surrogate.astype(out_dtype, copy=False)
