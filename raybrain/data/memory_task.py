"""The B2M goal-switching memory task: episode simulator and input encoding.

Task (B2M paper, section 4.1 and the appendix on the memory task), as implemented here
--------------------------------------------------------------------------------------
Vocabulary (DESIGN.md section 4): a **step** is one stimulus presentation and an
**episode** is a sequence of steps. The paper says "trial" for a step; here that word is
kept for Ray Tune.

Stimulus codes
    ``0`` and ``1`` are the two target candidates, ``2`` is the distractor, and ``3`` is
    the "no stimulus" input unit. The network input at every time bin is a one-hot vector
    of size 4 over these codes.

Rule
    Each episode has a current target, one of the two candidates; the first one is given
    per episode (``first_target``). At every step one stimulus from ``{0, 1, 2}`` is
    shown. The correct response is ``+1`` (accept) when the stimulus is the current
    target and ``-1`` (reject) otherwise. Each time the current target is shown (i.e.
    after every correct accept), the current target switches to the other candidate, so
    targets alternate ``0 -> 1 -> 0 ...`` (or ``1 -> 0 -> 1 ...``) within an episode.
    The distractor ``2`` is never a target.

Why the context makes the task solvable
    Every episode starts with ``context_bins`` bins showing the one-hot of the first
    target (unit 0 or 1). Because the distractor always has the same code (2), knowing
    the first target and counting the accepts since the start of the episode is enough to
    know the current target at every step; the model needs no other cue. If the
    distractor's role moved between episodes, the context alone would not identify it.

Time layout
    A step lasts ``bins_per_step = pre_bins + post_bins`` time bins: ``pre_bins`` bins of
    the "no stimulus" unit (3), then ``post_bins`` bins of the stimulus unit. The answer
    is read out at the last ``response_bins`` bins of the step. An episode of ``n``
    steps spans ``context_bins + n * bins_per_step`` bins; in a batch, shorter episodes
    are padded with all-zero inputs to the longest one.

Sampling (:func:`simulate_episodes`)
    The number of steps of an episode is an integer drawn uniformly from
    ``[min_steps, max_steps]`` (both ends included), the first target uniformly from
    ``{0, 1}``, and each stimulus independently and uniformly from ``{0, 1, 2}``.
    With uniform stimuli, about one step in three is an accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np

from raybrain.errors import SpecError

__all__ = [
    "N_INPUTS",
    "NO_STIMULUS",
    "DISTRACTOR",
    "MemoryTaskConfig",
    "Episodes",
    "simulate_episodes",
    "episodes_from_sequences",
    "encode_inputs",
    "step_bins_to_time",
    "time_to_step_bins",
]

#: Size of the one-hot input: two target candidates, the distractor, "no stimulus".
N_INPUTS = 4
#: Code of the distractor stimulus.
DISTRACTOR = 2
#: Code of the "no stimulus" input unit (pre-stimulus bins).
NO_STIMULUS = 3


def _is_int(x) -> bool:
    return isinstance(x, Integral) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class MemoryTaskConfig:
    """Timing and episode-length settings of the memory task.

    Parameters
    ----------
    pre_bins : int
        Bins per step showing the "no stimulus" unit before the stimulus (>= 1).
    post_bins : int
        Bins per step showing the stimulus (>= 1).
    context_bins : int
        Bins at the start of every episode showing the first target (>= 1).
    response_bins : int
        Number of bins at the end of each step where the response is scored
        (1 <= response_bins <= post_bins).
    min_steps, max_steps : int
        Episode length is drawn uniformly from ``[min_steps, max_steps]``, both ends
        included (1 <= min_steps <= max_steps).

    Raises
    ------
    SpecError
        If a field is not an integer >= 1, ``min_steps > max_steps`` or
        ``response_bins > post_bins``.
    """

    pre_bins: int = 5
    post_bins: int = 5
    context_bins: int = 5
    response_bins: int = 1
    min_steps: int = 4
    max_steps: int = 12

    def __post_init__(self):
        for name in ("pre_bins", "post_bins", "context_bins", "response_bins",
                     "min_steps", "max_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(
                    f"MemoryTaskConfig.{name} must be an integer >= 1, got {value!r}")
        if self.min_steps > self.max_steps:
            raise SpecError(
                "MemoryTaskConfig needs min_steps <= max_steps, got "
                f"(min_steps={self.min_steps}, max_steps={self.max_steps})")
        if self.response_bins > self.post_bins:
            raise SpecError(
                "MemoryTaskConfig needs response_bins <= post_bins (responses are scored "
                f"inside the stimulus window), got (response_bins={self.response_bins}, "
                f"post_bins={self.post_bins})")

    @property
    def bins_per_step(self) -> int:
        """Time bins per step: ``pre_bins + post_bins``."""
        return self.pre_bins + self.post_bins


@dataclass
class Episodes:
    """A batch of episodes, padded to the longest one.

    Attributes
    ----------
    first_target : np.ndarray of int64, shape (n_episodes,)
        Target at the first step of each episode (0 or 1); shown as context.
    lengths : np.ndarray of int64, shape (n_episodes,)
        Number of steps of each episode (>= 1).
    stimuli : np.ndarray of int64, shape (n_episodes, max_len)
        Stimulus shown at each step (0, 1 or 2); -1 past the end of the episode.
    targets : np.ndarray of int64, shape (n_episodes, max_len)
        Current target at each step (0 or 1); -1 past the end of the episode.
    responses : np.ndarray of float32, shape (n_episodes, max_len)
        Correct response at each step: +1 (accept) or -1 (reject); 0 past the end.

    Notes
    -----
    Build instances with :func:`simulate_episodes` or :func:`episodes_from_sequences`,
    which compute ``targets`` and ``responses`` from the task rule. The constructor
    only checks that the shapes agree.
    """

    first_target: np.ndarray
    lengths: np.ndarray
    stimuli: np.ndarray
    targets: np.ndarray
    responses: np.ndarray

    def __post_init__(self):
        n = np.shape(self.first_target)
        if len(n) != 1 or np.shape(self.lengths) != n:
            raise SpecError(
                "Episodes needs first_target and lengths of the same shape (n_episodes,), "
                f"got {np.shape(self.first_target)} and {np.shape(self.lengths)}")
        n_ep = n[0]
        max_len = int(np.max(self.lengths)) if n_ep else 0
        for name in ("stimuli", "targets", "responses"):
            shape = np.shape(getattr(self, name))
            if shape != (n_ep, max_len):
                raise SpecError(
                    f"Episodes.{name} must have shape (n_episodes, max(lengths)) = "
                    f"{(n_ep, max_len)}, got {shape}")

    def split(self, episode_idx, brain_steps: np.ndarray | None = None):
        """The episodes at ``episode_idx`` (in that order), re-padded to their longest.

        Parameters
        ----------
        episode_idx : array of int, shape (k,)
        brain_steps : np.ndarray, shape (n_steps, ...), optional
            Per-step arrays of these episodes (in :meth:`step_index` order); the rows of
            the selected episodes are returned alongside, in the new step order.

        Returns
        -------
        Episodes, or (Episodes, np.ndarray of shape (k_steps, ...)) with ``brain_steps``.
        """
        idx = np.asarray(episode_idx, dtype=np.int64)
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(idx) else 0
        sub = Episodes(first_target=self.first_target[idx].copy(), lengths=lengths.copy(),
                       stimuli=self.stimuli[idx, :width].copy(),
                       targets=self.targets[idx, :width].copy(),
                       responses=self.responses[idx, :width].copy())
        if brain_steps is None:
            return sub
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        rows = np.concatenate([np.arange(starts[i], starts[i] + self.lengths[i]) for i in idx]) \
            if len(idx) else np.zeros(0, dtype=np.int64)
        return sub, np.asarray(brain_steps)[rows]

    @property
    def n_episodes(self) -> int:
        """Number of episodes."""
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        """Length (in steps) of the longest episode = padded width of the step arrays."""
        return int(self.stimuli.shape[1])

    @property
    def n_steps(self) -> int:
        """Total number of real steps: ``lengths.sum()``."""
        return int(self.lengths.sum())

    @property
    def step_mask(self) -> np.ndarray:
        """Bool array, shape (n_episodes, max_len): True for real (unpadded) steps."""
        return np.arange(self.max_len)[None, :] < self.lengths[:, None]

    def step_index(self) -> np.ndarray:
        """(episode, step) of every real step, episode by episode.

        Returns
        -------
        np.ndarray of int64, shape (n_steps, 2)
            Row ``k`` is ``(episode, step within episode)`` of the ``k``-th real step.
            This order is the one used by per-step brain arrays throughout
            ``raybrain.data`` (npz files, synthetic brains, controls).
        """
        return np.argwhere(self.step_mask).astype(np.int64)


def _as_int_vector(name: str, x) -> np.ndarray:
    """Return ``x`` as a 1-D int64 array, or raise SpecError naming ``name``."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise SpecError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        bad[~bad] = arr[~bad] != np.round(arr[~bad])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SpecError(f"{name} must hold integers, got {arr[i].item()!r} at index {i}")
        return arr.astype(np.int64)
    raise SpecError(f"{name} must hold integers, got dtype {arr.dtype}")


