"""Training runs one epoch at a time, with no Ray in sight.

:class:`RunProgress` wraps one :class:`~raybrain.tasks.TaskRun`: each :meth:`step` trains
one epoch, evaluates, and returns the epoch's metrics plus the area under the primary
metric's trajectory so far. :class:`ConfigExecutor` holds all runs of a Tune trial and
steps them in lockstep, so the trial can report an aggregate per epoch (what ASHA
compares) and checkpoint after any epoch. The same classes run inside a Tune trial, inside
a Ray Train worker, and directly in-process (unit tests, benchmarks).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from raybrain.analysis.divergence import diverged
from raybrain.sweep.arms import RunSpec
from raybrain.tasks.base import validation_metric


class RunProgress:
    """One run and its metric history.

    Parameters
    ----------
    spec : RunSpec
    run : TaskRun
    primary : str
        Metric whose trajectory area is tracked as ``<primary>_auc``.
    divergence : (metric, threshold) or None
        The task's divergence rule besides non-finite losses: the run diverged if
        ``metric`` went above ``threshold`` and had not come back below it at the end.
    """

    def __init__(self, spec: RunSpec, run, primary: str,
                 divergence: tuple[str, float] | None = None, mode: str = "max",
                 artifact_every: int = 0, sink=None, brain_data: bool = False):
        self.spec, self.run, self.primary, self.divergence = spec, run, primary, divergence
        self.mode = mode
        self.history: dict[str, list[float]] = {}
        self.diverged = False
        #: why the run failed (``"ExcType: message"``), or None
        self.failed: str | None = None
        #: ``sink(spec, epoch, arrays) -> [paths]`` stores the run's arrays (None: dropped)
        self.artifact_every, self.sink, self.brain_data = artifact_every, sink, brain_data
        #: epoch -> stored array paths (kept in the state, so a replay sends them again)
        self.artifact_paths: dict[int, list[str]] = {}

    @property
    def done(self) -> bool:
        return (self.failed is not None or self.diverged or getattr(self.run, "stopped", False)
                or self.run.epoch >= self.run.epochs)

    def step(self, shard: tuple[int, int] = (0, 1)) -> dict[str, float]:
        """Train and evaluate one epoch; returns that epoch's metrics (with ``epoch``)."""
        return self.absorb(self.run.train_epoch(shard), self.run.evaluate)

    @staticmethod
    def finite(train_metrics: dict[str, float]) -> bool:
        return all(math.isfinite(v) for v in train_metrics.values())

    def absorb(self, train_metrics: dict[str, float], evaluate) -> dict[str, float]:
        """Record an epoch trained elsewhere (alone, or in a vectorised group).

        ``evaluate()`` gives the held-out metrics; it is not called when a loss came out
        non-finite (the run diverged and stops).
        """
        metrics = dict(train_metrics)
        if not self.finite(metrics):
            # non-finite loss: the run cannot recover; stop it and flag it
            self.diverged = True
            metrics.update({k: float("nan") for k in (self.primary,
                                                      validation_metric(self.primary))})
        else:
            metrics.update(evaluate())
            self._store_artifacts()
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(float(v))
        trajectory = self.history.get(self.primary, [])
        metrics[f"{self.primary}_auc"] = float(np.mean(trajectory)) if trajectory else float("nan")
        self.history.setdefault(f"{self.primary}_auc", []).append(metrics[f"{self.primary}_auc"])
        metrics["epoch"] = self.run.epoch
        return metrics

    def _store_artifacts(self) -> None:
        e, every = self.run.epoch, self.artifact_every
        if not every or self.sink is None:
            return
        if e % every and e < self.run.epochs and not getattr(self.run, "stopped", False):
            return
        arrays = self.run.artifacts(brain_data=self.brain_data)
        if arrays:
            self.artifact_paths[e] = list(self.sink(self.spec, e, arrays))

    def has_diverged(self) -> bool:
        """The one divergence rule (:func:`raybrain.analysis.divergence.diverged`)."""
        return diverged(self.history, self.divergence, non_finite=self.diverged)

    def summary(self) -> dict[str, float]:
        """Summary metrics logged at the end of a run."""
        out: dict[str, float] = {"diverged": float(self.has_diverged()),
                                 "epochs_done": float(self.run.epoch)}
        for k, vals in self.history.items():
            if not vals:
                continue
            out[f"final_{k}"] = vals[-1]
            finite = [v for v in vals if math.isfinite(v)]
            if finite and (k.endswith("accuracy") or k == self.primary):
                better = max if (k.endswith("accuracy") or self.mode == "max") else min
                out[f"best_{k}"] = better(finite)
        return out

    def record(self, metrics: dict[str, float]) -> dict[str, Any]:
        """One epoch of this run as the record a trial reports (and the tracker logs)."""
        rec = {"key": self.spec.key, "run": self.spec.to_dict(), "epoch": int(metrics["epoch"]),
               "metrics": metrics, "done": self.done}
        if int(metrics["epoch"]) in self.artifact_paths:
            rec["artifacts"] = self.artifact_paths[int(metrics["epoch"])]
        if self.done:
            rec["summary"] = self.summary()
        if self.failed is not None:
            rec["failed"] = self.failed
        return rec

    def fail(self, exc: BaseException) -> dict[str, Any]:
        """Mark the run failed (the other runs of its config go on); returns its record."""
        self.failed = failure_reason(exc)
        return self.record({"epoch": self.run.epoch})

    def replay(self) -> list[dict[str, Any]]:
        """Records of every epoch trained so far, oldest first (sent after a restore).

        The checkpoint holds the whole metric history, so a driver that died before
        writing some epochs (or while MLflow was down) loses none of them: the tracker
        skips the epochs it already has.
        """
        n = self.run.epoch
        out = []
        for e in range(1, n + 1):
            metrics = {k: v[e - 1] for k, v in self.history.items() if len(v) >= e}
            metrics["epoch"] = e
            rec = {"key": self.spec.key, "run": self.spec.to_dict(), "epoch": e,
                   "metrics": metrics, "done": False}
            if e in self.artifact_paths:
                rec["artifacts"] = self.artifact_paths[e]
            out.append(rec)
        if out and self.done:
            out[-1] = {**out[-1], "done": True, "summary": self.summary()}
            if self.failed is not None:
                out[-1]["failed"] = self.failed
        elif not out and self.failed is not None:
            out.append(self.record({"epoch": 0}))
        return out

    def state(self) -> dict[str, Any]:
        return {"run": self.run.state_dict(), "history": self.history, "diverged": self.diverged,
                "failed": self.failed, "stopped": getattr(self.run, "stopped", False),
                "artifact_paths": self.artifact_paths}

    def restore(self, state: dict[str, Any]) -> None:
        self.run.load_state_dict(state["run"])
        self.history = state["history"]
        self.diverged = state["diverged"]
        self.failed = state.get("failed")
        self.run.stopped = bool(state.get("stopped", False))
        self.artifact_paths = {int(k): v for k, v in state.get("artifact_paths", {}).items()}


