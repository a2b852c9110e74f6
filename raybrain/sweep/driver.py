"""Run a sweep: preflight, MLflow, the Ray session, the stages, the end.

Order matters: everything a user can get wrong is checked before Ray starts and before any
MLflow run exists (:mod:`raybrain.sweep.preflight`); the MLflow store is created/migrated
here, once, before trials start; the stages (:mod:`raybrain.sweep.stages`) run inside a
Ray session that owns the stop signals (:mod:`raybrain.sweep.session`); the sweep ends
finished, interrupted or failed (:mod:`raybrain.sweep.finalise`). Re-running the same
command, or ``--resume``, continues a sweep where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raybrain.errors import SpecError, SweepInterrupted, TrackingUnavailable
from raybrain.sweep import storage as st
from raybrain.sweep.plan import SweepPlan, make_plan
from raybrain.sweep.preflight import Overrides, Preflight, preflight
from raybrain.sweep.spec import Spec


@dataclass
class SweepResult:
    spec: Spec
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    table: Any
    wall_s: float
    chosen: list[dict[str, Any]] | None = None


def run_sweep(spec: Spec, *, source: str = "spec", address: str | None = None,
              tracking_uri: str | None = None, storage_path: str | None = None,
              name: str | None = None, max_configs: int | None = None,
              seeds: int | None = None, dry_run: bool = False,
              out: Callable[[str], None] | None = None, num_cpus: int | None = None,
              resume: bool = False, dashboard: bool = False,
              dashboard_host: str = "127.0.0.1", verbose: bool = False,
              pre: Preflight | None = None) -> SweepResult | SweepPlan:
    """Check and run ``spec``; returns the search plan on ``dry_run``, else the result.

    ``address``: None starts a private local Ray; ``auto`` or ``HOST:6379`` joins a cluster
    from one of its nodes (``ray://`` addresses go through :func:`raybrain.sweep.run_sweep`,
    which runs this driver on the cluster). ``resume``: the sweep must exist already (a
    sweep with the same name always resumes; the flag makes that explicit, refuses a
    typo'd name, and finds a sweep started from this spec under another ``--name``).

    Raises :class:`~raybrain.errors.SweepInterrupted` on a stop signal (runs closed as
    KILLED, the resume command printed), :class:`~raybrain.errors.SweepFailed` when configs
    failed beyond their retries or Ray was lost, :class:`~raybrain.errors.SpecError` on bad
    input and :class:`~raybrain.errors.TrackingUnavailable` when MLflow stayed unreachable.
    """
    t0 = time.time()
    from raybrain.sweep.session import quiet_logs

    quiet_logs(verbose)
    interactive = out is None and sys.stdout.isatty()
    out = out or (lambda line: print(line, flush=True))
    if pre is None:
        pre = preflight(spec, source, resume=resume, address=address, num_cpus=num_cpus,
                        overrides=Overrides(name=name, seeds=seeds, max_configs=max_configs,
                                            tracking_uri=tracking_uri,
                                            storage_path=storage_path))
    for line in pre.notes:
        out(line)
    if dry_run:
        describe(pre, out)
        return pre.plan
    spec, task = pre.spec, pre.task
    trial_data, lines, brain_files = task.prepare(pre.data)
    for line in lines:
        out(line)
    from raybrain.sweep import finalise
    from raybrain.sweep.session import RaySession
    from raybrain.sweep.stages import StageRunner, chosen_configs

    # the MLflow store opens (created and migrated on first use: seconds) while Ray starts
    opening = _Background(lambda: _open_tracking(pre, resume, out))
    tracker = session = None
    try:
        with RaySession(address, num_cpus, dashboard, dashboard_host, out, verbose) as session:
            import ray

            tracker = opening.result()
            if spec.tracking.log_brain_data:
                for path in brain_files:
                    tracker.client.log_artifact(tracker.parent_id, path, "brain_data")

            runner = StageRunner(pre, tracker, sorted(tracker.finished_run_keys()), out,
                                 session=session, tty=interactive)
            if trial_data is not None:
                runner.trial_data = trial_data
            out(pre.plan.describe().splitlines()[0])
            out(f"execution: {runner.execution}")
            tracker.client.set_tag(tracker.parent_id, "raybrain.execution", runner.execution)
            tracker.client.set_tag(tracker.parent_id, "raybrain.driver_node_id",
                                   ray.get_runtime_context().get_node_id())
            status = runner.run(pre.plan, spec.name)
            chosen = None
            if spec.confirm_configs and status.complete and not status.errors:
                chosen = chosen_configs(pre.storage, spec.name, status, spec)
                if not chosen:
                    raise SpecError(f"sweep {spec.name!r}: no config completed its search, "
                                    f"so there is nothing to confirm")
                tracker.client.set_tag(tracker.parent_id, "raybrain.confirmed_configs",
                                       json.dumps(chosen, sort_keys=True)[:5000])
                cplan = make_plan(spec, task, stage="confirm", configs=chosen)
                out(cplan.describe().splitlines()[0])
                status = status.merge(runner.run(cplan, f"{spec.name}-confirm"))
            if status.errors or not status.complete:
                raise finalise.failed(pre, tracker, status, out)
            from mlflow.exceptions import MlflowException  # loaded with the tracker already

            try:
                table = finalise.finish(pre, tracker, out)
            except MlflowException as exc:  # every run is complete in Tune's results
                first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
                raise TrackingUnavailable(
                    f"MLflow at {spec.tracking.uri} could not be read or written for the "
                    f"verdict ({first}); nothing is lost (every run is complete in Tune's "
                    f"results): when MLflow is back run: {pre.resume_command}") from None
    except SweepInterrupted as intr:
        finalise.interrupted(pre, tracker or opening.result(quiet=True), out, intr.immediate)
        raise
    except KeyboardInterrupt:  # e.g. the driver task of a Ray Client sweep, cancelled
        finalise.interrupted(pre, tracker or opening.result(quiet=True), out)
        raise SweepInterrupted(2) from None
    except Exception:  # Ray did not start, MLflow gone, ...: the sweep is not left RUNNING
        if session is not None and session.stop_signal is not None:
            # the stop signal landed inside a library call (e.g. an import during the
            # verdict), which re-raised it as its own error: still an interrupt
            finalise.interrupted(pre, tracker or opening.result(quiet=True), out)
            raise SweepInterrupted(session.stop_signal) from None
        finalise.stopped_by_error(tracker or opening.result(quiet=True))
        raise
    finally:
        opening.result(quiet=True)  # never leave the store half-opened behind
    return SweepResult(spec, tracker.parent_id, spec.tracking.uri, tracker.experiment_id,
                       table, time.time() - t0, chosen)


class _Background:
    """Run ``fn`` in a thread; :meth:`result` waits for it and re-raises its error."""

    def __init__(self, fn):
        import threading

        self._value, self._error = None, None

        def target():
            try:
                self._value = fn()
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc

        self._thread = threading.Thread(target=target, name="raybrain-open-tracking",
                                        daemon=True)
        self._thread.start()

    def result(self, quiet: bool = False):
        self._thread.join()
        if self._error is not None and not quiet:
            raise self._error
        return self._value


def describe(pre: Preflight, out: Callable[[str], None]) -> None:
    """The plan of a dry run (``raybrain validate``, ``raybrain sweep --dry-run``)."""
    out(pre.plan.describe())
    if pre.spec.confirm_configs:
        out(f"then: the best {pre.spec.confirm_configs} config(s) re-run for every arm on "
            f"fresh seeds {pre.spec.confirm_seeds}; the verdict uses those runs")
    if pre.overrides:
        out("overrides: " + ", ".join(f"{k}={v}" for k, v in sorted(pre.overrides.items())))
    if pre.exists:
        out(f"sweep {pre.spec.name!r} exists under {pre.storage}: running it resumes it "
            f"({pre.resume_command})")


def _open_tracking(pre: Preflight, resume: bool, out: Callable[[str], None]):
    """The MLflow writer with the sweep's parent run open (created or found), re-synced."""
    from raybrain.sweep.resync import resync
    from raybrain.sweep.tracking import Tracker

    spec = pre.spec
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    if resume and tracker.find_parent(spec.name) is None and not pre.exists:
        raise SpecError(f"--resume: there is no sweep {spec.name!r} to resume (no parent run in "
                        f"{spec.tracking.uri}, experiment {spec.tracking.experiment!r}, and no "
                        f"Tune experiment under {pre.storage}); check --name and the spec's "
                        f"storage.path, or run without --resume to start it")
    tracker.open_parent(spec.name, spec.spec_hash(), tracked_spec(spec, pre.task))
    tracker.client.set_tag(tracker.parent_id, "raybrain.overrides",
                           json.dumps(pre.overrides, sort_keys=True))
    st.record_sweep(pre.storage, spec.name, {
        "spec_file": str(Path(pre.source).resolve()) if Path(pre.source).is_file() else None,
        "spec_name": pre.file_name, "overrides": pre.overrides})
    # the driver may have died while MLflow was down: write what Tune's results hold first
    for stage in st.stage_names(spec.name):
        if st.stage_exists(pre.storage, stage):
            n = resync(tracker, st.join(pre.storage, stage))
            if n:
                out(f"re-synced {n} record(s) of stage {stage!r} from Tune's results into MLflow")
    return tracker


def tracked_spec(spec: Spec, task) -> dict[str, Any]:
    """The spec as logged to tracking: data paths and personal params as pseudonyms."""
    from raybrain.privacy import pseudonym

    d = json.loads(spec.model_dump_json())
    d["data"] = _pseudonymise_data(d["data"], task)
    for name, param in task.params.items():
        if param.personal and name in d["params"]:
            value = d["params"][name]
            if isinstance(value, dict):
                d["params"][name] = {k: [pseudonym(str(v), name) for v in vals]
                                     for k, vals in value.items()}
            else:
                d["params"][name] = pseudonym(str(value), name)
    return d


def _pseudonymise_data(value: Any, task, key: str = "") -> Any:
    """Data section with paths and participant ids replaced by keyed pseudonyms."""
    from raybrain.privacy import pseudonym

    if isinstance(value, dict):
        return {k: _pseudonymise_data(v, task, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_pseudonymise_data(v, task, key) for v in value]
    if isinstance(value, str) and value:
        if task.is_data_path_key(key):
            return pseudonym(str(Path(value).expanduser().resolve()), "file")
        if key in ("participant", "participants", "subject"):
            return pseudonym(value, "participant")
    return value
