"""``raybrain data prepare SPEC``, ``raybrain data inspect FILE...`` and
``raybrain data convert-spikes SRC DST``.

``prepare`` validates a spec and prepares its brain data exactly as a sweep would before
its first trial (read, clean, pair or embed, cache), printing what came out; a sweep of the
same spec then finds it cached. ``inspect`` reads brain-data files in any supported format
and prints their shapes and rates (never their values), with the one-line error a sweep
would give for a malformed file. An ``.npz`` is recognised by its keys (spike file, the
memory task's embeddings, nelpy's pickled example, a CEBRA embedding, or a single RDM
array; see :mod:`raybrain.data.layout`). ``convert-spikes`` turns per-cell spike times in a
MATLAB file, or nelpy's pickled example, into the plain spike file once.

Every error is one line on stderr with exit code 2, and nothing is written on bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

_INSPECT_KINDS = ("auto", "rdm", "voxels", "spose", "spikes", "memory")


def add_data_subparsers(sub) -> None:
    d = sub.add_parser("data", help="prepare a spec's brain data, inspect brain-data files, "
                       "or convert spike files")
    dsub = d.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="read, clean and cache a spec's brain data now")
    p.add_argument("spec", help="path to a sweep spec YAML")
    i = dsub.add_parser("inspect", help="print shapes and rates of brain-data files")
    i.add_argument("files", nargs="+", help="EEG/MEG recordings, RDM/voxel arrays (.npy, "
                   ".npz, .mat, .h5), NIfTI images, SPoSE .txt embeddings, spike files "
                   "(.npz, or .mat with --as spikes), the memory task's .npz")
    i.add_argument("--as", dest="kind", choices=_INSPECT_KINDS, default="auto",
                   help="how to read array files (default: by suffix, and an .npz by its keys)")
    i.add_argument("--key", help="array name inside .npz/.mat/.h5 files; in a .mat file also "
                   "a struct field path such as RDMs.RDM or spikes.time")
    i.add_argument("--nan-policy", choices=("error", "zero", "keep"), default="error",
                   help="RDMs: what NaN entries do: an error (default), become 0, or stay")
    i.add_argument("--max-bytes", type=int, default=2**30,
                   help="RDM and voxel arrays above this many bytes are memory-mapped, or "
                   "refused when their format cannot be mapped (default 1 GiB)")
    i.add_argument("--mask", help="brain mask (NIfTI) for --as voxels")
    i.add_argument("--labels", help="dimension labels file for --as spose")
    c = dsub.add_parser("convert-spikes", help="convert per-cell spike times (a MATLAB .mat, "
                        "or nelpy's pickled .npz) once into raybrain's plain spike file")
    c.add_argument("src", help="a .mat holding one spike-time vector per cell (a cell array, "
                   "or a struct field named with --key), or nelpy's parsed .npz "
                   "(spike_times_s, pos_time_s, pos_x_px)")
    c.add_argument("dst", help="the plain .npz to write")
    c.add_argument("--key", help=".mat only: variable or field path of the spike times, e.g. "
                   "spikes.time (default: the only variable)")


def run_data_command(args: argparse.Namespace) -> int:
    from raybrain.errors import SpecError

    try:
        if args.data_command == "prepare":
            return _prepare(args)
        if args.data_command == "convert-spikes":
            from raybrain.data.spikes import convert_spikes

            rec, note = convert_spikes(args.src, args.dst, key=args.key)
            print(f"{args.dst}: {rec.describe()}; from {note}")
            return 0
        if args.max_bytes < 1:
            raise SpecError(f"--max-bytes must be a positive number of bytes, got "
                            f"{args.max_bytes}")
        for f in args.files:
            for line in inspect_file(f, args.kind, key=args.key, mask=args.mask,
                                     labels=args.labels, nan_policy=args.nan_policy,
                                     max_bytes=args.max_bytes):
                print(line, flush=True)
        return 0
    except SpecError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError) as exc:
        # a reader failed in a way its module did not anticipate: still one line
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SpecError(f"{type(exc).__name__}: {text or 'no message'}; the file may be "
                        f"truncated or unreadable") from None


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


def _auto_kind(p: Path, suffix: str) -> str:
    from raybrain.data.eeg import EEG_SUFFIXES

    if suffix in EEG_SUFFIXES:
        return "eeg"
    if suffix in (".nii", ".gz") or p.name.lower().endswith(".nii.gz"):
        return "voxels"
    if suffix == ".txt":
        return "spose"
    return "rdm"


def inspect_file(path: str, kind: str = "auto", *, key: str | None = None,
                 mask: str | None = None, labels: str | None = None,
                 nan_policy: str = "error", max_bytes: int = 2**30) -> list[str]:
    """One or more lines describing ``path`` (shapes, rates, events), never its values.

    Parameters
    ----------
    path : str
    kind : {"auto", "rdm", "voxels", "spose", "spikes", "memory"}
        ``auto``: by suffix (EEG formats, NIfTI, ``.txt`` SPoSE), an ``.npz`` by its keys
        (:mod:`raybrain.data.layout`), other arrays as RDMs.
    key : str or None
        Array name, or a ``.mat`` field path.
    nan_policy, max_bytes
        As :func:`raybrain.data.rdm.load_rdm` (``max_bytes`` also for voxels).

    Raises
    ------
    SpecError
        One line: missing file, a directory, truncated or unreadable, or a malformed file.
    """
    from raybrain.data.eeg import _suffix
    from raybrain.data.matfile import file_state

    p = Path(path)
    file_state(p, f"'{path}'", "a brain-data file (EEG/MEG recording, .npy/.npz/.mat/.h5 "
               "array, NIfTI image, SPoSE .txt)")
    suffix = _suffix(p)
    if kind == "auto":
        kind = _auto_kind(p, suffix)
        if suffix == ".npz" and key is None:
            kind = _npz_kind(p, path)
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

        arr, check = load_rdm(p, key=key, nan_policy=nan_policy, max_bytes=max_bytes,
                              return_check=True)
        mapped = " (memory-mapped)" if is_memory_mapped(arr) else ""
        how = []
        if check.note:
            how.append(check.note)
        if check.condensed_from is not None:
            how.append(f"read as condensed: stored {check.condensed_from}, a last axis of "
                       f"n(n-1)/2 = {check.condensed_from[-1]} for n = {arr.shape[-1]}, "
                       f"expanded as scipy's squareform")
        if check.n_nan:
            how.append(f"{check.n_nan} NaN value(s) "
                       f"{'set to 0' if nan_policy == 'zero' else 'kept'}")
        if not check.complete:
            how.append(f"{check.n_checked} of {check.n_total} matrices checked"
                       + (f" on {check.rows_checked} conditions" if check.rows_checked else ""))
        extra = f"; {'; '.join(how)}" if how else ""
        return [f"{path}: RDM stack {tuple(arr.shape)} {arr.dtype}{mapped}, validated "
                f"(square, symmetric, zero diagonal){extra}"]
    if kind == "voxels":
        from raybrain.data.embeddings import load_voxels

        arr = load_voxels(p, key=key, mask_path=mask, max_bytes=max_bytes)
        return [f"{path}: voxel array {tuple(arr.shape)} (items x voxels)"]
    if kind == "spose":
        from raybrain.data.embeddings import load_spose

        emb = load_spose(p, labels_path=labels)
        return [f"{path}: SPoSE embedding {tuple(emb.values.shape)} (items x dimensions), "
                f"{emb.n_clipped} value(s) within rounding below 0 clipped to 0"]
    if kind == "memory":
        from raybrain.data.npz import describe_memory_npz

        return [f"{path}: {describe_memory_npz(p)}"]
    if kind == "embedding":
        from raybrain.data.spikes import load_embedding

        res = load_embedding(p)
        shapes = ", ".join(str(tuple(e.shape)) for e in res.embeddings)
        return [f"{path}: CEBRA embedding of {len(res.embeddings)} session(s) {shapes}, "
                f"final loss {res.loss[-1] if res.loss else float('nan'):.4g}"]
    if suffix == ".mat":
        from raybrain.data.spikes import read_mat_spikes

        rec, note = read_mat_spikes(p, key)
        key_arg = f" --key {key}" if key else ""
        return [f"{path}: {rec.describe()}; from {note}; convert it once with `raybrain data "
                f"convert-spikes {path} DST.npz{key_arg}`"]
    from raybrain.data.spikes import load_spikes

    rec = load_spikes(p)
    return [f"{path}: spike file, {rec.describe()}"]


def _npz_kind(p: Path, path: str) -> str:
    """The inspect kind of an ``.npz`` from its key list (no array read)."""
    from raybrain.data.layout import NELPY_KEYS, SPIKE_KEYS, npz_keys, npz_layout
    from raybrain.data.npz import NPZ_KEYS
    from raybrain.errors import SpecError

    keys = npz_keys(p, f"'{path}'")
    layout = npz_layout(keys)
    if layout == "nelpy":
        raise SpecError(f"'{path}' is nelpy's parsed spike layout ({', '.join(NELPY_KEYS)}) "
                        f"with pickled per-unit arrays, which raybrain does not load; convert "
                        f"it once with `raybrain data convert-spikes {path} DST.npz`")
    if layout == "unknown":
        raise SpecError(f"'{path}' holds {len(keys)} arrays {sorted(keys)[:10]} in no known "
                        f"layout; expected a spike file ({', '.join(SPIKE_KEYS)}), the memory "
                        f"task's embeddings ({', '.join(NPZ_KEYS)}), or one RDM array (name it "
                        f"with --key)")
    return {"spikes": "spikes", "memory": "memory", "embedding": "embedding",
            "array": "rdm"}[layout]
