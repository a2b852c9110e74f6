"""Driver-side Tune callbacks: the single MLflow writer and the live progress line."""

from __future__ import annotations

import json
import math
import time
from typing import Callable

from ray.tune import Callback

from raybrain.sweep.trial import RECORDS_KEY


class MlflowWriter(Callback):
    """Writes every run's per-epoch metrics from trial results to MLflow (driver side)."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.trial_runs: dict[str, set[str]] = {}

    def __getstate__(self):  # Tune pickles its run config; the tracker is re-attached on resume
        return {"trial_runs": self.trial_runs, "tracker": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for rec in json.loads(result.get(RECORDS_KEY, "[]")):
            self.tracker.log_record(rec)
            self.trial_runs.setdefault(trial.trial_id, set()).add(rec["key"])
            if rec["done"]:
                self.trial_runs[trial.trial_id].discard(rec["key"])

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a config stopped early by the scheduler (ASHA) leaves its runs unfinished
        left = sorted(self.trial_runs.pop(trial.trial_id, ()))
        if left:
            self.tracker.mark_stopped(left)

    def on_trial_error(self, iteration, trials, trial, **info):
        # runs left unfinished by a trial that gave up for good are marked failed;
        # a retried or resumed trial re-opens them by key
        if trial.status == "ERROR":
            self.tracker.mark_failed(sorted(self.trial_runs.get(trial.trial_id, ())))


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
