"""Seed replicates vectorised against the same runs trained one after another.

The quick B2M memory config (``search_spaces/b2m_memory_quick.yaml``, its first alpha), 10
seeds of the brain arm: trained as one vectorised group and as 10 runs one after another,
in one invocation, interleaved epoch by epoch (the group's epoch, then each run's), one
torch thread each (as a trial with ``cpus_per_run: 1``; ``--threads 2``
gives both two). Prints both wall times, their ratio, the split between training and
evaluation, and whether every seed's metrics agree (accuracies exactly, the rest to
floating-point rounding); writes ``bench/results/replicates.json``.

    .venv/bin/python bench/replicates.py [--seeds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import raybrain.tasks as tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spec", default=str(ROOT / "search_spaces" / "b2m_memory_quick.yaml"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = yaml.safe_load(Path(args.spec).read_text())
    task = tasks.get(spec["task"])
    data = task.load_data(task.parse_data(spec["data"]), 0)
    params = {k: v for k, v in spec["params"].items() if not isinstance(v, dict)}
    params["alpha"] = spec["params"]["alpha"]["grid"][0]
    epochs = int(params["epochs"])
    members = [("real", s) for s in range(args.seeds)]

    # warm-up, untimed: a process's first calls initialise torch's kernels for each shape,
    # and the data's brain views are built on first use; whichever path ran first would
    # pay for both
    warm = task.build_group(data, {**params, "epochs": 1}, members[:2])
    warm.train_epoch([0, 1])
    warm.evaluate([0, 1])
    warm_run = task.build(data, {**params, "epochs": 1}, "real", 0)
    warm_run.train_epoch()
    warm_run.evaluate()

    # both, interleaved epoch by epoch (this machine's speed drifts by tens of per cent
    # over minutes, which would otherwise favour whichever ran in the faster minutes):
    # each epoch, the group trains and evaluates, then each of the same runs alone does
    t0 = time.perf_counter()
    group = task.build_group(data, params, members)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    alone = [task.build(data, params, src, seed) for src, seed in members]
    s_build = time.perf_counter() - t0
    active = list(range(len(members)))
    t_train = t_eval = s_train = s_eval = 0.0
    vec_final, seq_final = None, {}
    for _ in range(epochs):
        a = time.perf_counter()
        trained = group.train_epoch(active)
        b = time.perf_counter()
        evaluated = group.evaluate(active)
        t_train, t_eval = t_train + b - a, t_eval + time.perf_counter() - b
        vec_final = {k: {**trained[k], **evaluated[k]} for k in active}
        for k, run in enumerate(alone):
            a = time.perf_counter()
            m = run.train_epoch()
            b = time.perf_counter()
            seq_final[k] = {**m, **run.evaluate()}
            s_train, s_eval = s_train + b - a, s_eval + time.perf_counter() - b
    vec = t_build + t_train + t_eval
    seq = s_build + s_train + s_eval

    worst = {}
    identical_accuracy = True
    for k in active:
        for key, v in seq_final[k].items():
            d = abs(v - vec_final[k][key])
            worst[key] = max(worst.get(key, 0.0), d)
            if key.endswith("accuracy") and d != 0:
                identical_accuracy = False
    out = {"spec": Path(args.spec).name, "seeds": args.seeds, "epochs": epochs,
           "threads": args.threads, "vectorised_s": round(vec, 2), "sequential_s": round(seq, 2),
           "ratio": round(seq / vec, 2),
           "vectorised_train_s": round(t_train, 2), "vectorised_eval_s": round(t_eval, 2),
           "sequential_train_s": round(s_train, 2), "sequential_eval_s": round(s_eval, 2),
           "train_ratio": round(s_train / t_train, 2), "eval_ratio": round(s_eval / t_eval, 2),
           "identical_accuracies": identical_accuracy,
           "max_abs_difference": {k: float(f"{v:.3g}") for k, v in sorted(worst.items())}}
    print(f"{args.seeds} seeds x {epochs} epochs of {out['spec']} (alpha {params['alpha']}), "
          f"{args.threads} thread(s)")
    print(f"vectorised: {vec:.1f} s (train {t_train:.1f} s, evaluate {t_eval:.1f} s)")
    print(f"sequential: {seq:.1f} s (train {s_train:.1f} s, evaluate {s_eval:.1f} s)")
    print(f"ratio sequential / vectorised: {seq / vec:.2f} (training {s_train / t_train:.2f}, "
          f"evaluation {s_eval / t_eval:.2f})")
    print(f"per-seed results: accuracies identical: {identical_accuracy}; largest difference "
          f"of any other metric: {max(v for k, v in worst.items() if not k.endswith('accuracy')):.2g}")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "replicates.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
