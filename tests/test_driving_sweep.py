"""A b2m-driving sweep end to end through a real local Ray and MLflow store, and the
``raybrain data`` commands (prepare, inspect, bad input: exit 2, one line, nothing cached)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from raybrain.sweep import parse_spec, run_sweep
from tests.conftest import ROOT, SHARED_DATA, WAIT_S, sweep_runs


def _spec(tmp_path, name="drive", **over):
    d = {"name": name, "task": "b2m-driving",
         "data": {"source": "synthetic", "synthetic_dir": str(tmp_path / "synth"),
                  "synthetic_frames": 96, "synthetic_sfreq": 128.0, "image_height": 32,
                  "image_width": 64, "n_train_scenes": 48, "n_val_scenes": 16,
                  "n_test_scenes": 16, "diagnostic_pairs": 12},
         "params": {"base_channels": 2, "fc_units": 16, "epochs": 2, "batch_size": 16,
                    "pair_batch_size": 16, "lr": 3e-3, "alpha": {"grid": [0.2]}},
         "search": {"metric": "test_loss_auc", "mode": "min", "primary": "alpha"},
         "arms": {"include": ["brain", "shuffled", "noise", "l2", "none"], "l2_grid": [1e-4]},
         "seeds": 2}
    d.update(over)
    return d


@pytest.mark.integration
def test_quick_driving_sweep_end_to_end(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    lines: list[str] = []
    result = run_sweep(parse_spec(_spec(tmp_path)), tracking_uri=uri, out=lines.append)
    text = "\n".join(lines)
    assert "brain data: 96 frame/EEG pairs x 64 channels from 1 session(s)" in text
    assert "read and cached" in text  # prepared once, in the driver, before any trial
    assert "session 1: 64 channels at 128 Hz" in text
    tracker, parent, children = sweep_runs(uri, "drive")
    # 1 config x (brain, shuffled, noise) x 2 seeds + (l2 + none) x 2 seeds
    assert len(children) == 10 and all(c.info.status == "FINISHED" for c in children)
    for c in children:
        hist = tracker.client.get_metric_history(c.info.run_id, "test_loss")
        assert [h.step for h in hist] == [1, 2] and all(0 < h.value < 1 for h in hist)
        assert "final_align_cka" in c.data.metrics and "final_val_loss" in c.data.metrics
        assert c.data.tags["raybrain.task"] == "b2m-driving"
    rows = result.table.test_rows()
    assert {r["comparison"] for r in rows} >= {"shuffled", "noise"}
    assert all(r["p_mannwhitney"] is not None for r in rows)
    assert "final test_loss" in text and "verdict (final_test_loss)" in text
    # one cache entry for the whole sweep; its provenance has no raw path
    cache = list((tmp_path / "synth").rglob(".raybrain-cache/*.npz"))
    assert len(cache) == 1
    # privacy: the synthetic folder is logged as a pseudonym, no brain data as artifacts
    assert parent.data.params["data.synthetic_dir"].startswith("file-")
    assert str(tmp_path) not in str(parent.data.params)
    names = [a.path for a in tracker.client.list_artifacts(parent.info.run_id)]
    assert "brain_data" not in names

    # opting in logs the prepared pairs on the parent run
    spec = _spec(tmp_path, name="drive-logged", seeds=1,
                 arms={"include": ["brain", "none"]}, params={
                     **_spec(tmp_path)["params"], "epochs": 1},
                 tracking={"log_brain_data": True})
    with pytest.warns(Warning):
        run_sweep(parse_spec(spec), tracking_uri=uri, out=lines.append)
    tracker, parent, _ = sweep_runs(uri, "drive-logged")
    logged = [a.path for a in tracker.client.list_artifacts(parent.info.run_id, "brain_data")]
    assert any(p.endswith(".npz") for p in logged) and any(p.endswith(".json") for p in logged)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "raybrain.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=WAIT_S)


def _one_error(stderr: str) -> bool:
    """Exactly one ``error:`` line (warnings may precede it), no traceback."""
    return (sum(line.startswith("error: ") for line in stderr.splitlines()) == 1
            and "Traceback" not in stderr)


@pytest.mark.unit
def test_data_prepare_then_a_bad_session_is_exit_2_and_nothing_cached(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(_spec(tmp_path)))
    out = _cli("data", "prepare", str(spec_path), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "96 frame/EEG pairs" in out.stdout and "read and cached" in out.stdout
    again = _cli("data", "prepare", str(spec_path), cwd=ROOT)
    assert "from the cache" in again.stdout

    # a real-files spec whose frames do not match the EEG's frame events
    synth = next((tmp_path / "synth").rglob("session1"))
    frames = np.load(synth / "frames.npy")
    np.save(tmp_path / "short_frames.npy", frames[:50])
    cache = tmp_path / "cache"
    bad = _spec(tmp_path, data={"source": "files", "image_height": 32, "image_width": 64,
                                "cache_dir": str(cache),
                                "sessions": [{"eeg": str(synth / "eeg.bdf"),
                                              "frames": str(tmp_path / "short_frames.npy"),
                                              "participant": "sub-03"}]})
    spec_path.write_text(yaml.safe_dump(bad))
    out = _cli("data", "prepare", str(spec_path), cwd=ROOT)
    assert out.returncode == 2
    assert _one_error(out.stderr)
    assert "96 frame events ('frame') but 50 frames" in out.stderr
    assert not list(cache.glob("*.npz")) and not list(cache.glob("*.json"))
    # the same through `raybrain sweep`: refused before Ray or MLflow start
    out = _cli("sweep", str(spec_path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
               cwd=tmp_path)
    assert out.returncode == 2 and "50 frames" in out.stderr
    assert not (tmp_path / "m.db").exists()

    # corrupt EEG file
    corrupt = tmp_path / "corrupt.bdf"
    corrupt.write_bytes(b"\x00" * 5000)
    bad["data"]["sessions"][0].update(eeg=str(corrupt), frames=str(synth / "frames.npy"))
    spec_path.write_text(yaml.safe_dump(bad))
    out = _cli("data", "prepare", str(spec_path), cwd=ROOT)
    assert out.returncode == 2 and "corrupt.bdf' could not be read" in out.stderr
    assert _one_error(out.stderr)

    # 64 channels for an 8-d latent, without a projection: both numbers named
    latent = _spec(tmp_path, params={**_spec(tmp_path)["params"], "latent_dim": 8})
    spec_path.write_text(yaml.safe_dump(latent))
    out = _cli("sweep", str(spec_path), "--dry-run", cwd=ROOT)
    assert out.returncode == 2 and "64 channels but params.latent_dim is 8" in out.stderr


@pytest.mark.unit
def test_data_inspect_real_and_written_files(tmp_path):
    np.save(tmp_path / "rdm.npy", np.array([[0.0, 1.0], [1.0, 0.0]]))
    out = _cli("data", "inspect", str(tmp_path / "rdm.npy"), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "RDM stack (2, 2) float64, validated" in out.stdout
    asym = tmp_path / "asym.npy"
    np.save(asym, np.array([[0.0, 1.0], [2.0, 0.0]]))
    bad = _cli("data", "inspect", str(asym), cwd=ROOT)
    assert bad.returncode == 2 and "must be symmetric" in bad.stderr
    assert _one_error(bad.stderr)
    vhdr, mat = SHARED_DATA / "eeg/mne_testdata/test.vhdr", SHARED_DATA / "things/RDM48_triplet.mat"
    if not (vhdr.exists() and mat.exists()):
        pytest.skip("shared data files are absent")
    eeg = _cli("data", "inspect", str(vhdr), cwd=ROOT)
    assert "32 channels (26 eeg, 6 misc) at 1000 Hz, 7.9 s" in eeg.stdout
    assert "Stimulus/S253 x2" in eeg.stdout
    rdm = _cli("data", "inspect", str(mat), "--key", "RDM48_triplet", cwd=ROOT)
    assert "RDM stack (48, 48)" in rdm.stdout
