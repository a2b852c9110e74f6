"""Calibration of the verdict: how often the whole procedure says "brain helps".

Each repetition runs the full procedure in-process (no Ray, no MLflow:
:func:`raybrain.sweep.local.run_procedure`): a grid search over alpha on the search seeds,
selection of the best config by the spec's objective, confirmation of it on fresh seeds for
every arm, and the verdict (Holm-corrected exact one-sided Mann-Whitney against shuffled,
noise and the best L2). Repetitions differ in their data seed (fresh episodes, fresh brain
data, fresh permutations and surrogates) and use fresh model seeds.

Under the null generator (brain data with the same statistics and no task information) a
calibrated procedure says "brain helps" at most at the nominal rate (0.05); under the
informative generator the rate is its power.

    .venv/bin/python bench/calibration.py [--reps 60] [--procs 2] [--metric area]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = {
    "name": "calibration", "task": "b2m-memory",
    "data": {"n_train_episodes": 60, "n_heldout_episodes": 10, "n_val_episodes": 60,
             "n_test_episodes": 150, "pre_bins": 2, "post_bins": 3, "context_bins": 2,
             "min_steps": 3, "max_steps": 8, "snr": 2.0},
    "params": {"hidden": 32, "epochs": 10, "batch_size": 8, "lr": 0.01, "transfer": "latent",
               "alpha": {"grid": [0.1, 0.3]}},
    "search": {"algorithm": "grid", "metric": "test_accuracy_auc", "objective": "brain"},
    "arms": {"include": ["brain", "shuffled", "noise", "l2", "none"], "l2_grid": [1e-4]},
    "seeds": 5,
    "confirm": {"configs": 1, "seeds": 5},
}


def one(args: tuple[str, int, str]) -> dict:
    generator, rep, metric = args
    import torch

    torch.set_num_threads(1)
    from raybrain.sweep import parse_spec
    from raybrain.sweep.local import run_procedure

    d = json.loads(json.dumps(SPEC))
    d["data"]["generator"] = generator
    d["data_seed"] = 1000 + rep
    d["seeds"] = list(range(10 * rep, 10 * rep + 5))
    table, chosen = run_procedure(parse_spec(d))
    verdict = next(r["verdict"] for r in table.of("verdict") if r["metric"].startswith(metric))
    p = {r["comparison"]: r["p_mannwhitney_holm"] for r in table.of("test")
         if r["metric"].startswith(metric)}
    return {"generator": generator, "rep": rep, "helps": verdict == "brain helps",
            "chosen": chosen, "p": p}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60, help="repetitions per generator")
    ap.add_argument("--procs", type=int, default=os.cpu_count())
    ap.add_argument("--metric", choices=("area", "final"), default="area")
    ap.add_argument("--out", default=None, help="write every repetition as JSON lines here")
    args = ap.parse_args()
    from scipy.stats import binomtest

    t0 = time.time()
    jobs = [(g, r, args.metric) for r in range(args.reps) for g in ("null", "informative")]
    with ProcessPoolExecutor(args.procs) as pool:
        results = list(pool.map(one, jobs))
    if args.out:
        Path(args.out).write_text("\n".join(json.dumps(r) for r in results) + "\n")
    print(f"procedure: grid over alpha {SPEC['params']['alpha']['grid']}, {SPEC['seeds']} search "
          f"seeds, best config confirmed on {SPEC['confirm']['seeds']} fresh seeds, verdict on "
          f"the trajectory {args.metric} (Holm-corrected exact one-sided Mann-Whitney p < 0.05 "
          f"vs shuffled, noise and best L2)")
    for g in ("null", "informative"):
        hits = [r["helps"] for r in results if r["generator"] == g]
        k, n = sum(hits), len(hits)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        what = "false 'brain helps' rate" if g == "null" else "power"
        print(f"{g:>12}: {what} {k}/{n} = {k / n:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f})")
    print(f"wall time {time.time() - t0:.0f} s on {args.procs} processes")


if __name__ == "__main__":
    main()
