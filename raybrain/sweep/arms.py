"""Arms (conditions of the comparison) and the plan of runs of a config.

An arm turns a config's params into the params of its runs. What each arm changes is
read from the task's declarations (:mod:`raybrain.tasks.base`): ``brain_weight`` (the
param in alpha's role) and ``l2_param`` (the weight decay):

=========  ============  =====================================================
arm        brain source  params
=========  ============  =====================================================
brain      real          the config's (brain weight > 0)
shuffled   shuffled      the config's; brain correspondence permuted
noise      noise         the config's; brain surrogates, no correspondence
l2         none          brain knobs dropped, brain weight 0, l2_param from a grid
none       none          brain knobs dropped, brain weight 0, l2_param 0
<ablation> real          the config's with the task's overrides (``Task.ablations``)
=========  ============  =====================================================

Baseline arms (``l2``, ``none``) do not depend on the brain knobs: their runs are keyed by
the params they do use, so every config that shares those params shares the same runs,
which are trained once. Seed k means the same initialisation and data order in every arm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from raybrain.registry import Registry


@dataclass(frozen=True)
class Arm:
    """How an arm derives its runs' params from a config's params.

    ``variants(params, task, arms_spec)`` returns one params dict per run variant at a
    seed (several for ``l2``: one per weight decay). Arms with a brain source run per
    config; arms without one are baselines, shared by the configs that need them. Tasks
    add ablations (e.g. a loss term switched off) with :func:`register_arm`.
    """

    name: str
    brain_source: str | None
    variants: Callable[[dict[str, Any], Any, Any], list[dict[str, Any]]]

    @property
    def is_baseline(self) -> bool:
        return self.brain_source is None


ARMS: Registry[Arm] = Registry("arm")
#: the label key of an ``l2`` run's weight decay (whatever the task calls the param), as
#: the verdict and the report name the best L2 arm: ``l2[weight_decay=1e-05]``
L2_LABEL = "weight_decay"


def register_arm(name: str, brain_source: str | None):
    def deco(fn):
        ARMS.register(name)(Arm(name, brain_source, fn))
        return fn
    return deco


def baseline_params(params: dict[str, Any], task) -> dict[str, Any]:
    """Params without the brain knobs, the brain weight set to 0 (what baselines train with)."""
    brain = task.brain_params()
    out = {k: v for k, v in params.items() if k not in brain}
    if task.brain_weight is not None:
        out[task.brain_weight] = 0.0
    return out


def arm_names(task) -> list[str]:
    """The arms a spec may include for ``task``: the registered ones and its ablations."""
    return sorted({*ARMS.names(), *task.ablations})


def resolve_arm(name: str, task) -> Arm:
    """The arm called ``name``: a registered one, or one of the task's ablations."""
    if name in task.ablations and name not in ARMS:
        overrides = dict(task.ablations[name])
        return Arm(name, "real", lambda params, task, arms_spec: [{**params, **overrides}])
    if name not in ARMS:
        from raybrain.errors import SpecError

        raise SpecError(f"unknown arm {name!r} for task {task.name!r}; expected one of "
                        f"{arm_names(task)}")
    return ARMS.get(name)


@register_arm("brain", "real")
def _brain(params, task, arms_spec):
    return [dict(params)]


@register_arm("shuffled", "shuffled")
def _shuffled(params, task, arms_spec):
    return [dict(params)]


@register_arm("noise", "noise")
def _noise(params, task, arms_spec):
    return [dict(params)]


@register_arm("l2", None)
def _l2(params, task, arms_spec):
    base = baseline_params(params, task)
    return [{**base, task.l2_param: float(w)} for w in arms_spec.l2_grid]


@register_arm("none", None)
def _none(params, task, arms_spec):
    base = baseline_params(params, task)
    return [{**base, task.l2_param: 0.0} if task.l2_param else base]


