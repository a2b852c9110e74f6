"""Sweep overhead: wall time of a sweep through Ray Tune + MLflow / ideal wall time.

Three figures, measured in one invocation (``--reps`` rounds of all three, interleaved, and
their medians: a shared machine's speed drifts by tens of per cent over minutes):

- **ideal** = the compute of every run of the spec, measured in this process with one
  torch thread (as trials run) and the same execution (seeds vectorised when the spec
  and task do), divided by the number of CPUs;
- **bare processes**: the sweep's trials (one per config, each with the baseline runs the
  sweep assigns it) trained in ``--cpus`` plain Python processes at once, one thread each,
  no Ray, Tune or MLflow: what the same work takes on these cores with no orchestration;
- **sweep**: ``run_sweep`` of the spec (Ray start to verdict and report).

``sweep / ideal`` is the ratio the targets are stated in. ``bare / ideal`` is what the
machine itself costs when every core is busy (shared caches and memory bandwidth, and the
trials' unequal lengths); ``sweep / bare`` is what raybrain's orchestration costs on top.

    .venv/bin/python bench/sweep_overhead.py [SPEC] [--cpus 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import raybrain.tasks as tasks  # noqa: E402
from raybrain.sweep import load_spec, run_sweep, validate_spec  # noqa: E402
from raybrain.sweep.arms import assign_baselines, spec_config_runs  # noqa: E402
from raybrain.sweep.plan import grid_configs  # noqa: E402
from raybrain.sweep.execute import ConfigExecutor  # noqa: E402


def in_process_compute(spec) -> tuple[float, int]:
    """Seconds to train every distinct run of a grid spec in this process, one thread, the
    way the sweep trains them (seeds vectorised when the spec and task do)."""
    torch.set_num_threads(1)
    task = tasks.get(spec.task)
    data = task.load_data(task.parse_data(spec.data), spec.data_seed)
    runs = {}
    for cfg in grid_configs(spec):
        for r in spec_config_runs(spec, task, cfg, spec.seed_list):
            runs[r.key] = r
    t0 = time.perf_counter()
    ex = ConfigExecutor(task, data, list(runs.values()), task.primary_metric,
                        vectorise=bool(spec.resources.vectorise))
    while not ex.done:
        ex.step()
    return time.perf_counter() - t0, len(runs)


def trial_runs(spec) -> list[list]:
    """The runs of each Tune trial of a grid spec, as the sweep splits them: a config's
    brain-dependent runs and the baseline runs it claims (as its trial does)."""
    from raybrain.sweep.trial import claim_baselines

    task = tasks.get(spec.task)
    plans = [spec_config_runs(spec, task, cfg, spec.seed_list, label=cfg)
             for cfg in grid_configs(spec)]
    claims = {"ledger": None, "finished": [], "assigned": assign_baselines(
        plans, together=bool(spec.resources.vectorise) and task.can_vectorise)}
    trials = []
    for runs in plans:
        me = next(r.config_id for r in runs if not r.is_baseline)
        mine = set(claim_baselines(claims, [r.key for r in runs if r.is_baseline], me))
        trials.append([r for r in runs if not r.is_baseline or r.key in mine])
    return trials


def _slot(spec_path: str, todo, n_trials: int, barrier, busy) -> None:
    """One bare process: load the data, wait for the others, train trials until none is
    left; adds its busy seconds to ``busy``."""
    torch.set_num_threads(1)
    spec = load_spec(spec_path)
    task = tasks.get(spec.task)
    data = task.load_data(task.parse_data(spec.data), spec.data_seed)
    trials = trial_runs(spec)
    barrier.wait()
    t0 = time.perf_counter()
    while True:
        with todo.get_lock():  # the next trial not taken yet, as Tune hands them out
            i = todo.value
            todo.value += 1
        if i >= n_trials:
            break
        ex = ConfigExecutor(task, data, trials[i], task.primary_metric,
                            vectorise=bool(spec.resources.vectorise))
        while not ex.done:
            ex.step()
    with busy.get_lock():
        busy.value += time.perf_counter() - t0


def bare_processes(spec_path: str, spec, cpus: int) -> float:
    """Wall seconds of the sweep's trials in ``cpus`` plain processes (see the doc)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    todo, barrier, busy = ctx.Value("i", 0), ctx.Barrier(cpus + 1), ctx.Value("d", 0.0)
    n_trials = len(trial_runs(spec))
    procs = [ctx.Process(target=_slot, args=(spec_path, todo, n_trials, barrier, busy))
             for _ in range(cpus)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)
    t0 = time.perf_counter()
    for p in procs:
        p.join()
    return time.perf_counter() - t0


def sweep_wall(spec, cpus: int) -> float:
    """Wall seconds of ``run_sweep`` of the spec, in a temporary store and storage."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            t0 = time.perf_counter()
            run_sweep(spec, tracking_uri=f"sqlite:///{d}/mlflow.db", out=lambda s: None,
                      num_cpus=cpus)
            return time.perf_counter() - t0
        finally:
            os.chdir(here)


def main() -> None:
    import json
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "search_spaces" / "b2m_memory_quick.yaml"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=1,
                    help="rounds of (compute, bare processes, sweep), interleaved; medians")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    validate_spec(spec, args.spec)
    if spec.search.algorithm != "grid":
        raise SystemExit("the overhead bench needs a grid spec (every run known up front)")
    # this machine's speed drifts by tens of per cent over minutes when it is shared: each
    # round measures all three one after another, the figures are medians over rounds, and
    # every round is printed and kept
    rounds = []
    for r in range(args.reps):
        compute, n_runs = in_process_compute(spec)
        bare = bare_processes(args.spec, spec, args.cpus)
        wall = sweep_wall(spec, args.cpus)
        rounds.append({"compute_s": round(compute, 1), "bare_processes_s": round(bare, 1),
                       "sweep_s": round(wall, 1)})
        print(f"round {r + 1}: compute {compute:.1f} s, bare processes {bare:.1f} s, "
              f"sweep {wall:.1f} s", flush=True)
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    compute, bare, wall = med["compute_s"], med["bare_processes_s"], med["sweep_s"]
    ideal = compute / args.cpus
    print(f"spec: {Path(args.spec).name}  runs: {n_runs}  cpus: {args.cpus}  rounds: {args.reps}"
          f" (medians)")
    print(f"in-process compute (1 thread):             {compute:.1f} s ({compute / n_runs:.2f} s per run)")
    print(f"ideal sweep wall time (compute / cpus):     {ideal:.1f} s")
    print(f"bare processes ({args.cpus} at once, no Ray/MLflow): {bare:.1f} s")
    print(f"sweep wall time (Ray Tune + MLflow):        {wall:.1f} s")
    print(f"ratio sweep / ideal:                        {wall / ideal:.2f}")
    print(f"ratio bare processes / ideal (the machine): {bare / ideal:.2f}")
    print(f"ratio sweep / bare processes (raybrain):    {wall / bare:.2f}")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    with open(res / "sweep_overhead.json", "a") as f:
        f.write(json.dumps({"spec": Path(args.spec).name, "runs": n_runs, "cpus": args.cpus,
                            "rounds": rounds, "compute_s": compute, "ideal_s": round(ideal, 1),
                            "bare_processes_s": bare, "sweep_s": wall,
                            "ratio": round(wall / ideal, 2),
                            "bare_over_ideal": round(bare / ideal, 2),
                            "sweep_over_bare": round(wall / bare, 2)}) + "\n")


if __name__ == "__main__":
    main()
