"""Run a sweep: validate, open MLflow, start (or join) Ray, run the Tuner, resume.

Order matters: everything a user can get wrong is checked before Ray starts and before any
MLflow run exists; the MLflow store is created/migrated here, once, before trials start;
the Tune experiment has a stable name (the sweep's) so re-running the same command resumes
it, and a resume whose spec differs from the stored one is refused.
"""

from __future__ import annotations

import itertools
import logging
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from raybrain.errors import SpecError
from raybrain.sweep.spec import Spec, validate_spec

SPEC_FILE = "raybrain_spec.json"


@dataclass
class SweepPlan:
    """What a sweep will do, known before anything runs."""

    spec: Spec
    configs: list[dict[str, Any]] | None  # grid: every config; optuna/random: None
    num_configs: int
    runs_per_config: int       # brain-dependent runs per config
    baseline_runs: int | None  # distinct baseline runs (grid: exact; else upper bound)
    use_train: bool

    def describe(self) -> str:
        s = self.spec
        lines = [f"sweep {s.name!r}: task {s.task}, search {s.search.algorithm} "
                 f"({self.num_configs} configs), arms {s.arms.include}, seeds {s.seed_list}",
                 f"runs: {self.runs_per_config} brain-dependent per config x {self.num_configs} "
                 f"+ {self.baseline_runs} baseline = "
                 f"{self.runs_per_config * self.num_configs + (self.baseline_runs or 0)}",
                 "execution: " + ("decided at start (use_gpu: auto)" if s.resources.use_gpu == "auto"
                                  and not self.use_train else
                                  "Ray Train TorchTrainer per run" if self.use_train else
                                  "in-process per trial")
                 + f" ({s.resources.num_workers} worker(s), use_gpu={s.resources.use_gpu})"]
        if self.configs is not None:
            for i, c in enumerate(self.configs):
                lines.append(f"  config {i}: {c}")
        return "\n".join(lines)


def grid_configs(spec: Spec) -> list[dict[str, Any]]:
    searched = spec.searched()
    names = sorted(searched)
    values = [next(iter(searched[n].values())) for n in names]
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def make_plan(spec: Spec, task, max_configs: int | None = None) -> SweepPlan:
    from raybrain.sweep.arms import plan_config_runs

    res = spec.resources
    use_train = res.num_workers > 1 or res.use_gpu is True
    if spec.search.algorithm == "grid":
        configs = grid_configs(spec)[: max_configs or None]
        n = len(configs)
    else:
        configs = None
        n = min(spec.search.num_configs, max_configs or spec.search.num_configs)
    sample = configs[0] if configs else {k: _first_value(v) for k, v in spec.searched().items()}
    runs = plan_config_runs(spec.name, task, {**spec.fixed(), **sample}, spec.arms.include,
                            spec.arms, spec.seed_list, spec.data_seed)
    per_config = sum(1 for r in runs if not r.is_baseline)
    if configs is not None:
        keys = set()
        for c in configs:
            keys |= {r.key for r in plan_config_runs(spec.name, task, {**spec.fixed(), **c},
                                                     spec.arms.include, spec.arms,
                                                     spec.seed_list, spec.data_seed)
                     if r.is_baseline}
        baselines = len(keys)
    else:
        brain_searched = set(spec.searched()) & task.brain_params()
        per = sum(1 for r in runs if r.is_baseline)
        baselines = per if set(spec.searched()) <= brain_searched else per * n
    return SweepPlan(spec, configs, n, per_config, baselines, use_train)


def _first_value(dist: dict[str, Any]):
    kind, values = next(iter(dist.items()))
    return values[0]


def _search_setup(spec: Spec, plan: SweepPlan):
    """Param space, search algorithm and number of samples for the Tuner."""
    from ray import tune

    searched = spec.searched()
    if spec.search.algorithm == "grid":
        return {"params": tune.grid_search(plan.configs)}, None, 1
    if spec.search.algorithm == "random":
        space = {}
        for name, dist in searched.items():
            kind, v = next(iter(dist.items()))
            space[name] = {"uniform": lambda v: tune.uniform(*v),
                           "loguniform": lambda v: tune.loguniform(*v),
                           "int": lambda v: tune.randint(v[0], v[1] + 1),
                           "choice": lambda v: tune.choice(v)}[kind](v)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return space, BasicVariantGenerator(random_state=spec.search.seed), plan.num_configs
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = {}
    for name, dist in searched.items():
        kind, v = next(iter(dist.items()))
        space[name] = {"uniform": lambda v: optuna.distributions.FloatDistribution(*v),
                       "loguniform": lambda v: optuna.distributions.FloatDistribution(*v, log=True),
                       "int": lambda v: optuna.distributions.IntDistribution(*v),
                       "choice": lambda v: optuna.distributions.CategoricalDistribution(v)}[kind](v)
    searcher = OptunaSearch(space=space, metric="objective", mode=spec.search.mode,
                            sampler=optuna.samplers.TPESampler(seed=spec.search.seed),
                            study_name=spec.name)
    return {}, searcher, plan.num_configs


