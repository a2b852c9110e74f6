"""Every quick spec: the dry run's cost estimate against the real sweep, and peak memory.

For each spec (default: every ``search_spaces/*quick*.yaml``), in one invocation: the
estimate ``raybrain sweep SPEC --dry-run`` prints (one epoch timed, extrapolated; see
``raybrain/sweep/estimate.py``), then the sweep itself through Ray Tune + MLflow (a
temporary store and storage), its wall time and the peak resident memory of its largest
trial process (metric ``peak_memory_mb`` of the runs). Writes
``bench/results/quick_specs.json`` (a spec measured again replaces its row).

    .venv/bin/python bench/quick_specs.py [SPEC ...] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raybrain.sweep import load_spec, run_sweep  # noqa: E402
from raybrain.sweep.estimate import estimate  # noqa: E402
from raybrain.sweep.preflight import Overrides, preflight  # noqa: E402


def one(path: Path, cpus: int) -> dict:
    spec = load_spec(path)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pre = preflight(spec, str(path), num_cpus=cpus, overrides=Overrides(
                    tracking_uri=f"sqlite:///{d}/mlflow.db", storage_path=f"{d}/results"))
                t0 = time.perf_counter()
                est = estimate(pre, cpus)
                t_est = time.perf_counter() - t0
                t0 = time.perf_counter()
                result = run_sweep(spec, source=str(path), num_cpus=cpus, pre=pre,
                                   out=lambda line: None)
                wall = time.perf_counter() - t0
            from mlflow.tracking import MlflowClient

            tags = MlflowClient(pre.spec.tracking.uri).get_run(result.parent_run_id).data.tags
            peak = float(tags.get("raybrain.peak_trial_memory_mb", "nan"))
        finally:
            os.chdir(here)
    return {"spec": path.name, "runs": pre.plan.total_runs, "estimate_s": round(est.wall_s, 1),
            "estimate_took_s": round(t_est, 1), "sweep_s": round(wall, 1),
            "estimate_over_actual": round(est.wall_s / wall, 2), "peak_trial_memory_mb": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    args = ap.parse_args()
    specs = [Path(s).resolve() for s in args.specs] or sorted(
        (ROOT / "search_spaces").glob("*quick*.yaml"))
    rows = []
    for path in specs:
        row = one(path, args.cpus)
        rows.append(row)
        print(f"{row['spec']:42s} runs {row['runs']:4d}  estimate {row['estimate_s']:7.1f} s  "
              f"sweep {row['sweep_s']:7.1f} s  estimate/actual {row['estimate_over_actual']:.2f}"
              f"  peak trial memory {row['peak_trial_memory_mb']:.0f} MiB", flush=True)
    # the specs measured now replace their earlier rows; the others' rows are kept
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    out = res / "quick_specs.json"
    kept = json.loads(out.read_text()) if out.exists() else []
    now = {r["spec"] for r in rows}
    merged = [r for r in kept if r["spec"] not in now] + rows
    out.write_text(json.dumps(sorted(merged, key=lambda r: r["spec"]), indent=1) + "\n")


if __name__ == "__main__":
    main()
