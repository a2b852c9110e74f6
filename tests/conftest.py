"""Shared fixtures: a tiny spec, a session-scoped local Ray, temp MLflow stores."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

# One intra-op thread for torch (OpenMP) in tests and the processes they start, unless the
# environment says otherwise: on a loaded 2-core machine two spinning OpenMP threads per
# process thrash (CEBRA, 20 iterations at load ~9: 69 s with 2 threads, 19 s with 1; the real
# rat fit took 1020 s against 24 s idle). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
# the shared real data sit beside the project's root; RAYBRAIN_SHARED_DATA points elsewhere
# (e.g. from a git worktree, whose parent folder holds no shared/)
SHARED_DATA = Path(os.environ.get("RAYBRAIN_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: How long a test waits for a condition (a process answering, a sweep reaching a state, a
#: subprocess finishing) before it fails. Generous: a loaded 2-core CI machine runs several
#: times slower than an idle one, and a test stops waiting as soon as its condition holds,
#: so a passing test never pays for it. RAYBRAIN_TEST_WAIT_S overrides it.
WAIT_S = float(os.environ.get("RAYBRAIN_TEST_WAIT_S", 600))

TINY = {
    "name": "tiny",
    "task": "b2m-memory",
    "data": {"n_train_episodes": 8, "n_val_episodes": 10, "n_test_episodes": 12,
             "pre_bins": 1, "post_bins": 2, "context_bins": 1, "min_steps": 2, "max_steps": 4},
    "params": {"hidden": 8, "epochs": 2, "batch_size": 4, "lr": 0.01, "transfer": "latent",
               "alpha": {"grid": [0.1, 0.2]}},
    "arms": {"include": ["brain", "shuffled", "noise", "l2", "none"], "l2_grid": [1e-4, 1e-3]},
    "seeds": 2,
}


def sweep_runs(uri: str, name: str):
    """(tracker, parent run or None, child runs) of sweep ``name`` in experiment raybrain."""
    from raybrain.sweep.tracking import Tracker

    tracker = Tracker(uri, "raybrain")
    parent = tracker.find_parent(name)
    if parent is None:
        return tracker, None, []
    tracker.parent_id = parent.info.run_id
    return tracker, parent, tracker.child_runs()


@pytest.fixture
def tiny_spec_dict():
    return copy.deepcopy(TINY)


@pytest.fixture
def write_spec(tmp_path):
    def _write(d, name="spec.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(d))
        return path
    return _write


@pytest.fixture(autouse=True)
def _pseudonym_key(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYBRAIN_PSEUDONYM_KEY_FILE", str(tmp_path / "key"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it."""
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # address="local": always a new instance, never a cluster another process started
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
