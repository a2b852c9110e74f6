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

__all__ = ["prepare_memory_embeddings"]

_SEQ = ("episode_lengths", "stimuli", "first_target")


def _session(path: str, cfg: MemoryTaskConfig, pre_s: float):
    where = f"spike file '{path}'"
    rec = load_spikes(path)
    if rec.event_times is None:
        raise SpecError(f"{where} has no event_times/reaction_times; the memory task aligns "
                        f"spikes to each step's stimulus")
    missing = [k for k in _SEQ if k not in rec.extra]
    if missing:
        raise SpecError(f"{where} lacks {missing}; expected the episode sequences "
                        f"{list(_SEQ)} beside the spikes (layout of raybrain.data.npz)")
    try:
        first, lengths, stimuli = _validate_sequences(
            rec.extra["first_target"], rec.extra["episode_lengths"], rec.extra["stimuli"],
            names=("first_target", "episode_lengths", "stimuli"))
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    if int(lengths.sum()) != len(rec.event_times):
        raise SpecError(f"{where}: {len(rec.event_times)} stimulus events but the episodes have "
                        f"{int(lengths.sum())} steps; expected one event per step")
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
