"""CLIP-HBA building blocks: adapter-gradient check per placement, tiny-model timings.

For every DoRA placement ("attn_out", "mlp", "both") on the tiny registered ViT (last 2
vision blocks + last text block, rank 8, dropout 0.1), the behaviour head is trained for two
AdamW steps (lr 1e-3) on synthetic informative targets (48 procedural images). Printed per
placement and parameter kind (magnitude, A, B): the gradient norm at steps 1 and 2, the
relative change of the parameters after two steps (||p2 - p0|| / ||p0||; for B, which starts
at 0, the absolute norm ||p2||), the largest change of a frozen parameter, the largest
difference between the adapted model's output at initialisation (training mode, dropout on)
and the unadapted model's, and the largest change of the output after the two steps. Then
forward and forward+backward wall times (1 thread, median of 7) of the behaviour head and of
the MEG model (T = 36 time points) at batch 64.

    .venv/bin/python bench/clip_hba_layers.py [--vit-l]

``--vit-l`` also times ViT-L-14 (random weights, ~430 M parameters) at batch 4.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _kind(name: str) -> str:
    if "magnitude" in name:
        return "magnitude"
    return "A" if ("dora_A" in name or "lora_A" in name) else "B"


def gradient_check(placement: str, x, y, base, tokens, ref) -> dict:
    import torch

    from raybrain.models.clip import CLIPHBABehavior
    from raybrain.models.dora import adapter_parameters, apply_dora

    clip = copy.deepcopy(base)
    info = apply_dora(clip, placement=placement, n_vision=2, n_text=1, rank=8, dropout=0.1)
    model = CLIPHBABehavior(clip, tokens).train()
    with torch.no_grad():
        y0 = model(x)
    ad = adapter_parameters(model)
    p0 = {n: p.detach().clone() for n, p in ad.items()}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(list(ad.values()), lr=1e-3)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        per = {}
        for n, p in ad.items():
            per.setdefault(_kind(n), []).append(float(p.grad.norm()))
        grads.append({k: (min(v), max(v)) for k, v in per.items()})
        opt.step()
    moved = {}
    for n, p in ad.items():
        d = float((p.detach() - p0[n]).norm())
        norm0 = float(p0[n].norm())
        moved.setdefault(_kind(n), []).append(d / norm0 if norm0 > 0 else d)
    with torch.no_grad():
        y2 = model(x)
    frozen_change = max(float((p.detach() - frozen[n]).abs().max())
                        for n, p in model.named_parameters() if n in frozen)
    return {"placement": placement, "layers": len(info.modules), "adapter_params":
            info.n_parameters, "grad_step1_min_max": grads[0], "grad_step2_min_max": grads[1],
            "change_after_2_steps_min_max": {k: (min(v), max(v)) for k, v in moved.items()},
            "max_frozen_change": frozen_change,
            "max_output_change": float((y2 - y0).abs().max()),
            "init_max_abs_diff_vs_base": float((y0 - ref).abs().max())}


def timed(fn, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vit-l", action="store_true")
    args = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from raybrain.align.temporal import MEGLoss
    from raybrain.data.behaviour import rescale_spose
    from raybrain.data.clip_synthetic import synthetic_clip_data
    from raybrain.data.images import ImageSet
    from raybrain.data.meg_targets import target_batch
    from raybrain.models.clip import (
        TINY_MODEL,
        CLIPHBABehavior,
        build_behavior_model,
        build_clip,
        tokenize_labels,
    )
    from raybrain.models.clip_meg import build_meg_model

    data = synthetic_clip_data(64, n_triplets=0, seed=0)
    x = torch.from_numpy(ImageSet(data.images, [], "clip").batch(np.arange(64)))
    y = torch.from_numpy(rescale_spose(data.embeddings, data.embeddings.min(),
                                       data.embeddings.max())).float()
    torch.manual_seed(0)
    base = build_clip(TINY_MODEL)
    tokens = tokenize_labels(TINY_MODEL, data.labels)
    with torch.no_grad():
        ref = CLIPHBABehavior(base, tokens)(x[:48])
    out = {"gradient_check": []}
    for placement in ("attn_out", "mlp", "both"):
        r = gradient_check(placement, x[:48], y[:48], base, tokens, ref)
        out["gradient_check"].append(r)
    out["reference_output_norm"] = float(ref.norm())

    timings = {}
    for placement in ("attn_out", "mlp", "both"):
        torch.manual_seed(0)
        model, _ = build_behavior_model(TINY_MODEL, data.labels, placement=placement, rank=8,
                                        n_vision=2, n_text=1)
        model.train()

        def fwd():
            with torch.no_grad():
                model(x)

        def fwd_bwd():
            model.zero_grad()
            ((model(x) - y) ** 2).mean().backward()

        timings[f"behaviour/{placement}"] = {"forward_s": timed(fwd), "fwd_bwd_s": timed(fwd_bwd)}
    target = torch.from_numpy(target_batch(data.rdms, np.arange(64)))
    torch.manual_seed(0)
    meg, _ = build_meg_model(TINY_MODEL, data.labels, len(data.times), rank=8)
    loss = MEGLoss()
    meg.train()

    def meg_fwd():
        with torch.no_grad():
            meg(x)

    def meg_stage(stage):
        meg.set_adapters_trainable(stage == 2)

        def run():
            meg.zero_grad()
            loss(meg(x).rdms, target).total.backward()
        return run

    timings["meg/all-vision-attn_out"] = {"forward_s": timed(meg_fwd),
                                          "fwd_bwd_stage1_s": timed(meg_stage(1)),
                                          "fwd_bwd_stage2_s": timed(meg_stage(2))}
    out["timings_batch64_1thread"] = timings
    if args.vit_l:
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        model, info = build_behavior_model("ViT-L-14", data.labels, rank=32, n_vision=2,
                                           n_text=1)
        build = time.perf_counter() - t0
        xl = torch.randn(4, 3, 224, 224)
        model.train()

        def l_fwd_bwd():
            model.zero_grad()
            model(xl).pow(2).mean().backward()
        out["vit_l_14"] = {"build_s": build, "adapter_params": info.n_parameters,
                           "fwd_bwd_batch4_2threads_s": timed(l_fwd_bwd, reps=3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
