"""Behavioural embeddings (SPoSE) and fMRI voxel arrays.

**SPoSE** (Hebart et al. 2020): one row per object concept, one column per interpretable
dimension, whitespace-separated floats; dimension labels in a text file, one per line in
column order. Values are non-negative up to rounding: entries in ``[-tolerance, 0)`` are
clipped to 0 (and counted); anything more negative is an error. Predictions follow the
model: in a triplet, the pair with the largest dot product is kept together and the third
item is the odd one out; the predicted dissimilarity of two objects is one minus the
probability that they are kept together, averaged over every third object of the set
(the softmax choice rule of SPoSE).

**Voxels**: ``(n_items, n_voxels)`` arrays from ``.npy`` (memory-mapped when large) or
HDF5, or a 4-D NIfTI image ``(x, y, z, n_volumes)`` with a 3-D mask of the same spatial
shape (through ``nibabel``), giving ``(n_volumes, n_voxels_in_mask)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["SposeEmbedding", "load_spose", "spose_odd_one_out", "spose_rdm", "load_voxels"]


@dataclass
class SposeEmbedding:
    """A SPoSE embedding: ``values`` float32 (n_items, n_dims), labels per dimension,
    optional words per item, and how many rounding negatives were clipped to 0."""

    values: np.ndarray
    labels: list[str]
    words: list[str] | None
    n_clipped: int


def _lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise SpecError(f"{what} file '{path}' not found")
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise SpecError(f"{what} file '{path}' is not text (UTF-8)") from None


def load_spose(path: str | os.PathLike, labels_path: str | os.PathLike | None = None,
               words_path: str | os.PathLike | None = None,
               tolerance: float = 1e-3) -> SposeEmbedding:
    """Read a SPoSE embedding text file (and its dimension labels and item words).

    Returns
    -------
    SposeEmbedding
        ``values`` (n_items, n_dims) float32, non-negative.
    """
    p = Path(path)
    where = f"SPoSE file '{os.fspath(path)}'"
    rows = _lines(p, "SPoSE")
    if not rows:
        raise SpecError(f"{where} is empty; expected one row of floats per item")
    values = []
    width = None
    for i, line in enumerate(rows):
        parts = line.split()
        if width is None:
            width = len(parts)
        if len(parts) != width:
            raise SpecError(f"{where}: row {i + 1} has {len(parts)} values but row 1 has "
                            f"{width}; expected a rectangular table")
        try:
            values.append([float(v) for v in parts])
        except ValueError:
            bad = next(v for v in parts if not _is_float(v))
            raise SpecError(f"{where}: row {i + 1} holds {bad!r}, not a number") from None
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise SpecError(f"{where}: NaN/inf at row {r + 1}, column {c + 1}; expected finite values")
    if (arr < -tolerance).any():
        r, c = (int(v) for v in np.argwhere(arr < -tolerance)[0])
        raise SpecError(f"{where}: value {arr[r, c]:.6g} at row {r + 1}, column {c + 1} is "
                        f"negative beyond rounding (tolerance {tolerance:g}); SPoSE dimensions "
                        f"are non-negative")
    clipped = int((arr < 0).sum())
    arr = np.maximum(arr, 0.0)
    labels = [f"dim{k + 1}" for k in range(arr.shape[1])]
    if labels_path is not None:
        labels = _lines(Path(labels_path), "SPoSE labels")
        if len(labels) != arr.shape[1]:
            raise SpecError(f"SPoSE labels file '{labels_path}' has {len(labels)} labels but "
                            f"{where} has {arr.shape[1]} dimensions; expected one label per column")
    words = None
    if words_path is not None:
        words = _lines(Path(words_path), "SPoSE words")
        if len(words) != arr.shape[0]:
            raise SpecError(f"SPoSE words file '{words_path}' has {len(words)} lines but {where} "
                            f"has {arr.shape[0]} rows; expected one word per row")
    return SposeEmbedding(arr.astype(np.float32), labels, words, clipped)


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def spose_odd_one_out(values: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """Predicted odd-one-out position (0, 1 or 2) of each triplet (n, 3) of row indices."""
    x = np.asarray(values, dtype=np.float64)
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3:
        raise SpecError(f"triplets must have shape (n, 3), got {t.shape}")
    a, b, c = x[t[:, 0]], x[t[:, 1]], x[t[:, 2]]
    # similarity of the pair that leaves out position k
    sims = np.column_stack([(b * c).sum(1), (a * c).sum(1), (a * b).sum(1)])
    return np.argmax(sims, axis=1)


def spose_rdm(values: np.ndarray) -> np.ndarray:
    """SPoSE-predicted dissimilarity of every pair of a set of objects, shape (n, n).

    ``1 - mean_k p(i, j kept together | third object k)`` with the softmax choice rule
    ``p = exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk))`` over every other object k;
    the diagonal is 0.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[0]
    s = x @ x.T
    # p[i, j, k] = 1 / (1 + exp(s_ik - s_ij) + exp(s_jk - s_ij)): no overflow to NaN
    with np.errstate(over="ignore"):
        p = 1.0 / (1.0 + np.exp(s[:, None, :] - s[:, :, None]) + np.exp(s[None, :, :] - s[:, :, None]))
    mask = np.ones((n, n, n), dtype=bool)
    idx = np.arange(n)
    mask[idx, :, idx] = False
    mask[:, idx, idx] = False
    mean = (p * mask).sum(2) / np.maximum(mask.sum(2), 1)
    rdm = 1.0 - mean
    rdm[idx, idx] = 0.0
    return (rdm + rdm.T) / 2


