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
    needle = r"short\.npz': \d+ stimulus events but the episodes have \d+ steps"
    with pytest.raises(SpecError, match=needle):  # at validation already
        task.check_data(data, {"embed_dim": [3]})
    with pytest.raises(SpecError, match=needle):  # and preparation refuses it too
        task.prepare(data)
    # a preparation that raised leaves nothing: no entry, no lock, no temporary file
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []
    with pytest.raises(SpecError, match=r"embed_dim 7 differs from data.cebra_dimension 3"):
        task.check_data(data, {"embed_dim": [7]})
    with pytest.raises(Exception, match="needs data.spikes"):
        task.parse_data({"source": "spikes"})


def _without(path, *keys):
    """A copy of a spike file without some keys (named after the first)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k not in keys}
    out = path.with_name(f"{path.stem}-no-{keys[0]}.npz")
    np.savez(out, **arrays)
    return out


def test_validation_reads_key_lists_and_small_arrays_only(tmp_path, monkeypatch):
    """check_data refuses what preparation would refuse for a reason in the file's keys or
    small arrays, and reads neither spike_times nor unit_index, nor runs CEBRA."""
    import raybrain.data.memory_spikes as ms

    task = tasks.get("b2m-memory")
    good, _ = _session(tmp_path / "ses.npz", 4, 1)
    read: list[str] = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        read.append(key)
        return real_getitem(self, key)

    def never(*a, **k):
        raise AssertionError("validation ran the heavy preparation")

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    monkeypatch.setattr(ms, "cebra_embed", never)
    monkeypatch.setattr(ms, "align_steps", never)
    task.check_data(task.parse_data(_data(tmp_path, [good])), {"embed_dim": [3]})
    assert read and not {"spike_times", "unit_index"} & set(read)

    cases = [
        (_without(good, "event_times", "reaction_times"),
         r"no-event_times\.npz' has no event_times/reaction_times; the memory task aligns "
         r"spikes"),
        (_without(good, "stimuli"), r"no-stimuli\.npz' lacks \['stimuli'\]; expected the "
                                    r"episode sequences"),
        (_without(good, "n_units"), r"no-n_units\.npz' lacks \['n_units'\]; expected a spike "
                                    r"file"),
    ]
    for path, needle in cases:
        with pytest.raises(SpecError, match=needle) as err:
            task.check_data(task.parse_data(_data(tmp_path, [path])), {"embed_dim": [3]})
        assert "\n" not in str(err.value)
    # CEBRA's output dimension above the units of the smallest session
    small, _ = _session(tmp_path / "small.npz", 2, 2)
    with pytest.raises(SpecError, match=r"data.cebra_dimension 3 exceeds the 2 units of spike "
                                        r"file '.*small\.npz'"):
        task.check_data(task.parse_data(_data(tmp_path, [good, small])), {"embed_dim": [3]})
    # a pre-stimulus window before time 0
    early = task.parse_data({**_data(tmp_path, [good]), "pre_s": 2.0})
    with pytest.raises(SpecError, match=r"first event at 1\.5 s leaves no 2 s pre-stimulus"):
        task.check_data(early, {"embed_dim": [3]})
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SpecError, match=r"cut\.npz' is truncated or unreadable"):
        task.check_data(task.parse_data(_data(tmp_path, [cut])), {"embed_dim": [3]})
    assert not (tmp_path / "cache").exists()  # validation prepared nothing


def test_data_prepare_refuses_at_validation_in_one_line(tmp_path, capsys, write_spec,
                                                        tiny_spec_dict):
    """``raybrain data prepare`` on a spec whose spike file lacks the events: refused by the
    spec's validation, one line, exit 2, nothing prepared."""
    from raybrain.cli import main

    good, _ = _session(tmp_path / "ses.npz", 4, 1)
    d = {**tiny_spec_dict, "data": _data(tmp_path, [_without(good, "event_times",
                                                             "reaction_times")])}
    d["params"] = {**d["params"], "embed_dim": 3}
    code = main(["data", "prepare", str(write_spec(d))])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert "has no event_times/reaction_times" in lines[0]
    assert not (tmp_path / "cache").exists()
