"""A sweep stopped by a signal does not look finished, and resumes with what the user ran.

A real ``raybrain sweep`` (subprocess, local Ray, SQLite MLflow) started with command-line
overrides is stopped with Ctrl-C (SIGINT to its process group, as a terminal sends it):
exit code 130, the parent and its unfinished runs KILLED, no verdict or report, and the
exact resume command printed. That command (no overrides repeated) is stopped again with
SIGTERM (exit 143), then run to the end: every planned run finished exactly once, every
epoch logged once. The figures go to ``tests/artifacts/faults/interrupt.json``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import sweep_runs
from tests.test_faults import fault_outcome

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 20


def _spec(tiny, tmp_path) -> dict:
    return {**tiny, "name": "interrupted",
            "data": {**tiny["data"], "n_train_episodes": 24},
            "params": {**tiny["params"], "epochs": EPOCHS, "alpha": {"grid": [0.1, 0.2, 0.3]}},
            "arms": {"include": ["brain", "shuffled", "none"]},
            "seeds": 5, "storage": {"path": "results"},
            # MLflow follows training within 0.5 s: the test interrupts at a logged epoch
            "tracking": {"flush_s": 0.5}}


def _start(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raybrain.cli", *argv], cwd=cwd,
                            start_new_session=True, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for(predicate, what: str, log: Path, proc, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}:\n"
                                 + log.read_text()[-4000:])
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n" + log.read_text()[-4000:])


def _epochs_logged(uri: str, log: Path) -> int:
    if "execution:" not in log.read_text():  # the driver has created the store by then
        return 0
    try:
        _, _, runs = sweep_runs(uri, "interrupted")
    except Exception:
        return 0
    return sum(int(r.data.tags.get("raybrain.last_epoch", 0)) for r in runs)


def _interrupt(proc, log: Path, uri: str, sig: int, group: bool, after_epochs: int) -> str:
    _wait_for(lambda: _epochs_logged(uri, log) >= after_epochs, "the first epochs", log, proc)
    (os.killpg if group else os.kill)(proc.pid, sig)
    try:
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return log.read_text()


def _resume_argv(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("resume with: "))
    argv = shlex.split(line.removeprefix("resume with: "))
    assert argv[:2] == ["raybrain", "sweep"]
    return argv[2:]


def test_interrupted_sweep_is_killed_not_finished_and_its_command_resumes_it(
        tmp_path, write_spec, tiny_spec_dict):
    path = write_spec(_spec(tiny_spec_dict, tmp_path), "spec.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # 1. started with overrides, stopped with Ctrl-C (SIGINT to the process group)
    log1 = tmp_path / "first.log"
    proc = _start(["sweep", str(path), "--seeds", "2", "--max-configs", "2",
                   "--tracking-uri", uri], tmp_path, log1)
    text = _interrupt(proc, log1, uri, signal.SIGINT, group=True, after_epochs=6)
    assert proc.returncode == 130, text[-3000:]
    assert " finished in " not in text and "verdict on the" not in text
    assert "Creating initial MLflow database tables" not in text  # --verbose shows them
    assert "Tuner.restore" not in text and "Token authentication" not in text
    argv = _resume_argv(text)
    assert argv == [str(path), "--resume", "--tracking-uri", uri]  # no override repeated
    tracker, parent, runs = sweep_runs(uri, "interrupted")
    assert parent.info.status == "KILLED"
    statuses = {r.info.status for r in runs}
    assert "RUNNING" not in statuses and "KILLED" in statuses, statuses
    artifacts = [a.path for a in tracker.client.list_artifacts(parent.info.run_id)]
    assert "verdict.csv" not in artifacts
    assert not (tmp_path / "raybrain_report" / "interrupted").exists()
    killed_first = sum(r.info.status == "KILLED" for r in runs)

    # 2. the printed command resumes it (the overrides reapplied); stopped by SIGTERM
    log2 = tmp_path / "second.log"
    proc = _start(["sweep", *argv], tmp_path, log2)
    before = _epochs_logged(uri, log1)
    text = _interrupt(proc, log2, uri, signal.SIGTERM, group=False, after_epochs=before + 4)
    assert proc.returncode == 143, text[-3000:]
    assert "resuming search stage" in text
    assert _resume_argv(text) == argv

    # 3. the same command runs it to the end
    log3 = tmp_path / "third.log"
    proc = _start(["sweep", *argv], tmp_path, log3)
    proc.wait(timeout=1200)
    text = log3.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert "verdict on the search stage" in text
    tracker, parent, runs = sweep_runs(uri, "interrupted")
    assert parent.info.status == "FINISHED"
    # --seeds 2 --max-configs 2 were reapplied: 2 configs x (brain, shuffled) x 2 seeds + none x 2
    planned = 2 * 2 * 2 + 2
    outcome = fault_outcome("interrupt", planned, runs,
                            {"killed_at_first_interrupt": killed_first,
                             "epochs_planned": planned * EPOCHS})
    assert outcome["child_runs"] == outcome["finished"] == planned, outcome
    assert outcome["duplicated"] == 0 and outcome["lost"] == 0, outcome
    for r in runs:
        steps = [m.step for m in tracker.client.get_metric_history(r.info.run_id, "test_accuracy")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), r.info.run_name
    assert {r.data.tags["raybrain.seed"] for r in runs} == {"0", "1"}


@pytest.mark.unit
def test_a_second_signal_stops_at_once():
    """The session's handler: the first signal asks for a graceful stop (inside Tune it
    only records it), the second raises at once, marked immediate."""
    from raybrain.errors import SweepInterrupted
    from raybrain.sweep.session import RaySession

    lines: list[str] = []
    session = RaySession(out=lines.append)
    session.in_tune = True
    session._handle(signal.SIGINT, None)
    assert session.stop_signal == signal.SIGINT and "again to stop at once" in lines[0]
    with pytest.raises(SweepInterrupted) as info:
        session._handle(signal.SIGINT, None)
    assert info.value.immediate and info.value.signum == signal.SIGINT
    # outside Tune's loop the first signal raises straight away
    outside = RaySession(out=lines.append)
    with pytest.raises(SweepInterrupted) as info:
        outside._handle(signal.SIGTERM, None)
    assert not info.value.immediate and info.value.signum == signal.SIGTERM
