"""MLflow writes: parent/child structure, tags, per-epoch metrics, idempotency (real SQLite store)."""

from __future__ import annotations

import pytest

from raybrain.errors import SpecError
from raybrain.sweep.arms import RunSpec
from raybrain.sweep.tracking import Tracker

pytestmark = pytest.mark.integration


def _record(spec: RunSpec, epoch: int, done: bool = False, acc: float = 0.5):
    rec = {"key": spec.key, "run": spec.to_dict(), "epoch": epoch,
           "metrics": {"test_accuracy": acc + epoch / 100, "loss": 1.0 / epoch, "epoch": epoch},
           "done": done}
    if done:
        rec["summary"] = {"final_test_accuracy": acc + epoch / 100, "diverged": 0.0}
    return rec


@pytest.fixture
def tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "exp")


def test_children_are_created_once_with_tags_and_epochs(tracker, tmp_path):
    parent = tracker.open_parent("sw", "hash1", {"task": "b2m-memory", "params": {"alpha": 0.1}})
    spec = RunSpec("sw", "b2m-memory", "brain", 3, {"alpha": 0.1}, "real", "cfg1", "base1",
                   label={"alpha": 0.1})
    for e in (1, 2):
        tracker.log_record(_record(spec, e))
    # a second writer (a restarted driver) re-reports epoch 2 and then finishes
    again = Tracker(tracker.uri, "exp")
    assert again.open_parent("sw", "hash1", {"task": "b2m-memory"}) == parent
    again.log_record(_record(spec, 2))
    again.log_record(_record(spec, 3, done=True))
    children = again.child_runs()
    assert len(children) == 1
    run = children[0]
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["raybrain.arm"] == "brain" and tags["raybrain.seed"] == "3"
    assert tags["raybrain.config_id"] == "cfg1" and tags["raybrain.task"] == "b2m-memory"
    assert tags["raybrain.run_key"] == "sw/cfg1/brain/3"
    assert run.info.status == "FINISHED"
    history = again.client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]  # epoch 2 not duplicated
    assert run.data.metrics["final_test_accuracy"] == pytest.approx(0.53)
    assert run.data.params["alpha"] == "0.1" and run.data.params["seed"] == "3"
    assert again.finished_run_keys() == {"sw/cfg1/brain/3"}


def test_changed_spec_is_refused(tracker):
    tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    with pytest.raises(SpecError, match="changed spec"):
        Tracker(tracker.uri, "exp").open_parent("sw", "hash2", {"task": "b2m-memory"})


def test_no_brain_data_or_raw_paths_in_parent(tracker, tmp_path):
    from raybrain.privacy import pseudonym

    secret = str(tmp_path / "participant-07" / "brain.npz")
    pid = tracker.open_parent("sw", "h", {"task": "b2m-memory",
                                          "data": {"path": pseudonym(secret, "file")}})
    run = tracker.client.get_run(pid)
    assert all("participant-07" not in v for v in run.data.params.values())
    assert run.data.params["data.path"].startswith("file-")
    assert pseudonym(secret, "file") == run.data.params["data.path"]  # stable
    arts = [a.path for a in tracker.client.list_artifacts(pid)]
    assert arts == ["spec.json"]


def test_personal_params_reach_tracking_only_as_pseudonyms(tracker):
    import raybrain.tasks as tasks
    from raybrain.sweep import parse_spec
    from raybrain.sweep.driver import tracked_spec
    from raybrain.tasks.b2m_memory import B2MMemory
    from raybrain.tasks.base import Param

    if "test-personal" not in tasks.names():
        @tasks.register("test-personal")
        class Personal(B2MMemory):
            params = {**B2MMemory.params, "participant": Param("sub-01", str, personal=True)}

    spec = parse_spec({"name": "sw", "task": "test-personal",
                       "params": {"participant": {"grid": ["sub-07", "sub-08"]},
                                  "alpha": 0.1}})
    logged = tracked_spec(spec, tasks.get("test-personal"))
    pid = tracker.open_parent("sw", "h", logged)
    run_spec = RunSpec("sw", "test-personal", "brain", 0, {"participant": "sub-07", "alpha": 0.1},
                       "real", "c", "b", label={"participant": "sub-07"})
    tracker.log_record(_record(run_spec, 1))
    (child,) = tracker.child_runs()
    everything = [*tracker.client.get_run(pid).data.params.values(),
                  *child.data.params.values(), *child.data.tags.values(), child.info.run_name]
    assert not any("sub-07" in v or "sub-08" in v for v in everything)
    assert child.data.params["participant"].startswith("participant-")
    assert child.data.params["alpha"] == "0.1"


def test_failed_run_is_closed_with_its_reason_and_reopened_if_retrained(tracker):
    tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    spec = RunSpec("sw", "b2m-memory", "brain", 0, {"alpha": 0.1}, "real", "cfg1", "base1")
    tracker.log_record(_record(spec, 1))
    rec = {**_record(spec, 1, done=True), "failed": "LinAlgError: Singular matrix"}
    tracker.log_record(rec)
    (run,) = tracker.child_runs()
    assert run.info.status == "FAILED"
    assert run.data.tags["raybrain.failure_reason"] == "LinAlgError: Singular matrix"
    # the same epoch again (a replay) leaves it alone; a later epoch (a retried config) reopens
    tracker.log_record(_record(spec, 1))
    assert tracker.child_runs()[0].info.status == "FAILED"
    tracker.log_record(_record(spec, 2))
    assert tracker.child_runs()[0].info.status == "RUNNING"


