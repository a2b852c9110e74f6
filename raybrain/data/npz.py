"""User-supplied brain embeddings for the memory task, as a NumPy ``.npz`` file.

File layout
-----------
One ``.npz`` archive (``numpy.savez``; no pickled objects) with four arrays:

``embeddings`` : float, shape (n_steps, bins_per_step, dim)
    One brain embedding per time bin of every step (e.g. a CEBRA embedding; the B2M
    paper uses ``dim = 7``). ``bins_per_step`` must equal the task's
    ``pre_bins + post_bins`` and ``dim`` the model's embedding dimension. All values
    finite.
``episode_lengths`` : int, shape (n_episodes,)
    Number of steps of each episode, in presentation order; each >= 1 and
    ``sum(episode_lengths) == n_steps``.
``stimuli`` : int, shape (n_steps,)
    Stimulus shown at each step, episode after episode: 0 or 1 (the two target
    candidates) or 2 (the distractor).
``first_target`` : int, shape (n_episodes,)
    Target at the first step of each episode, 0 or 1.

Row ``k`` of ``embeddings`` and entry ``k`` of ``stimuli`` belong to the ``k``-th step
when the episodes are laid end to end (the order of
:meth:`~raybrain.data.memory_task.Episodes.step_index`). The current target and the
correct response of every step are not stored: they follow from ``first_target`` and
``stimuli`` by the task rule (see :mod:`raybrain.data.memory_task`). Other keys in the
archive are ignored.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from raybrain.data.memory_task import (
    Episodes,
    MemoryTaskConfig,
    _apply_rule,
    _validate_sequences,
)
from raybrain.errors import SpecError

__all__ = ["NPZ_KEYS", "load_memory_npz", "describe_memory_npz", "save_memory_npz"]

#: Keys of the memory-task npz layout.
NPZ_KEYS = ("embeddings", "episode_lengths", "stimuli", "first_target")

_NDIM = {"embeddings": 3, "episode_lengths": 1, "stimuli": 1, "first_target": 1}
_SHAPES = {
    "embeddings": "(n_steps, bins_per_step, dim)",
    "episode_lengths": "(n_episodes,)",
    "stimuli": "(n_steps,)",
    "first_target": "(n_episodes,)",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_memory_npz(path: str | os.PathLike, cfg: MemoryTaskConfig,
                    expected_dim: int | None) -> tuple[Episodes, np.ndarray]:
    """Load and check brain embeddings and their episodes from an npz file.

    Parameters
    ----------
    path : str or os.PathLike
        File in the layout of this module's docstring.
    cfg : MemoryTaskConfig
        The task timing; ``embeddings.shape[1]`` must equal ``cfg.bins_per_step``.
    expected_dim : int or None
        The model's embedding dimension; ``embeddings.shape[2]`` must equal it (None:
        not checked here, e.g. when the caller checks it against each run's params).

    Returns
    -------
    episodes : Episodes
        Episodes rebuilt from ``first_target``, ``episode_lengths`` and ``stimuli``.
    embeddings : np.ndarray of float32, shape (n_steps, bins_per_step, expected_dim)
        Rows in ``episodes.step_index()`` order.

    Raises
    ------
    SpecError
        One line naming the file and the problem: file missing or unreadable, a key
        missing, an array of the wrong dimensionality or type, a dimension or bin count
        that does not match, non-finite embeddings, step counts that disagree, or
        stimulus / first-target / length values out of range.
    """
    where, arrays = _read_arrays(path)
    emb = arrays["embeddings"]
    if expected_dim is not None and emb.shape[2] != expected_dim:
        raise SpecError(
            f"{where}: brain embedding dimension {emb.shape[2]} differs from the model's "
            f"embedding dimension {expected_dim} (embeddings shape {emb.shape})")
    if emb.shape[1] != cfg.bins_per_step:
        raise SpecError(
            f"{where}: embeddings have {emb.shape[1]} time bins per step but the task "
            f"has bins_per_step = pre_bins + post_bins = {cfg.pre_bins} + "
            f"{cfg.post_bins} = {cfg.bins_per_step}")
    first_target, lengths, stimuli, emb = _check_steps(where, arrays)
    episodes = _apply_rule(first_target, lengths, stimuli)
    return episodes, emb


def _read_arrays(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Read the four arrays; check presence, dimensionality and the embeddings' dtype."""
    from raybrain.data.matfile import file_state

    where = f"brain data file '{os.fspath(path)}'"
    keys = ", ".join(NPZ_KEYS)
    file_state(path, where, f"an .npz with keys {keys}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SpecError(
            f"{where} is truncated or unreadable by numpy.load ({_first_line(exc)}); expected "
            f"a complete .npz with keys {keys}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise SpecError(
            f"{where} holds a single array, not an .npz archive; expected an .npz with "
            f"keys {keys}")
    with loaded as npz:
        present = set(npz.files)
        for key in NPZ_KEYS:
            if key not in present:
                found = ", ".join(sorted(present)) or "none"
                raise SpecError(
                    f"{where} lacks key '{key}'; expected keys {keys}, found {found}")
        try:
            arrays = {key: npz[key] for key in NPZ_KEYS}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise SpecError(
                f"{where} could not be read ({_first_line(exc)}); arrays must be plain "
                f"numeric arrays (no pickled objects) with keys {keys}") from None

    for key in NPZ_KEYS:
        arr = arrays[key]
        if arr.ndim != _NDIM[key]:
            raise SpecError(
                f"{where}: '{key}' must be {_NDIM[key]}-D with shape {_SHAPES[key]}, "
                f"got shape {arr.shape}")
    emb = arrays["embeddings"]
    if emb.dtype.kind not in "iuf":
        raise SpecError(f"{where}: 'embeddings' must hold real numbers, got dtype {emb.dtype}")
    return where, arrays