def params_hash(params: dict[str, Any], data_seed: int) -> str:
    """Short stable hash of a run's identifying params."""
    blob = json.dumps({"params": params, "data_seed": data_seed}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunSpec:
    """One (config, arm, seed) training = one MLflow child run.

    ``config_id`` hashes the params that define the run (for a baseline arm: its own
    params, so configs that share them share the run). ``baseline_key`` hashes the
    params a baseline would use, for brain and baseline runs alike, so the analysis can
    match a config to its baselines.
    """

    sweep: str
    task: str
    arm: str
    seed: int
    params: dict[str, Any]
    brain_source: str | None
    config_id: str
    baseline_key: str
    data_seed: int = 0
    label: dict[str, Any] = field(default_factory=dict)
    #: "search" (seeds that choose configs) or "confirm" (fresh seeds that judge them)
    stage: str = "search"

    @property
    def key(self) -> str:
        """The deterministic run key ``sweep/config_id/arm/seed``."""
        return f"{self.sweep}/{self.config_id}/{self.arm}/{self.seed}"

    @property
    def is_baseline(self) -> bool:
        return self.brain_source is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        return cls(**d)


def plan_config_runs(sweep: str, task, params: dict[str, Any], arms: list[str], arms_spec,
                     seeds: list[int], data_seed: int = 0,
                     label: dict[str, Any] | None = None,
                     stage: str = "search") -> list[RunSpec]:
    """All runs a config needs: its brain-dependent arms and its baselines, x seeds.

    ``params`` are the config's full params (task defaults filled in).
    """
    full = {**task.defaults(), **params}
    bkey = params_hash({k: v for k, v in baseline_params(full, task).items()
                        if k != task.l2_param}, data_seed)
    cid = params_hash(full, data_seed)
    runs = []
    for arm_name in arms:
        arm = resolve_arm(arm_name, task)
        for variant in arm.variants(full, task, arms_spec):
            # an ablation's runs differ from the brain arm's by its overrides only: keyed by
            # the config (they are judged against its brain runs), told apart by the arm
            rid = cid if not arm.is_baseline else params_hash(variant, data_seed)
            lab = dict(label or {}) if not arm.is_baseline else (
                {L2_LABEL: variant[task.l2_param]} if arm_name == "l2" else {})
            for seed in seeds:
                runs.append(RunSpec(sweep=sweep, task=task.name, arm=arm_name, seed=int(seed),
                                    params=variant, brain_source=arm.brain_source,
                                    config_id=rid, baseline_key=bkey, data_seed=data_seed,
                                    label=lab, stage=stage))
    return runs


def spec_config_runs(spec, task, config: dict[str, Any], seeds: list[int],
                     label: dict[str, Any] | None = None,
                     stage: str = "search") -> list[RunSpec]:
    """:func:`plan_config_runs` of one config of ``spec``: the spec's fixed params with the
    config's values over them, the spec's arms and its data seed."""
    return plan_config_runs(spec.name, task, {**spec.fixed(), **config}, spec.arms.include,
                            spec.arms, seeds, spec.data_seed, label=label, stage=stage)


def assign_baselines(plans: list[list[RunSpec]], together: bool = False) -> dict[str, str]:
    """Spread baseline runs over the configs that need them, balancing runs per config.

    ``plans`` holds the planned runs of every config (known up front for a grid). Baseline
    runs go, largest unit first, to the config with the fewest runs so far among those
    that need them, so one Tune trial does not end up training every baseline while the
    others wait. A unit is one run or, with ``together`` (the sweep vectorises its runs),
    every seed of one baseline variant: those runs share their params and train as one
    batch of models, and splitting them over trials would train several smaller batches
    (the quick memory spec's two trials: 61.5 s of compute split, 57.4 s kept whole).
    Returns ``{baseline run key: owner}``, the owner being the config's brain config id.
    """
    load: dict[str, int] = {}
    needs: dict[str, list[str]] = {}
    units: dict[tuple, list[str]] = {}
    for runs in plans:
        owner = next(r.config_id for r in runs if not r.is_baseline)
        load[owner] = sum(1 for r in runs if not r.is_baseline)
        for r in runs:
            if r.is_baseline:
                if r.key not in needs:
                    unit = (r.config_id, r.arm) if together else (r.key,)
                    units.setdefault(unit, []).append(r.key)
                needs.setdefault(r.key, []).append(owner)
    assignment = {}
    for unit in sorted(units, key=lambda u: (-len(units[u]), u)):
        keys = units[unit]
        owners = sorted(set.intersection(*(set(needs[k]) for k in keys)))
        owner = min(owners, key=lambda o: (load[o], o))
        for k in keys:
            assignment[k] = owner
        load[owner] += len(keys)
    return assignment


def config_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched values of a Tune config (grid configs nest them under ``params``)."""
    return dict(config["params"]) if "params" in config else dict(config)


def plan_trial_runs(ctx: dict[str, Any], searched: dict[str, Any]) -> list[RunSpec]:
    """All runs the config needs, before baseline claims."""
    import raybrain.tasks as tasks

    task = tasks.get(ctx["task"])
    params = {**ctx["fixed"], **searched}
    label = {k: searched[k] for k in sorted(searched)}
    return plan_config_runs(ctx["sweep"], task, params, ctx["arms"], ctx["arms_spec"],
                            ctx["seeds"], ctx["data_seed"], label=label, stage=ctx["stage"])
