"""``raybrain data prepare SPEC`` and ``raybrain data inspect FILE...``.

``prepare`` validates a spec and prepares its brain data exactly as a sweep would before
its first trial (read, clean, pair or embed, cache), printing what came out; a sweep of the
same spec then finds it cached. ``inspect`` reads brain-data files in any supported format
and prints their shapes and rates (never their values), with the one-line error a sweep
would give for a malformed file.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_subparsers(sub) -> None:
    d = sub.add_parser("data", help="prepare a spec's brain data, or inspect brain-data files")
    dsub = d.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="read, clean and cache a spec's brain data now")
    p.add_argument("spec", help="path to a sweep spec YAML")
    i = dsub.add_parser("inspect", help="print shapes and rates of brain-data files")
    i.add_argument("files", nargs="+", help="EEG/MEG recordings, RDM/voxel arrays (.npy, "
                   ".npz, .mat, .h5), NIfTI images, SPoSE .txt embeddings, spike .npz files")
    i.add_argument("--as", dest="kind", choices=("auto", "rdm", "voxels", "spose", "spikes"),
                   default="auto", help="how to read array files (default: by suffix)")
    i.add_argument("--key", help="array name inside .npz/.mat/.h5 files")
    i.add_argument("--mask", help="brain mask (NIfTI) for --as voxels")
    i.add_argument("--labels", help="dimension labels file for --as spose")
    c = dsub.add_parser("convert-spikes", help="convert a nelpy-style spike file "
                        "(per-unit arrays, numpy arrays only) once into raybrain's plain spike format")
    c.add_argument("src", help="the nelpy-style .npz (spike_times_s, pos_time_s, pos_x_px)")
    c.add_argument("dst", help="the plain .npz to write")


def run_data_command(args: argparse.Namespace) -> int:
    if args.data_command == "prepare":
        return _prepare(args)
    if args.data_command == "convert-spikes":
        from raybrain.data.spikes import convert_nelpy_npz

        rec = convert_nelpy_npz(args.src, args.dst)
        print(f"{args.dst}: {rec.describe()}")
        return 0
    for f in args.files:
        for line in inspect_file(f, args.kind, key=args.key, mask=args.mask, labels=args.labels):
            print(line, flush=True)
    return 0


def _prepare(args) -> int:
    from raybrain.sweep import load_spec
    from raybrain.sweep.spec import validate_spec

    spec = load_spec(args.spec)
    checked = validate_spec(spec, args.spec)
    _, lines, files = checked["task"].prepare(checked["data"])
    if not lines:
        print(f"task {spec.task!r}: nothing to prepare (its data are simulated per run)")
    for line in lines:
        print(line, flush=True)
    for f in files:
        print(f"  cache entry: {f}")
    return 0


def inspect_file(path: str, kind: str = "auto", *, key: str | None = None,
                 mask: str | None = None, labels: str | None = None) -> list[str]:
    """One or more lines describing ``path`` (shapes, rates, events), never its values."""
    from raybrain.data.eeg import EEG_SUFFIXES, _suffix

    p = Path(path)
    suffix = _suffix(p)
    if kind == "auto":
        if suffix in EEG_SUFFIXES:
            kind = "eeg"
        elif suffix in (".nii", ".gz") or p.name.endswith(".nii.gz"):
            kind = "voxels"
        elif suffix == ".txt":
            kind = "spose"
        else:
            kind = "rdm"
    if kind == "eeg":
        import numpy as np

        from raybrain.data.eeg import read_raw, recording_summary

        raw = read_raw(p)
        s = recording_summary(raw)
        desc, counts = np.unique(np.array([str(d) for d in raw.annotations.description]),
                                 return_counts=True)
        events = ", ".join(f"{d} x{c}" for d, c in zip(desc, counts)) or "none"
        types = ", ".join(f"{n} {k}" for k, n in s["channel_types"].items())
        return [f"{path}: {s['n_channels']} channels ({types}) at {s['sfreq']:g} Hz, "
                f"{s['duration_s']:g} s ({s['n_times']} samples); annotations: {events}"]
    if kind == "rdm":
        from raybrain.data.rdm import is_memory_mapped, load_rdm

        arr = load_rdm(p, key=key)
        mapped = " (memory-mapped)" if is_memory_mapped(arr) else ""
        return [f"{path}: RDM stack {tuple(arr.shape)} {arr.dtype}{mapped}, validated "
                f"(square, symmetric, zero diagonal)"]
    if kind == "voxels":
        from raybrain.data.embeddings import load_voxels

        arr = load_voxels(p, key=key, mask_path=mask)
        return [f"{path}: voxel array {tuple(arr.shape)} (items x voxels)"]
    if kind == "spose":
        from raybrain.data.embeddings import load_spose

        emb = load_spose(p, labels_path=labels)
        return [f"{path}: SPoSE embedding {tuple(emb.values.shape)} (items x dimensions), "
                f"{emb.n_clipped} value(s) within rounding below 0 clipped to 0"]
    from raybrain.data.spikes import load_spikes

    rec = load_spikes(p)
    return [f"{path}: {rec.describe()}"]