def _check_values(name: str, arr: np.ndarray, allowed: tuple[int, ...], what: str):
    bad = ~np.isin(arr, allowed)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SpecError(
            f"{name} must take values in {{{', '.join(map(str, allowed))}}} ({what}), "
            f"got {arr[i]} at index {i} ({int(bad.sum())} bad value(s))")


def _validate_sequences(first_target, lengths, stimuli_flat,
                        names: tuple[str, str, str] = ("first_target", "lengths",
                                                       "stimuli_flat")):
    """Check the three sequence arrays and return them as int64 vectors.

    ``names`` are the names used in error messages for the three arrays.
    """
    n_first, n_len, n_stim = names
    first_target = _as_int_vector(n_first, first_target)
    lengths = _as_int_vector(n_len, lengths)
    stimuli_flat = _as_int_vector(n_stim, stimuli_flat)
    if first_target.shape[0] == 0:
        raise SpecError(f"at least one episode is needed, got an empty {n_first}")
    if lengths.shape != first_target.shape:
        raise SpecError(
            f"{n_first} and {n_len} need one entry per episode, got "
            f"{first_target.shape[0]} and {lengths.shape[0]} entries")
    if (lengths < 1).any():
        i = int(np.flatnonzero(lengths < 1)[0])
        raise SpecError(
            f"{n_len} must be >= 1 step per episode, got {lengths[i]} for episode {i}")
    _check_values(n_first, first_target, (0, 1), "the two target candidates")
    _check_values(n_stim, stimuli_flat, (0, 1, 2),
                  "0 and 1 are the target candidates, 2 the distractor")
    return first_target, lengths, stimuli_flat


