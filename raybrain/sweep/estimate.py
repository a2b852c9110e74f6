"""What a sweep will cost, before it runs: time one epoch, extrapolate.

``raybrain sweep SPEC --dry-run`` prepares the spec's data (as ``raybrain data prepare``
would; a sweep then finds it cached), builds the first config's brain-dependent runs,
trains and evaluates an epoch of them (as one vectorised group when the sweep would
vectorise them, else one run alone) to warm up, times the next epochs (up to three while
they take under 3 s in all; their median), and extrapolates:

    compute = (epochs of every planned run) x (time per run-epoch)
    wall    = compute x slowdown / (configs training at once) + start-up + finish

where the configs training at once are ``min(configs, CPUs / cpus_per_run)`` on this
machine; start-up and finish are measured constants of the development machine (Ray's
start, each wave of trials' own start: process, imports, data; the verdict, the report
and Ray's shutdown); slowdown is what trials sharing the machine's cores cost each other
(shared caches and memory bandwidth, the driver's MLflow writes), 1 when one trial runs.
The first epoch warms up caches (allocations, kernels for new shapes) and is not timed.
``bench/quick_specs.py`` compares the estimate with real sweeps.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

#: seconds, measured on the 2-core development machine: a private local Ray starting,
#: and a Tune trial's process start with imports and data (see docs/benchmarks.md)
RAY_START_S = 8.0
TRIAL_START_S = 6.0
#: seconds: verdict, report and Ray's shutdown at the end of a sweep (same machine)
FINISH_S = 5.0
#: per-trial slowdown when several trials share the cores: bench/sweep_overhead.py's
#: "bare processes / ideal" on the quick memory spec (trials in plain processes, 2 at once)
CONCURRENT_SLOWDOWN = 1.25


@dataclass
class Estimate:
    per_run_epoch_s: float
    runs_timed: int
    total_epochs: int
    concurrent: int
    waves: int
    compute_s: float
    wall_s: float
    vectorised: bool

    def describe(self) -> str:
        how = (f"epochs after the first of {self.runs_timed} runs trained together "
               f"(vectorised)" if self.vectorised else "epochs after the first of one run")
        return (f"estimated wall time: ~{_fmt(self.wall_s)} ({self.total_epochs} run-epochs "
                f"x {self.per_run_epoch_s:.3g} s, timed on {how}, over {self.concurrent} "
                f"config(s) at once in {self.waves} wave(s)"
                + (f", x {CONCURRENT_SLOWDOWN} for trials sharing the cores"
                   if self.concurrent > 1 else "")
                + f", plus ~{_fmt(RAY_START_S)} Ray start, ~{_fmt(TRIAL_START_S)} per wave "
                f"of trials starting and ~{_fmt(FINISH_S)} for the verdict and report)")


def _fmt(s: float) -> str:
    s = int(round(s))
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s" if s < 7200 else \
        f"{s / 3600:.1f} h"


def estimate(pre, num_cpus: int | None = None) -> Estimate:
    """Time one epoch of the first config's runs and extrapolate the sweep (module doc)."""
    import torch

    from raybrain.sweep.arms import spec_config_runs
    from raybrain.sweep.execute import ConfigExecutor

    spec, task, plan = pre.spec, pre.task, pre.plan
    prepared, _, _ = task.prepare(pre.data)
    data = task.load_data(task.parse_data(prepared or spec.data), spec.data_seed)
    first = plan.configs[0] if plan.configs else {
        k: next(iter(v.values()))[0] for k, v in spec.searched().items()}
    runs = [r for r in spec_config_runs(spec, task, first, plan.seeds) if not r.is_baseline]
    res = spec.resources
    use_train = res.num_workers > 1 or res.use_gpu is True
    vectorise = bool(res.vectorise) and not use_train and task.can_vectorise
    if not vectorise:
        runs = runs[:1]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(res.cpus_per_run)))
    try:
        ex = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=vectorise)
        ex.step()  # the first epoch warms caches up (allocations, kernels for new shapes)
        # short epochs are timed up to three times (the median: one hiccup of a shared
        # machine would otherwise double the estimate), long ones once
        timed: list[float] = []
        while not ex.done and len(timed) < 3 and (not timed or sum(timed) < 3.0):
            t0 = time.perf_counter()
            ex.step()
            timed.append(time.perf_counter() - t0)
        elapsed = statistics.median(timed) if timed else 0.0
    finally:
        torch.set_num_threads(threads)
    per = elapsed / max(len(runs), 1)
    cpus = num_cpus or os.cpu_count() or 1
    per_trial = res.num_workers * res.cpus_per_run if use_train else res.cpus_per_run
    concurrent = max(1, min(plan.num_configs, math.floor(cpus / per_trial + 1e-9)))
    waves = math.ceil(plan.num_configs / concurrent)
    compute = plan.total_epochs * per
    slowdown = CONCURRENT_SLOWDOWN if concurrent > 1 else 1.0
    wall = compute * slowdown / concurrent + RAY_START_S + waves * TRIAL_START_S + FINISH_S
    return Estimate(per, len(runs), plan.total_epochs, concurrent, waves, compute, wall,
                    vectorise and len(ex.groups) > 0)
