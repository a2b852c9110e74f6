"""What a sweep will run, worked out before anything runs.

A :class:`SweepPlan` is one stage: the search (the spec's grid, or ``num_configs`` configs
drawn by Optuna or at random, on the spec's seeds) or the confirmation (the search's best
configs re-run on fresh seeds). :func:`search_setup` turns a plan into the Tuner's param
space, search algorithm and sample count.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from raybrain.sweep.spec import Spec


@dataclass
class SweepPlan:
    """What a sweep will do, known before anything runs."""

    spec: Spec
    configs: list[dict[str, Any]] | None  # every config when known up front (grid, confirm)
    num_configs: int
    runs_per_config: int       # brain-dependent runs per config
    baseline_runs: int | None  # distinct baseline runs (grid: exact; else upper bound)
    use_train: bool
    stage: str = "search"
    seeds: list[int] | None = None
    #: epochs of all planned runs together (exact when the configs are known up front;
    #: else from the first value of each searched knob)
    total_epochs: int = 0

    @property
    def algorithm(self) -> str:
        return self.spec.search.algorithm if self.stage == "search" else "grid"

    @property
    def total_runs(self) -> int:
        return self.runs_per_config * self.num_configs + (self.baseline_runs or 0)

    def describe(self) -> str:
        s = self.spec
        what = (f"search {s.search.algorithm}" if self.stage == "search"
                else "confirmation of the best search config(s) on fresh seeds")
        lines = [f"sweep {s.name!r} {self.stage} stage: task {s.task}, {what} "
                 f"({self.num_configs} configs), arms {s.arms.include}, seeds {self.seeds}",
                 f"runs: {self.runs_per_config} brain-dependent per config x {self.num_configs} "
                 f"+ {self.baseline_runs} baseline = {self.total_runs}",
                 "execution: " + ("decided at start (use_gpu: auto)" if s.resources.use_gpu == "auto"
                                  and not self.use_train else
                                  "Ray Train TorchTrainer per run" if self.use_train else
                                  "in-process per trial" + (
                                      ", seeds vectorised where the task can"
                                      if s.resources.vectorise else ""))
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


def make_plan(spec: Spec, task, max_configs: int | None = None, stage: str = "search",
              configs: list[dict[str, Any]] | None = None) -> SweepPlan:
    """The plan of one stage.

    ``stage="search"``: the spec's grid (cut to ``max_configs``) or its ``num_configs``
    sampled configs, on the spec's seeds. ``stage="confirm"``: the given ``configs`` on the
    spec's fresh confirmation seeds.
    """
    from raybrain.sweep.arms import spec_config_runs

    res = spec.resources
    use_train = res.num_workers > 1 or res.use_gpu is True
    if stage == "confirm":
        seeds = spec.confirm_seeds
        n = len(configs)
    else:
        seeds = spec.seed_list
        if spec.search.algorithm == "grid":
            configs = grid_configs(spec)[: max_configs or None]
            n = len(configs)
        else:
            configs = None
            n = min(spec.search.num_configs, max_configs or spec.search.num_configs)

    def runs_of(c):
        return spec_config_runs(spec, task, c, seeds, stage=stage)

    sample = configs[0] if configs else {k: _first_value(v) for k, v in spec.searched().items()}
    runs = runs_of(sample)
    per_config = sum(1 for r in runs if not r.is_baseline)

    def epochs(r) -> int:
        return int(r.params.get(task.epochs_param, task.params[task.epochs_param].default))

    if configs is not None:
        planned = {r.key: r for c in configs for r in runs_of(c)}
        baselines = sum(1 for r in planned.values() if r.is_baseline)
        total_epochs = sum(epochs(r) for r in planned.values())
    else:
        # sampled configs share baselines unless a non-brain knob is searched
        per = sum(1 for r in runs if r.is_baseline)
        baselines = per if set(spec.searched()) <= task.brain_params() else per * n
        e = epochs(runs[0])
        total_epochs = (per_config * n + baselines) * e
    return SweepPlan(spec, configs, n, per_config, baselines, use_train, stage, seeds,
                     total_epochs)


def _first_value(dist: dict[str, Any]):
    return next(iter(dist.values()))[0]


def choose_configs(results: list[tuple[dict[str, Any], float | None, bool]], k: int,
                   mode: str) -> list[dict[str, Any]]:
    """The ``k`` best configs of a search, best first.

    ``results`` holds ``(config, objective, complete)`` per Tune trial; configs whose runs
    did not all finish (stopped early, failed) or whose objective is not finite are not
    eligible. Ties keep the search's order.
    """
    import math

    ok = [(c, o) for c, o, complete in results
          if complete and o is not None and math.isfinite(o)]
    ok.sort(key=lambda co: -co[1] if mode == "max" else co[1])
    return [c for c, _ in ok[:k]]


def search_setup(spec: Spec, plan: SweepPlan):
    """Param space, search algorithm and number of samples for the Tuner."""
    from ray import tune

    searched = spec.searched()
    if plan.algorithm == "grid":
        return {"params": tune.grid_search(plan.configs)}, None, 1
    if plan.algorithm == "random":
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


