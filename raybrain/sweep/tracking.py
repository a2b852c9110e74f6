"""MLflow writes: one parent run per sweep, one child run per (config, arm, seed).

All writes go through :class:`Tracker`, which lives in the sweep's driver process (Tune
trials hand their metrics to a driver-side callback), so a SQLite store never sees two
writers. Writes are idempotent: a run is looked up by its deterministic key (tag
``raybrain.run_key``) before it is created, and epochs already logged (tag
``raybrain.last_epoch``) are not logged again, so a resumed sweep never duplicates runs
or metric points. No brain data is ever logged; data paths are pseudonymised.
"""

from __future__ import annotations

import json
import time
from typing import Any

from raybrain.sweep.arms import RunSpec
from raybrain.privacy import pseudonym

PARENT_TAG = "raybrain.sweep"
KEY_TAG = "raybrain.run_key"


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(name + ".", v))
        else:
            out[name] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def _personal_params(task_name: str) -> frozenset[str]:
    """Params of a task that identify a person (logged only as pseudonyms)."""
    import raybrain.tasks as tasks

    return frozenset(k for k, p in tasks.get(task_name).params.items() if p.personal)


def _fast_sqlite(client) -> None:
    """Write-ahead logging with ``synchronous=NORMAL`` on a SQLite store.

    Each per-epoch write is its own transaction; in SQLite's default rollback-journal mode
    every one syncs the database file. In WAL mode a commit appends to the log and syncs
    only at checkpoints (measured here: ~30% less time per write). What a crash or power
    loss could drop is the last few writes, which the sweep re-syncs from Tune's results on
    disk when it resumes (see :mod:`raybrain.sweep.resync`).
    """
    from sqlalchemy import event

    try:
        engine = client._tracking_client.store.engine
    except AttributeError:  # a store without an SQLAlchemy engine: leave it alone
        return

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened so far get the pragmas on reconnect


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


