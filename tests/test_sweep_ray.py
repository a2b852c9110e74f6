"""End to end through a real local Ray, real Optuna and a real MLflow SQLite store."""

from __future__ import annotations

import json

import pytest

from raybrain.errors import SpecError
from raybrain.sweep import parse_spec, run_sweep
from raybrain.sweep.tracking import Tracker

pytestmark = pytest.mark.integration


def _children(uri, name):
    tracker = Tracker(uri, "raybrain")
    parent = tracker.find_parent(name)
    tracker.parent_id = parent.info.run_id
    return tracker, parent, tracker.child_runs()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_grid_sweep_end_to_end_and_idempotent_rerun(ray_session, in_tmp, tiny_spec_dict):
    spec = parse_spec(tiny_spec_dict)
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    lines: list[str] = []
    result = run_sweep(spec, tracking_uri=uri, out=lines.append)
    tracker, parent, children = _children(uri, "tiny")
    # 2 configs x (brain, shuffled, noise) x 2 seeds + baselines once: (2 l2 + 1 none) x 2 seeds
    assert len(children) == 2 * 3 * 2 + 3 * 2
    assert parent.info.run_id == result.parent_run_id
    keys = [c.data.tags["raybrain.run_key"] for c in children]
    assert len(set(keys)) == len(keys)
    for c in children:
        t = c.data.tags
        assert t["mlflow.parentRunId"] == parent.info.run_id
        assert t["raybrain.task"] == "b2m-memory" and t["raybrain.arm"] in (
            "brain", "shuffled", "noise", "l2", "none")
        assert t["raybrain.seed"] in ("0", "1") and t["raybrain.config_id"]
        assert c.info.status == "FINISHED"
        hist = tracker.client.get_metric_history(c.info.run_id, "test_accuracy")
        assert sorted(m.step for m in hist) == [1, 2]
        for m in ("task_loss", "transfer_loss", "test_accuracy_auc"):
            assert [h.step for h in tracker.client.get_metric_history(c.info.run_id, m)] == [1, 2]
        assert "final_test_accuracy" in c.data.metrics
    by_arm = {}
    for c in children:
        by_arm.setdefault(c.data.tags["raybrain.arm"], []).append(c)
    assert len(by_arm["l2"]) == 4 and len(by_arm["none"]) == 2
    assert {c.data.params["alpha"] for c in by_arm["brain"]} == {"0.1", "0.2"}
    # the verdict: printed, and logged as CSV on the parent
    text = "\n".join(lines)
    assert "config alpha=0.1" in text and "config alpha=0.2" in text and "MW p" in text
    assert any(line.startswith("execution: in-process") for line in lines)
    rows = result.table.test_rows()
    assert {r["comparison"] for r in rows} >= {"shuffled", "noise"}
    assert any(r["comparison"].startswith("l2[weight_decay=") for r in rows)
    assert all(r["p_mannwhitney"] is not None and 0 < r["p_mannwhitney"] <= 1 for r in rows)
    csv_text = tracker.client.download_artifacts(parent.info.run_id, "verdict.csv", str(in_tmp))
    assert "p_mannwhitney" in open(csv_text).read()
    assert parent.data.tags["raybrain.spec_hash"] == spec.spec_hash()

    # running the same sweep again resumes a finished experiment: nothing is re-run
    run_sweep(spec, tracking_uri=uri, out=lines.append)
    _, _, again = _children(uri, "tiny")
    assert sorted(c.info.run_id for c in again) == sorted(c.info.run_id for c in children)

    # the same name with a changed spec is refused before anything runs
    changed = parse_spec({**tiny_spec_dict, "seeds": 3})
    with pytest.raises(SpecError, match="changed spec"):
        run_sweep(changed, tracking_uri=uri, out=lines.append)


