"""The driver-side MLflow writer: the one place a sweep writes MLflow from."""

from __future__ import annotations

import json
import time
from typing import Callable

from ray.tune import Callback

from raybrain.sweep.records import OPEN_KEY, RECORDS_KEY


class MlflowWriter(Callback):
    """Writes every run's per-epoch metrics from trial results to MLflow (driver side).

    Nothing here is the only copy: every record is in the trial's Tune results (on disk
    under the sweep's storage) and in its checkpoint, from which a restored trial sends
    its whole history again. When MLflow cannot be reached the writes wait in a backlog,
    are retried every ``retry_s`` seconds without holding up training, and are drained
    (then re-synced from the on-disk results) at the end of the stage.

    A run's epochs are written together every ``flush_s`` seconds (one MLflow request
    per run, not per epoch: on a small machine the driver's writes take CPU from the
    trials); a run's last epoch, its arrays and a resumed run's replay are written at
    once, and everything waiting is written before a run is marked stopped or failed and
    when the stage ends.
    """

    def __init__(self, tracker, out: Callable[[str], None] = print, retry_s: float = 15.0,
                 flush_s: float = 15.0):
        self.tracker, self.out, self.retry_s, self.flush_s = tracker, out, retry_s, flush_s
        #: records waiting to be written, by run key, and when each key's first arrived
        self.pending: dict[str, list[dict]] = {}
        self.pending_since: dict[str, float] = {}
        self.backlog: list[tuple] = []
        self.down_since: float | None = None
        self.last_try = 0.0
        self.failed_writes = 0

    def __getstate__(self):  # Tune pickles its run config; a fresh writer is attached on resume
        return {"tracker": None, "out": None, "retry_s": self.retry_s, "flush_s": self.flush_s,
                "pending": {}, "pending_since": {}, "backlog": [], "down_since": None,
                "last_try": 0.0, "failed_writes": 0}

    # -- writes -------------------------------------------------------------------------
    def _apply(self, op: tuple) -> None:
        kind = op[0]
        if kind == "records":
            self.tracker.log_records(op[1])
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

    def hold(self, records: list[dict]) -> None:
        """Queue records by run; a run whose record must not wait is written now."""
        now = time.time()
        urgent = []
        for rec in records:
            key = rec["key"]
            self.pending.setdefault(key, []).append(rec)
            self.pending_since.setdefault(key, now)
            if rec.get("done") or rec.get("failed") or rec.get("artifacts") or \
                    rec.get("resumed_from") is not None:
                urgent.append(key)
        self.flush(urgent)
        self.flush([k for k, t in self.pending_since.items() if now - t >= self.flush_s])

    def flush(self, keys: list[str] | None = None) -> None:
        """Write the waiting records of ``keys`` (all when None), one request per run."""
        keys = list(self.pending) if keys is None else [k for k in dict.fromkeys(keys)
                                                       if k in self.pending]
        ops = []
        for key in keys:
            ops.append(("records", self.pending.pop(key)))
            self.pending_since.pop(key, None)
        if ops:
            self._submit(ops)

    def drain(self, timeout_s: float) -> bool:
        """Write everything waiting, retrying until the backlog is empty or ``timeout_s``
        passed; True if empty."""
        self.flush()
        deadline = time.time() + timeout_s
        while not self.retry(force=True):
            if time.time() >= deadline:
                return False
            time.sleep(min(self.retry_s, max(0.0, deadline - time.time())))
        return True

    # -- Tune hooks ---------------------------------------------------------------------
    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        self.flush([k for k, t in self.pending_since.items() if now - t >= self.flush_s])
        if self.backlog:
            self.retry()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.hold(json.loads(result.get(RECORDS_KEY, "[]")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        # a config stopped early by the scheduler (ASHA) leaves its runs unfinished
        left = open_runs(trial.last_result)
        if left:
            self.flush(left)
            self._submit([("stopped", left)])

    def on_trial_error(self, iteration, trials, trial, **info):
        # runs left unfinished by a trial that gave up for good are marked failed, with
        # the error; a retried or resumed trial re-opens them by key
        if trial.status == "ERROR":
            left = open_runs(trial.last_result)
            if left:
                self.flush(left)
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