def load_voxels(path: str | os.PathLike, *, key: str | None = None,
                mask_path: str | os.PathLike | None = None, max_bytes: int = 2**30) -> np.ndarray:
    """Voxel responses as ``(n_items, n_voxels)``.

    ``.npy`` (memory-mapped above ``max_bytes``), ``.h5``/``.hdf5`` (dataset ``key``), or a
    4-D NIfTI ``.nii``/``.nii.gz`` with ``mask_path`` (3-D, non-zero = inside).
    """
    p = Path(path)
    where = f"voxel file '{os.fspath(path)}'"
    if not p.is_file():
        raise SpecError(f"{where} not found")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        arr = _nifti(p, mask_path, where)
    elif name.endswith(".npy"):
        try:
            header = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SpecError(f"{where} could not be read by numpy.load ({str(exc).splitlines()[0]})") from None
        arr = header if header.nbytes > max_bytes else np.asarray(header)
    elif name.endswith((".h5", ".hdf5")):
        import h5py

        try:
            with h5py.File(p, "r") as f:
                names = [n for n in f if isinstance(f[n], h5py.Dataset)]
                if key is None and len(names) != 1:
                    raise SpecError(f"{where} holds datasets {sorted(names)}; name one with key")
                k = key or names[0]
                if k not in f:
                    raise SpecError(f"{where} has no dataset {k!r}; datasets: {sorted(names)}")
                if f[k].nbytes > max_bytes:
                    raise SpecError(f"{where}: dataset {k!r} is {f[k].nbytes / 2**30:.2f} GiB, "
                                    f"over the limit; convert it to .npy to memory-map it")
                arr = f[k][()]
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(f"{where} could not be read ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    else:
        raise SpecError(f"{where}: expected .npy, .h5/.hdf5 or .nii/.nii.gz, got '{p.name}'")
    if arr.ndim != 2:
        raise SpecError(f"{where}: voxel data must be (n_items, n_voxels), got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpecError(f"{where}: voxel data must be numeric, got dtype {arr.dtype}")
    if not isinstance(arr, np.memmap) and not np.isfinite(arr).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
        raise SpecError(f"{where}: NaN/inf at item {r}, voxel {c}; expected finite responses")
    return arr if isinstance(arr, np.memmap) else arr.astype(np.float32)


def _nifti(p: Path, mask_path, where: str) -> np.ndarray:
    import nibabel as nib

    if mask_path is None:
        raise SpecError(f"{where} is a NIfTI image; give a brain mask (mask_path) to select voxels")
    try:
        img = nib.load(str(p))
        mask_img = nib.load(str(mask_path))
    except Exception as exc:
        raise SpecError(f"{where} or mask '{mask_path}' could not be read by nibabel "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(img.shape) != 4:
        raise SpecError(f"{where}: expected a 4-D image (x, y, z, volumes), got shape {img.shape}")
    mask = np.asarray(mask_img.dataobj)
    if mask.shape != img.shape[:3]:
        raise SpecError(f"mask '{mask_path}' has shape {mask.shape} but {where} has spatial "
                        f"shape {img.shape[:3]}; they must match")
    inside = mask != 0
    if not inside.any():
        raise SpecError(f"mask '{mask_path}' selects no voxel (all zero)")
    data = np.asarray(img.dataobj)[inside]  # (n_voxels, n_volumes)
    if not np.isfinite(data).all():
        v, t = (int(i) for i in np.argwhere(~np.isfinite(data))[0])
        raise SpecError(f"{where}: NaN/inf inside the mask at voxel {v} (mask order), volume "
                        f"{t}; expected finite values")
    return data.T.astype(np.float32)