def test_optuna_sweep_shares_baselines(ray_session, in_tmp, tiny_spec_dict):
    d = {**tiny_spec_dict, "name": "tiny-optuna",
         "params": {**tiny_spec_dict["params"], "alpha": {"uniform": [0.05, 0.5]},
                    "temperature": {"loguniform": [0.05, 1.0]}},
         "search": {"algorithm": "optuna", "num_configs": 3, "objective": "margin_shuffled",
                    "scheduler": "asha"},
         "arms": {"include": ["brain", "shuffled", "none"]}}
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    result = run_sweep(parse_spec(d), tracking_uri=uri, out=lambda s: None)
    _, parent, children = _children(uri, "tiny-optuna")
    search = [c for c in children if c.data.tags["raybrain.stage"] == "search"]
    confirm = [c for c in children if c.data.tags["raybrain.stage"] == "confirm"]
    brain = [c for c in search if c.data.tags["raybrain.arm"] == "brain"]
    none = [c for c in search if c.data.tags["raybrain.arm"] == "none"]
    assert len({c.data.tags["raybrain.config_id"] for c in brain}) == 3
    assert len(brain) == 3 * 2 and len(none) == 2  # the baseline runs once, not per config
    alphas = {float(c.data.params["alpha"]) for c in brain}
    assert len(alphas) == 3 and all(0.05 <= a <= 0.5 for a in alphas)
    # ASHA may stop configs early: their runs are closed as KILLED
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert all(c.data.tags.get("raybrain.stopped_early") == "scheduler"
               for c in brain if c.info.status == "KILLED")
    # the confirmation stage re-ran the best complete config, every arm, on fresh seeds
    assert len(result.chosen) == 1
    chosen_cid = {c.data.tags["raybrain.config_id"] for c in confirm
                  if c.data.tags["raybrain.arm"] == "brain"}
    assert len(chosen_cid) == 1
    finished = [c for c in brain if c.info.status == "FINISHED"]
    objective = {}
    for c in finished:
        objective.setdefault(c.data.tags["raybrain.config_id"], []).append(
            c.data.metrics["final_test_accuracy_auc"] - next(
                s.data.metrics["final_test_accuracy_auc"] for s in search
                if s.data.tags["raybrain.arm"] == "shuffled"
                and s.data.tags["raybrain.config_id"] == c.data.tags["raybrain.config_id"]
                and s.data.tags["raybrain.seed"] == c.data.tags["raybrain.seed"]))
    means = {k: sum(v) / len(v) for k, v in objective.items()}
    best = {k for k, m in means.items() if m == max(means.values())}
    assert chosen_cid <= best  # a best margin over shuffled among complete configs
    assert sorted(c.data.tags["raybrain.seed"] for c in confirm) == ["2", "2", "2", "3", "3", "3"]
    assert {c.info.status for c in confirm} == {"FINISHED"}
    # the verdict is computed on the confirmation runs only
    assert result.table.stage == "confirm"
    assert len(result.table.test_rows()) == 1 * 2  # vs shuffled: final, area
    assert parent.data.tags["raybrain.confirmed_configs"]


def test_one_run_through_a_torch_trainer(ray_session, in_tmp, tiny_spec_dict):
    d = {**tiny_spec_dict, "name": "tiny-train",
         "params": {**tiny_spec_dict["params"], "alpha": {"grid": [0.2]}},
         "arms": {"include": ["brain"]}, "seeds": 1,
         "resources": {"num_workers": 2, "cpus_per_run": 0.5}}
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    lines: list[str] = []
    with pytest.warns(UserWarning, match="seed"):
        run_sweep(parse_spec(d), tracking_uri=uri, out=lines.append)
    tracker, parent, children = _children(uri, "tiny-train")
    assert parent.data.tags["raybrain.execution"].startswith("ray-train TorchTrainer")
    assert len(children) == 1
    (child,) = children
    hist = tracker.client.get_metric_history(child.info.run_id, "test_accuracy")
    assert sorted(m.step for m in hist) == [1, 2]
    assert child.info.status == "FINISHED"
    # Ray Train kept the run's checkpoint under the sweep's storage
    assert list((in_tmp / "raybrain_results").glob("run-tiny-train_*"))
    assert json.loads((in_tmp / "raybrain_results" / "tiny-train" / "raybrain_spec.json")
                      .read_text())["spec_hash"] == parse_spec(d).spec_hash()