@dataclass
class SweepResult:
    spec: Spec
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    table: Any
    wall_s: float


def run_sweep(spec: Spec, *, source: str = "spec", address: str | None = None,
              tracking_uri: str | None = None, name: str | None = None,
              max_configs: int | None = None, seeds: int | None = None,
              dry_run: bool = False, out: Callable[[str], None] | None = None,
              num_cpus: int | None = None) -> SweepResult | SweepPlan:
    """Validate and run ``spec``; returns the plan on ``dry_run``, else the result."""
    t0 = time.time()
    out = out or (lambda line: print(line, flush=True))
    if name is not None or seeds is not None:
        update: dict[str, Any] = {}
        if name is not None:
            update["name"] = name
        if seeds is not None:
            update["seeds"] = seeds
        from raybrain.sweep.spec import parse_spec

        spec = parse_spec({**spec.model_dump(), **update}, source)
    if tracking_uri is not None:
        spec = spec.model_copy(update={"tracking": spec.tracking.model_copy(update={"uri": tracking_uri})})
    checked = validate_spec(spec, source)
    task, data = checked["task"], checked["data"]
    plan = make_plan(spec, task, max_configs)
    if spec.search.metric.removesuffix("_auc") not in task.metrics:
        raise SpecError(f"{source}: search.metric {spec.search.metric!r} is not a metric of "
                        f"task {spec.task!r}; expected one of "
                        f"{sorted(task.metrics + tuple(m + '_auc' for m in task.metrics[:1]))}")
    if dry_run:
        out(plan.describe())
        return plan

    if address and address.startswith("ray://"):
        raise SpecError(f"--address {address!r} is a Ray Client address; the sweep's driver "
                        f"writes MLflow and must run on the cluster: submit it as a Ray Job "
                        f"(ray job submit --address http://HEAD:8265 --working-dir . -- "
                        f"raybrain sweep SPEC --address auto) or pass the GCS address HEAD:6379")
    import ray
    from ray import tune

    from raybrain.sweep.callbacks import MlflowWriter, ProgressPrinter
    from raybrain.sweep.tracking import Tracker
    from raybrain.sweep.trial import BaselineLedger, config_trial

    storage = Path(spec.storage.path).expanduser()
    storage = storage if "://" in spec.storage.path else storage.resolve()
    exp_dir = storage / spec.name
    spec_hash = spec.spec_hash()
    _check_stored_spec(exp_dir, spec_hash, spec.name)

    spec_dict = tracked_spec(spec, task)
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    parent_id = tracker.open_parent(spec.name, spec_hash, spec_dict)
    finished = sorted(tracker.finished_run_keys())

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started_ray = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": False,
                                  "logging_level": logging.WARNING}
        if address is None:
            kwargs.update(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
        ray.init(**kwargs)
        started_ray = True
    for logger in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    try:
        use_gpu = spec.resources.use_gpu
        if use_gpu == "auto":
            use_gpu = ray.cluster_resources().get("GPU", 0) > 0
        res = spec.resources
        use_train = res.num_workers > 1 or bool(use_gpu)
        execution = (f"ray-train TorchTrainer per run (num_workers={res.num_workers}, "
                     f"use_gpu={bool(use_gpu)})" if use_train else "in-process per trial")
        tracker.client.set_tag(parent_id, "raybrain.execution", execution)
        out(plan.describe().splitlines()[0])
        out(f"execution: {execution}")
        ledger_name = f"raybrain-ledger-{spec.name}-{spec_hash}"
        assigned = None
        if plan.configs is not None:
            from raybrain.sweep.arms import assign_baselines, plan_config_runs

            assigned = assign_baselines([
                plan_config_runs(spec.name, task, {**spec.fixed(), **c}, spec.arms.include,
                                 spec.arms, spec.seed_list, spec.data_seed, label=c)
                for c in plan.configs])
        ledger = BaselineLedger.options(name=ledger_name, get_if_exists=True).remote(
            finished, assigned)
        ctx = {"sweep": spec.name, "task": spec.task, "data": spec.data,
               "data_seed": spec.data_seed, "fixed": spec.fixed(), "arms": spec.arms.include,
               "arms_spec": spec.arms, "seeds": spec.seed_list, "metric": spec.search.metric,
               "objective": spec.search.objective, "primary_metric": task.primary_metric,
               "checkpoint_every": spec.storage.checkpoint_every, "ledger": ledger_name,
               "use_train": use_train, "num_workers": res.num_workers, "use_gpu": bool(use_gpu),
               "cpus_per_run": res.cpus_per_run, "storage": str(storage)}
        cpus = ray.cluster_resources().get("CPU", 1)
        if use_train:
            trial_resources = {"cpu": 0.01}
            per_run = res.num_workers * res.cpus_per_run
            default_conc = max(1, int(cpus // per_run))
        else:
            trial_resources = {"cpu": res.cpus_per_run}
            default_conc = max(1, int(cpus // res.cpus_per_run))
        concurrent = res.max_concurrent_trials or spec.search.max_concurrent or default_conc
        trainable = tune.with_resources(tune.with_parameters(config_trial, ctx=ctx),
                                        trial_resources)
        writer = MlflowWriter(tracker)
        printer = ProgressPrinter(plan, out=out, mode=spec.search.mode)
        run_config = tune.RunConfig(
            name=spec.name, storage_path=str(storage), callbacks=[writer, printer], verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.storage.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        from ray.tune import Tuner

        if Tuner.can_restore(str(exp_dir)):
            out(f"resuming sweep {spec.name!r} from {exp_dir}")
            tuner = Tuner.restore(str(exp_dir), trainable, resume_errored=True)
            tuner._local_tuner._run_config.callbacks = [writer, printer]  # callbacks are not pickled
        else:
            param_space, search_alg, num_samples = _search_setup(spec, plan)
            scheduler = None
            if spec.search.scheduler == "asha":
                from ray.tune.schedulers import ASHAScheduler

                epochs = int(spec.fixed().get("epochs", task.params["epochs"].default)) \
                    if "epochs" in task.params else 100
                scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs,
                                          grace_period=spec.search.grace_period)
            tuner = Tuner(trainable, param_space=param_space,
                          tune_config=tune.TuneConfig(metric="objective", mode=spec.search.mode,
                                                      search_alg=search_alg, scheduler=scheduler,
                                                      num_samples=num_samples,
                                                      max_concurrent_trials=concurrent,
                                                      reuse_actors=False,
                                                      # no param values in paths
                                                      trial_dirname_creator=_trial_dirname),
                          run_config=run_config)
            exp_dir.mkdir(parents=True, exist_ok=True)
            (exp_dir / SPEC_FILE).write_text(json.dumps({"spec_hash": spec_hash,
                                                         "spec": spec_dict}, indent=1))
        grid = tuner.fit()
        errors = [r for r in grid if r.error is not None]
        unfinished = [t for t in printer.trials if t.status not in ("TERMINATED", "ERROR")]
        from raybrain.analysis.verdict import format_table, verdict_table

        table = verdict_table(tracker, spec)
        tracker.client.log_text(parent_id, table.to_csv(), "verdict.csv")
        tracker.close_parent("KILLED" if unfinished else "FAILED" if errors else "FINISHED")
        out(format_table(table, spec))
        if unfinished:
            out(f"sweep interrupted with {len(unfinished)} config(s) unfinished; the verdict above "
                f"covers finished runs only; run the same command again to resume")
        if errors:
            out(f"{len(errors)} config(s) failed; first error: {str(errors[0].error).splitlines()[0]}")
        out(f"open the MLflow UI: mlflow ui --backend-store-uri {spec.tracking.uri} "
            f"(experiment {spec.tracking.experiment!r}, parent run {spec.name!r})")
        return SweepResult(spec, parent_id, spec.tracking.uri, tracker.experiment_id, table,
                           time.time() - t0)
    finally:
        if started_ray:
            ray.shutdown()


def _trial_dirname(trial) -> str:
    return f"config_{trial.trial_id}"


def tracked_spec(spec: Spec, task) -> dict[str, Any]:
    """The spec as logged to tracking: data paths and personal params as pseudonyms."""
    from raybrain.sweep.privacy import pseudonym

    d = json.loads(spec.model_dump_json())
    if d["data"].get("path"):
        d["data"]["path"] = pseudonym(str(Path(d["data"]["path"]).resolve()), "file")
    for name, param in task.params.items():
        if param.personal and name in d["params"]:
            value = d["params"][name]
            if isinstance(value, dict):
                d["params"][name] = {k: [pseudonym(str(v), name) for v in vals]
                                     for k, vals in value.items()}
            else:
                d["params"][name] = pseudonym(str(value), name)
    return d


def _check_stored_spec(exp_dir: Path, spec_hash: str, name: str) -> None:
    f = exp_dir / SPEC_FILE
    if f.exists():
        stored = json.loads(f.read_text()).get("spec_hash")
        if stored != spec_hash:
            raise SpecError(f"sweep {name!r} in {exp_dir} was started with spec hash {stored}, "
                            f"but this spec hashes to {spec_hash}; resuming with a changed spec "
                            f"is refused: use another --name or the original spec")
