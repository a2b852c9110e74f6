"""Behavioural embeddings (SPoSE) and fMRI voxel arrays.

**SPoSE** (Hebart et al. 2020): one row per object concept, one column per interpretable
dimension, whitespace-separated floats; dimension labels in a text file, one per line in
column order; optionally one word per row in another. Values are non-negative up to
rounding: entries in ``[-tolerance, 0)`` are clipped to 0 (and counted); anything more
negative is an error. Predictions follow the model's choice rule. With similarity
``s_ij = x_i . x_j`` (dot product of the embedding rows):

- odd-one-out of a triplet: the pair with the largest similarity is kept together and
  the third item is the odd one out (:func:`spose_predict_odd_one_out`);
- predicted dissimilarity of two objects (:func:`spose_rdm`): one minus the probability
  that they are kept together, averaged over every third object ``k`` of the set, with
  the softmax choice rule ``p(i, j | k) = e^s_ij / (e^s_ij + e^s_ik + e^s_jk)``. This is
  the model-side counterpart of a fully sampled triplet RDM such as THINGS'
  ``RDM48_triplet`` (1 - p(pair chosen together) over every triplet); on those 48 objects
  it correlates r = 0.90 with the human RDM (1 - Pearson r of the rows gives 0.86).

**Voxels**: ``(n_items, n_voxels)`` arrays from ``.npy`` (memory-mapped when large), HDF5
(memory-mapped when large, if contiguous and uncompressed), or a 4-D NIfTI image
``(x, y, z, n_volumes)`` with a 3-D mask of the same spatial shape (through ``nibabel``),
giving ``(n_volumes, n_voxels_in_mask)`` with voxels in the mask's C order
(``image[mask != 0]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["SposeEmbedding", "load_spose", "spose_predict_odd_one_out", "spose_odd_one_out",
           "spose_rdm", "load_voxels"]


@dataclass
class SposeEmbedding:
    """A SPoSE embedding.

    Attributes
    ----------
    values : np.ndarray of float32, shape (n_items, n_dims)
        Non-negative.
    labels : list of str, length n_dims
        Dimension names (``dim1`` ... when no labels file was given).
    words : list of str (length n_items) or None
    n_clipped : int
        Entries within rounding below 0 (in ``[-tolerance, 0)``) that were set to 0.
    """

    values: np.ndarray
    labels: list[str]
    words: list[str] | None
    n_clipped: int = 0


def _read_text(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise SpecError(f"{what} file '{path}' not found; expected an existing text file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SpecError(f"{what} file '{path}' is not UTF-8 text (byte {exc.start}); "
                        f"expected one entry per line") from None


def _names(path: str | os.PathLike, what: str, expected: int, of: str) -> list[str]:
    """One name per line; trailing blank lines ignored, blank lines inside are errors."""
    lines = [ln.strip() for ln in _read_text(Path(path), what)]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise SpecError(f"{what} file '{path}': line {lines.index('') + 1} is empty; expected "
                        f"one name per line")
    if len(lines) != expected:
        raise SpecError(f"{what} file '{path}' has {len(lines)} lines but {of}; expected "
                        f"{expected}, one per line")
    return lines


def load_spose(path: str | os.PathLike, labels_path: str | os.PathLike | None = None,
               words_path: str | os.PathLike | None = None,
               tolerance: float = 1e-3) -> SposeEmbedding:
    """Read a SPoSE embedding text file (and its dimension labels and item words).

    Parameters
    ----------
    path : str or os.PathLike
        Whitespace-separated floats, one row per item (blank lines are skipped).
    labels_path : str, os.PathLike or None
        One dimension label per line, in column order; their count must equal ``n_dims``.
    words_path : str, os.PathLike or None
        One word per line, in row order; their count must equal ``n_items``.
    tolerance : float
        Negative values down to ``-tolerance`` are rounding and are clipped to 0.

    Returns
    -------
    SposeEmbedding
        ``values`` float32, shape (n_items, n_dims), non-negative; ``n_clipped`` entries
        were clipped.

    Raises
    ------
    SpecError
        One line with the file, line and column and the value: missing/empty file, a
        non-number, a ragged row, NaN/inf, a value below ``-tolerance``; or a labels/words
        count that does not match.
    """
    where = f"SPoSE file '{os.fspath(path)}'"
    if not tolerance >= 0:
        raise SpecError(f"tolerance must be >= 0, got {tolerance!r}")
    values: list[list[float]] = []
    line_no: list[int] = []
    width = None
    for i, line in enumerate(_read_text(Path(path), "SPoSE"), start=1):
        parts = line.split()
        if not parts:
            continue
        if width is None:
            width = len(parts)
        elif len(parts) != width:
            raise SpecError(f"{where}: line {i} has {len(parts)} values but line "
                            f"{line_no[0]} has {width}; expected a rectangular table")
        try:
            values.append([float(v) for v in parts])
        except ValueError:
            col = next(c for c, v in enumerate(parts) if not _is_float(v))
            raise SpecError(f"{where}: line {i}, column {col + 1} holds {parts[col]!r}; "
                            f"expected a number") from None
        line_no.append(i)
    if not values:
        raise SpecError(f"{where} is empty; expected one row of floats per item")
    arr = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise SpecError(f"{where}: line {line_no[r]}, column {c + 1} is {arr[r, c]}; "
                        f"expected finite values")
    low = arr < -tolerance
    if low.any():
        r, c = (int(v) for v in np.argwhere(low)[0])
        raise SpecError(f"{where}: line {line_no[r]}, column {c + 1} is {arr[r, c]:.6g}, "
                        f"negative beyond rounding; expected >= -{tolerance:g} (SPoSE "
                        f"dimensions are non-negative)")
    clipped = int((arr < 0).sum())
    arr = np.maximum(arr, 0.0)
    n_items, n_dims = arr.shape
    labels = [f"dim{k + 1}" for k in range(n_dims)]
    if labels_path is not None:
        labels = _names(labels_path, "SPoSE labels", n_dims,
                        f"{where} has {n_dims} dimensions (columns)")
    words = None
    if words_path is not None:
        words = _names(words_path, "SPoSE words", n_items, f"{where} has {n_items} rows")
    return SposeEmbedding(arr.astype(np.float32), labels, words, clipped)


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _embedding(values: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise SpecError(f"{what}: values must have shape (n_items, n_dims), got "
                        f"{np.shape(values)}")
    if not np.isfinite(x).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise SpecError(f"{what}: values must be finite, got {x[r, c]} at item {r}, dim {c}")
    return x


def spose_predict_odd_one_out(values: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """Predicted odd-one-out of each triplet: the item outside the most similar pair.

    Parameters
    ----------
    values : np.ndarray, shape (n_items, n_dims)
    triplets : np.ndarray of int, shape (n_triplets, 3)
        Row indices into ``values``.

    Returns
    -------
    np.ndarray of int, shape (n_triplets,)
        Position (0, 1 or 2) of the odd one out; the pair kept together is the one with
        the largest dot product (ties: the lowest position wins).
    """
    x = _embedding(values, "spose_predict_odd_one_out")
    t = np.asarray(triplets)
    if t.ndim != 2 or t.shape[1] != 3 or t.dtype.kind not in "iu":
        raise SpecError(f"triplets must be integers of shape (n, 3), got {t.dtype} {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= x.shape[0]):
        r, c = (int(v) for v in np.argwhere((t < 0) | (t >= x.shape[0]))[0])
        raise SpecError(f"triplets: row {r}, column {c} is {int(t[r, c])}; expected a row "
                        f"index in [0, {x.shape[0]})")
    a, b, c = x[t[:, 0]], x[t[:, 1]], x[t[:, 2]]
    # similarity of the pair that leaves out position k
    sims = np.column_stack([(b * c).sum(1), (a * c).sum(1), (a * b).sum(1)])
    return np.argmax(sims, axis=1)


#: Former name of :func:`spose_predict_odd_one_out`.
spose_odd_one_out = spose_predict_odd_one_out


def spose_rdm(values: np.ndarray, budget_bytes: int = 64 * 2**20) -> np.ndarray:
    """SPoSE-predicted dissimilarity of every pair of a set of objects.

    ``d_ij = 1 - mean_{k != i, j} p(i, j | k)`` with the softmax choice rule
    ``p(i, j | k) = exp(s_ij) / (exp(s_ij) + exp(s_ik) + exp(s_jk))`` and ``s = x x^T``
    (see the module docstring). Computed without overflow for large values; cost
    O(n^3), in row blocks of at most about ``budget_bytes``.

    Parameters
    ----------
    values : np.ndarray, shape (n_items, n_dims)
        Embedding rows of the objects, n_items >= 3.
    budget_bytes : int
        Working memory per block.

    Returns
    -------
    np.ndarray of float64, shape (n_items, n_items)
        Symmetric, diagonal 0, off-diagonal values in (0, 1).
    """
    x = _embedding(values, "spose_rdm")
    n = x.shape[0]
    if n < 3:
        raise SpecError(f"spose_rdm needs >= 3 objects (a pair and a third), got {n}")
    s = x @ x.T
    idx = np.arange(n)
    mean = np.zeros((n, n))
    step = max(1, budget_bytes // (3 * 8 * n * n))
    for i0 in range(0, n, step):
        rows = idx[i0:i0 + step]
        sij = s[rows][:, :, None]  # (b, n, 1)
        # p[a, j, k] = 1 / (1 + exp(s_ik - s_ij) + exp(s_jk - s_ij)): overflow gives 0, not NaN
        with np.errstate(over="ignore"):
            p = 1.0 / (1.0 + np.exp(s[rows][:, None, :] - sij) + np.exp(s[None, :, :] - sij))
        p[np.arange(len(rows)), :, rows] = 0.0  # k == i
        p[:, idx, idx] = 0.0  # k == j
        mean[rows] = p.sum(2) / (n - 2)
    rdm = 1.0 - mean
    rdm = (rdm + rdm.T) / 2
    rdm[idx, idx] = 0.0
    return rdm


def load_voxels(path: str | os.PathLike, *, key: str | None = None,
                mask_path: str | os.PathLike | None = None, max_bytes: int = 2**30) -> np.ndarray:
    """Voxel responses as ``(n_items, n_voxels)``.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy``; ``.h5``/``.hdf5`` (dataset ``key``, None: the only one); or a 4-D NIfTI
        ``.nii``/``.nii.gz`` image ``(x, y, z, n_volumes)`` (needs ``mask_path``).
    key : str or None
        HDF5 dataset name (ignored for other formats).
    mask_path : str, os.PathLike or None
        3-D NIfTI mask ``(x, y, z)`` (a trailing axis of length 1 is accepted); non-zero
        voxels are kept, in C order of the mask.
    max_bytes : int
        ``.npy`` and contiguous uncompressed HDF5 arrays above this size are memory-mapped
        (checked for finiteness in blocks, never read whole); a chunked/compressed HDF5
        dataset above it is refused; a NIfTI image is read in blocks of volumes and its
        masked result must fit under it.

    Returns
    -------
    np.ndarray, shape (n_items, n_voxels)
        float32 in memory; a read-only ``np.memmap`` in the stored dtype above
        ``max_bytes``. For NIfTI: ``(n_volumes, n_voxels_in_mask)``, row ``t`` is
        ``image[..., t][mask != 0]``, with the image's scaling applied.

    Raises
    ------
    SpecError
        One line naming the file: missing, unreadable, unknown suffix, not 2-D (not 4-D
        for NIfTI), non-numeric, NaN/inf (inside the mask for NIfTI), no mask or a mask of
        another spatial shape, or an empty mask.
    """
    p = Path(path)
    where = f"voxel file '{os.fspath(path)}'"
    if not p.is_file():
        raise SpecError(f"{where} not found; expected an existing .npy, .h5/.hdf5 or .nii/.nii.gz")
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti(p, mask_path, where, max_bytes)
    if name.endswith(".npy"):
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise SpecError(f"{where} could not be read by numpy.load ({_first_line(exc)}); "
                            f"the file may be corrupt or truncated") from None
    elif name.endswith((".h5", ".hdf5")):
        from raybrain.data.rdm import read_hdf5_dataset

        try:
            import h5py

            with h5py.File(p, "r") as f:
                names = [n for n in f if isinstance(f[n], h5py.Dataset)]
                if key is None and len(names) != 1:
                    raise SpecError(f"{where} holds {len(names)} datasets {sorted(names)[:10]}; "
                                    f"name one with key")
                k = key if key is not None else names[0]
                if k not in names:
                    raise SpecError(f"{where} has no dataset {k!r}; expected one of "
                                    f"{sorted(names)}")
                nbytes = f[k].size * f[k].dtype.itemsize
            arr = read_hdf5_dataset(p, k, where, mapped=nbytes > max_bytes)
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(f"{where} could not be read ({type(exc).__name__}: "
                            f"{_first_line(exc)}); the file may be corrupt or truncated") from None
    else:
        raise SpecError(f"{where}: unknown format; expected .npy, .h5/.hdf5 or .nii/.nii.gz, "
                        f"got '{p.name}'")
    if arr.ndim != 2:
        raise SpecError(f"{where}: voxel data must be 2-D (n_items, n_voxels), got shape "
                        f"{arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise SpecError(f"{where}: voxel data must be numeric, got dtype {arr.dtype}")
    big = arr.size * arr.itemsize > max_bytes
    step = max(1, (64 * 2**20) // max(1, arr.shape[1] * arr.itemsize))
    for r0 in range(0, arr.shape[0], step):  # in blocks: a memmap is never read whole
        bad = ~np.isfinite(np.asarray(arr[r0:r0 + step]))
        if bad.any():
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise SpecError(f"{where}: item {r0 + r}, voxel {c} is "
                            f"{arr[r0 + r, c]}; expected finite responses")
    return arr if big else np.asarray(arr, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _nifti(p: Path, mask_path, where: str, max_bytes: int) -> np.ndarray:
    import nibabel as nib

    if mask_path is None:
        raise SpecError(f"{where} is a NIfTI image; expected a brain mask (mask_path) to "
                        f"select voxels")
    try:
        img = nib.load(str(p))
    except Exception as exc:
        raise SpecError(f"{where} could not be read by nibabel ({type(exc).__name__}: "
                        f"{_first_line(exc)})") from None
    mwhere = f"mask '{os.fspath(mask_path)}'"
    if not Path(mask_path).is_file():
        raise SpecError(f"{mwhere} not found; expected a 3-D NIfTI mask")
    try:
        mask = np.asanyarray(nib.load(str(mask_path)).dataobj)
    except Exception as exc:
        raise SpecError(f"{mwhere} could not be read by nibabel ({type(exc).__name__}: "
                        f"{_first_line(exc)})") from None
    if len(img.shape) != 4:
        raise SpecError(f"{where}: expected a 4-D image (x, y, z, n_volumes), got shape "
                        f"{img.shape}")
    while mask.ndim > 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != img.shape[:3]:
        raise SpecError(f"{mwhere} has shape {mask.shape} but {where} has spatial shape "
                        f"{img.shape[:3]}; expected them to match")
    if not np.isfinite(mask).all():
        raise SpecError(f"{mwhere} holds NaN/inf; expected 0 outside and non-zero inside")
    inside = mask != 0
    n_vox = int(inside.sum())
    if not n_vox:
        raise SpecError(f"{mwhere} selects no voxel (all zero); expected at least one "
                        f"non-zero voxel")
    n_vol = img.shape[3]
    if n_vox * n_vol * 4 > max_bytes:
        raise SpecError(f"{where}: {n_vol} volumes x {n_vox} voxels in the mask make "
                        f"{n_vox * n_vol * 4 / 2**20:.1f} MiB, over the "
                        f"{max_bytes / 2**20:.1f} MiB limit (max_bytes); use a smaller mask "
                        f"or raise the limit")
    out = np.empty((n_vol, n_vox), dtype=np.float32)
    step = max(1, (256 * 2**20) // (8 * int(np.prod(img.shape[:3]))))
    try:
        for t0 in range(0, n_vol, step):  # blocks of volumes: the image is never held whole
            block = np.asarray(img.dataobj[..., t0:t0 + step])  # (x, y, z, b)
            out[t0:t0 + block.shape[3]] = block[inside].T
    except Exception as exc:
        raise SpecError(f"{where} could not be read by nibabel ({type(exc).__name__}: "
                        f"{_first_line(exc)}); the file may be corrupt or truncated") from None
    bad = ~np.isfinite(out)
    if bad.any():
        t, v = (int(i) for i in np.argwhere(bad)[0])
        xyz = tuple(int(i) for i in np.argwhere(inside)[v])
        raise SpecError(f"{where}: volume {t}, voxel {v} of the mask (x, y, z = {xyz}) is "
                        f"{out[t, v]}; expected finite values inside the mask")
    return out
