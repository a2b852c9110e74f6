"""Driver-side Tune callbacks: the single MLflow writer and the live progress line."""

from __future__ import annotations

import json
import math
import time
from typing import Callable

from ray.tune import Callback

from raybrain.sweep.trial import OPEN_KEY, RECORDS_KEY


class MlflowWriter(Callback):
    """Writes every run's per-epoch metrics from trial results to MLflow (driver side).

    Nothing here is the only copy: every record is in the trial's Tune results (on disk
    under the sweep's storage) and in its checkpoint, from which a restored trial sends
    its whole history again. When MLflow cannot be reached the writes wait in a backlog,
    are retried every ``retry_s`` seconds without holding up training, and are drained
    (then re-synced from the on-disk results) at the end of the stage.
    """

    def __init__(self, tracker, out: Callable[[str], None] = print, retry_s: float = 15.0):
        self.tracker, self.out, self.retry_s = tracker, out, retry_s
        self.backlog: list[tuple] = []
        self.down_since: float | None = None
        self.last_try = 0.0
        self.failed_writes = 0

    def __getstate__(self):  # Tune pickles its run config; a fresh writer is attached on resume
        return {"tracker": None, "out": None, "retry_s": self.retry_s, "backlog": [],
                "down_since": None, "last_try": 0.0, "failed_writes": 0}

    # -- writes -------------------------------------------------------------------------
    def _apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "record":
            self.tracker.log_record(op[1])
        elif kind == "stopped":
            self.tracker.mark_stopped(op[1])
        elif kind == "failed":
            self.tracker.mark_failed(op[1], op[2])

    def _submit(self, ops: list[tuple]) -> None:
        if self.backlog:  # keep the order: nothing overtakes what is waiting
            self.backlog.extend(ops)
            self.retry()
            return
        for i, op in enumerate(ops):
            try:
                self._apply(op)
            except Exception as exc:
                self._went_down(exc)
                self.backlog.extend(ops[i:])
                return

    def _went_down(self, exc: BaseException) -> None:
        self.failed_writes += 1
        self.last_try = time.time()
        if self.down_since is None:
            self.down_since = time.time()
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self.out(f"MLflow at {self.tracker.uri} cannot be written ({type(exc).__name__}: "
                     f"{reason}); training goes on, the writes wait and are retried every "
                     f"{self.retry_s:.0f} s (every epoch is also in Tune's results on disk)")

    def retry(self, force: bool = False) -> bool:
        """Try the waiting writes again (at most every ``retry_s`` unless forced)."""
        if not self.backlog:
            return True
        if not force and time.time() - self.last_try < self.retry_s:
            return False
        self.last_try = time.time()
        while self.backlog:
            try:
                self._apply(self.backlog[0])
            except Exception as exc:
                self._went_down(exc)
                return False
            self.backlog.pop(0)
        waited = time.time() - (self.down_since or time.time())
        self.out(f"MLflow is back after {waited:.0f} s; every waiting write is done")
        self.down_since = None
        return True

    def drain(self, timeout_s: float) -> bool:
        """Retry the backlog until it is empty or ``timeout_s`` passed; True if empty."""
        deadline = time.time() + timeout_s
        while not self.retry(force=True):
            if time.time() >= deadline:
                return False
            time.sleep(min(self.retry_s, max(0.0, deadline - time.time())))
        return True

    # -- Tune hooks ---------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        if self.backlog:
            self.retry()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit([("record", rec) for rec in json.loads(result.get(RECORDS_KEY, "[]"))])

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a config stopped early by the scheduler (ASHA) leaves its runs unfinished
        left = open_runs(trial.last_result)
        if left:
            self._submit([("stopped", left)])

    def on_trial_error(self, iteration, trials, trial, **info):
        # runs left unfinished by a trial that gave up for good are marked failed, with
        # the error; a retried or resumed trial re-opens them by key
        if trial.status == "ERROR":
            left = open_runs(trial.last_result)
            if left:
                self._submit([("failed", left, trial_error(trial))])


def open_runs(result: dict | None) -> list[str]:
    """Keys of the runs a trial had not finished at its last result."""
    return list(json.loads((result or {}).get(OPEN_KEY, "[]")))


def trial_error(trial) -> str:
    """The last line of a failed trial's error (Tune keeps the traceback in a file)."""
    text = ""
    path = getattr(trial, "error_file", None)
    try:
        if path:
            with open(path) as f:
                text = f.read()
    except OSError:
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "the config's trial failed"


class ProgressPrinter(Callback):
    """One line per change: configs and runs done/running/failed, best objective so far."""

    def __init__(self, plan, out: Callable[[str], None] = print, mode: str = "max",
                 every_s: float = 5.0):
        self.plan, self.out, self.mode, self.every_s = plan, out, mode, every_s
        self.t0 = time.time()
        self.last = 0.0
        self.best: tuple[float, dict] | None = None
        self.runs: dict[str, tuple[int, int]] = {}  # trial id -> (runs done, runs total)
        self.trials: list = []  # Tune's trial list as last seen (statuses after fit)

    def __getstate__(self):
        d = self.__dict__.copy()
        d["out"] = None
        return d

    def status_line(self, trials) -> str:
        states = [t.status for t in trials]
        done, running, failed = (states.count(s) for s in ("TERMINATED", "RUNNING", "ERROR"))
        status = {t.trial_id: t.status for t in trials}
        runs_done = sum(d for d, _ in self.runs.values())
        runs_running = sum(n - d for tid, (d, n) in self.runs.items() if status.get(tid) == "RUNNING")
        runs_failed = sum(n - d for tid, (d, n) in self.runs.items() if status.get(tid) == "ERROR")
        total = self.plan.runs_per_config * self.plan.num_configs + (self.plan.baseline_runs or 0)
        best = ""
        if self.best is not None:
            cfg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in sorted(self.best[1].items()))
            best = f" | best objective {self.best[0]:.4f} ({cfg})"
        return (f"[{time.time() - self.t0:6.0f}s] configs {done}/{self.plan.num_configs} done, "
                f"{running} running, {failed} failed | runs {runs_done}/{total} done, "
                f"{runs_running} running, {runs_failed} failed{best}")

    def _line(self, trials, force=False):
        self.trials = trials
        now = time.time()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.out(self.status_line(trials))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.runs[trial.trial_id] = (int(result.get("runs_done", 0)),
                                     int(result.get("runs_total", 0)))
        self._line(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        obj = result.get("objective")
        if obj is not None and math.isfinite(obj):
            better = self.best is None or (obj > self.best[0] if self.mode == "max" else obj < self.best[0])
            if better:
                self.best = (obj, dict(trial.config.get("params", trial.config)))
        self._line(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, force=True)
