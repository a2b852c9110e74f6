"""The live progress of a sweep, so a working sweep is told from a hung one.

Refreshed every second on a terminal (one line redrawn in place, with a bar) and every
``every_s`` seconds (10 by default) as plain lines otherwise (logs, Ray Jobs, pipes)::

    [########------------]  41% | epochs 368/900 | runs 12/45 done, 8 training, 0 failed
    | 1m32s elapsed, ~2m10s left | best objective 0.7821 (alpha=0.3)

Epochs count every run's trained epochs (restored ones included); the time left comes from
the rate of epochs trained since this process started, so a resumed sweep is not credited
with the work of the one before.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Callable

from ray.tune import Callback

from raybrain.sweep.records import RECORDS_KEY


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class ProgressPrinter(Callback):
    """Tune callback drawing the sweep's progress (see the module docstring).

    Parameters
    ----------
    plan : SweepPlan
        The stage's plan (runs and epochs it will train).
    mode : str
        "max" or "min": which objective is best.
    tty : bool
        Redraw one line in place on standard output (a terminal); else print lines.
    """

    def __init__(self, plan, task=None, out: Callable[[str], None] = print, mode: str = "max",
                 tty: bool = False, every_s: float | None = None):
        self.plan, self.out, self.mode, self.tty = plan, out, mode, tty
        self.every_s = every_s if every_s is not None else (1.0 if tty else 10.0)
        self.total_runs = plan.total_runs
        self.total_epochs = max(int(plan.total_epochs), 1)
        self.t0 = time.time()
        self.last = 0.0
        self.epochs: dict[str, int] = {}     # run key -> epochs trained
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.new_epochs = 0                  # trained since this process started
        self.first_new: float | None = None  # when the first of them arrived
        self.best: tuple[float, dict] | None = None
        self.peak_mb = 0.0                   # the largest trial's peak memory so far
        self.trials: list = []               # Tune's trial list as last seen (statuses after fit)
        self._drawn = False

    def __getstate__(self):
        d = self.__dict__.copy()
        d["out"] = None
        return d

    # -- state ------------------------------------------------------------------------
    def _records(self, result: dict) -> None:
        recs = json.loads(result.get(RECORDS_KEY) or "[]")
        restored = {r["key"] for r in recs if "resumed_from" in r}
        for r in recs:
            key, epoch = r["key"], int(r.get("epoch", 0))
            prev = self.epochs.get(key, 0)
            if epoch > prev:
                if key not in restored:
                    if self.first_new is None:
                        # the rate counts from here: start-up is not training
                        self.first_new = time.time()
                    else:
                        self.new_epochs += epoch - prev
                self.epochs[key] = epoch
            if r.get("failed"):
                self.failed.add(key)
            elif r.get("done"):
                self.done.add(key)

    def _objective(self, trial, result: dict) -> None:
        obj = result.get("objective")
        if obj is None or not math.isfinite(obj):
            return
        better = self.best is None or (obj > self.best[0] if self.mode == "max"
                                       else obj < self.best[0])
        if better:
            self.best = (obj, dict(trial.config.get("params", trial.config)))

    def status_line(self) -> str:
        done_epochs = min(sum(self.epochs.values()), self.total_epochs)
        frac = done_epochs / self.total_epochs
        elapsed = time.time() - self.t0
        left = "estimating time left"
        since = time.time() - (self.first_new or time.time())
        if self.new_epochs > 0 and since > 0:
            rate = self.new_epochs / since
            left = f"~{_duration((self.total_epochs - done_epochs) / rate)} left"
        training = len(set(self.epochs) - self.done - self.failed)
        states = [t.status for t in self.trials]
        configs = (f"configs {states.count('TERMINATED')}/{self.plan.num_configs} done, "
                   f"{states.count('RUNNING')} running | ")
        best = ""
        if self.best is not None:
            cfg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in sorted(self.best[1].items()))
            best = f" | best objective so far {self.best[0]:.4f}" + (f" ({cfg})" if cfg else "")
        bar = ""
        if self.tty:
            n = int(round(20 * frac))
            bar = f"[{'#' * n}{'-' * (20 - n)}] "
        return (f"{bar}{100 * frac:3.0f}% | {configs}epochs {done_epochs}/{self.total_epochs} | runs "
                f"{len(self.done)}/{self.total_runs} done, {training} training, "
                f"{len(self.failed)} failed | {_duration(elapsed)} elapsed, {left}"
                + (f" | peak {self.peak_mb:.0f} MiB per trial" if self.peak_mb else "") + best)

    def draw(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        line = self.status_line()
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
            sys.stdout.flush()
            self._drawn = True
        else:
            self.out(line)

    def close(self, final: bool = True) -> None:
        """End the redrawn line (a terminal) so the next output starts on its own line;
        ``final``: draw the stage's last state first (not after an interrupt, when Tune
        has already stopped the trials)."""
        if self.tty and self._drawn:
            if final:
                self.draw(force=True)
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._drawn = False
        elif not self.tty and self.epochs and final:
            self.draw(force=True)

    # -- Tune hooks -------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        self.trials = trials
        self.draw()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.trials = trials
        self._records(result)
        self._objective(trial, result)
        self.peak_mb = max(self.peak_mb, float(result.get("peak_memory_mb") or 0.0))
        self.draw()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.trials = trials
        self.draw(force=not self.tty)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.trials = trials
        self.draw(force=True)
