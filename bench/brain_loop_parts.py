"""How much of a brain-in-the-loop run could train as a batch of seeds: the Amdahl bound.

Vectorised replicates stack the seeds' weights and run one batched product where each
seed ran its own. In a brain-in-the-loop run only the two encoders (the model side's MLP
adaptor over frozen features, and the brain encoder) have the same shapes across seeds
and no per-seed control flow; the rest cannot be batched across seeds: each seed builds
its own kNN graph from its own adaptor output, torch-geometric's ``GATv2Conv`` takes one
weight set per call, the exact GW plan comes from POT's solver in numpy one problem at a
time, and the evaluation's one-shot episodes, silhouettes and GW matchings are per model.

This bench takes a spec's brain run (default the quick spec,
``search_spaces/brain_loop_gw_quick.yaml``, its first ``lambda2``; ``--spec
search_spaces/brain_loop_gw.yaml --epochs 20`` for the paper's sizes, searched params at
the middle of their ranges) and measures, one torch thread, epoch by epoch over the run's
training (the quick spec's 30 epochs; every tenth also solves the evaluation's GW
matchings), after an untimed warm-up epoch of another seed:

- **epoch**: one training epoch + one evaluation of the run, as a trial runs it;
- **encoders**: every forward and backward pass of the two encoders that epoch's training
  makes (the same calls on the same shapes: for each batch, step 1 embeds the brain and the
  features once for the match scores and the features twice more for the model's own task;
  step 2 embeds the features once for the structure cost and twice for the own task), plus
  the evaluation's adaptor passes: the work stacking could share.

The rest (``epoch - encoders``) runs once per seed whatever the stacking. With the
encoders made free by stacking, ``k`` seeds take at least ``k * (epoch - encoders)``
against ``k * epoch`` alone, so the speed-up is at most ``epoch / (epoch - encoders)``.

Stacking does not make the encoders free: it runs the same arithmetic in fewer, larger
calls. The bench also times, for ``--stack`` seeds (5), one forward + backward of both
encoders on a training batch done as one call (one seed's encoders on the ``k`` batches
concatenated: the best case of stacking, see :func:`stacked_ratio`) against the ``k``
seeds one after another (medians of interleaved rounds), and projects the speed-up
stacking could give at best: ``run / (rest + encoders * one call / one after another)``.
Writes the figures under the spec's name in ``bench/results/brain_loop_parts.json``.

    .venv/bin/python bench/brain_loop_parts.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import raybrain.tasks as tasks  # noqa: E402


def encoder_passes(run, batches) -> float:
    """Seconds of the encoders' forward + backward passes one training epoch and one
    evaluation make, on the same inputs (gradients discarded)."""
    m = run._module()
    m.train()
    c = m.config
    t0 = time.perf_counter()
    for batch in batches:
        for step in (1, 2):
            outs = [m.embed_model(batch.features)]
            if step == 1 or c.structure_source == "encoder":
                outs.append(m.embed_brain(batch.brain))
            if c.self_weight > 0:
                # the own task's two views (their feature dropout is elementwise: left out)
                outs += [m.embed_model(batch.features), m.embed_model(batch.features2)]
            sum(o.square().sum() for o in outs).backward()
            m.zero_grad(set_to_none=True)
    with torch.no_grad():
        m.eval()
        d = run.data
        for idx in (d.test, d.val, d.test):  # _downstream(test), _downstream(val), RDM
            items = d.concepts.items_of(idx)
            m.embed_model(torch.as_tensor(d.concepts.features[items], dtype=torch.float32))
    return time.perf_counter() - t0


def middle(dist: dict):
    """The value the bench trains with for a searched param: a grid's first value, the
    middle of a range (geometric for ``loguniform``, rounded for ``int``)."""
    (kind, values), = dist.items()
    if kind in ("grid", "choice"):
        return values[0]
    low, high = values
    if kind == "loguniform":
        return float(np.sqrt(low * high))
    return round((low + high) / 2) if kind == "int" else (low + high) / 2


def stacked_ratio(task, data, params, k: int, rounds: int = 7) -> tuple[float, float]:
    """(as one call, one after another) seconds of one forward + backward of both encoders
    for ``k`` seeds on a training batch (medians of ``rounds`` interleaved rounds).

    "As one call" is one seed's encoders on the ``k`` batches concatenated: the same
    arithmetic as ``k`` stacked seeds in one call of the largest possible matrix
    products, without the cost of batching ``k`` weight sets. ``torch.func.vmap`` over
    stacked weights is slower still here: it has no batching rule for CPU attention
    (``scaled_dot_product_attention``) and loops over the seeds.
    """
    runs = [task.build(data, params, "real", s) for s in range(k)]
    m0 = runs[0]._module()
    batch = m0.batches(runs[0].train_data, runs[0].data.train, int(params["batch_size"]),
                       np.random.default_rng(0))[0]
    feats = batch.features.repeat(k, 1)
    brain = batch.brain.repeat(k, 1)

    def one_call():
        out = m0.embed_model(feats).square().sum() + m0.embed_brain(brain).square().sum()
        out.backward()
        m0.zero_grad(set_to_none=True)

    def one_after_another():
        for r in runs:
            m = r._module()
            out = m.embed_model(batch.features).square().sum() + \
                m.embed_brain(batch.brain).square().sum()
            out.backward()
            m.zero_grad(set_to_none=True)

    one_call(), one_after_another()  # warm-up
    times = {"call": [], "seq": []}
    for _ in range(rounds):
        for name, fn in (("call", one_call), ("seq", one_after_another)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return statistics.median(times["call"]), statistics.median(times["seq"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "search_spaces" / "brain_loop_gw_quick.yaml"))
    ap.add_argument("--epochs", type=int, default=0,
                    help="epochs to time (default: the spec's; the paper spec has 500)")
    ap.add_argument("--stack", type=int, default=5, help="seeds stacked in the vmap timing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = yaml.safe_load(Path(args.spec).read_text())
    task = tasks.get(spec["task"])
    data = task.load_data(task.parse_data(spec["data"]), 0)
    params = {k: v for k, v in spec["params"].items() if not isinstance(v, dict)}
    for k, v in spec["params"].items():
        if isinstance(v, dict):
            params[k] = middle(v)
    params = {**task.defaults(), **params}
    warm = task.build(data, params, "real", 1)
    warm.train_epoch()  # warm-up: first calls initialise kernels and the data's views
    warm.evaluate()
    run = task.build(data, params, "real", 0)
    n_epochs = args.epochs or int(params["epochs"])
    epochs, encoders = [], []
    for _ in range(n_epochs):
        t0 = time.perf_counter()
        run.train_epoch()
        run.evaluate()
        epochs.append(time.perf_counter() - t0)
        m = run._module()
        seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1)))
        batches = m.batches(run.train_data, run.data.train, int(run.p["batch_size"]),
                            np.random.default_rng(seed))
        encoders.append(encoder_passes(run, batches))
    epoch, enc = sum(epochs), sum(encoders)
    bound = epoch / max(epoch - enc, 1e-9)
    print(f"{spec['name']} brain run (lambda2={params['lambda2']:g}), one thread, {n_epochs} "
          f"epochs (median epoch {statistics.median(epochs) * 1000:.0f} ms, slowest "
          f"{max(epochs) * 1000:.0f} ms):")
    print(f"  the run (train + evaluate): {epoch:.2f} s")
    print(f"  encoders' passes in it:     {enc:.2f} s ({enc / epoch:.1%})")
    print(f"  per-seed rest:              {epoch - enc:.2f} s")
    print(f"  speed-up bound of stacking seeds (encoders free): {bound:.2f}x")
    st, sq = stacked_ratio(task, data, params, args.stack)
    projected = epoch / ((epoch - enc) + enc * st / sq)
    print(f"  encoders of {args.stack} seeds, one batch, forward + backward: as one call "
          f"{st * 1000:.1f} ms, one after another {sq * 1000:.1f} ms ({sq / st:.2f}x)")
    print(f"  projected speed-up of stacking {args.stack} seeds, at best: {projected:.2f}x")
    out = ROOT / "bench" / "results" / "brain_loop_parts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text()) if out.exists() else {}
    rows[spec["name"]] = {"run_s": epoch, "encoders_s": enc, "fraction": enc / epoch,
                         "bound": bound, "epochs": n_epochs, "spec": spec["name"],
                         "stack": args.stack, "one_call_s": st, "one_after_another_s": sq,
                         "projected": projected,
                         "epoch_runs_s": epochs, "encoder_runs_s": encoders}
    out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