def _check_steps(where: str, arrays: dict[str, np.ndarray]):
    """Sequences valid, step counts equal, embeddings finite (float32)."""
    emb = arrays["embeddings"]
    try:
        first_target, lengths, stimuli = _validate_sequences(
            arrays["first_target"], arrays["episode_lengths"], arrays["stimuli"],
            names=("first_target", "episode_lengths", "stimuli"))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None

    n_from_lengths = int(lengths.sum())
    if n_from_lengths != emb.shape[0] or n_from_lengths != stimuli.shape[0]:
        raise SpecError(
            f"{where}: step count does not match the episode sequences: "
            f"sum(episode_lengths) = {n_from_lengths}, embeddings have {emb.shape[0]} "
            f"steps, stimuli has {stimuli.shape[0]} entries; all three must be equal")

    emb = emb.astype(np.float32)  # values beyond float32 range become inf and are caught
    finite = np.isfinite(emb)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise SpecError(
            f"{where}: embeddings must be finite, found {bad.shape[0]} NaN/inf value(s), "
            f"the first at index {first} (step, bin, dimension)")
    return first_target, lengths, stimuli, emb


def describe_memory_npz(path: str | os.PathLike) -> str:
    """One line describing a file in this module's layout, checked as far as it can be
    without a task configuration (every check of :func:`load_memory_npz` except the bin
    count and the model's dimension).

    Raises
    ------
    SpecError
        As :func:`load_memory_npz`.
    """
    where, arrays = _read_arrays(path)
    first_target, lengths, stimuli, emb = _check_steps(where, arrays)
    n_steps, bins, dim = emb.shape
    counts = np.bincount(stimuli, minlength=3)
    return (f"memory-task brain embeddings (n_steps, bins_per_step, dim) = {emb.shape}: "
            f"{len(lengths)} episodes of {int(lengths.min())}..{int(lengths.max())} steps, "
            f"stimuli 0/1/2 x {int(counts[0])}/{int(counts[1])}/{int(counts[2])}; a spec uses it "
            f"with pre_bins + post_bins = {bins} and embed_dim = {dim}")


def save_memory_npz(path: str | os.PathLike, episodes: Episodes,
                    embeddings: np.ndarray) -> Path:
    """Write episodes and their brain embeddings in the layout of this module.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, written exactly there (no ``.npz`` suffix is appended).
    episodes : Episodes
    embeddings : np.ndarray, shape (n_steps, bins_per_step, dim)
        Rows in ``episodes.step_index()`` order; stored as float32.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    SpecError
        If ``embeddings`` is not 3-D with ``episodes.n_steps`` rows.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 3 or emb.shape[0] != episodes.n_steps:
        raise SpecError(
            "embeddings must have shape (n_steps, bins_per_step, dim) with n_steps = "
            f"{episodes.n_steps}, got {emb.shape}")
    mask = episodes.step_mask
    out = Path(path)
    with open(out, "wb") as fh:
        np.savez(
            fh,
            embeddings=emb.astype(np.float32),
            episode_lengths=episodes.lengths.astype(np.int64),
            stimuli=episodes.stimuli[mask].astype(np.int64),
            first_target=episodes.first_target.astype(np.int64),
        )
    return out