def test_resync_writes_only_what_mlflow_lacks(tracker, tmp_path):
    """Records in Tune's result.json lines reach MLflow once, whatever is there already."""
    import json

    from raybrain.sweep.resync import resync
    from raybrain.sweep.records import RECORDS_KEY

    tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    a = RunSpec("sw", "b2m-memory", "brain", 0, {"alpha": 0.1}, "real", "cfg1", "base1")
    b = RunSpec("sw", "b2m-memory", "none", 0, {}, "real", "base1", "base1")
    lines = [{RECORDS_KEY: json.dumps([_record(a, e, e == 3), _record(b, e, e == 3)])}
             for e in (1, 2, 3)]
    trial = tmp_path / "exp" / "config_00000"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"cut")
    tracker.log_record(_record(a, 1))  # MLflow had one epoch of one run before it went down
    fresh = Tracker(tracker.uri, "exp")
    fresh.open_parent("sw", "hash1", {"task": "b2m-memory"})
    assert resync(fresh, str(tmp_path / "exp")) == 5
    assert resync(fresh, str(tmp_path / "exp")) == 0  # idempotent
    runs = fresh.child_runs()
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        steps = [m.step for m in fresh.client.get_metric_history(r.info.run_id, "test_accuracy")]
        assert sorted(steps) == [1, 2, 3]


def test_an_epoch_written_without_its_tag_is_not_written_twice(tracker):
    """MLflow commits a batch's metrics and tags separately; a writer killed in between
    leaves metrics the last-epoch tag does not count. The next writer checks the history."""
    from mlflow.entities import Metric

    tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    spec = RunSpec("sw", "b2m-memory", "brain", 0, {"alpha": 0.1}, "real", "cfg1", "base1")
    tracker.log_record(_record(spec, 1))
    (run,) = tracker.child_runs()
    rec = _record(spec, 2)
    tracker.client.log_batch(run.info.run_id, metrics=[  # epoch 2's metrics, tag never set
        Metric(k, float(v), 0, 2) for k, v in rec["metrics"].items() if k != "epoch"])
    assert tracker.client.get_run(run.info.run_id).data.tags["raybrain.last_epoch"] == "1"
    resumed = Tracker(tracker.uri, "exp")
    resumed.open_parent("sw", "hash1", {"task": "b2m-memory"})
    resumed.log_record(rec)
    resumed.log_record(_record(spec, 3, done=True))
    for name in ("test_accuracy", "loss"):
        steps = [m.step for m in resumed.client.get_metric_history(run.info.run_id, name)]
        assert sorted(steps) == [1, 2, 3]


def test_a_sweep_reports_failed_runs_and_fails_when_no_run_finished(tracker):
    """The end of a sweep names the runs whose training raised; with none finished it fails."""
    from types import SimpleNamespace

    from raybrain.errors import SweepFailed
    from raybrain.sweep.finalise import _failed_runs

    pre = SimpleNamespace(spec=SimpleNamespace(name="sw"))
    parent = tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    specs = [RunSpec("sw", "b2m-memory", "brain", s, {"alpha": 0.1}, "real", "cfg1", "base1")
             for s in (0, 1)]
    tracker.log_record({**_record(specs[0], 1, done=True), "failed": "TypeError: bad call"})
    lines: list[str] = []
    with pytest.raises(SweepFailed, match=r"all 1 runs failed \(first error: TypeError: bad call\)"):
        _failed_runs(pre, tracker, lines.append)
    assert tracker.client.get_run(parent).info.status == "FAILED"
    # one run finished beside the failed one: a warning line, the sweep goes on to its verdict
    tracker.log_record(_record(specs[1], 1, done=True))
    _failed_runs(pre, tracker, lines.append)
    assert lines == ["warning: 1 of 2 runs failed (first error: TypeError: bad call); each "
                     "failed run's reason is its raybrain.failure_reason tag in MLflow; the "
                     "verdict uses the finished runs only"]


def test_a_runs_epochs_are_written_together_and_its_end_at_once(tracker):
    """The driver's writer holds a run's middle epochs and writes them in one request with
    the next record that must not wait (here the run's last); the history is whole."""
    import json

    from raybrain.sweep.callbacks import MlflowWriter
    from raybrain.sweep.records import RECORDS_KEY

    tracker.open_parent("sw", "hash1", {"task": "b2m-memory"})
    calls = []
    real_log_batch = tracker.client.log_batch

    def counting(run_id, **kw):
        calls.append(run_id)
        return real_log_batch(run_id, **kw)

    tracker.client.log_batch = counting
    writer = MlflowWriter(tracker, out=lambda line: None, flush_s=3600.0)
    specs = [RunSpec("sw", "b2m-memory", "brain", s, {"alpha": 0.1}, "real", "cfg1", "base1")
             for s in (0, 1)]
    for epoch in (1, 2, 3):
        recs = [_record(sp, epoch) for sp in specs]
        writer.on_trial_result(0, [], None, {RECORDS_KEY: json.dumps(recs)})
    assert tracker.child_runs() == [] and sorted(map(len, writer.pending.values())) == [3, 3]
    done = _record(specs[0], 4, done=True)
    writer.on_trial_result(0, [], None, {RECORDS_KEY: json.dumps([done])})
    (run,) = tracker.child_runs()  # the finished run is written at once, the other waits
    assert run.info.status == "FINISHED" and list(writer.pending) == [specs[1].key]
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "test_accuracy")]
    assert sorted(steps) == [1, 2, 3, 4]
    n_batches = len(calls)  # the child's params, then its four epochs in one request
    assert n_batches == 2, calls
    assert writer.drain(10.0) and writer.pending == {}  # the stage's end writes the rest
    other = [r for r in tracker.child_runs() if r.info.run_id != run.info.run_id][0]
    hist = tracker.client.get_metric_history(other.info.run_id, "test_accuracy")
    assert sorted(h.step for h in hist) == [1, 2, 3] and other.info.status == "RUNNING"
