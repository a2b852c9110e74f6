"""Runs as Ray Train ``TorchTrainer`` s (Train V2), for specs with several workers or a GPU.

Each run of a trial becomes one ``TorchTrainer`` whose workers execute
:func:`train_loop_per_worker`: the same :class:`~raybrain.sweep.execute.RunProgress` loop
as in-process trials, with the model wrapped for data parallelism and the training
episodes sharded by rank. Rank 0's per-epoch metrics travel back to the trial through a
``ray.util.queue.Queue`` fed by a :class:`ray.train.UserCallback` on the Train
controller; the trial reports an aggregate to Tune as soon as every run has finished that
epoch. Each trainer has a stable name (from its run key) under the sweep's storage, so a
restarted trial resumes every run from its last checkpoint.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from typing import Any, Callable

import ray
import ray.train
import torch
from ray.train import UserCallback
from ray.util.queue import Empty, Queue

import raybrain.tasks as tasks
from raybrain.sweep.arms import RunSpec
from raybrain.sweep.execute import (RunProgress, aggregate_objective, divergence_rule,
                                    failure_reason)
from raybrain.sweep.records import OPEN_KEY, RECORDS_KEY, mark_resumed


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Worker body: build the run, resume from Train's checkpoint, train, report."""
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("cpus_per_run", 1))))
    spec = RunSpec.from_dict(config["run"])
    task = tasks.get(spec.task)
    from raybrain.sweep.trial import loaded_data

    data = loaded_data(task, config["data"], spec.data_seed)
    device = ray.train.torch.get_device()
    run = task.build(data, spec.params, spec.brain_source, spec.seed, device=str(device))
    if world > 1:
        run.wrap_model(ray.train.torch.prepare_model)
    from raybrain.sweep.arrays import storage_sink

    sink = storage_sink(config["storage"], spec.sweep) if rank == 0 else None
    progress = RunProgress(spec, run, config["primary_metric"], divergence_rule(task),
                           task.primary_mode, task.artifact_every, sink,
                           config.get("log_brain_data", False))
    node_id = ray.get_runtime_context().get_node_id()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            progress.restore(torch.load(os.path.join(d, "state.pt"), weights_only=False))
        replay = progress.replay()
        if replay:
            # every epoch so far is sent again: the trial or the sweep's driver may have
            # died before relaying some of them (the tracker skips epochs it already has)
            mark_resumed(replay)
            ray.train.report({"records": replay, "node_id": node_id})
    from raybrain.sweep.trial import peak_memory_mb

    while not progress.done:
        metrics = progress.step(shard=(rank, world))
        record = progress.record(metrics)
        if record["done"]:
            record["summary"]["peak_memory_mb"] = peak_memory_mb()
        payload = {"records": [record], "node_id": node_id}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(progress.state(), os.path.join(d, "state.pt"))
                ray.train.report(payload, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(payload)


class QueueRelay(UserCallback):
    """Controller-side callback: puts rank 0's report of one run on the trial's queue."""

    def __init__(self, queue: Queue, key: str):
        self.queue, self.key = queue, key

    def after_report(self, run_context, metrics, checkpoint):
        self.queue.put((self.key, metrics[0]))


def _trainer_name(key: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def run_with_train(ctx: dict[str, Any], runs: list[RunSpec],
                   report: Callable[[dict[str, Any]], None]) -> None:
    """Train every run as a TorchTrainer (concurrently) and relay epochs to Tune."""
    import json

    from ray.train.torch import TorchTrainer

    queue = Queue(actor_options={"num_cpus": 0})
    failures: dict[str, str] = {}

    def fit(spec: RunSpec) -> None:
        try:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={"run": spec.to_dict(), "data": ctx["data"],
                                   "primary_metric": ctx["primary_metric"],
                                   "cpus_per_run": ctx["cpus_per_run"],
                                   "storage": ctx["storage"],
                                   "log_brain_data": ctx.get("log_brain_data", False)},
                scaling_config=ray.train.ScalingConfig(
                    num_workers=ctx["num_workers"], use_gpu=ctx["use_gpu"],
                    resources_per_worker=worker_resources(ctx)),
                run_config=ray.train.RunConfig(
                    name=_trainer_name(spec.key), storage_path=ctx["storage"],
                    failure_config=ray.train.FailureConfig(
                        max_failures=ctx.get("run_max_failures", 0)),
                    callbacks=[QueueRelay(queue, spec.key)]),
            )
            trainer.fit()
        except Exception as exc:  # recorded as this run's failure; the other runs go on
            failures[spec.key] = failure_reason(exc)
        finally:
            queue.put((spec.key, None))

    threads = [threading.Thread(target=fit, args=(r,), daemon=True) for r in runs]
    for t in threads:
        t.start()
    by_key = {r.key: r for r in runs}
    pending: dict[int, list[dict[str, Any]]] = {}
    latest: dict[str, dict[str, float]] = {}
    epochs: dict[str, int] = {}
    finished: set[str] = set()   # thread ended
    done: set[str] = set()       # run reported its last epoch (or failed)

    def flush(upto: float) -> None:
        for epoch in sorted(e for e in pending if e <= upto):
            report({"objective": aggregate_objective(latest, runs, ctx["metric"], ctx["objective"]),
                    "epoch": epoch, "runs_total": len(runs), "runs_done": len(done),
                    RECORDS_KEY: json.dumps(pending.pop(epoch)),
                    OPEN_KEY: json.dumps(sorted(k for k in by_key if k not in done))})

    while len(finished) < len(runs):
        try:
            key, payload = queue.get(timeout=1.0)
        except Empty:
            continue
        if payload is None:
            finished.add(key)
            if key in failures and key not in done:
                done.add(key)
                rec = {"key": key, "run": by_key[key].to_dict(), "epoch": epochs.get(key, 0),
                       "metrics": {"epoch": epochs.get(key, 0)}, "done": True,
                       "summary": {"epochs_done": float(epochs.get(key, 0))},
                       "failed": failures[key]}
                pending.setdefault(epochs.get(key, 0), []).append(rec)
        else:
            for rec in payload["records"]:
                rec["node_id"] = payload["node_id"]
                epoch = int(rec["epoch"])
                epochs[key] = max(epochs.get(key, 0), epoch)
                latest[key] = rec["metrics"]
                if rec["done"]:
                    done.add(key)
                pending.setdefault(epoch, []).append(rec)
        # an epoch is complete once every run still training has reported it
        training = [k for k in by_key if k not in done and k not in finished]
        flush(min((epochs.get(k, 0) for k in training), default=float("inf")))
    flush(float("inf"))
    for t in threads:
        t.join()


def worker_resources(ctx: dict[str, Any]) -> dict[str, float]:
    """Resources of one Train worker: the spec's CPUs, and GPUs when use_gpu is on."""
    res = {"CPU": float(ctx["cpus_per_run"])}
    if ctx["use_gpu"]:
        res["GPU"] = float(ctx.get("gpus_per_worker", 1.0))
    return res
