"""Time-resolved RDMs from an EEG/MEG recording, prepared once and cached.

:func:`prepare_epoch_rdms` reads a recording (:mod:`raybrain.data.eeg`), cleans it, cuts
epochs around the events of a stimulus set and computes, per time point, the RDM between
the stimulus conditions: ``"correlation"`` (1 - Pearson r between the conditions' mean
responses over channels) or ``"decoding"`` (cross-validated pairwise decoding accuracy
minus chance, :func:`~raybrain.data.rdm.decoding_rdm`). The result is cached
(:mod:`raybrain.data.cache`) keyed by every setting and the recording's fingerprint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.data.cache import cached_arrays
from raybrain.data.eeg import EEGPrep, epochs_data, event_times, preprocess, read_raw, recording_summary
from raybrain.data.rdm import validate_rdm
from raybrain.data.rdm_compute import correlation_rdm, decoding_rdm
from raybrain.errors import SpecError

__all__ = ["EpochRDMs", "prepare_epoch_rdms"]


@dataclass
class EpochRDMs:
    """``rdms`` (n_times, n_conditions, n_conditions), ``times`` (n_times,) seconds from the
    onset, ``conditions`` (n_conditions,), the epoch count per condition, provenance."""

    rdms: np.ndarray
    times: np.ndarray
    conditions: np.ndarray
    counts: np.ndarray
    provenance: dict
    computed: bool


def prepare_epoch_rdms(path: str | os.PathLike, *, events: list[str | int],
                       labels: list[int] | np.ndarray | None = None, tmin: float = -0.1,
                       tmax: float = 0.5, method: str = "correlation",
                       prep: EEGPrep | None = None, n_folds: int = 5, seed: int = 0,
                       cache_dir: str | os.PathLike | None = None) -> EpochRDMs:
    """Epoch a recording around a stimulus set and return its time-resolved RDMs.

    Parameters
    ----------
    events : list of str or int
        Event names/codes, one per condition (``labels`` None), or a single event whose
        occurrences ``labels`` assigns to conditions (one label per occurrence).
    method : ``"correlation"`` or ``"decoding"``
    """
    if method not in ("correlation", "decoding"):
        raise SpecError(f"RDM method must be 'correlation' or 'decoding', got {method!r}")
    if not events:
        raise SpecError("epoch RDMs need at least one event name or code")
    prep = prep or EEGPrep()
    p = Path(path)
    settings = {"events": [str(e) for e in events], "labels": None if labels is None
                else np.asarray(labels).tolist(), "tmin": tmin, "tmax": tmax, "method": method,
                "prep": prep.settings(), "n_folds": n_folds, "seed": seed}

    def build():
        where = f"EEG/MEG file '{p}'"
        raw = read_raw(p)
        summary = recording_summary(raw)
        if labels is None:
            per = [event_times(raw, e, where) for e in events]
            times = np.concatenate(per)
            lab = np.concatenate([np.full(len(t), i) for i, t in enumerate(per)])
        else:
            if len(events) != 1:
                raise SpecError(f"{where}: labels assign the occurrences of one event to "
                                f"conditions; got {len(events)} events")
            times = event_times(raw, events[0], where)
            lab = np.asarray(labels)
            if len(lab) != len(times):
                raise SpecError(f"{where}: {len(times)} events {events[0]!r} but {len(lab)} "
                                f"labels; expected one label per event")
        preprocess(raw, prep, where)
        data, kept, ep_times = epochs_data(raw, times, lab, tmin, tmax, where=where)
        conds, counts = np.unique(kept, return_counts=True)
        if len(conds) < 2:
            raise SpecError(f"{where}: an RDM needs at least 2 conditions with epochs, got "
                            f"{conds.tolist()}")
        if method == "correlation":
            means = np.stack([data[kept == c].mean(0) for c in conds])  # (k, ch, t)
            rdms = correlation_rdm(means.transpose(2, 0, 1))
        else:
            rdms, _ = decoding_rdm(data, kept, n_folds=n_folds, rng=np.random.default_rng(seed))
        validate_rdm(rdms, where)
        arrays = {"rdms": rdms.astype(np.float32), "times": ep_times, "conditions": conds,
                  "counts": counts}
        return arrays, {"recording": summary, "epochs": list(data.shape)}

    entry = cached_arrays("epoch-rdms", settings, [p], build, cache_dir)
    a = entry.arrays
    return EpochRDMs(a["rdms"], a["times"], a["conditions"], a["counts"], entry.provenance,
                     entry.computed)
