"""Spike recordings to brain embeddings for the B2M memory task (the paper's route).

Each session is one spike file (:mod:`raybrain.data.spikes` format) holding the stimulus
onsets and reaction times of its steps and, as extra keys, the episode sequences of the
memory-npz layout (``episode_lengths``, ``stimuli``, ``first_target``; see
:mod:`raybrain.data.npz`). Every session is aligned step by step (pre-stimulus window
and time-normalised response, :func:`~raybrain.data.spikes.align_steps`), filtered with the
causal exponential kernel, and all sessions are embedded together by multi-session CEBRA
(time within step as the auxiliary variable). The result is cached in exactly the
memory-npz layout, so the task reads it with :func:`~raybrain.data.npz.load_memory_npz`
and all of that loader's checks apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raybrain.data.cache import CacheEntry, cached_arrays
from raybrain.data.memory_task import MemoryTaskConfig, _validate_sequences
from raybrain.data.spikes import align_steps, causal_exp_filter, cebra_embed, load_spikes
from raybrain.errors import SpecError

__all__ = ["prepare_memory_embeddings", "check_memory_sessions"]

_SEQ = ("episode_lengths", "stimuli", "first_target")


def _check_events(where: str, present: list[str], extra: dict[str, np.ndarray],
                  event_times: np.ndarray | None, pre_s: float):
    """The memory task's needs of one session, from its small arrays: events, the episode
    sequences, one event per step, a full pre-stimulus window. Returns the sequences."""
    if event_times is None:
        raise SpecError(f"{where} has no event_times/reaction_times; the memory task aligns "
                        f"spikes to each step's stimulus (keys found: {sorted(present)})")
    missing = [k for k in _SEQ if k not in extra]
    if missing:
        raise SpecError(f"{where} lacks {missing}; expected the episode sequences "
                        f"{list(_SEQ)} beside the spikes (layout of raybrain.data.npz)")
    try:
        first, lengths, stimuli = _validate_sequences(
            extra["first_target"], extra["episode_lengths"], extra["stimuli"],
            names=("first_target", "episode_lengths", "stimuli"))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if int(lengths.sum()) != len(event_times):
        raise SpecError(f"{where}: {len(event_times)} stimulus events but the episodes have "
                        f"{int(lengths.sum())} steps; expected one event per step")
    if len(event_times) and float(event_times[0]) - pre_s < 0:
        raise SpecError(f"{where}: the first event at {float(event_times[0]):g} s leaves no "
                        f"{pre_s:g} s pre-stimulus window (data.pre_s) after time 0")
    return first, lengths, stimuli


def check_memory_sessions(files: list[str | os.PathLike], *, output_dimension: int,
                          pre_s: float = 1.0) -> list[int]:
    """What :func:`prepare_memory_embeddings` needs of its spike files, checked cheaply.

    Reads each archive's key list, the headers of ``spike_times`` and ``unit_index`` and
    the small arrays (``n_units``, events, reaction times, episode sequences), never the
    spikes themselves and never CEBRA: the keys the task needs, valid sequences, one event
    per step, a pre-stimulus window, and CEBRA's output dimension within every session's
    unit count.

    Parameters
    ----------
    files : list of paths
        One spike file per session.
    output_dimension : int
        ``data.cebra_dimension``.
    pre_s : float
        ``data.pre_s``.

    Returns
    -------
    list of int
        Each session's unit count.

    Raises
    ------
    SpecError
        One line naming the file (or ``data.cebra_dimension``).
    """
    from raybrain.data.layout import SPIKE_KEYS, npz_keys

    if not files:
        raise SpecError("data.spikes needs at least one spike file (one per session)")
    units = []
    for f in files:
        where = f"spike file '{os.fspath(f)}'"
        keys = npz_keys(f, where)
        missing = [k for k in SPIKE_KEYS if k not in keys]
        if missing:
            raise SpecError(f"{where} lacks {missing}; expected a spike file with "
                            f"{', '.join(SPIKE_KEYS)} (keys found: {sorted(keys)})")
        small = [k for k in ("n_units", "event_times", "reaction_times", *_SEQ) if k in keys]
        try:
            with np.load(f, allow_pickle=False) as npz:  # members are read one by one
                arrays = {k: npz[k] for k in small}
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SpecError(f"{where} is truncated or unreadable ({type(exc).__name__}: "
                            f"{text}); expected plain arrays (no pickled objects)") from None
        nu = np.asarray(arrays["n_units"])
        if nu.ndim != 0 or nu.dtype.kind not in "iu" or int(nu) < 1:
            raise SpecError(f"{where}: n_units must be an integer scalar >= 1, got {nu.dtype} "
                            f"of shape {nu.shape}")
        if ("event_times" in keys) != ("reaction_times" in keys):
            raise SpecError(f"{where}: event_times and reaction_times go together; found only "
                            f"one")
        events = arrays.get("event_times")
        _check_events(where, keys, {k: arrays[k] for k in _SEQ if k in arrays},
                      None if events is None else np.asarray(events, dtype=np.float64), pre_s)
        units.append(int(nu))
    smallest = int(np.argmin(units))
    if output_dimension > units[smallest]:
        raise SpecError(f"data.cebra_dimension {output_dimension} exceeds the "
                        f"{units[smallest]} units of spike file '{os.fspath(files[smallest])}'; "
                        f"CEBRA's output dimension must be <= every session's unit count")
    return units


def _session(path: str, cfg: MemoryTaskConfig, pre_s: float):
    where = f"spike file '{path}'"
    rec = load_spikes(path)
    present = ["spike_times", "unit_index", "n_units", *rec.extra] + [
        k for k in ("event_times", "reaction_times", "aux_times", "aux_values")
        if getattr(rec, k) is not None]
    first, lengths, stimuli = _check_events(where, present, rec.extra, rec.event_times, pre_s)
    steps = align_steps(rec, pre_s=pre_s, pre_bins=cfg.pre_bins, post_bins=cfg.post_bins)
    return causal_exp_filter(steps, axis=1), (first, lengths, stimuli), rec


def prepare_memory_embeddings(files: list[str | os.PathLike], cfg: MemoryTaskConfig, *,
                              output_dimension: int, max_iterations: int, batch_size: int,
                              device: str = "cpu", learning_rate: float = 3e-4,
                              pre_s: float = 1.0, seed: int = 0,
                              cache_dir: str | os.PathLike | None = None) -> CacheEntry:
    """Align, filter and CEBRA-embed every session once; cached in the memory-npz layout.

    Returns
    -------
    CacheEntry
        ``path`` is an ``.npz`` with ``embeddings`` (n_steps, pre_bins + post_bins,
        output_dimension) over all sessions in order, and the concatenated sequences.
    """
    files = [str(Path(f).expanduser().resolve()) for f in files]
    if not files:
        raise SpecError("data.spikes needs at least one spike file (one per session)")
    settings = {"pre_bins": cfg.pre_bins, "post_bins": cfg.post_bins, "pre_s": pre_s,
                "output_dimension": output_dimension, "max_iterations": max_iterations,
                "batch_size": batch_size, "device": device, "learning_rate": learning_rate,
                "seed": seed}

    def build():
        sessions, seqs, info = [], [], []
        for f in files:
            steps, seq, rec = _session(f, cfg, pre_s)
            sessions.append(steps)
            seqs.append(seq)
            r = rec.rates_hz()
            info.append({"units": rec.n_units, "steps": int(steps.shape[0]),
                         "mean_rate_hz": round(float(r.mean()), 3)})
        res = cebra_embed(sessions, output_dimension=output_dimension,
                          max_iterations=max_iterations, batch_size=batch_size, device=device,
                          learning_rate=learning_rate, seed=seed)
        arrays = {"embeddings": np.concatenate(res.embeddings).astype(np.float32),
                  "episode_lengths": np.concatenate([s[1] for s in seqs]).astype(np.int64),
                  "stimuli": np.concatenate([s[2] for s in seqs]).astype(np.int64),
                  "first_target": np.concatenate([s[0] for s in seqs]).astype(np.int64)}
        return arrays, {"sessions": info, "cebra": res.provenance}

    return cached_arrays("memory-cebra", settings, files, build, cache_dir)