class ConfigExecutor:
    """All runs of one Tune trial, stepped together one epoch at a time.

    Parameters
    ----------
    task : Task
    data : Any
        The task's loaded data (shared by all runs).
    runs : list[RunSpec]
    primary : str
    device : str
    sink : callable, optional
        Stores the arrays runs keep (see :mod:`raybrain.sweep.arrays`).
    brain_data : bool
        Runs may keep arrays derived from brain data (``tracking.log_brain_data``).
    vectorise : bool
        Train runs that share their params (seeds of an arm, the brain-dependent arms of a
        config) as one group when the task has a vectorised path (``Task.build_group``);
        each run keeps its own progress, records and checkpoint.
    """

    def __init__(self, task, data, runs: list[RunSpec], primary: str, device: str = "cpu",
                 sink=None, vectorise: bool = False, brain_data: bool = False):
        self.task, self.data, self.device = task, data, device
        self._make = lambda r, run: RunProgress(r, run, primary, divergence_rule(task),
                                                task.primary_mode, task.artifact_every, sink,
                                                brain_data)
        self.progress: list[RunProgress] = []
        #: (group, indices into ``progress`` of its members)
        self.groups: list[tuple[Any, list[int]]] = []
        by_params: dict[str, list[RunSpec]] = {}
        for r in runs:
            by_params.setdefault(json.dumps(r.params, sort_keys=True, default=str), []).append(r)
        for members in by_params.values():
            group = None
            if vectorise and len(members) > 1:
                group = task.build_group(data, members[0].params,
                                         [(r.brain_source, r.seed) for r in members], device)
            if group is None:
                for r in members:
                    self.progress.append(self._make(r, task.build(
                        data, r.params, r.brain_source, r.seed, device)))
                continue
            start = len(self.progress)
            self.progress += [self._make(r, m) for r, m in zip(members, group.members)]
            self.groups.append((group, list(range(start, len(self.progress)))))
        grouped = {i for _, idx in self.groups for i in idx}
        self.alone = [i for i in range(len(self.progress)) if i not in grouped]

    @property
    def vectorised(self) -> int:
        """How many runs train in vectorised groups."""
        return sum(len(idx) for _, idx in self.groups)

    @property
    def done(self) -> bool:
        return all(p.done for p in self.progress)

    @property
    def epoch(self) -> int:
        return max(p.run.epoch for p in self.progress)

    def step(self) -> list[dict[str, Any]]:
        """Advance every unfinished run by one epoch.

        Returns one record per run stepped: ``{"key", "run", "epoch", "metrics", "done",
        "summary"}`` (``summary`` only once the run is done). A run whose training raises
        is marked failed (its record carries ``"failed": "ExcType: message"``) and the
        other runs go on; in a vectorised group, an error fails the group's unfinished runs.
        """
        records = []
        for group, idx in self.groups:
            active = [k for k, i in enumerate(idx) if not self.progress[i].done]
            if not active:
                continue
            try:
                trained = group.train_epoch(active)
                ok = [k for k in active if RunProgress.finite(trained[k])]
                evaluated = group.evaluate(ok) if ok else {}
            except Exception as exc:  # the group's runs fail together; the others go on
                records += [self.progress[idx[k]].fail(exc) for k in active]
                continue
            for k in active:
                p = self.progress[idx[k]]
                records.append(p.record(p.absorb(trained[k], lambda k=k: evaluated[k])))
        for i in self.alone:
            p = self.progress[i]
            if p.done:
                continue
            try:
                metrics = p.step()
            except Exception as exc:  # one run's error must not end its config's other runs
                records.append(p.fail(exc))
                continue
            records.append(p.record(metrics))
        return records

    def replay(self) -> list[dict[str, Any]]:
        """Every run's records so far (see :meth:`RunProgress.replay`)."""
        return [rec for p in self.progress for rec in p.replay()]

    def state(self) -> dict[str, Any]:
        return {p.spec.key: p.state() for p in self.progress}

    def restore(self, state: dict[str, Any]) -> None:
        """Restore every run; a group whose unfinished runs were checkpointed at different
        epochs (e.g. trained alone before) is first split into runs trained alone."""
        for group, idx in list(self.groups):
            saved = [state.get(self.progress[i].spec.key) for i in idx]
            epochs = {int(st["run"]["epoch"]) if st else 0 for st in saved
                      if not (st and (st.get("diverged") or st.get("failed") or st.get("stopped")))}
            if len(epochs) > 1:
                self.groups.remove((group, idx))
                for i in idx:
                    r = self.progress[i].spec
                    self.progress[i] = self._make(r, self.task.build(
                        self.data, r.params, r.brain_source, r.seed, self.device))
                self.alone = sorted(self.alone + idx)
        for p in self.progress:
            if p.spec.key in state:
                p.restore(state[p.spec.key])