class Tracker:
    """The one MLflow writer of a sweep.

    Parameters
    ----------
    tracking_uri : str
    experiment : str
        MLflow experiment name (created if missing).
    """

    def __init__(self, tracking_uri: str, experiment: str):
        import os

        import mlflow
        from mlflow.tracking import MlflowClient

        from raybrain.sweep.cluster import MLFLOW_HTTP_DEFAULTS

        # short HTTP retries: the sweep's writer keeps its own backlog (see callbacks.py)
        for key, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        mlflow.set_tracking_uri(tracking_uri)
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        if tracking_uri.startswith("sqlite:"):
            _fast_sqlite(self.client)
        # creating/migrating the store happens here, once, before any trial starts
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment)
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}
        self._last_epoch: dict[str, int] = {}
        self._closed: dict[str, str] = {}  # key -> status of runs no longer RUNNING
        self._verify: set[str] = set()  # runs whose last epoch is checked against history

    # -- parent -------------------------------------------------------------------------
    def find_parent(self, sweep: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = {_quote(sweep)} and tags.`raybrain.role` = 'sweep'",
            max_results=1)
        return runs[0] if runs else None

    def open_parent(self, sweep: str, spec_hash: str, spec_dict: dict[str, Any]) -> str:
        """Get or create the sweep's parent run; refuse a different spec under the same name."""
        from raybrain.errors import SpecError

        run = self.find_parent(sweep)
        if run is not None:
            stored = run.data.tags.get("raybrain.spec_hash")
            if stored != spec_hash:
                raise SpecError(
                    f"sweep {sweep!r} already exists in {self.uri} with spec hash {stored}, "
                    f"but this spec hashes to {spec_hash}; resuming with a changed spec is "
                    f"refused: use another --name or restore the original spec")
            self.parent_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(self.parent_id, status="RUNNING")
            return self.parent_id
        tags = {PARENT_TAG: sweep, "raybrain.role": "sweep", "raybrain.spec_hash": spec_hash,
                "raybrain.task": spec_dict["task"], "mlflow.runName": sweep}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=sweep)
        self.parent_id = run.info.run_id
        params = _flat("", {k: spec_dict[k] for k in ("task", "params", "search", "arms",
                                                       "seeds", "data_seed", "significance",
                                                       "data") if k in spec_dict})
        from mlflow.entities import Param

        self.client.log_batch(self.parent_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        self.client.log_dict(self.parent_id, spec_dict, "spec.json")
        return self.parent_id

    def close_parent(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)

    # -- children -----------------------------------------------------------------------
    def finished_run_keys(self) -> set[str]:
        """Keys of the sweep's child runs that finished (for resume)."""
        return {r.data.tags[KEY_TAG] for r in self.child_runs() if r.info.status == "FINISHED"}

    def child_runs(self) -> list:
        out, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = {_quote(self.parent_id)}",
                max_results=1000, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def _child(self, spec: RunSpec) -> str:
        key = spec.key
        if key in self._runs:
            return self._runs[key]
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = {_quote(key)}", max_results=1)
        if found:
            run = found[0]
            self._runs[key] = run.info.run_id
            self._last_epoch[key] = int(run.data.tags.get("raybrain.last_epoch", 0))
            self._verify.add(key)
            if run.info.status != "RUNNING":
                self._closed[key] = run.info.status
            return run.info.run_id
        personal = _personal_params(spec.task)
        shown = {k: (pseudonym(str(v), k) if k in personal else v) for k, v in spec.label.items()}
        label = ",".join(f"{k}={v}" for k, v in shown.items())
        name = f"{spec.arm}{'[' + label + ']' if label else ''} seed={spec.seed}"
        tags = {"mlflow.parentRunId": self.parent_id, KEY_TAG: key,
                "raybrain.arm": spec.arm, "raybrain.seed": str(spec.seed),
                "raybrain.config_id": spec.config_id, "raybrain.baseline_key": spec.baseline_key,
                "raybrain.task": spec.task, PARENT_TAG: spec.sweep, "raybrain.role": "run",
                "raybrain.brain_source": str(spec.brain_source), "raybrain.stage": spec.stage,
                "raybrain.label": json.dumps(shown, sort_keys=True),
                "mlflow.runName": name, "raybrain.last_epoch": "0"}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        from mlflow.entities import Param

        params = {**{k: (pseudonym(str(v), k) if k in personal else str(v))
                     for k, v in spec.params.items()}, "seed": str(spec.seed),
                  "arm": spec.arm, "data_seed": str(spec.data_seed)}
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        self._runs[key] = run.info.run_id
        self._last_epoch[key] = 0
        return run.info.run_id

    def prefill(self) -> None:
        """Load every child run's id, last logged epoch and status in one search.

        Called before a re-sync from Tune's on-disk results, so the records already in
        MLflow are skipped without a request each.
        """
        for run in self.child_runs():
            key = run.data.tags.get(KEY_TAG)
            if key:
                self._runs[key] = run.info.run_id
                self._last_epoch[key] = int(run.data.tags.get("raybrain.last_epoch", 0))
                self._verify.add(key)
                if run.info.status != "RUNNING":
                    self._closed[key] = run.info.status

    def log_records(self, records: list[dict[str, Any]]) -> None:
        """Log records in order, consecutive epochs of one run in one MLflow write.

        A run's plain epochs (not its last, not a replay after a resume, no arrays) are
        merged into the next record of the same run, so a run that reported ten epochs
        since the last write costs one ``log_batch``, not ten. Same idempotency as
        :meth:`log_record`.
        """
        held: list[dict[str, Any]] = []
        for rec in records:
            if held and held[-1]["key"] != rec["key"]:
                self.log_record(_merged(held))
                held = []
            held.append(rec)
            if not _plain(rec):
                self.log_record(_merged(held))
                held = []
        if held:
            self.log_record(_merged(held))

    def log_record(self, record: dict[str, Any]) -> None:
        """Log one epoch of one run (a record from :class:`ConfigExecutor.step`).

        ``record["history"]`` (optional, from :meth:`log_records`): ``[(epoch, metrics)]``
        of the run's earlier epochs written in the same request.

        Idempotent: epochs at or below the run's ``raybrain.last_epoch`` are skipped, and a
        run already closed is left alone. The cached last epoch moves only after MLflow
        accepted the write, so a failed write is retried in full.
        """
        from mlflow.entities import Metric, RunTag

        key = record["key"]
        epoch = int(record["epoch"])
        done = bool(record.get("done"))
        if self._skip_closed(key, epoch, done, record):
            return
        spec = RunSpec.from_dict(record["run"])
        run_id = self._child(spec)
        if self._skip_closed(key, epoch, done, record):
            return
        last = self._last_epoch.get(key, 0)
        if key in self._closed:
            # a config that failed or was interrupted trains (or finishes) this run again
            self.client.update_run(run_id, status="RUNNING")
            del self._closed[key]
        resumed = record.get("resumed_from")
        if epoch <= last and not done and resumed is None:
            return
        names = [k for k in record["metrics"] if k != "epoch"]
        if epoch > last and key in self._verify and names:
            # MLflow stores a batch's metrics and its tags in separate transactions: a
            # driver killed (or a request cut) between them leaves epochs the tag does not
            # count. The run's own history settles it, once per run and writer.
            steps = [m.step for m in self.client.get_metric_history(run_id, names[0])]
            last = max([last, *steps])
            self._last_epoch[key] = last
            self._verify.discard(key)
            if epoch <= last and not done and resumed is None:
                return
        ts = int(time.time() * 1000)
        metrics = []
        for e, values in [*record.get("history", ()), (epoch, record["metrics"])]:
            if int(e) > last:
                metrics += [Metric(k, float(v), ts, int(e)) for k, v in values.items()
                            if k != "epoch"]
        tags = [RunTag("raybrain.last_epoch", str(max(epoch, last)))]
        if record.get("node_id"):
            tags.append(RunTag("raybrain.node_id", str(record["node_id"])))
        if resumed is not None:
            tags.append(RunTag("raybrain.resumed_from_epoch", str(resumed)))
        if done:
            summary = record.get("summary", {})
            metrics += [Metric(k, float(v), ts, 0) for k, v in summary.items()]
            tags.append(RunTag("raybrain.diverged", str(bool(summary.get("diverged")))))
            if record.get("failed"):
                tags.append(RunTag("raybrain.failure_reason", str(record["failed"])[:5000]))
        try:
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            if epoch > last and record.get("artifacts"):
                from raybrain.sweep.arrays import log_arrays

                log_arrays(self.client, run_id, epoch, record["artifacts"])
        except Exception:
            self._verify.add(key)  # it may have been written in part: check before retrying
            raise
        self._last_epoch[key] = max(epoch, last)
        if done:
            status = "FAILED" if record.get("failed") else "FINISHED"
            self.client.set_terminated(run_id, status=status)
            self._closed[key] = status

    def _skip_closed(self, key: str, epoch: int, done: bool, record: dict[str, Any]) -> bool:
        """Whether a record of a closed run brings nothing new.

        Epochs a closed run already has are skipped, except the final record of a run an
        interrupted or failed sweep closed (KILLED/FAILED) before its end was logged:
        that one re-opens the run and finishes it.
        """
        status = self._closed.get(key)
        if status is None or epoch > self._last_epoch.get(key, 0):
            return False
        finishes = done and status in ("KILLED", "FAILED") and not record.get("failed")
        return not finishes

    def mark_unfinished(self, status: str, reason: str | None = None) -> int:
        """Close every child run of the sweep still RUNNING with ``status``; returns how many."""
        n = 0
        for run in self.child_runs():
            if run.info.status != "RUNNING":
                continue
            if reason:
                self.client.set_tag(run.info.run_id, "raybrain.failure_reason", reason[:5000])
            self.client.set_terminated(run.info.run_id, status=status)
            key = run.data.tags.get(KEY_TAG)
            if key:
                self._closed[key] = status
            n += 1
        return n

    def mark_stopped(self, keys: list[str]) -> None:
        """Runs of a config the scheduler stopped early: status KILLED, tagged why."""
        for key in keys:
            if key in self._runs and key not in self._closed:
                self.client.set_tag(self._runs[key], "raybrain.stopped_early", "scheduler")
                self.client.set_terminated(self._runs[key], status="KILLED")
                self._closed[key] = "KILLED"

    def mark_failed(self, keys: list[str], reason: str) -> None:
        """Runs left unfinished by a config that failed for good: FAILED, with the reason."""
        for key in keys:
            if key in self._runs and key not in self._closed:
                self.client.set_tag(self._runs[key], "raybrain.failure_reason", reason[:5000])
                self.client.set_terminated(self._runs[key], status="FAILED")
                self._closed[key] = "FAILED"


def _plain(record: dict[str, Any]) -> bool:
    """A record that may be merged into its run's next one: an epoch in the middle."""
    return not (record.get("done") or record.get("failed") or record.get("artifacts")
                or record.get("resumed_from") is not None or record.get("history"))


def _merged(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The last record, carrying the earlier plain epochs of its run as ``history``."""
    if len(records) == 1:
        return records[0]
    last = records[-1]
    return {**last, "history": [(r["epoch"], r["metrics"]) for r in records[:-1]]}