def _apply_rule(first_target: np.ndarray, lengths: np.ndarray,
                stimuli_flat: np.ndarray) -> Episodes:
    """Pad sequences and derive targets and responses (inputs already validated)."""
    n_ep = first_target.shape[0]
    max_len = int(lengths.max())
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    stimuli = np.full((n_ep, max_len), -1, dtype=np.int64)
    stimuli[mask] = stimuli_flat  # row-major fill = episode by episode
    targets = np.full((n_ep, max_len), -1, dtype=np.int64)
    responses = np.zeros((n_ep, max_len), dtype=np.float32)
    current = first_target.copy()
    for s in range(max_len):  # vectorised over episodes, sequential over steps
        live = mask[:, s]
        hit = live & (stimuli[:, s] == current)
        targets[live, s] = current[live]
        responses[live, s] = np.where(hit[live], 1.0, -1.0)
        current = np.where(hit, 1 - current, current)
    return Episodes(first_target=first_target, lengths=lengths, stimuli=stimuli,
                    targets=targets, responses=responses)


def episodes_from_sequences(first_target, lengths, stimuli_flat) -> Episodes:
    """Build episodes from given stimulus sequences, applying the task rule.

    Parameters
    ----------
    first_target : array-like of int, shape (n_episodes,)
        First target of each episode, 0 or 1.
    lengths : array-like of int, shape (n_episodes,)
        Number of steps of each episode, each >= 1.
    stimuli_flat : array-like of int, shape (sum(lengths),)
        Stimuli of all steps, episode after episode, each in {0, 1, 2}.

    Returns
    -------
    Episodes
        With ``targets`` and ``responses`` computed by the alternation rule.

    Raises
    ------
    SpecError
        If an array has the wrong shape, non-integer entries or a value out of range,
        or if ``len(stimuli_flat) != sum(lengths)``.
    """
    first_target, lengths, stimuli_flat = _validate_sequences(
        first_target, lengths, stimuli_flat)
    if stimuli_flat.shape[0] != int(lengths.sum()):
        raise SpecError(
            "stimuli_flat needs one stimulus per step, i.e. sum(lengths) = "
            f"{int(lengths.sum())} entries, got {stimuli_flat.shape[0]}")
    return _apply_rule(first_target, lengths, stimuli_flat)


