"""The memory task's spike route: spike sessions -> B2M alignment and filter -> one
multi-session CEBRA embedding, prepared once and cached in the memory-npz layout."""

from __future__ import annotations

import numpy as np
import pytest

import raybrain.tasks as tasks
from raybrain.data import MemoryTaskConfig, simulate_episodes
from raybrain.data.spikes import SpikeRecording, save_spikes
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit

CFG = {"pre_bins": 2, "post_bins": 3, "context_bins": 1, "min_steps": 2, "max_steps": 4}


def _session(path, n_units, seed, n_episodes=8, drop_event=False):
    """Poisson units whose rates follow the stimulus of each step."""
    rng = np.random.default_rng(seed)
    cfg = MemoryTaskConfig(**{k: v for k, v in CFG.items()}, response_bins=1)
    eps = simulate_episodes(n_episodes, cfg, rng)
    stimuli = eps.stimuli[eps.step_mask]
    n = len(stimuli)
    events = 1.5 + 2.0 * np.arange(n)
    rts = rng.uniform(0.4, 0.9, n)
    tuning = rng.uniform(1, 20, (3, n_units))
    times, units = [], []
    for k in range(n):
        for u in range(n_units):
            for lo, hi, rate in ((events[k] - 1.0, events[k], 3.0),
                                 (events[k], events[k] + rts[k], tuning[stimuli[k], u])):
                m = rng.poisson(rate * (hi - lo))
                times.append(rng.uniform(lo, hi, m))
                units.append(np.full(m, u))
    t, u = np.concatenate(times), np.concatenate(units)
    order = np.argsort(t)
    if drop_event:
        events, rts = events[:-1], rts[:-1]
    rec = SpikeRecording(t[order], u[order], n_units, event_times=events, reaction_times=rts,
                         extra={"episode_lengths": eps.lengths, "stimuli": stimuli,
                                "first_target": eps.first_target})
    return save_spikes(path, rec), n


def _data(tmp_path, files):
    return {"source": "spikes", "spikes": [str(f) for f in files], "cebra_dimension": 3,
            "cebra_iterations": 30, "cebra_batch_size": 64, "n_heldout_episodes": 1,
            "heldout_fraction": 0.25, "n_val_episodes": 5, "n_test_episodes": 5,
            "diagnostic_bins": 20, "cache_dir": str(tmp_path / "cache"), **CFG}


def test_spike_sessions_become_cached_cebra_embeddings(tmp_path):
    task = tasks.get("b2m-memory")
    f1, n1 = _session(tmp_path / "ses1.npz", 8, 1)
    f2, n2 = _session(tmp_path / "ses2.npz", 6, 2)
    data = task.parse_data(_data(tmp_path, [f1, f2]))
    task.check_data(data, {"embed_dim": [3]})
    trial_data, lines, files = task.prepare(data)
    assert "CEBRA embeddings" in lines[0] and "embedded and cached" in lines[0]
    assert lines[1].startswith("  session 1: 8 units") and lines[2].startswith("  session 2: 6 units")
    assert trial_data["spikes"][0].startswith("/") and files[0].endswith(".npz")
    d = task.load_data(task.parse_data(trial_data), data_seed=0)
    steps = d.brain_steps.shape[0] + int(d.heldout.episodes.n_steps)
    assert steps == n1 + n2 and d.brain_steps.shape[1:] == (5, 3)
    assert np.isfinite(d.brain_steps).all()
    again, lines2, _ = task.prepare(data)
    assert "from the cache" in lines2[0]
    run = task.build(d, {"hidden": 8, "embed_dim": 3, "epochs": 1, "alpha": 0.2,
                         "transfer": "latent"}, "real", seed=0)
    metrics = run.train_epoch()
    assert np.isfinite(metrics["transfer_loss"])


def test_spike_route_refuses_bad_sessions(tmp_path):
    task = tasks.get("b2m-memory")
    bad, _ = _session(tmp_path / "short.npz", 4, 3, drop_event=True)
    data = task.parse_data(_data(tmp_path, [bad]))
    with pytest.raises(SpecError, match=r"short\.npz': \d+ stimulus events but the episodes "
                                        r"have \d+ steps"):
        task.prepare(data)
    assert not list((tmp_path / "cache").glob("*.npz"))  # nothing cached
    with pytest.raises(SpecError, match=r"embed_dim 7 differs from data.cebra_dimension 3"):
        task.check_data(data, {"embed_dim": [7]})
    with pytest.raises(Exception, match="needs data.spikes"):
        task.parse_data({"source": "spikes"})