def test_killed_driver_resumes_without_duplicating_runs(ray_session, in_tmp, tiny_spec_dict,
                                                        write_spec):
    """SIGKILL the sweep's driver mid-sweep, run the same command again: it finishes the
    sweep from Tune's state and checkpoints, with one child run per (config, arm, seed)
    and each epoch logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    d = {**tiny_spec_dict, "name": "tiny-resume",
         "params": {**tiny_spec_dict["params"], "epochs": 40, "alpha": {"grid": [0.1, 0.2]}},
         "arms": {"include": ["brain", "none"]},
         # each epoch reaches MLflow at once, so the kill finds runs open there
         "tracking": {"flush_s": 0}}
    path = write_spec(d)
    uri = f"sqlite:///{in_tmp}/mlflow.db"
    proc = subprocess.Popen([sys.executable, "-m", "raybrain.cli", "sweep", str(path),
                             "--tracking-uri", uri, "--num-cpus", "2"],
                            cwd=in_tmp, start_new_session=True,
                            stdout=open(in_tmp / "driver.out", "w"),
                            stderr=open(in_tmp / "driver.err", "w"))
    try:
        # wait until some epochs are in MLflow, then kill the driver and its local Ray
        from tests.conftest import WAIT_S

        deadline = time.time() + WAIT_S
        logged = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
            # the driver creates and migrates the store first; a second process opening it
            # mid-migration races alembic ("table _alembic_tmp_... already exists"), so read
            # it only once the driver says it has started its trials
            if "execution:" not in (in_tmp / "driver.out").read_text():
                continue
            try:
                tracker = Tracker(uri, "raybrain")
                parent = tracker.find_parent("tiny-resume")
                if parent is None:
                    continue
                tracker.parent_id = parent.info.run_id
                runs = tracker.child_runs()
                # a run still training in MLflow, some epochs in: the kill lands mid-run
                logged = max((int(r.data.tags.get("raybrain.last_epoch", 0)) for r in runs
                              if r.info.status == "RUNNING"), default=0)
            except Exception:
                continue
            if logged >= 3:
                break
        assert proc.poll() is None, ("the sweep ended before it could be interrupted: "
                                     + (in_tmp / "driver.err").read_text()[-2000:])
        assert logged >= 3
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    _, parent_before, before = _children(uri, "tiny-resume")
    before_parent = parent_before.info.run_id
    assert any(c.info.status == "RUNNING" for c in before)

    printed: list[str] = []
    result = run_sweep(parse_spec(d), tracking_uri=uri, out=printed.append, resume=True)
    tracker, parent, children = _children(uri, "tiny-resume")
    assert not any("config(s) failed" in line for line in printed), "\n".join(printed)
    from tests.test_faults import fault_outcome

    planned = 2 * 1 * 2 + 1 * 2  # brain x 2 configs x 2 seeds + none x 2 seeds
    outcome = fault_outcome("driver_killed_mid_config", planned, children,
                            {"running_at_kill": sum(c.info.status == "RUNNING" for c in before)})
    assert outcome["child_runs"] == outcome["finished"] == planned, outcome
    assert outcome["duplicated"] == 0 and outcome["lost"] == 0, outcome
    assert {c.info.run_id for c in before} <= {c.info.run_id for c in children}
    assert parent.info.run_id == before_parent
    for c in children:
        assert c.info.status == "FINISHED"
        hist = tracker.client.get_metric_history(c.info.run_id, "test_accuracy")
        steps = [m.step for m in hist]
        assert sorted(steps) == list(range(1, 41)), (  # every epoch once, none duplicated
            c.data.tags["raybrain.run_key"], sorted((m.step, m.timestamp, m.value) for m in hist))
    assert {r["arm"] for r in result.table.arm_rows()} == {"brain", "none"}
