"""Would vectorising seeds pay for the B2M driving VAE on CPU? One training step of S seeds.

The quick driving spec's VAE (widths 8-16-32-64, 256 fully connected units, 64-d latent,
48 x 96 images, batch 32), S = 5 seeds: the S models trained one after another against
the same S models as one ``torch.func`` batch (``stack_module_state`` + ``vmap`` of
``grad_and_value`` over ``functional_call``, dropout drawn per seed). Batch norm's running
statistics are switched off in both (``vmap`` cannot update them in place); the step is
otherwise the task's. Three steps of each after one warm-up, twice, interleaved, one
thread; writes ``bench/results/driving_vmap.json``.

    .venv/bin/python bench/driving_vmap.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raybrain.models.vae import DrivingVAE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    s, batch = args.seeds, 32
    models = []
    for seed in range(s):
        torch.manual_seed(seed)
        m = DrivingVAE((3, 8, 16, 32, 64), 256, 64, 0.1, (48, 96))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.track_running_stats, mod.running_mean, mod.running_var = False, None, None
        models.append(m)
    x = torch.rand(s, batch, 3, 48, 96)

    def one_by_one() -> None:
        for k, m in enumerate(models):
            recon, mu, logvar = m(x[k])
            DrivingVAE.vae_loss(recon, x[k], mu, logvar)[0].backward()

    params, buffers = stack_module_state(models)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, xi):
        recon, mu, logvar = functional_call(skeleton, (p, b), (xi,))
        return DrivingVAE.vae_loss(recon, xi, mu, logvar)[0]

    step = vmap(grad_and_value(loss), in_dims=(0, 0, 0), randomness="different")

    def batched() -> None:
        step(params, buffers, x)

    times: dict[str, list[float]] = {"sequential": [], "vmap": []}
    for name, fn in [("sequential", one_by_one), ("vmap", batched)] * 2:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        times[name].append((time.perf_counter() - t0) / 3)
    seq, vec = min(times["sequential"]), min(times["vmap"])
    print(f"{s} seeds, one training step (best of 2 x 3): one after another {seq * 1e3:.0f} ms, "
          f"vmap {vec * 1e3:.0f} ms; ratio sequential / vmap {seq / vec:.2f}")
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "driving_vmap.json").write_text(json.dumps(
        {"seeds": s, "batch": batch, "sequential_step_s": round(seq, 4),
         "vmap_step_s": round(vec, 4), "ratio": round(seq / vec, 2)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
