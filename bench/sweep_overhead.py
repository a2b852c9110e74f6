"""Sweep overhead: wall time of a sweep through Ray Tune + MLflow / ideal wall time.

Ideal = the compute of every run of the spec, measured in this same process with one
torch thread (as trials run) and the same execution (seeds vectorised when the spec and
task do), divided by the number of CPUs. The ratio says what
Ray, Tune, trial start-up, checkpoints and MLflow writes cost on top of the training
itself. Both are measured in one invocation, on the same machine state.

    .venv/bin/python bench/sweep_overhead.py [SPEC] [--cpus 2]
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
from raybrain.sweep.arms import plan_config_runs  # noqa: E402
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
        for r in plan_config_runs(spec.name, task, {**spec.fixed(), **cfg}, spec.arms.include,
                                  spec.arms, spec.seed_list, spec.data_seed):
            runs[r.key] = r
    t0 = time.perf_counter()
    ex = ConfigExecutor(task, data, list(runs.values()), task.primary_metric,
                        vectorise=bool(spec.resources.vectorise))
    while not ex.done:
        ex.step()
    return time.perf_counter() - t0, len(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default=str(ROOT / "search_spaces" / "b2m_memory_quick.yaml"))
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    spec = load_spec(args.spec)
    validate_spec(spec, args.spec)
    if spec.search.algorithm != "grid":
        raise SystemExit("the overhead bench needs a grid spec (every run known up front)")
    # compute measured before and after the sweep (this machine's speed drifts by tens of
    # per cent over minutes when it is shared): the ratio uses their mean, both are printed
    before, n_runs = in_process_compute(spec)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        t0 = time.perf_counter()
        run_sweep(spec, tracking_uri=f"sqlite:///{d}/mlflow.db", out=lambda s: None,
                  num_cpus=args.cpus)
        wall = time.perf_counter() - t0
        os.chdir(here)
    after, _ = in_process_compute(spec)
    compute = (before + after) / 2
    ideal = compute / args.cpus
    print(f"spec: {Path(args.spec).name}  runs: {n_runs}  cpus: {args.cpus}")
    print(f"in-process compute (1 thread):             {compute:.1f} s ({compute / n_runs:.2f} s per run;"
          f" {before:.1f} s before the sweep, {after:.1f} s after)")
    print(f"ideal sweep wall time (compute / cpus):     {ideal:.1f} s")
    print(f"sweep wall time (Ray Tune + MLflow):        {wall:.1f} s")
    print(f"ratio sweep / ideal:                        {wall / ideal:.2f}")
    import json

    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    with open(res / "sweep_overhead.json", "a") as f:
        f.write(json.dumps({"spec": Path(args.spec).name, "runs": n_runs, "cpus": args.cpus,
                            "compute_s": round(compute, 1), "compute_before_s": round(before, 1),
                            "compute_after_s": round(after, 1), "ideal_s": round(ideal, 1),
                            "sweep_s": round(wall, 1), "ratio": round(wall / ideal, 2)}) + "\n")


if __name__ == "__main__":
    main()
