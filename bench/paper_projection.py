"""The paper-scale B2M protocols: projected wall time here, from a timed slice.

For ``search_spaces/b2m_memory.yaml`` and ``b2m_driving.yaml`` (the papers' settings), in
one invocation, one torch thread per run (as a trial with ``cpus_per_run: 1``):

1. time a slice of one run: a few optimisation steps and one evaluation chunk, after one
   warm-up step; extrapolate to an epoch (steps per epoch x time per step + evaluation
   items / chunk x time per chunk);
2. for a task with vectorised replicates (memory), time the same slice for the seeds of
   one arm trained as one group, per run;
3. multiply by the planned run-epochs (``make_plan``) and divide by 2 (runs on both cores).

The GPU line is a projection from the paper's own figure, not a measurement (no GPU
here): the paper reports 14.16 h for the memory task and 113.59 h for driving on one GPU;
raybrain's plan has more runs (it adds the noise arm), so the paper's per-run time is
scaled to raybrain's run count; on a GPU a batch-1 GRU step is bound by kernel launches,
not arithmetic, so a vectorised group of S seeds costs about one run's launches (the line
"vectorised, if launch-bound" divides by S) -- an assumption stated as such.

    .venv/bin/python bench/paper_projection.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import raybrain.tasks as tasks  # noqa: E402
from raybrain.sweep import load_spec  # noqa: E402
from raybrain.sweep.plan import make_plan  # noqa: E402

PAPER_GPU_H = {"b2m-memory": (14.16, 220), "b2m-driving": (113.59, 220)}


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h"


def memory_slice(spec, steps: int) -> dict:
    from raybrain.tasks.b2m_memory import epoch_batches, eval_chunks

    task = tasks.get("b2m-memory")
    data = task.load_data(task.parse_data(spec.data), spec.data_seed)
    params = {**spec.fixed(), "alpha": next(iter(spec.searched()["alpha"].values()))[0]}
    p = {**task.defaults(), **params}
    n_batches = math.ceil(len(data.train) / int(p["batch_size"]))
    n_eval = len(data.test) + len(data.val)
    out = {"steps_per_epoch": n_batches, "eval_items": n_eval}

    # one run alone: time `steps` optimisation steps (one warm-up first)
    run = task.build(data, params, "real", 0)
    real_batches = epoch_batches(run)  # the run's own data order

    def train_steps(k: int):
        from raybrain.tasks.b2m_memory import add_batch, batch_loss, training_batch

        sums = {"task_loss": 0.0, "transfer_loss": 0.0, "loss": 0.0}
        for idx in real_batches[:k]:
            b = training_batch(data.train, idx, run.device)
            o, e = run.model(b.x)
            loss, tl, tv = batch_loss(run, o, e, b)
            run.optimizer.zero_grad()
            loss.backward()
            run.optimizer.step()
            add_batch(sums, loss, tl, tv)

    run.model.train()
    train_steps(1)
    t0 = time.perf_counter()
    train_steps(steps)
    per_step = (time.perf_counter() - t0) / steps
    sl, t_max = next(iter(eval_chunks(data.test, 64)))
    with torch.no_grad():
        run.model.eval()
        run.model(data.test.inputs[sl, :t_max])
        t0 = time.perf_counter()
        run.model(data.test.inputs[sl, :t_max])
        per_item = (time.perf_counter() - t0) / 64
    out["alone_epoch_s"] = per_step * n_batches + per_item * n_eval
    out["alone_train_step_s"], out["alone_eval_item_s"] = per_step, per_item

    # the seeds of an arm as one group (training slice; evaluation is per member)
    seeds = len(spec.seed_list)
    group = task.build_group(data, params, [("real", s) for s in range(seeds)])
    orig_epoch = group.train_epoch

    def group_steps(k: int) -> float:
        # a partial epoch: the first k batches of every member
        import raybrain.tasks.memory_group as bm_group

        saved = bm_group.epoch_batches
        bm_group.epoch_batches = lambda member, shard=(0, 1): saved(member, shard)[:k]
        try:
            t0 = time.perf_counter()
            orig_epoch(list(range(seeds)))
            return time.perf_counter() - t0
        finally:
            bm_group.epoch_batches = saved

    group_steps(1)
    per_group_step = group_steps(steps) / steps
    out["group_seeds"] = seeds
    out["group_train_step_s"] = per_group_step
    out["vectorised_epoch_per_run_s"] = per_group_step * n_batches / seeds + per_item * n_eval
    return out


def driving_slice(spec, steps: int) -> dict:
    from raybrain.tasks.b2m_driving import DrivingTaskData

    task = tasks.get("b2m-driving")
    d = task.parse_data(spec.data)
    p = {**task.defaults(), **spec.fixed()}
    h, w = d.image_height, d.image_width
    rng = np.random.default_rng(0)
    pairs = 3 * 4096 // 4  # the paper spec's 4 sessions of 4096 frames, last fifth held out
    data = DrivingTaskData(
        train=torch.rand(min(d.n_train_scenes, 256), 3, h, w), val=torch.rand(128, 3, h, w),
        test=torch.rand(128, 3, h, w),
        pair_frames=torch.from_numpy(rng.integers(0, 255, (pairs, 3, h, w), dtype=np.uint8)),
        pair_eeg=rng.standard_normal((pairs, int(p["latent_dim"]))).astype(np.float32),
        held_frames=torch.from_numpy(rng.integers(0, 255, (256, 3, h, w), dtype=np.uint8)),
        held_eeg=rng.standard_normal((256, int(p["latent_dim"]))).astype(np.float32),
        pair_session=np.zeros(pairs, dtype=int), data_seed=0,
        diag_index=np.arange(64), provenance={})
    params = {**spec.fixed(), "alpha": next(iter(spec.searched()["alpha"].values()))[0],
              "steps_per_epoch": steps}
    run = task.build(data, params, "real", 0)
    run.train_epoch()  # warm-up
    t0 = time.perf_counter()
    run.train_epoch()
    per_step = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    run._recon(data.test)
    per_item = (time.perf_counter() - t0) / len(data.test)
    n_steps = math.ceil(d.n_train_scenes / int(p["batch_size"]))
    n_eval = d.n_val_scenes + d.n_test_scenes
    return {"steps_per_epoch": n_steps, "eval_items": n_eval, "alone_train_step_s": per_step,
            "alone_eval_item_s": per_item,
            "alone_epoch_s": per_step * n_steps + per_item * n_eval}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for name, fn in (("b2m_memory.yaml", memory_slice), ("b2m_driving.yaml", driving_slice)):
        spec = load_spec(ROOT / "search_spaces" / name)
        task = tasks.get(spec.task)
        plan = make_plan(spec, task)
        sl = fn(spec, args.steps)
        run_epochs = plan.total_epochs
        alone = run_epochs * sl["alone_epoch_s"] / 2
        row = {"runs": plan.total_runs, "run_epochs": run_epochs, **{k: (round(v, 4) if
               isinstance(v, float) else v) for k, v in sl.items()},
               "two_cores_alone_h": round(alone / 3600, 1)}
        gpu_h, paper_runs = PAPER_GPU_H[spec.task]
        row["paper_gpu_h"] = gpu_h
        row["gpu_same_per_run_as_paper_h"] = round(gpu_h * plan.total_runs / paper_runs, 1)
        line = (f"{name}: {plan.total_runs} runs, {run_epochs} run-epochs; one run-epoch "
                f"{sl['alone_epoch_s']:.1f} s here ({sl['steps_per_epoch']} steps x "
                f"{sl['alone_train_step_s']:.3f} s + {sl['eval_items']} eval items x "
                f"{sl['alone_eval_item_s'] * 1000:.2f} ms); 2 cores, runs alone: "
                f"{_hours(alone)}")
        if "vectorised_epoch_per_run_s" in sl:
            vec = run_epochs * sl["vectorised_epoch_per_run_s"] / 2
            row["two_cores_vectorised_h"] = round(vec / 3600, 1)
            row["gpu_vectorised_if_launch_bound_h"] = round(
                row["gpu_same_per_run_as_paper_h"] / sl["group_seeds"], 1)
            line += f"; vectorised {sl['group_seeds']} seeds: {_hours(vec)}"
        print(line)
        print(f"  one GPU (projection, not measured): the paper's {gpu_h} h for {paper_runs} runs"
              f" -> {row['gpu_same_per_run_as_paper_h']} h for raybrain's {plan.total_runs} runs"
              + (f"; vectorised seeds, if launch-bound: "
                 f"{row['gpu_vectorised_if_launch_bound_h']} h" if "vectorised_epoch_per_run_s"
                 in sl else ""))
        rows[name] = row
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "paper_projection.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
