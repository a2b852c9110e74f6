"""Synthetic brain embeddings for the memory task, with a known answer.

Real B2M brain data are CEBRA embeddings: one ``dim``-dimensional vector (7 in the paper)
per time bin of every step. This module makes stand-ins whose content is known, so that
tests and benchmarks can check that alignment helps when the brain carries task
information and does not when it carries none.

Informative brain (``informative=True``)
    For step ``k`` and bin ``b`` within the step, the clean signal is a sum of three
    fixed random linear maps (matrices drawn once from ``rng``, entries standard normal):

    - of the one-hot of the *current target* at that step (size 2),
    - of the one-hot of the *input unit shown at that bin* (size 4: unit 3 during the
      ``pre_bins`` pre-stimulus bins, the stimulus during the ``post_bins`` bins),
    - of a smooth basis of time within the step: ``sin`` and ``cos`` of
      ``2 * pi * f * (b + 0.5) / bins_per_step`` for ``f = 1, 2`` (4 features).

    White Gaussian noise is added, scaled so that ``var(signal) / var(noise) = snr``,
    both variances taken over the whole array (all steps, bins and dimensions).

    The correct response (accept/reject) is deliberately *not* a term of the signal. It
    is the interaction "stimulus equals target"; a sum of separate linear maps of the two
    one-hots cannot express it (no ``a[target] + c[stimulus]`` equals +1 on the pairs
    (0, 0), (1, 1) and -1 on (0, 1), (1, 0)). The brain therefore tells a model *what
    to keep in memory* (the current target), not the answer itself.

Null brain (``informative=False``)
    The same generator - same projection matrices, time basis and noise draws for a
    given ``rng`` state - but the target and stimulus one-hots come from an
    independently simulated set of steps: fresh first targets (uniform in {0, 1}) and
    fresh stimuli (uniform in {0, 1, 2}) on the same episode lengths, with targets
    re-derived by the task rule. Its marginal statistics match those of the informative
    brain for episodes drawn by :func:`~raybrain.data.memory_task.simulate_episodes`,
    while it holds no information about the actual episodes.
"""

from __future__ import annotations

import numpy as np

from raybrain.data.memory_task import (
    N_INPUTS,
    NO_STIMULUS,
    Episodes,
    MemoryTaskConfig,
    _apply_rule,
    _is_int,
)
from raybrain.errors import SpecError

__all__ = ["synthetic_brain", "N_TIME_FREQUENCIES"]

#: Number of sin/cos frequencies in the time-within-step basis (2 * this many features).
N_TIME_FREQUENCIES = 2


def _time_basis(bins_per_step: int) -> np.ndarray:
    """Smooth basis of time within a step, shape (bins_per_step, 2 * N_TIME_FREQUENCIES)."""
    phase = 2.0 * np.pi * (np.arange(bins_per_step) + 0.5) / bins_per_step
    cols = []
    for f in range(1, N_TIME_FREQUENCIES + 1):
        cols += [np.sin(f * phase), np.cos(f * phase)]
    return np.stack(cols, axis=1)


def synthetic_brain(episodes: Episodes, cfg: MemoryTaskConfig, rng: np.random.Generator,
                    snr: float = 1.0, dim: int = 7, informative: bool = True) -> np.ndarray:
    """Generate synthetic brain embeddings for the given episodes.

    Parameters
    ----------
    episodes : Episodes
        The episodes the brain "saw".
    cfg : MemoryTaskConfig
        Gives ``pre_bins`` and ``post_bins``.
    rng : np.random.Generator
        Draws, in this order: the three projection matrices, the standard-normal noise,
        and (null brain only) the surrogate sequences. Hence the same ``rng`` state gives
        the informative and the null brain the same projections and noise draws.
    snr : float
        Signal-to-noise variance ratio, > 0 and finite.
    dim : int
        Embedding dimension (>= 1; 7 in the B2M paper).
    informative : bool
        True: the signal follows the actual episodes. False: the null brain described in
        the module docstring.

    Returns
    -------
    np.ndarray of float32, shape (n_steps, bins_per_step, dim)
        One embedding per time bin of every real step, steps in
        ``episodes.step_index()`` order.

    Raises
    ------
    SpecError
        If ``snr`` is not a finite number > 0 or ``dim`` is not an integer >= 1.
    """
    if not _is_int(dim) or dim < 1:
        raise SpecError(f"synthetic brain dim must be an integer >= 1, got {dim!r}")
    try:
        snr_f = float(snr)
    except (TypeError, ValueError):
        snr_f = float("nan")
    if not (np.isfinite(snr_f) and snr_f > 0):
        raise SpecError(f"synthetic brain snr must be a finite number > 0, got {snr!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    B = cfg.bins_per_step
    basis = _time_basis(B)
    w_target = rng.standard_normal((2, dim))
    w_unit = rng.standard_normal((N_INPUTS, dim))
    w_time = rng.standard_normal((basis.shape[1], dim))
    noise = rng.standard_normal((episodes.n_steps, B, dim))

    if informative:
        source = episodes
    else:
        n_ep = episodes.n_episodes
        source = _apply_rule(rng.integers(0, 2, size=n_ep, dtype=np.int64),
                             episodes.lengths.astype(np.int64),
                             rng.integers(0, 3, size=episodes.n_steps, dtype=np.int64))
    mask = source.step_mask
    targets = source.targets[mask]  # (n_steps,)
    stimuli = source.stimuli[mask]  # (n_steps,)

    units = np.empty((targets.shape[0], B), dtype=np.int64)
    units[:, :cfg.pre_bins] = NO_STIMULUS
    units[:, cfg.pre_bins:] = stimuli[:, None]

    signal = (w_target[targets][:, None, :]  # (n_steps, 1, dim)
              + w_unit[units]  # (n_steps, B, dim)
              + (basis @ w_time)[None, :, :])  # (1, B, dim)
    signal_var = float(signal.var())
    noise_var = float(noise.var())
    if signal_var == 0.0 or noise_var == 0.0:
        # Degenerate (e.g. a single bin and a single step); fall back to unit scales.
        signal_var = signal_var or 1.0
        noise_var = noise_var or 1.0
    noise *= np.sqrt(signal_var / (snr_f * noise_var))
    return (signal + noise).astype(np.float32)