def simulate_episodes(n_episodes: int, cfg: MemoryTaskConfig,
                      rng: np.random.Generator) -> Episodes:
    """Draw random episodes of the memory task.

    Parameters
    ----------
    n_episodes : int
        Number of episodes (>= 1).
    cfg : MemoryTaskConfig
        Gives ``min_steps`` and ``max_steps``.
    rng : np.random.Generator
        Source of randomness. Draws, in this order: lengths (uniform integers in
        ``[min_steps, max_steps]``), first targets (uniform in {0, 1}), stimuli
        (uniform in {0, 1, 2}, one per step).

    Returns
    -------
    Episodes
    """
    if not _is_int(n_episodes) or n_episodes < 1:
        raise SpecError(f"n_episodes must be an integer >= 1, got {n_episodes!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    lengths = rng.integers(cfg.min_steps, cfg.max_steps + 1, size=n_episodes,
                           dtype=np.int64)
    first_target = rng.integers(0, 2, size=n_episodes, dtype=np.int64)
    stimuli_flat = rng.integers(0, 3, size=int(lengths.sum()), dtype=np.int64)
    return _apply_rule(first_target, lengths, stimuli_flat)


def _n_time(episodes: Episodes, cfg: MemoryTaskConfig) -> int:
    return cfg.context_bins + episodes.max_len * cfg.bins_per_step


def encode_inputs(episodes: Episodes, cfg: MemoryTaskConfig) -> dict[str, np.ndarray]:
    """Lay the episodes out in time for the recurrent network.

    With ``C = cfg.context_bins``, ``B = cfg.bins_per_step`` and
    ``T = C + episodes.max_len * B``, step ``s`` of an episode occupies bins
    ``C + s*B`` to ``C + (s+1)*B - 1``.

    Parameters
    ----------
    episodes : Episodes
    cfg : MemoryTaskConfig

    Returns
    -------
    dict
        ``inputs`` : float32, shape (n_episodes, T, 4)
            One-hot input: the first target during the context bins, unit 3 during the
            ``pre_bins`` of each step, the stimulus during its ``post_bins``; all zeros
            past the end of an episode.
        ``time_mask`` : bool, shape (n_episodes, T)
            True for real bins, context included.
        ``brain_mask`` : bool, shape (n_episodes, T)
            True for the bins of real steps (context excluded) - the bins that have a
            brain embedding.
        ``response_mask`` : bool, shape (n_episodes, T)
            True at the last ``response_bins`` bins of each real step.
        ``response_target`` : float32, shape (n_episodes, T)
            The step's correct response (+1 / -1) at response bins, 0 elsewhere.
    """
    n_ep, max_len = episodes.n_episodes, episodes.max_len
    C, B = cfg.context_bins, cfg.bins_per_step
    T = _n_time(episodes, cfg)
    step_mask = episodes.step_mask  # (n_ep, max_len)

    inputs = np.zeros((n_ep, T, N_INPUTS), dtype=np.float32)
    inputs[np.arange(n_ep)[:, None], np.arange(C)[None, :], episodes.first_target[:, None]] = 1.0

    # Per-step view of the time axis after the context: (n_ep, max_len, B, 4).
    steps = inputs[:, C:, :].reshape(n_ep, max_len, B, N_INPUTS)
    ep_idx, st_idx = np.nonzero(step_mask)
    steps[ep_idx, st_idx, :cfg.pre_bins, NO_STIMULUS] = 1.0
    steps[ep_idx, st_idx, cfg.pre_bins:, episodes.stimuli[ep_idx, st_idx]] = 1.0
    inputs[:, C:, :] = steps.reshape(n_ep, max_len * B, N_INPUTS)

    bins_mask = np.repeat(step_mask, B, axis=1)  # (n_ep, max_len * B)
    time_mask = np.zeros((n_ep, T), dtype=bool)
    time_mask[:, :C] = True
    time_mask[:, C:] = bins_mask
    brain_mask = np.zeros((n_ep, T), dtype=bool)
    brain_mask[:, C:] = bins_mask

    in_step = np.zeros(B, dtype=bool)
    in_step[B - cfg.response_bins:] = True
    resp = step_mask[:, :, None] & in_step[None, None, :]  # (n_ep, max_len, B)
    response_mask = np.zeros((n_ep, T), dtype=bool)
    response_mask[:, C:] = resp.reshape(n_ep, max_len * B)
    response_target = np.zeros((n_ep, T), dtype=np.float32)
    response_target[:, C:] = (resp * episodes.responses[:, :, None]).reshape(n_ep, max_len * B)

    return {
        "inputs": inputs,
        "time_mask": time_mask,
        "brain_mask": brain_mask,
        "response_mask": response_mask,
        "response_target": response_target,
    }


