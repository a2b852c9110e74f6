"""The stages of a sweep, each a Tune experiment with a stable name under the storage.

1. **search** (``NAME``): the spec's grid, or Optuna/random configs, on the spec's seeds;
2. **confirm** (``NAME-confirm``, when ``confirm_configs`` > 0): the search's best configs
   re-run for every arm on fresh seeds. The verdict is computed on this stage, never on
   the seeds that chose the configs.

A stage that exists already is restored (``Tuner.restore(..., resume_errored=True)``):
Optuna's study, the grid position and the half-finished configs' runs from their
checkpoints. MLflow is made to match Tune's on-disk results before anything reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from raybrain.errors import SpecError, SweepFailed, SweepInterrupted, TrackingUnavailable
from raybrain.sweep import storage as st
from raybrain.sweep.plan import SweepPlan, choose_configs, search_setup


@dataclass
class StageStatus:
    """What a stage left: per config ``(params, objective, complete)``, errors, unfinished."""

    results: list[tuple[dict[str, Any], float | None, bool]]
    errors: list[BaseException]
    unfinished: int

    @property
    def complete(self) -> bool:
        return self.unfinished == 0

    def merge(self, other: "StageStatus") -> "StageStatus":
        return StageStatus(other.results, self.errors + other.errors,
                           self.unfinished + other.unfinished)


class StageRunner:
    """Runs one stage as a Tune experiment (new, or restored under the same name).

    Parameters
    ----------
    pre : Preflight
        The checked sweep.
    tracker : Tracker
        The one MLflow writer (parent run open).
    finished : list of str
        Run keys already finished in MLflow (never handed out again).
    session : RaySession or None
        Owner of the stop signals (None: no signal handling, e.g. in-process tests).
    """

    def __init__(self, pre, tracker, finished: list[str], out: Callable[[str], None],
                 session=None, tty: bool = False):
        from raybrain.sweep.cluster import capacity, resolve_use_gpu

        self.pre, self.spec, self.task, self.tracker = pre, pre.spec, pre.task, tracker
        self.storage, self.spec_hash = pre.storage, pre.spec.spec_hash()
        self.finished, self.out, self.session, self.tty = finished, out, session, tty
        self.wait_s = self.spec.tracking.wait_s
        #: the data section trials receive (the task's prepared one, else the spec's)
        self.trial_data = self.spec.data
        self._ledgers: dict[str, Any] = {}
        res = self.spec.resources
        local = session.local if session is not None else True
        self.capacity = capacity(autoscaling=not local)
        self.use_gpu = resolve_use_gpu(res.use_gpu, self.capacity, local)
        self.use_train = res.num_workers > 1 or self.use_gpu
        self.vectorise = bool(res.vectorise) and self.task.can_vectorise and not self.use_train
        self.execution = (f"ray-train TorchTrainer per run (num_workers={res.num_workers}, "
                          f"use_gpu={self.use_gpu})" if self.use_train else
                          "in-process per trial, runs that share their params vectorised "
                          "(one batch of models)" if self.vectorise else "in-process per trial")
        if res.vectorise is True and not self.vectorise:
            out("resources.vectorise is true but "
                + ("runs train as TorchTrainers" if self.use_train else
                   f"task {self.task.name!r} has no vectorised path") + ": each run trains alone")
        if self.use_gpu and self.capacity.get("GPU", 0.0) == 0:
            out("the cluster has no GPU node now: GPU runs wait as pending demand, which an "
                "autoscaler answers by adding GPU workers")

    # -- pieces -----------------------------------------------------------------------
    def _claims(self, plan: SweepPlan, name: str) -> dict[str, Any]:
        """How the stage's trials share its baseline runs: a grid's assignment (every config
        known up front: each trial reads its own share, no actor), else a ledger actor."""
        from raybrain.sweep.arms import assign_baselines, spec_config_runs
        from raybrain.sweep.trial import BaselineLedger

        if plan.configs is not None:
            assigned = assign_baselines([
                spec_config_runs(self.spec, self.task, c, plan.seeds, label=c, stage=plan.stage)
                for c in plan.configs], together=self.vectorise)
            return {"ledger": None, "assigned": assigned, "finished": list(self.finished)}
        ledger_name = f"raybrain-ledger-{name}-{self.spec_hash}"
        # keep the handle: a named actor dies with its last handle
        self._ledgers[ledger_name] = BaselineLedger.options(
            name=ledger_name, get_if_exists=True).remote(self.finished)
        return {"ledger": ledger_name}

    def _concurrency(self, plan: SweepPlan) -> int:
        from raybrain.sweep.cluster import concurrency, trial_demand

        spec, res = self.spec, self.spec.resources
        need = trial_demand(res, self.use_train, self.use_gpu)
        fits = concurrency(need, self.capacity, plan.num_configs)
        explicit = res.max_concurrent_trials or spec.search.max_concurrent
        if explicit:
            if explicit > fits and not (self.session is not None and self.session.local):
                self.out(f"warning: max_concurrent {explicit} is above what the cluster can "
                         f"run at once ({fits} config(s) of {need}); the others wait")
            return explicit
        return fits

    def ctx(self, plan: SweepPlan, name: str) -> dict[str, Any]:
        spec, res = self.spec, self.spec.resources
        return {"sweep": spec.name, "task": spec.task, "data": self.trial_data,
                "data_seed": spec.data_seed, "fixed": spec.fixed(), "arms": spec.arms.include,
                "arms_spec": spec.arms, "seeds": plan.seeds, "stage": plan.stage,
                "metric": spec.search.metric, "objective": spec.search.objective,
                "primary_metric": self.task.primary_metric,
                "checkpoint_every": spec.storage.checkpoint_every,
                "checkpoint_s": spec.storage.checkpoint_s,
                **self._claims(plan, name), "use_train": self.use_train,
                "num_workers": res.num_workers, "use_gpu": self.use_gpu,
                "cpus_per_run": res.cpus_per_run, "gpus_per_worker": res.gpus_per_worker,
                "run_max_failures": spec.storage.run_max_failures, "storage": str(self.storage),
                "vectorise": self.vectorise, "log_brain_data": spec.tracking.log_brain_data}

    # -- a stage ----------------------------------------------------------------------
    def run(self, plan: SweepPlan, name: str) -> StageStatus:
        from ray import tune
        from ray.tune import Tuner
        from ray.tune.logger import JsonLoggerCallback

        from raybrain.sweep.callbacks import MlflowWriter
        from raybrain.sweep.progress import ProgressPrinter
        from raybrain.sweep.ray_compat import tolerate_deleted_checkpoints
        from raybrain.sweep.session import StopForwarder
        from raybrain.sweep.trial import config_trial

        spec, res = self.spec, self.spec.resources
        exp_dir = st.join(self.storage, name)
        ctx = self.ctx(plan, name)
        trial_resources = {"cpu": 0.01} if self.use_train else {"cpu": res.cpus_per_run}
        trial_resources.update(res.driver_resources)
        trainable = tune.with_resources(tune.with_parameters(config_trial, ctx=ctx),
                                        trial_resources)
        writer = MlflowWriter(self.tracker, out=self.out, retry_s=spec.tracking.retry_s,
                              flush_s=spec.tracking.flush_s)
        printer = ProgressPrinter(plan, self.task, out=self.out, mode=spec.search.mode,
                                  tty=self.tty)
        # Tune's JSON results first: the on-disk copy MLflow is re-synced from
        callbacks = [JsonLoggerCallback(), writer, printer, StopForwarder(self.session)]
        if Tuner.can_restore(exp_dir):
            self.out(f"resuming {plan.stage} stage of sweep {spec.name!r} from {exp_dir}")
            tuner = Tuner.restore(exp_dir, trainable, resume_errored=True)
            # Tune pickles its run config without our callbacks' state: attach fresh ones
            tuner._local_tuner._run_config.callbacks = callbacks
        else:
            tuner = self._new_tuner(plan, name, trainable, callbacks)
            st.write_stage(self.storage, name, {"spec_hash": self.spec_hash, "stage": plan.stage,
                                                "overrides": self.pre.overrides})
        tolerate_deleted_checkpoints()
        if self.session is not None:
            self.session.in_tune = True
        try:
            grid = tuner.fit()
        except (SpecError, TrackingUnavailable, SweepInterrupted):
            raise
        except Exception as exc:  # Ray lost, the experiment state unreadable, ...
            first = next((ln for ln in str(exc).splitlines() if ln.strip()), "")
            raise SweepFailed(f"sweep {spec.name!r} stopped in its {plan.stage} stage: "
                              f"{type(exc).__name__}: {first[:300]}") from exc
        finally:
            if self.session is not None:
                self.session.in_tune = False
            interrupted = self.session is not None and self.session.stop_signal is not None
            printer.close(final=not interrupted)
        self._settle(writer, exp_dir, grid, printer.trials, interrupted)
        if interrupted:
            self.session.check()
        results = []
        for r in grid:
            m = r.metrics or {}
            complete = bool(m) and m.get("runs_done") == m.get("runs_total") and r.error is None
            results.append((_params(r.config or {}), m.get("objective"), complete))
        unfinished = sum(1 for t in printer.trials if t.status not in ("TERMINATED", "ERROR"))
        return StageStatus(results, [r.error for r in grid if r.error is not None], unfinished)

    def _new_tuner(self, plan, name, trainable, callbacks):
        from ray import tune
        from ray.tune import Tuner

        spec = self.spec
        param_space, search_alg, num_samples = search_setup(spec, plan)
        scheduler = None
        if plan.stage == "search" and spec.search.scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            ep = self.task.epochs_param
            epochs = int(spec.fixed().get(ep, self.task.params[ep].default))
            scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs,
                                      grace_period=spec.search.grace_period)
        return Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="objective", mode=spec.search.mode, search_alg=search_alg,
                scheduler=scheduler, num_samples=num_samples,
                # reused trial actors keep their imports and loaded data between configs
                max_concurrent_trials=self._concurrency(plan), reuse_actors=True,
                trial_dirname_creator=_trial_dirname),  # no param values in paths
            run_config=tune.RunConfig(
                name=name, storage_path=str(self.storage), callbacks=callbacks, verbose=0,
                failure_config=tune.FailureConfig(max_failures=spec.storage.max_failures),
                # 2, not 1: a driver killed after deleting the older checkpoint but before
                # saving its experiment state would otherwise resume from a deleted one
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))

    def _settle(self, writer, exp_dir: str, grid, trials, interrupted: bool = False) -> None:
        """Make MLflow match Tune's on-disk results before anything reads MLflow.

        After an interrupt the backlog gets a short wait only: whatever MLflow misses is
        re-synced from Tune's results when the sweep resumes.
        """
        from raybrain.sweep.callbacks import open_runs
        from raybrain.sweep.resync import resync

        wait = min(self.wait_s, 10.0) if interrupted else self.wait_s
        if not writer.drain(wait):
            if interrupted:
                return
            raise TrackingUnavailable(
                f"MLflow at {self.tracker.uri} was still unreachable {self.wait_s:.0f} s after "
                f"the stage ended, with {len(writer.backlog)} write(s) waiting; nothing is "
                f"lost (every epoch is in {exp_dir} and in the checkpoints): when MLflow is "
                f"back run: {self.pre.resume_command}")
        n = resync(self.tracker, exp_dir)
        if n:
            self.out(f"re-synced {n} record(s) from Tune's results into MLflow")
        if interrupted:
            return  # the unfinished runs are closed as KILLED by the driver
        status = {t.trial_id: t.status for t in trials}
        for r in grid:  # runs a failed or early-stopped config left open
            left = open_runs(r.metrics)
            state = status.get((r.metrics or {}).get("trial_id"))
            if left and state == "ERROR":
                lines = [ln for ln in str(r.error).splitlines() if ln.strip()]
                self.tracker.mark_failed(left, lines[-1][:500] if lines else "config failed")
            elif left and state == "TERMINATED":
                self.tracker.mark_stopped(left)


def chosen_configs(storage, name: str, status: StageStatus, spec) -> list[dict[str, Any]]:
    """The configs to confirm: chosen once, then read back on every resume."""
    f = st.join(st.join(storage, name), st.CHOSEN_FILE)
    text = st.read_text(f)
    if text is not None:
        return json.loads(text)
    chosen = choose_configs(status.results, spec.confirm_configs, spec.search.mode)
    st.write_text(f, json.dumps(chosen))
    return chosen


def _params(config: dict[str, Any]) -> dict[str, Any]:
    from raybrain.sweep.arms import config_params

    return config_params(config)


def _trial_dirname(trial) -> str:
    return f"config_{trial.trial_id}"
