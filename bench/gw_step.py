"""Forward + backward of the differentiable GW / OT step at N = 256: time and peak memory.

The problem is the one step 2 of the brain-in-the-loop method solves: the max-normalised
cosine distances of N model embeddings (N x 32, requiring grad) against the brain RDM of
the same N concepts (:func:`raybrain.data.concepts.synthetic_concepts`, 256 concepts), for
two states of the model: ``untrained`` (random embeddings: structure unrelated to the
brain's) and ``aligned`` (the concepts' semantic latents plus noise, mapped to 32
dimensions: a model whose structure already resembles the brain's, as during training).
Timing: one subprocess per problem (one torch and one BLAS thread) warms every method up once, then
runs ``--reps`` rounds, each method once per round in a shuffled order, and keeps each
method's median (interleaving makes load from other processes hit all methods alike).
Memory: one fresh subprocess per method and problem; peak memory is the rise of the
process's peak resident set (``resource.getrusage(...).ru_maxrss``) over one forward +
backward. Methods:

- ``pot_exact_gw2``: POT's ``ot.gromov.gromov_wasserstein2`` (exact conditional-gradient
  solve in numpy, envelope gradient attached by POT): the reference;
- ``envelope_exact``: :func:`raybrain.align.gw.gw_loss` (plan by POT without gradient,
  ``gwloss`` differentiated), started from ``p q^T`` as POT is;
- ``envelope_exact_known_pairing``: the same started from the known pairing ``I / N``, as
  :meth:`BrainLoopModel.step2_loss` does on training concepts;
- ``entropic_unrolled``: ``gw_loss(mode="entropic")`` (POT's entropic GW2, autograd
  through every iteration; epsilon 0.01, ``--entropic-outer`` x 100 Sinkhorn iterations);
- ``ot_sinkhorn_100``: the step-1 OT term, :func:`sinkhorn_log_plan` (100 log-domain
  iterations) + :func:`ot_matching_loss`, on the cross cost of the same embeddings.

    .venv/bin/python bench/gw_step.py [--n 256] [--reps 5] [--entropic-outer 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("pot_exact_gw2", "envelope_exact", "envelope_exact_known_pairing",
           "entropic_unrolled", "ot_sinkhorn_100")
PROBLEMS = ("untrained", "aligned")


def _setup(problem: str, n: int, entropic_outer: int):
    """The problem's tensors and one ``step(method) -> loss value`` (forward + backward)."""
    import numpy as np
    import ot
    import torch

    sys.path.insert(0, str(ROOT))
    from raybrain.align.gw import gw_loss, normalise_cost
    from raybrain.align.transport import ot_matching_loss, sinkhorn_log_plan
    from raybrain.data.concepts import synthetic_concepts

    torch.set_num_threads(1)
    d = synthetic_concepts(0, n_basic=n // 32, n_per_basic=16)
    brain = torch.tensor(normalise_cost(d.brain_rdm[:n, :n]), dtype=torch.float64)
    rng = np.random.default_rng(0)
    if problem == "untrained":
        x = rng.normal(size=(n, 32))
    else:
        z = d.info["semantic_latent"][:n]
        x = (z + 0.2 * rng.normal(size=z.shape)) @ rng.normal(size=(z.shape[1], 32))
    emb = torch.tensor(x, requires_grad=True)
    voxels = torch.tensor(d.brain[:n, :32], dtype=torch.float64)

    def model_cost():
        u = torch.nn.functional.normalize(emb, dim=1)
        c = (1 - u @ u.T).clamp_min(0) * (1 - torch.eye(n, dtype=emb.dtype))
        return normalise_cost(c)

    def step(method: str) -> float:
        if method == "pot_exact_gw2":
            loss = ot.gromov.gromov_wasserstein2(model_cost(), brain)
        elif method == "envelope_exact":
            loss = gw_loss(model_cost(), brain)
        elif method == "envelope_exact_known_pairing":
            loss = gw_loss(model_cost(), brain, G0=np.eye(n) / n)
        elif method == "entropic_unrolled":
            loss = gw_loss(model_cost(), brain, mode="entropic", epsilon=0.01,
                           max_iter=entropic_outer, inner_iter=100)
        else:
            u = torch.nn.functional.normalize(emb, dim=1)
            M = (1 - u @ torch.nn.functional.normalize(voxels, dim=1).T) / 2
            loss = ot_matching_loss(sinkhorn_log_plan(M, 0.05, n_iter=100, stop_thr=0),
                                    torch.arange(n))
        emb.grad = None
        loss.backward()
        assert torch.isfinite(emb.grad).all() and emb.grad.abs().max() > 0
        return float(loss)

    return step


def child_times(problem: str, methods: list[str], n: int, reps: int,
                entropic_outer: int) -> list[dict]:
    """Interleaved timing: ``reps`` rounds, each method once per round in a shuffled order
    (so load from other processes hits every method alike); median per method."""
    import random

    step = _setup(problem, n, entropic_outer)
    values = {m: step(m) for m in methods}  # warm-up (first-call costs)
    times: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    rnd = random.Random(0)
    for _ in range(reps):
        rnd.shuffle(order)
        for m in order:
            t0 = time.perf_counter()
            step(m)
            times[m].append(time.perf_counter() - t0)
    return [{"method": m, "problem": problem, "n": n, "seconds": statistics.median(times[m]),
             "seconds_all": times[m], "value": values[m]} for m in methods]


def child_memory(problem: str, method: str, n: int, entropic_outer: int) -> float:
    """Rise of the peak resident set (MB) over one forward + backward, in a fresh process."""
    import resource

    step = _setup(problem, n, entropic_outer)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(method)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--entropic-outer", type=int, default=20)
    ap.add_argument("--child", help="internal: comma-separated methods to run in this process")
    ap.add_argument("--memory", action="store_true", help="internal: measure peak memory")
    ap.add_argument("--problem", choices=PROBLEMS, default="untrained")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gw_step.json")
    args = ap.parse_args()
    if args.child:
        if args.memory:
            print(json.dumps(child_memory(args.problem, args.child, args.n,
                                          args.entropic_outer)))
        else:
            print(json.dumps(child_times(args.problem, args.child.split(","), args.n,
                                         args.reps, args.entropic_outer)))
        return

    # one thread for numpy's BLAS too (POT's exact solver runs in numpy): on a shared
    # machine a multi-threaded BLAS makes single calls several times slower at random
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}

    def run(*extra):
        proc = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--reps",
                               str(args.reps), "--entropic-outer", str(args.entropic_outer),
                               *extra], capture_output=True, text=True, check=True, cwd=ROOT,
                              env=env)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = []
    for problem in PROBLEMS:
        methods = [m for m in METHODS if problem == "untrained" or m != "ot_sinkhorn_100"]
        timed = run("--child", ",".join(methods), "--problem", problem)
        for r in timed:
            r["peak_mb"] = run("--child", r["method"], "--problem", problem, "--memory")
        rows += timed
    print(f"forward + backward at N = {args.n}, median of {args.reps} interleaved rounds "
          f"(one torch thread)")
    print(f"{'problem':10s} {'method':30s} {'seconds':>8s} {'peak MB':>8s} "
          f"{'/ POT exact':>11s} {'value':>9s}")
    for r in rows:
        ref = next(q for q in rows if q["method"] == "pot_exact_gw2"
                   and q["problem"] == r["problem"])
        r["ratio_to_pot_exact"] = r["seconds"] / ref["seconds"]
        print(f"{r['problem']:10s} {r['method']:30s} {r['seconds']:8.4f} {r['peak_mb']:8.1f} "
              f"{r['ratio_to_pot_exact']:11.3f} {r['value']:9.5f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "reps": args.reps, "rows": rows}, indent=1))
    print(f"written {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