def step_bins_to_time(brain_steps: np.ndarray, episodes: Episodes,
                      cfg: MemoryTaskConfig) -> np.ndarray:
    """Scatter per-step arrays into the time layout of :func:`encode_inputs`.

    Parameters
    ----------
    brain_steps : np.ndarray, shape (n_steps, bins_per_step, E)
        One row per real step, in ``episodes.step_index()`` order. Any number of
        trailing axes is accepted (``(n_steps, bins_per_step, *rest)``).
    episodes : Episodes
    cfg : MemoryTaskConfig

    Returns
    -------
    np.ndarray, shape (n_episodes, T, E)
        Same dtype as ``brain_steps``; zeros on context bins and padding
        (``T = context_bins + max_len * bins_per_step``).

    Raises
    ------
    SpecError
        If the first two axes are not ``(episodes.n_steps, cfg.bins_per_step)``.
    """
    brain_steps = np.asarray(brain_steps)
    B = cfg.bins_per_step
    if brain_steps.ndim < 2 or brain_steps.shape[:2] != (episodes.n_steps, B):
        raise SpecError(
            "per-step array must have shape (n_steps, bins_per_step, ...) = "
            f"({episodes.n_steps}, {B}, ...), got {brain_steps.shape}")
    rest = brain_steps.shape[2:]
    n_ep, max_len, C = episodes.n_episodes, episodes.max_len, cfg.context_bins
    out = np.zeros((n_ep, _n_time(episodes, cfg)) + rest, dtype=brain_steps.dtype)
    grid = np.zeros((n_ep, max_len, B) + rest, dtype=brain_steps.dtype)
    grid[episodes.step_mask] = brain_steps
    out[:, C:] = grid.reshape((n_ep, max_len * B) + rest)
    return out


def time_to_step_bins(time_array: np.ndarray, episodes: Episodes,
                      cfg: MemoryTaskConfig) -> np.ndarray:
    """Gather the bins of real steps from a time-laid-out array.

    Inverse of :func:`step_bins_to_time` (context and padding bins are dropped).

    Parameters
    ----------
    time_array : np.ndarray, shape (n_episodes, T, E)
        ``T = context_bins + max_len * bins_per_step``; any number of trailing axes.
    episodes : Episodes
    cfg : MemoryTaskConfig

    Returns
    -------
    np.ndarray, shape (n_steps, bins_per_step, E)
        Rows in ``episodes.step_index()`` order, same dtype as ``time_array``.

    Raises
    ------
    SpecError
        If the first two axes are not ``(n_episodes, T)``.
    """
    time_array = np.asarray(time_array)
    n_ep, max_len, C, B = (episodes.n_episodes, episodes.max_len, cfg.context_bins,
                           cfg.bins_per_step)
    T = _n_time(episodes, cfg)
    if time_array.ndim < 2 or time_array.shape[:2] != (n_ep, T):
        raise SpecError(
            "time-laid-out array must have shape (n_episodes, T, ...) = "
            f"({n_ep}, {T}, ...) with T = context_bins + max_len * bins_per_step, "
            f"got {time_array.shape}")
    rest = time_array.shape[2:]
    grid = time_array[:, C:].reshape((n_ep, max_len, B) + rest)
    return grid[episodes.step_mask].copy()