def failure_reason(exc: BaseException) -> str:
    """One line for a run's failure: the exception type and its message's first line."""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {first}"[:500] if first else type(exc).__name__


def divergence_rule(task) -> tuple[str, float] | None:
    """The task's declared (metric, threshold), or None."""
    if task.divergence_threshold is None:
        return None
    return task.divergence_metric, float(task.divergence_threshold)


def aggregate_objective(records_by_key: dict[str, dict[str, float]], runs: list[RunSpec],
                        metric: str, objective: str) -> float:
    """One number per config for the searcher.

    ``objective="brain"``: mean over seeds of ``metric`` in the brain arm.
    ``objective="margin_shuffled"``: mean over seeds of (brain - shuffled), paired by seed.
    Non-finite values (diverged runs) make the objective NaN, which the searcher treats
    as a failed config.
    """
    by = {(r.arm, r.seed): records_by_key.get(r.key, {}).get(metric, float("nan"))
          for r in runs if not r.is_baseline}
    seeds = sorted({s for (_, s) in by})
    if objective == "brain":
        vals = [by.get(("brain", s), float("nan")) for s in seeds]
    elif objective == "margin_shuffled":
        vals = [by.get(("brain", s), float("nan")) - by.get(("shuffled", s), float("nan"))
                for s in seeds]
    else:
        raise ValueError(f"objective must be 'brain' or 'margin_shuffled', got {objective!r}")
    return float(np.mean(vals)) if vals else float("nan")
