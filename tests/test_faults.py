"""Faults, for real: an MLflow server that goes away mid-sweep (and a driver killed -9 while
it is away), resumed with ``--resume``; what each fault test saw is written to
``tests/artifacts/faults/`` (planned, finished, duplicated and lost runs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raybrain.sweep import parse_spec, run_sweep
from raybrain.sweep.tracking import Tracker
from tests.conftest import WAIT_S
from tests.conftest import sweep_runs as _children
from raybrain.ui import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).parent / "artifacts" / "faults"
SENTINEL = "raybrain-test-password-5d1c"


def fault_outcome(name: str, planned: int, runs, extra: dict | None = None) -> dict:
    """Count planned, finished, duplicated and lost runs; keep the figures for the record."""
    keys = [r.data.tags["raybrain.run_key"] for r in runs]
    outcome = {"planned": planned, "child_runs": len(runs),
               "finished": sum(r.info.status == "FINISHED" for r in runs),
               "duplicated": len(keys) - len(set(keys)),
               "lost": planned - len(set(keys)), **(extra or {})}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(outcome, indent=1))
    return outcome


def _wait_for(predicate, timeout, what, log: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: " + log.read_text()[-3000:])


def _logged_epochs(uri, name) -> int:
    try:
        _, _, runs = _children(uri, name)
    except Exception:
        return 0
    return sum(int(r.data.tags.get("raybrain.last_epoch", 0)) for r in runs)


def _listening(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == "LISTEN" and c.laddr.port == port}


def test_mlflow_down_mid_sweep_and_driver_killed_while_down(ray_session, tmp_path, write_spec,
                                                            tiny_spec_dict, monkeypatch):
    """MLflow stops mid-sweep: training goes on, writes wait and land when it returns.
    It stops again and the driver is killed -9 while it is down; after MLflow is back,
    ``--resume`` continues the same Optuna search and MLflow ends with exactly one
    finished child per planned run, every epoch once, under the original parent."""
    epochs = 100  # long enough that both outages fall while it trains
    d = {**tiny_spec_dict, "name": "mlflow-down",
         "data": {**tiny_spec_dict["data"], "n_train_episodes": 48},
         "params": {**tiny_spec_dict["params"], "epochs": epochs,
                    "alpha": {"uniform": [0.05, 0.5]}},
         "search": {"algorithm": "optuna", "num_configs": 2, "max_concurrent": 1},
         "confirm": {"configs": 0},
         "arms": {"include": ["brain", "none"]},
         # writes every 0.5 s, so both outages meet writes while the sweep trains
         "tracking": {"retry_s": 2, "flush_s": 0.5},
         "storage": {"path": str(tmp_path / "results")}}
    path = write_spec(d)
    backend = f"sqlite:///{tmp_path}/server.db"
    art = tmp_path / "mlartifacts"
    Tracker(backend, "raybrain")  # the server's database, created once
    server = MlflowServer(backend, artifacts_destination=art,
                          startup_timeout=WAIT_S).start()
    port = server.port
    assert _listening(port) == {"127.0.0.1"}  # raybrain's MLflow server: loopback only
    uri = server.url
    log = tmp_path / "driver.log"
    env = {**os.environ, "MLFLOW_TRACKING_PASSWORD": SENTINEL}
    proc = subprocess.Popen([sys.executable, "-m", "raybrain.cli", "sweep", str(path),
                             "--tracking-uri", uri, "--num-cpus", "2"], cwd=tmp_path, env=env,
                            start_new_session=True, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _logged_epochs(uri, "mlflow-down") >= 6, WAIT_S, "first epochs", log)
        server.stop()  # 1. MLflow goes away while the driver lives
        _wait_for(lambda: "cannot be written" in log.read_text(), WAIT_S, "the down line", log)
        time.sleep(3)
        server = MlflowServer(backend, port=port, artifacts_destination=art,
                              startup_timeout=WAIT_S).start()
        _wait_for(lambda: "MLflow is back" in log.read_text(), WAIT_S, "the back line", log)
        before = _logged_epochs(uri, "mlflow-down")
        server.stop()  # 2. away again, and the driver dies meanwhile
        _wait_for(lambda: log.read_text().count("cannot be written") >= 2, WAIT_S,
                  "the second down line", log)
        time.sleep(2)
        assert proc.poll() is None, "the sweep ended before the driver could be killed: " + \
            log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_S)
        server.stop()
    server = MlflowServer(backend, port=port, artifacts_destination=art,
                          startup_timeout=WAIT_S).start()
    try:
        _, parent0, runs0 = _children(uri, "mlflow-down")
        assert any(r.info.status == "RUNNING" for r in runs0)
        at_kill = _logged_epochs(uri, "mlflow-down")
        printed: list[str] = []
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SENTINEL)
        run_sweep(parse_spec(d), tracking_uri=uri, resume=True, out=printed.append)
        tracker, parent, runs = _children(uri, "mlflow-down")
        assert parent.info.run_id == parent0.info.run_id  # the original parent, reused
        assert parent.info.status == "FINISHED"
        # the search went on: 2 Optuna configs in all, not 2 more after the resume
        brain_configs = {r.data.tags["raybrain.config_id"] for r in runs
                         if r.data.tags["raybrain.arm"] == "brain"}
        assert len(brain_configs) == 2
        planned = 2 * 2 + 2  # brain x 2 configs x 2 seeds + the none baseline x 2 seeds
        outcome = fault_outcome("mlflow_down_and_driver_killed", planned, runs,
                                {"epochs_planned": planned * epochs,
                                 "epochs_in_mlflow_before_second_outage": before,
                                 "epochs_in_mlflow_after_kill": at_kill})
        assert outcome["child_runs"] == outcome["finished"] == planned, outcome
        assert outcome["duplicated"] == 0 and outcome["lost"] == 0, outcome
        for r in runs:
            hist = tracker.client.get_metric_history(r.info.run_id, "test_accuracy")
            assert sorted(m.step for m in hist) == list(range(1, epochs + 1))
        text = "\n".join(printed)
        assert "resuming search stage" in text
        assert at_kill < planned * epochs  # the kill left epochs that only disk and checkpoints had
    finally:
        server.stop()
    # credentials come from the environment only: the password is nowhere raybrain writes
    leaks = [str(p) for p in [tmp_path / "server.db", log, *art.rglob("*"),
                              *(tmp_path / "results").rglob("*.json")]
             if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert not leaks and SENTINEL not in "\n".join(printed)


def test_unreachable_mlflow_at_start_is_one_line_before_any_trial(tmp_path, write_spec,
                                                                  tiny_spec_dict, capsys,
                                                                  monkeypatch):
    import ray

    from raybrain.cli import main
    from raybrain.ui import free_port

    started = []

    def no_ray(*args, **kwargs):  # the refusal comes before Ray (and so any trial) starts
        started.append(kwargs)
        raise AssertionError("Ray was started although MLflow is unreachable")

    monkeypatch.setattr(ray, "init", no_ray)
    d = {**tiny_spec_dict, "storage": {"path": str(tmp_path / "results")}}
    path = write_spec(d)
    code = main(["sweep", str(path), "--tracking-uri", f"http://127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1, err
    assert "unreachable" in lines[0] and "no trial was started" in lines[0]
    assert started == []  # a condition, not a wall-clock bound that a loaded machine breaks
    assert not (tmp_path / "results").exists()  # nothing half-written


def test_credentials_in_the_tracking_uri_are_refused(tmp_path, write_spec, tiny_spec_dict,
                                                     capsys):
    from raybrain.cli import main

    path = write_spec({**tiny_spec_dict, "storage": {"path": str(tmp_path / "results")}})
    code = main(["sweep", str(path), "--tracking-uri", f"http://alice:{SENTINEL}@127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert code == 2 and "MLFLOW_TRACKING_PASSWORD" in err
    assert SENTINEL not in err  # not even in the refusal
    assert not (tmp_path / "results").exists()


def test_writes_wait_while_mlflow_is_down_and_land_once_it_is_back(tmp_path):
    """The driver-side writer in isolation: a write that fails goes to the backlog (one
    line said), later writes queue behind it in order, and draining after the server
    returns writes each record once."""
    import json as _json

    from raybrain.sweep.arms import RunSpec
    from raybrain.sweep.callbacks import MlflowWriter
    from raybrain.sweep.records import RECORDS_KEY

    backend = f"sqlite:///{tmp_path}/server.db"
    Tracker(backend, "raybrain")
    server = MlflowServer(backend, artifacts_destination=tmp_path / "art",
                          startup_timeout=WAIT_S).start()
    port = server.port
    try:
        tracker = Tracker(server.url, "raybrain")
        tracker.open_parent("down", "h", {"task": "b2m-memory"})
        lines: list[str] = []
        # flush_s 0: every epoch is its own write, so the outage meets two of them
        writer = MlflowWriter(tracker, out=lines.append, retry_s=0.2, flush_s=0.0)
        spec = RunSpec("down", "b2m-memory", "brain", 0, {"alpha": 0.1}, "real", "c1", "b1")

        def result(epoch, done=False):
            rec = {"key": spec.key, "run": spec.to_dict(), "epoch": epoch, "done": done,
                   "metrics": {"test_accuracy": epoch / 10, "epoch": epoch}}
            if done:
                rec["summary"] = {"final_test_accuracy": epoch / 10}
            return {RECORDS_KEY: _json.dumps([rec])}

        writer.on_trial_result(0, [], None, result(1))
        server.stop()
        writer.on_trial_result(0, [], None, result(2))
        writer.on_trial_result(0, [], None, result(3, done=True))
        assert len(writer.backlog) == 2 and sum("cannot be written" in ln for ln in lines) == 1
        assert writer.drain(1.0) is False  # still down: nothing lost, nothing written
        server = MlflowServer(backend, port=port, artifacts_destination=tmp_path / "art",
                              startup_timeout=WAIT_S).start()
        assert writer.drain(WAIT_S) is True and writer.backlog == []  # returns once drained
        assert any("MLflow is back" in ln for ln in lines)
        (run,) = tracker.child_runs()
        assert run.info.status == "FINISHED"
        steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "test_accuracy")]
        assert sorted(steps) == [1, 2, 3]
    finally:
        server.stop()
