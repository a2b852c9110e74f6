"""The whole procedure in one process, without Ray or MLflow: search, selection,
confirmation on fresh seeds, verdict.

Same plans, runs, objective, selection rule and verdict as a Ray sweep, so it measures
what a sweep would conclude; used by the calibration benchmark (many repetitions of the
procedure on null and informative brain data) and by tests. Grid and random searches
enumerate or draw configs here; ``optuna`` runs a real Optuna study (TPE, ask/tell) with
one objective value per config.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import raybrain.tasks as tasks
from raybrain.analysis.verdict import VerdictTable, build_verdict
from raybrain.sweep.arms import RunSpec
from raybrain.sweep.execute import ConfigExecutor, aggregate_objective
from raybrain.sweep.plan import choose_configs, make_plan
from raybrain.sweep.spec import Spec, validate_spec
from raybrain.sweep.arms import plan_trial_runs
from raybrain.tasks.base import validation_metric


def _ctx(spec: Spec, seeds: list[int], stage: str) -> dict[str, Any]:
    return {"sweep": spec.name, "task": spec.task, "fixed": spec.fixed(),
            "arms": spec.arms.include, "arms_spec": spec.arms, "seeds": seeds,
            "data_seed": spec.data_seed, "stage": stage}


def _record(progress, align_metrics=()) -> dict[str, Any]:
    """The verdict's record of a finished run (as :func:`runs_to_records` reads MLflow)."""
    spec: RunSpec = progress.spec
    summary = progress.summary()
    prim = progress.primary
    rec = {"arm": spec.arm, "seed": spec.seed, "config_id": spec.config_id,
           "baseline_key": spec.baseline_key, "label": spec.label,
           "final": summary.get(f"final_{prim}", math.nan),
           "area": summary.get(f"final_{prim}_auc", math.nan),
           "best": summary.get(f"best_{prim}", math.nan),
           "val": summary.get(f"final_{validation_metric(prim)}", math.nan),
           "diverged": bool(summary["diverged"]), "baseline": spec.is_baseline}
    for a in align_metrics:
        rec[a] = summary.get(f"final_{a}", math.nan)
    return rec


class _Stage:
    """Runs configs of one stage in-process; each baseline run once per stage."""

    def __init__(self, spec: Spec, task, data, seeds: list[int], stage: str):
        self.spec, self.task, self.data = spec, task, data
        self.ctx = _ctx(spec, seeds, stage)
        self.done: dict[str, dict[str, Any]] = {}   # run key -> record
        self.latest: dict[str, dict[str, float]] = {}

    def run_config(self, searched: dict[str, Any]) -> float:
        runs = plan_trial_runs(self.ctx, searched)
        todo = [r for r in runs if r.key not in self.done]
        ex = ConfigExecutor(self.task, self.data, todo, self.task.primary_metric,
                            vectorise=bool(self.spec.resources.vectorise))
        while not ex.done:
            for rec in ex.step():
                self.latest[rec["key"]] = rec["metrics"]
        for p in ex.progress:
            self.done[p.spec.key] = _record(p, tuple(self.task.align_metrics))
        return aggregate_objective(self.latest, runs, self.spec.search.metric,
                                   self.spec.search.objective)


def run_procedure(spec: Spec, source: str = "spec") -> tuple[VerdictTable, list[dict[str, Any]]]:
    """Search, select, confirm and judge ``spec`` in-process.

    Returns the verdict table (on the confirmation stage when the spec has one) and the
    configs the search selected (empty without a confirmation stage).
    """
    task = tasks.get(spec.task)
    validate_spec(spec, source)
    data = task.load_data(task.parse_data(spec.data), spec.data_seed)
    search = _Stage(spec, task, data, spec.seed_list, "search")
    results: list[tuple[dict[str, Any], float, bool]] = []
    plan = make_plan(spec, task)
    if plan.configs is not None:
        for c in plan.configs:
            results.append((c, search.run_config(c), True))
    elif spec.search.algorithm == "random":
        rng = np.random.default_rng(spec.search.seed)
        for _ in range(plan.num_configs):
            c = {name: _draw(dist, rng) for name, dist in spec.searched().items()}
            results.append((c, search.run_config(c), True))
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize" if spec.search.mode == "max" else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
        for _ in range(plan.num_configs):
            trial = study.ask()
            c = {name: _suggest(trial, name, dist) for name, dist in spec.searched().items()}
            value = search.run_config(c)
            study.tell(trial, value if math.isfinite(value) else None,
                       state=None if math.isfinite(value) else optuna.trial.TrialState.FAIL)
            results.append((c, value, True))
    stage, chosen = search, []
    if spec.confirm_configs:
        chosen = choose_configs(results, spec.confirm_configs, spec.search.mode)
        stage = _Stage(spec, task, data, spec.confirm_seeds, "confirm")
        for c in chosen:
            stage.run_config(c)
    table = build_verdict(list(stage.done.values()), task.primary_metric, task.primary_mode,
                          spec.significance, spec.arms.include, spec.verdict_stage,
                          task.align_metrics, tuple(task.baseline_controls))
    return table, chosen


def _draw(dist: dict[str, Any], rng: np.random.Generator):
    kind, v = next(iter(dist.items()))
    if kind == "uniform":
        return float(rng.uniform(*v))
    if kind == "loguniform":
        return float(np.exp(rng.uniform(np.log(v[0]), np.log(v[1]))))
    if kind == "int":
        return int(rng.integers(v[0], v[1] + 1))
    return v[int(rng.integers(len(v)))]


def _suggest(trial, name: str, dist: dict[str, Any]):
    kind, v = next(iter(dist.items()))
    if kind == "uniform":
        return trial.suggest_float(name, *v)
    if kind == "loguniform":
        return trial.suggest_float(name, *v, log=True)
    if kind == "int":
        return trial.suggest_int(name, *v)
    return trial.suggest_categorical(name, v)
