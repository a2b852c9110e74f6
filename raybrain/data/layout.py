"""Which of raybrain's layouts an ``.npz`` archive holds, told from its key list alone.

An ``.npz`` is a zip of ``.npy`` members; its member names are read from the archive's
directory without reading any array. Layouts, checked in this order:

- ``spikes``: ``spike_times``, ``unit_index``, ``n_units``
  (:func:`raybrain.data.spikes.load_spikes`);
- ``memory``: ``embeddings``, ``episode_lengths``, ``stimuli``, ``first_target``
  (:func:`raybrain.data.npz.load_memory_npz`);
- ``nelpy``: ``spike_times_s``, ``pos_time_s``, ``pos_x_px``, per-unit arrays stored
  pickled (convert once: :func:`raybrain.data.spikes.convert_nelpy_npz`);
- ``embedding``: ``session_0``, ``session_1``, ... and ``loss``
  (:func:`raybrain.data.spikes.load_embedding`);
- ``array``: exactly one array, e.g. an RDM stack (:func:`raybrain.data.rdm.load_rdm`);
- ``unknown``: anything else (an RDM among several arrays: name its key).

Other keys may be present in every layout. A spike file of the memory task holds the spike
keys and the episode sequences, so it is a ``spikes`` file (its embeddings are computed, not
stored).
"""

from __future__ import annotations

import os
import zipfile

from raybrain.data.npz import NPZ_KEYS
from raybrain.errors import SpecError

__all__ = ["SPIKE_KEYS", "NELPY_KEYS", "npz_keys", "npz_layout"]

SPIKE_KEYS = ("spike_times", "unit_index", "n_units")
NELPY_KEYS = ("spike_times_s", "pos_time_s", "pos_x_px")


def npz_keys(path: str | os.PathLike, where: str) -> list[str]:
    """Array names of an ``.npz`` archive, from its directory (no array is read).

    Raises
    ------
    SpecError
        Missing file, a directory, or an archive that is truncated or unreadable (a zip
        keeps its directory at the end, so a cut file has none).
    """
    from raybrain.data.matfile import file_state

    file_state(path, where, "an .npz archive (numpy.savez)")
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"{where} is truncated or unreadable as an .npz archive "
                        f"({type(exc).__name__}: {text}); expected a complete file written by "
                        f"numpy.savez") from None


def npz_layout(keys: list[str]) -> str:
    """``"spikes"``, ``"memory"``, ``"nelpy"``, ``"embedding"``, ``"array"`` or
    ``"unknown"`` for an archive's key list (module docstring)."""
    present = set(keys)
    if present.issuperset(SPIKE_KEYS):
        return "spikes"
    if present.issuperset(NPZ_KEYS):
        return "memory"
    if present.issuperset(NELPY_KEYS):
        return "nelpy"
    if "session_0" in present and "loss" in present:
        return "embedding"
    if len(present) == 1:
        return "array"
    return "unknown"
