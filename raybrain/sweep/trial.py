"""The Tune trainable: one Tune trial = one config.

The trial's driver works out the config's runs (brain-dependent arms x seeds, plus the
baseline runs no other trial has claimed), trains them, and reports after every epoch one
aggregate objective (what Optuna and ASHA see) together with every run's metrics (which a
driver-side callback writes to MLflow). Runs train in-process, in lockstep, by default; when
the spec asks for more than one worker or a GPU, each run is a Ray Train ``TorchTrainer``
(:mod:`raybrain.sweep.train`) and the trial relays their per-epoch metrics.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import time
from typing import Any

import ray
from ray import tune

import raybrain.tasks as tasks
from raybrain.sweep.arms import RunSpec, config_params, plan_trial_runs
from raybrain.sweep.execute import ConfigExecutor
from raybrain.sweep.records import mark_resumed, trial_metrics


class BaselineClaims:
    """Which config trains which baseline run (so each is trained once per sweep).

    Owners are configs (their brain config id), not Tune trial ids, so a restarted trial
    gets its claims back. ``assigned`` pre-assigns baseline runs when every config is known
    up front (a grid, balanced by :func:`~raybrain.sweep.arms.assign_baselines`); other
    keys go to the first config that asks. Keys of runs already finished in MLflow are
    never handed out again.

    With every baseline run assigned (a grid) each trial answers its own claim from the
    assignment it is given; otherwise (Optuna, random search: configs appear as the search
    goes) one :data:`BaselineLedger` actor per stage holds the claims.
    """

    def __init__(self, finished: list[str], assigned: dict[str, str] | None = None):
        self.owner: dict[str, str] = dict(assigned or {})
        self.owner.update({k: "<finished>" for k in finished})

    def claim(self, keys: list[str], owner: str) -> list[str]:
        return [k for k in keys if self.owner.setdefault(k, owner) == owner]


#: the claims shared by a stage's trials when configs are not known up front
BaselineLedger = ray.remote(num_cpus=0)(BaselineClaims)


def claim_baselines(ctx: dict[str, Any], keys: list[str], owner: str) -> list[str]:
    """The baseline runs of ``keys`` this config trains (see :class:`BaselineClaims`)."""
    if ctx.get("ledger") is None:
        return BaselineClaims(ctx["finished"], ctx["assigned"]).claim(keys, owner)
    return ray.get(ray.get_actor(ctx["ledger"]).claim.remote(keys, owner))


def config_trial(config: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Tune function trainable (``ctx`` is bound with ``tune.with_parameters``)."""
    torch_threads = max(1, int(ctx.get("cpus_per_run", 1)))
    import torch

    torch.set_num_threads(torch_threads)
    searched = config_params(config)
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "state.pkl"), "rb") as f:
                state = pickle.load(f)
        runs = [RunSpec.from_dict(r) for r in state["runs"]]
    else:
        planned = plan_trial_runs(ctx, searched)
        baselines = [r for r in planned if r.is_baseline]
        owner = next(r.config_id for r in planned if not r.is_baseline)
        mine = set(claim_baselines(ctx, [r.key for r in baselines], owner))
        runs = [r for r in planned if not r.is_baseline or r.key in mine]

    if ctx["use_train"]:
        from raybrain.sweep.train import run_with_train

        run_with_train(ctx, runs, report=lambda metrics: tune.report(metrics))
        return

    task = tasks.get(ctx["task"])
    data = loaded_data(task, ctx["data"], ctx["data_seed"])
    from raybrain.sweep.arrays import storage_sink

    executor = ConfigExecutor(task, data, runs, ctx["primary_metric"],
                              sink=storage_sink(ctx["storage"], ctx["sweep"]),
                              vectorise=ctx.get("vectorise", False),
                              brain_data=ctx.get("log_brain_data", False))
    node_id = ray.get_runtime_context().get_node_id()
    latest: dict[str, dict[str, float]] = {}
    done: set[str] = set()
    replay: list[dict[str, Any]] = []
    if state is not None:
        executor.restore(state["executor"])
        # every epoch of every run is sent again after a restore: the driver may have died
        # before it logged some of them, or MLflow may have been down (the tracker skips
        # the epochs it already has, so nothing is logged twice)
        replay = executor.replay()
        mark_resumed(replay)
    every = ctx["checkpoint_every"]
    last_checkpoint = time.monotonic()
    while not executor.done or replay:
        records = replay + (executor.step() if not executor.done else [])
        replay = []
        peak = peak_memory_mb()
        for rec in records:
            rec["node_id"] = node_id
            latest[rec["key"]] = rec["metrics"]
            if rec["done"]:
                done.add(rec["key"])
                rec.setdefault("summary", {})["peak_memory_mb"] = peak
        metrics = trial_metrics(ctx, runs, latest, done, records, executor.epoch)
        metrics["peak_memory_mb"] = peak
        due = (time.monotonic() - last_checkpoint >= float(ctx.get("checkpoint_s", 30.0))
               if every == "auto" else executor.epoch % int(every) == 0)
        if due or executor.done:
            last_checkpoint = time.monotonic()
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "state.pkl"), "wb") as f:
                    pickle.dump({"runs": [r.to_dict() for r in runs],
                                 "executor": executor.state()}, f)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(metrics)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (the trial's), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


#: the last data a trial process loaded: a reused trial actor (Tune's reuse_actors) or a
#: Train worker that trains several runs loads a sweep's data once
_DATA: dict[str, Any] = {}


def loaded_data(task, data: dict[str, Any], data_seed: int):
    """``task.load_data`` of this data section, loaded once per process."""
    key = json.dumps([task.name, data, data_seed], sort_keys=True, default=str)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = task.load_data(task.parse_data(data), data_seed)
    return _DATA[key]
