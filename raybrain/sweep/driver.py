"""Run a sweep: validate, open MLflow, start (or join) Ray, run the stages, resume.

Order matters: everything a user can get wrong is checked before Ray starts and before any
MLflow run exists; the MLflow store is created/migrated here, once, before trials start.
A sweep has up to two stages, each a Tune experiment with a stable name under the spec's
storage (``NAME`` and ``NAME-confirm``), so re-running the same command resumes it; a
resume whose spec differs from the stored one is refused:

1. **search**: the spec's grid, or Optuna/random configs, on the spec's seeds;
2. **confirm** (when ``confirm_configs`` > 0): the search's best configs re-run for every
   arm on fresh seeds. The verdict is computed on this stage, never on the seeds that
   chose the configs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raybrain.errors import SpecError
from raybrain.sweep.plan import SweepPlan, choose_configs, make_plan, search_setup
from raybrain.sweep.spec import Spec, validate_spec

SPEC_FILE = "raybrain_spec.json"
CHOSEN_FILE = "raybrain_confirm_configs.json"


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
              name: str | None = None,
              max_configs: int | None = None, seeds: int | None = None,
              dry_run: bool = False, out: Callable[[str], None] | None = None,
              num_cpus: int | None = None, resume: bool = False, dashboard: bool = False,
              dashboard_host: str = "127.0.0.1") -> SweepResult | SweepPlan:
    """Validate and run ``spec``; returns the search plan on ``dry_run``, else the result.

    ``address``: None starts a private local Ray; ``auto`` or ``HOST:6379`` joins a cluster
    from one of its nodes; ``ray://HOST:10001`` runs the sweep's driver on the cluster
    (see :mod:`raybrain.sweep.remote`). ``resume``: the sweep must exist already
    (a sweep with the same name always resumes; the flag makes that explicit and refuses
    a typo'd name). An MLflow that cannot be written mid-sweep is retried every
    ``tracking.retry_s`` seconds and waited for ``tracking.wait_s`` seconds at the end of
    a stage before :class:`~raybrain.errors.TrackingUnavailable` is raised.
    """
    t0 = time.time()
    out = out or (lambda line: print(line, flush=True))
    spec = _apply_overrides(spec, source, name=name, seeds=seeds, tracking_uri=tracking_uri,
                            storage_path=storage_path)
    checked = validate_spec(spec, source)
    task = checked["task"]
    plan = make_plan(spec, task, max_configs)
    _check_metric(spec, task, source)
    if dry_run:
        out(plan.describe())
        if spec.confirm_configs:
            out(f"then: the best {spec.confirm_configs} config(s) re-run for every arm on "
                f"fresh seeds {spec.confirm_seeds}; the verdict uses those runs")
        return plan
    from raybrain.sweep.cluster import check_tracking_uri

    check_tracking_uri(spec.tracking.uri)
    if address and address.startswith("ray://"):
        from raybrain.sweep.remote import run_remote

        return run_remote(spec, address, out=out, max_configs=max_configs, resume=resume)

    import ray

    from raybrain.sweep.tracking import Tracker

    trial_data, lines, brain_files = task.prepare(checked["data"])
    for line in lines:
        out(line)
    storage_uri = storage_root(spec)
    storage = Path(storage_uri) if "://" not in storage_uri else storage_uri
    spec_hash = spec.spec_hash()
    _check_stored_spec(storage, spec.name, spec_hash)
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    if resume and tracker.find_parent(spec.name) is None and not _stage_exists(storage, spec.name):
        raise SpecError(f"--resume: there is no sweep {spec.name!r} to resume (no parent run in "
                        f"{spec.tracking.uri}, experiment {spec.tracking.experiment!r}, and no "
                        f"Tune experiment under {storage_uri}); check --name and the spec's "
                        f"storage.path, or run without --resume to start it")
    parent_id = tracker.open_parent(spec.name, spec_hash, tracked_spec(spec, task))
    if spec.tracking.log_brain_data:
        for path in brain_files:
            tracker.client.log_artifact(parent_id, path, "brain_data")
    # the driver may have died while MLflow was down: write what Tune's results hold first
    from raybrain.sweep.resync import resync

    for stage_name in (spec.name, f"{spec.name}-confirm"):
        if _stage_exists(storage, stage_name):
            n = resync(tracker, _join(storage, stage_name))
            if n:
                out(f"re-synced {n} record(s) of stage {stage_name!r} from Tune's results into MLflow")
    finished = sorted(tracker.finished_run_keys())

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started_ray = False
    if not ray.is_initialized():
        from raybrain.sweep.cluster import ray_init_kwargs

        context = ray.init(**ray_init_kwargs(address, num_cpus, dashboard, dashboard_host))
        started_ray = True
        if dashboard and address is None:
            out(f"Ray dashboard (and Jobs API): http://{context.dashboard_url}"
                if context.dashboard_url else "the Ray dashboard did not start (see Ray's "
                "log under /tmp/ray/session_latest/logs); the sweep goes on without it")
    for logger in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    # per-epoch MLflow writes of a lockstep trial take ~0.5 s; Tune's "slow callback" hints
    # would drown the progress lines
    logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)
    try:
        runner = _StageRunner(spec, task, tracker, storage, spec_hash, finished, out,
                              local=started_ray and address is None)
        if trial_data is not None:
            runner.trial_data = trial_data
        out(plan.describe().splitlines()[0])
        out(f"execution: {runner.execution}")
        tracker.client.set_tag(parent_id, "raybrain.execution", runner.execution)
        tracker.client.set_tag(parent_id, "raybrain.driver_node_id",
                               ray.get_runtime_context().get_node_id())
        status = runner.run(plan, spec.name)
        chosen = None
        if spec.confirm_configs and status.complete:
            chosen = _chosen(_join(storage, spec.name), status, spec)
            if not chosen:
                raise SpecError(f"sweep {spec.name!r}: no config completed its search, so "
                                f"there is nothing to confirm")
            tracker.client.set_tag(parent_id, "raybrain.confirmed_configs",
                                   json.dumps(chosen, sort_keys=True)[:5000])
            cplan = make_plan(spec, task, stage="confirm", configs=chosen)
            out(cplan.describe().splitlines()[0])
            status = status.merge(runner.run(cplan, f"{spec.name}-confirm"))

        from raybrain.analysis.verdict import format_table, verdict_table

        table = verdict_table(tracker, spec)
        tracker.client.log_text(parent_id, table.to_csv(), "verdict.csv")
        tracker.close_parent("KILLED" if not status.complete else
                             "FAILED" if status.errors else "FINISHED")
        out(format_table(table, spec))
        if not status.complete:
            out(f"sweep interrupted with {status.unfinished} config(s) unfinished; the verdict "
                f"above covers finished runs only; run the same command again to resume")
        if status.errors:
            lines = [ln for ln in str(status.errors[0]).splitlines() if ln.strip()]
            out(f"{len(status.errors)} config(s) failed; first error: {lines[-1] if lines else '?'}")
        try:
            from raybrain.analysis.report import build_report

            out(f"report: {build_report(spec.name, spec.tracking.uri, spec.tracking.experiment)}")
        except Exception as exc:  # the runs and the verdict are safe in MLflow already
            out(f"the report could not be written ({type(exc).__name__}: {exc}); "
                f"retry with: raybrain report {spec.name} --tracking-uri {spec.tracking.uri}")
        out(f"open the MLflow UI: raybrain ui --tracking-uri {spec.tracking.uri} "
            f"--experiment {spec.tracking.experiment} --sweep {spec.name}")
        return SweepResult(spec, parent_id, spec.tracking.uri, tracker.experiment_id, table,
                           time.time() - t0, chosen)
    finally:
        if started_ray:
            ray.shutdown()


@dataclass
class _StageStatus:
    results: list[tuple[dict[str, Any], float | None, bool]]
    errors: list[BaseException]
    unfinished: int

    @property
    def complete(self) -> bool:
        return self.unfinished == 0

    def merge(self, other: "_StageStatus") -> "_StageStatus":
        return _StageStatus(other.results, self.errors + other.errors,
                            self.unfinished + other.unfinished)


class _StageRunner:
    """Runs one stage as a Tune experiment (new, or restored under the same name)."""

    def __init__(self, spec: Spec, task, tracker, storage, spec_hash: str,
                 finished: list[str], out: Callable[[str], None], local: bool = True):
        from raybrain.sweep.cluster import capacity, resolve_use_gpu

        self.spec, self.task, self.tracker, self.storage = spec, task, tracker, storage
        self.spec_hash, self.finished, self.out = spec_hash, finished, out
        self.wait_s = spec.tracking.wait_s
        #: the data section trials receive (the task's prepared one, else the spec's)
        self.trial_data = spec.data
        self._ledgers: dict[str, Any] = {}
        res = spec.resources
        self.capacity = capacity(autoscaling=not local)
        self.use_gpu = resolve_use_gpu(res.use_gpu, self.capacity, local)
        self.use_train = res.num_workers > 1 or self.use_gpu
        self.execution = (f"ray-train TorchTrainer per run (num_workers={res.num_workers}, "
                          f"use_gpu={self.use_gpu})" if self.use_train else "in-process per trial")
        if self.use_gpu and self.capacity.get("GPU", 0.0) == 0:
            out("the cluster has no GPU node now: GPU runs wait as pending demand, which an "
                "autoscaler answers by adding GPU workers")

    def _ledger(self, plan: SweepPlan, name: str) -> str:
        from raybrain.sweep.arms import assign_baselines, plan_config_runs
        from raybrain.sweep.trial import BaselineLedger

        spec = self.spec
        assigned = None
        if plan.configs is not None:
            assigned = assign_baselines([
                plan_config_runs(spec.name, self.task, {**spec.fixed(), **c}, spec.arms.include,
                                 spec.arms, plan.seeds, spec.data_seed, label=c, stage=plan.stage)
                for c in plan.configs])
        ledger_name = f"raybrain-ledger-{name}-{self.spec_hash}"
        # keep the handle: a named actor dies with its last handle
        self._ledgers[ledger_name] = BaselineLedger.options(
            name=ledger_name, get_if_exists=True).remote(self.finished, assigned)
        return ledger_name

    def _concurrency(self, plan: SweepPlan) -> int:
        from raybrain.sweep.cluster import concurrency, trial_demand

        spec, res = self.spec, self.spec.resources
        explicit = res.max_concurrent_trials or spec.search.max_concurrent
        if explicit:
            return explicit
        need = trial_demand(res, self.use_train, self.use_gpu)
        return concurrency(need, self.capacity, plan.num_configs)

    def run(self, plan: SweepPlan, name: str) -> _StageStatus:
        from ray import tune
        from ray.tune import Tuner
        from ray.tune.logger import JsonLoggerCallback

        from raybrain.sweep.callbacks import MlflowWriter, ProgressPrinter
        from raybrain.sweep.trial import config_params, config_trial

        spec, res = self.spec, self.spec.resources
        exp_dir = _join(self.storage, name)
        ctx = {"sweep": spec.name, "task": spec.task, "data": self.trial_data,
               "data_seed": spec.data_seed, "fixed": spec.fixed(), "arms": spec.arms.include,
               "arms_spec": spec.arms, "seeds": plan.seeds, "stage": plan.stage,
               "metric": spec.search.metric, "objective": spec.search.objective,
               "primary_metric": self.task.primary_metric,
               "checkpoint_every": spec.storage.checkpoint_every,
               "ledger": self._ledger(plan, name), "use_train": self.use_train,
               "num_workers": res.num_workers, "use_gpu": self.use_gpu,
               "cpus_per_run": res.cpus_per_run, "gpus_per_worker": res.gpus_per_worker,
               "run_max_failures": spec.storage.run_max_failures, "storage": str(self.storage)}
        trial_resources = {"cpu": 0.01} if self.use_train else {"cpu": res.cpus_per_run}
        trial_resources.update(res.driver_resources)
        concurrent = self._concurrency(plan)
        trainable = tune.with_resources(tune.with_parameters(config_trial, ctx=ctx),
                                        trial_resources)
        writer = MlflowWriter(self.tracker, out=self.out, retry_s=spec.tracking.retry_s)
        printer = ProgressPrinter(plan, out=self.out, mode=spec.search.mode)
        # Tune's JSON results first: the on-disk copy MLflow is re-synced from
        callbacks = [JsonLoggerCallback(), writer, printer]
        if Tuner.can_restore(exp_dir):
            self.out(f"resuming {plan.stage} stage of sweep {spec.name!r} from {exp_dir}")
            tuner = Tuner.restore(exp_dir, trainable, resume_errored=True)
            # Tune pickles its run config without our callbacks' state: attach fresh ones
            tuner._local_tuner._run_config.callbacks = callbacks
        else:
            param_space, search_alg, num_samples = search_setup(spec, plan)
            scheduler = None
            if plan.stage == "search" and spec.search.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                ep = self.task.epochs_param
                epochs = int(spec.fixed().get(ep, self.task.params[ep].default))
                scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs,
                                          grace_period=spec.search.grace_period)
            tuner = Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(
                    metric="objective", mode=spec.search.mode, search_alg=search_alg,
                    scheduler=scheduler, num_samples=num_samples,
                    max_concurrent_trials=concurrent, reuse_actors=False,
                    trial_dirname_creator=_trial_dirname),  # no param values in paths
                run_config=tune.RunConfig(
                    name=name, storage_path=str(self.storage), callbacks=callbacks,
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.storage.max_failures),
                    # 2, not 1: a driver killed after deleting the older checkpoint but before
                    # saving its experiment state would otherwise resume from a deleted one
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
            _write_text(_join(exp_dir, SPEC_FILE), json.dumps(
                {"spec_hash": self.spec_hash, "stage": plan.stage}, indent=1))
        from raybrain.sweep.ray_compat import tolerate_deleted_checkpoints

        tolerate_deleted_checkpoints()
        grid = tuner.fit()
        self._settle(writer, exp_dir, grid, printer.trials)
        results = []
        for r in grid:
            m = r.metrics or {}
            complete = bool(m) and m.get("runs_done") == m.get("runs_total") and r.error is None
            results.append((config_params(r.config or {}), m.get("objective"), complete))
        unfinished = sum(1 for t in printer.trials if t.status not in ("TERMINATED", "ERROR"))
        return _StageStatus(results, [r.error for r in grid if r.error is not None], unfinished)

    def _settle(self, writer, exp_dir: str, grid, trials) -> None:
        """Make MLflow match Tune's on-disk results before anything reads MLflow."""
        from raybrain.errors import TrackingUnavailable
        from raybrain.sweep.callbacks import open_runs
        from raybrain.sweep.resync import resync

        if not writer.drain(self.wait_s):
            raise TrackingUnavailable(
                f"MLflow at {self.tracker.uri} was still unreachable {self.wait_s:.0f} s after "
                f"the stage ended, with {len(writer.backlog)} write(s) waiting; nothing is "
                f"lost (every epoch is in {exp_dir} and in the checkpoints): when MLflow is "
                f"back run the same command with --resume")
        n = resync(self.tracker, exp_dir)
        if n:
            self.out(f"re-synced {n} record(s) from Tune's results into MLflow")
        status = {t.trial_id: t.status for t in trials}
        for r in grid:  # runs a failed or early-stopped config left open
            left = open_runs(r.metrics)
            state = status.get((r.metrics or {}).get("trial_id"))
            if left and state == "ERROR":
                lines = [ln for ln in str(r.error).splitlines() if ln.strip()]
                self.tracker.mark_failed(left, lines[-1][:500] if lines else "config failed")
            elif left and state == "TERMINATED":
                self.tracker.mark_stopped(left)


def _chosen(exp_dir: str, status: _StageStatus, spec: Spec) -> list[dict[str, Any]]:
    """The configs to confirm: chosen once, then read back on every resume."""
    f = _join(exp_dir, CHOSEN_FILE)
    text = _read_text(f)
    if text is not None:
        return json.loads(text)
    chosen = choose_configs(status.results, spec.confirm_configs, spec.search.mode)
    _write_text(f, json.dumps(chosen))
    return chosen


def storage_root(spec: Spec) -> str:
    """The spec's storage path, absolute (local) or as given (``s3://``, ``gs://``...)."""
    if "://" in spec.storage.path:
        return spec.storage.path.rstrip("/")
    return str(Path(spec.storage.path).expanduser().resolve())


def _join(root, name: str) -> str:
    return f"{str(root).rstrip('/')}/{name}"


def _read_text(path: str) -> str | None:
    import pyarrow.fs

    from raybrain.sweep.resync import filesystem as _filesystem

    fs, p = _filesystem(path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def _write_text(path: str, text: str) -> None:
    from raybrain.sweep.resync import filesystem as _filesystem

    fs, p = _filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def _stage_exists(storage, name: str) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(_join(storage, name))


def _apply_overrides(spec: Spec, source: str, *, name, seeds, tracking_uri,
                     storage_path=None) -> Spec:
    if name is not None or seeds is not None:
        from raybrain.sweep.spec import parse_spec

        update: dict[str, Any] = {}
        if name is not None:
            update["name"] = name
        if seeds is not None:
            update["seeds"] = seeds
        spec = parse_spec({**spec.model_dump(), **update}, source)
    if tracking_uri is not None:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(
            update={"uri": tracking_uri})})
    if storage_path is not None:
        spec = spec.model_copy(update={"storage": spec.storage.model_copy(
            update={"path": storage_path})})
    return spec


def _check_metric(spec: Spec, task, source: str) -> None:
    allowed = task.metrics + (f"{task.primary_metric}_auc",)
    if spec.search.metric not in allowed:
        raise SpecError(f"{source}: search.metric {spec.search.metric!r} is not a metric of "
                        f"task {spec.task!r}; expected one of {sorted(allowed)}")


def _trial_dirname(trial) -> str:
    return f"config_{trial.trial_id}"


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


def _check_stored_spec(storage, name: str, spec_hash: str) -> None:
    for stage_name in (name, f"{name}-confirm"):
        exp_dir = _join(storage, stage_name)
        text = _read_text(_join(exp_dir, SPEC_FILE))
        if text is None:
            continue
        stored = json.loads(text).get("spec_hash")
        if stored != spec_hash:
            raise SpecError(f"sweep {name!r} in {exp_dir} was started with spec hash {stored}, "
                            f"but this spec hashes to {spec_hash}; resuming with a changed spec "
                            f"is refused: use another --name or the original spec")
