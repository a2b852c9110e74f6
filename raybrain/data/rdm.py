"""Representational dissimilarity matrices: read, validate, memory-map, compute.

Files: ``.npy``, ``.npz``, ``.mat`` (MATLAB v5 through scipy; v7.3 files are HDF5) and
``.h5``/``.hdf5``. An RDM file holds one matrix ``(n, n)`` or a stack ``(..., n, n)``,
e.g. participants x time x n x n (THINGS-MEG: 4 x 281 x 1854 x 1854, 14 GiB in float32).
Arrays larger than ``max_bytes`` are memory-mapped, never read whole: ``.npy`` through
``np.load(mmap_mode="r")``, HDF5 through ``np.memmap`` at the dataset's offset (only a
contiguous, uncompressed dataset can be mapped). ``.npz`` and v5 ``.mat`` cannot be mapped:
above the limit they are refused with a message saying to convert.

Validation (:func:`validate_rdm`): the last two axes square, the matrices symmetric and
with a zero diagonal (tolerance relative to the values' scale), no infinities, and NaN
handled by an explicit policy: ``"error"`` (default), ``"zero"`` (replaced by 0, as the
CLIP-HBA code does) or ``"keep"`` (left for the caller to mask). A memory-mapped stack is
checked matrix block by matrix block within ``budget_bytes``; when the whole stack is
larger than the budget, an evenly spaced sample of its matrices (always the first and the
last) is checked and the result says how many.

RDMs from data: :func:`correlation_rdm` (1 - Pearson r between condition patterns, per
time point) and :func:`decoding_rdm` (cross-validated pairwise decoding accuracy minus
chance, per time point, from epochs).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["RDM_SUFFIXES", "RDMCheck", "load_rdm", "validate_rdm", "correlation_rdm",
           "decoding_rdm", "array_header"]

RDM_SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")
NAN_POLICIES = ("error", "zero", "keep")


@dataclass(frozen=True)
class RDMCheck:
    """What :func:`validate_rdm` checked: matrices checked of the total, NaNs found."""

    n_checked: int
    n_total: int
    n_nan: int

    @property
    def complete(self) -> bool:
        return self.n_checked == self.n_total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _pick(keys: list[str], key: str | None, where: str) -> str:
    if key is not None:
        if key not in keys:
            raise SpecError(f"{where} has no array {key!r}; arrays: {sorted(keys)}")
        return key
    if len(keys) != 1:
        raise SpecError(f"{where} holds {len(keys)} arrays {sorted(keys)[:10]}; name one with "
                        f"key (e.g. --key {sorted(keys)[0] if keys else 'NAME'})")
    return keys[0]


def array_header(path: str | os.PathLike, key: str | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array in a ``.npy``/``.npz``/``.mat``/HDF5 file, unread."""
    p = Path(path)
    where = f"RDM file '{os.fspath(path)}'"
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            with open(p, "rb") as fh:
                shape, dtype = _npy_header(fh)
            return shape, dtype
        if suffix == ".npz":
            with zipfile.ZipFile(p) as zf:
                names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                name = _pick(names, key, where)
                with zf.open(name + ".npy") as fh:
                    shape, dtype = _npy_header(fh)
            return shape, dtype
        if suffix == ".mat" and not _is_hdf5(p):
            import scipy.io

            info = {n: (s, c) for n, s, c in scipy.io.whosmat(p)}
            name = _pick(list(info), key, where)
            shape, cls = info[name]
            dtype = {"double": "float64", "single": "float32"}.get(cls, cls)
            return tuple(shape), np.dtype(dtype) if dtype in ("float64", "float32") else np.dtype("O")
        import h5py

        with h5py.File(p, "r") as f:
            names = [n for n in f if isinstance(f[n], h5py.Dataset)]
            ds = f[_pick(names, key, where)]
            return tuple(ds.shape), ds.dtype
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
                        f"expected a {suffix} file holding an RDM array") from None


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if major == 1
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def _is_hdf5(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(512 + 8)
    return b"\x89HDF\r\n\x1a\n" in head


def load_rdm(path: str | os.PathLike, *, key: str | None = None, nan_policy: str = "error",
             max_bytes: int = 2**30, validate_budget_bytes: int = 256 * 2**20,
             return_check: bool = False):
    """Read and validate an RDM (or a stack of RDMs).

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy``, ``.npz``, ``.mat`` or ``.h5``/``.hdf5``.
    key : str or None
        Array name inside ``.npz``/``.mat``/HDF5 (None: the only one).
    nan_policy : {"error", "zero", "keep"}
    max_bytes : int
        Arrays above this size are memory-mapped (``.npy``, contiguous HDF5) or refused.
    validate_budget_bytes : int
        At most this much of a memory-mapped array is read at once during validation.
    return_check : bool
        Also return the :class:`RDMCheck`.

    Returns
    -------
    np.ndarray, shape (..., n, n)
        In memory (a float array) under ``max_bytes``; a read-only ``np.memmap`` above.
    """
    if nan_policy not in NAN_POLICIES:
        raise SpecError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    p = Path(path)
    where = f"RDM file '{os.fspath(path)}'"
    suffix = p.suffix.lower()
    if suffix not in RDM_SUFFIXES:
        raise SpecError(f"{where} has suffix {suffix or '(none)'!r}; expected one of {RDM_SUFFIXES}")
    if not p.is_file():
        raise SpecError(f"{where} not found")
    shape, dtype = array_header(p, key)
    if dtype.kind not in "iuf":
        raise SpecError(f"{where}: the RDM must hold real numbers, got dtype {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    big = nbytes > max_bytes
    try:
        if suffix == ".npy":
            arr = np.load(p, mmap_mode="r" if big else None, allow_pickle=False)
        elif big and suffix in (".npz",) or (big and suffix == ".mat" and not _is_hdf5(p)):
            raise SpecError(f"{where} holds {nbytes / 2**30:.2f} GiB {shape}, over the "
                            f"{max_bytes / 2**30:.2f} GiB limit, and {suffix} files cannot be "
                            f"memory-mapped; convert it to .npy (numpy.save) or an uncompressed "
                            f"HDF5 dataset")
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                arr = npz[_pick(list(npz.files), key, where)]
        elif suffix == ".mat" and not _is_hdf5(p):
            import scipy.io

            mat = scipy.io.loadmat(p)
            names = [k for k in mat if not k.startswith("__")]
            arr = np.asarray(mat[_pick(names, key, where)])
        else:
            arr = _read_hdf5(p, key, where, big)
            if suffix == ".mat":
                # MATLAB v7.3 writes column-major: a (participants, time, n, n) array is
                # stored as (n, n, time, participants); reversing the axes is a free view
                arr = arr.transpose()
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
                        f"the file may be corrupt or truncated") from None
    if nan_policy == "zero" and big:
        raise SpecError(f"{where}: nan_policy 'zero' copies the array, which is over the "
                        f"{max_bytes / 2**30:.2f} GiB limit; use 'keep' (and mask NaNs) or "
                        f"clean the file first")
    if not big:
        arr = np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    check = validate_rdm(arr, where, nan_policy, validate_budget_bytes)
    if nan_policy == "zero" and check.n_nan:
        arr = np.nan_to_num(arr, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return (arr, check) if return_check else arr


def _read_hdf5(p: Path, key: str | None, where: str, big: bool):
    import h5py

    with h5py.File(p, "r") as f:
        names = [n for n in f if isinstance(f[n], h5py.Dataset)]
        ds = f[_pick(names, key, where)]
        if not big:
            return np.asarray(ds[()])
        offset = ds.id.get_offset()
        if offset is None or ds.chunks is not None or ds.compression is not None:
            raise SpecError(f"{where}: dataset {ds.name!r} {ds.shape} is over the size limit "
                            f"and chunked or compressed, so it cannot be memory-mapped; rewrite "
                            f"it as a contiguous uncompressed dataset or convert it to .npy")
        shape, dtype = ds.shape, ds.dtype
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape)


def validate_rdm(arr: np.ndarray, where: str = "RDM", nan_policy: str = "error",
                 budget_bytes: int = 256 * 2**20) -> RDMCheck:
    """Check the RDM invariants (see the module docstring); raise one-line SpecErrors."""
    if arr.ndim < 2:
        raise SpecError(f"{where}: an RDM needs at least 2 dimensions (n, n), got shape {arr.shape}")
    n = arr.shape[-1]
    if arr.shape[-2] != n:
        raise SpecError(f"{where}: RDMs must be square in their last two axes, got shape "
                        f"{arr.shape}")
    if n < 2:
        raise SpecError(f"{where}: an RDM needs at least 2 conditions, got shape {arr.shape}")
    flat = arr.reshape(-1, n, n)
    total = flat.shape[0]
    per = n * n * 8
    block = max(1, budget_bytes // per)
    if total <= block * 4 or total * per <= budget_bytes:
        idx = np.arange(total)
    else:  # a sample: first, last, evenly spaced, within the budget
        k = max(2, min(total, budget_bytes // per))
        idx = np.unique(np.linspace(0, total - 1, k).round().astype(int))
    n_nan = 0
    for s in range(0, len(idx), block):
        sel = idx[s:s + block]
        m = np.asarray(flat[sel] if len(sel) != total else flat[:], dtype=np.float64)
        nan = np.isnan(m)
        if np.isinf(m).any():
            first = tuple(int(i) for i in np.argwhere(np.isinf(m))[0])
            raise SpecError(f"{where}: infinite value at matrix {int(sel[first[0]])}, entry "
                            f"{first[1:]}; expected finite dissimilarities")
        if nan.any():
            n_nan += int(nan.sum())
            if nan_policy == "error":
                first = tuple(int(i) for i in np.argwhere(nan)[0])
                raise SpecError(f"{where}: {int(nan.sum())} NaN value(s), the first at matrix "
                                f"{int(sel[first[0]])}, entry {first[1:]}; set nan_policy to "
                                f"'zero' or 'keep' to accept them")
        either = nan | np.swapaxes(nan, 1, 2)  # pairs with a NaN are not compared
        m = np.nan_to_num(m, nan=0.0)
        scale = max(float(np.abs(m).max()), 1e-12)
        tol = 1e-5 * scale
        asym = np.where(either, 0.0, np.abs(m - np.swapaxes(m, 1, 2)))
        if asym.max() > tol:
            b, i, j = (int(v) for v in np.unravel_index(np.argmax(asym), asym.shape))
            raise SpecError(f"{where}: RDMs must be symmetric, but matrix {int(sel[b])} has "
                            f"[{i}, {j}] = {m[b, i, j]:.6g} and [{j}, {i}] = {m[b, j, i]:.6g}")
        diag = np.abs(np.diagonal(m, axis1=1, axis2=2))
        if diag.max() > tol:
            b, i = (int(v) for v in np.unravel_index(np.argmax(diag), diag.shape))
            raise SpecError(f"{where}: RDMs must have a zero diagonal, but matrix {int(sel[b])} "
                            f"has [{i}, {i}] = {m[b, i, i]:.6g}")
    return RDMCheck(int(len(idx)), int(total), n_nan)


def correlation_rdm(patterns: np.ndarray) -> np.ndarray:
    """``1 - Pearson r`` between condition patterns.

    Parameters
    ----------
    patterns : np.ndarray, shape (n_conditions, n_features) or (n_times, n_conditions, n_features)

    Returns
    -------
    np.ndarray of float64, shape (n, n) or (n_times, n, n), diagonal exactly 0.
    """
    x = np.asarray(patterns, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3:
        raise SpecError(f"correlation_rdm expects (n_conditions, n_features) or (n_times, "
                        f"n_conditions, n_features), got shape {np.shape(patterns)}")
    x = x - x.mean(axis=2, keepdims=True)
    norm = np.linalg.norm(x, axis=2, keepdims=True)
    if (norm == 0).any():
        raise SpecError("correlation_rdm: a condition pattern is constant (zero variance), so "
                        "its correlation is undefined")
    x = x / norm
    rdm = 1.0 - np.einsum("tif,tjf->tij", x, x)
    idx = np.arange(rdm.shape[1])
    rdm[:, idx, idx] = 0.0
    rdm = (rdm + rdm.transpose(0, 2, 1)) / 2
    return rdm[0] if single else rdm


def decoding_rdm(epochs: np.ndarray, labels: np.ndarray, n_folds: int = 5,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated pairwise decoding distance per time point.

    For each time point, epochs are split into ``n_folds`` stratified folds; class means
    come from the training folds, and a held-out epoch of class ``a`` counts as decoded in
    the pair (a, b) when it is nearer (Euclidean, across channels) to mean ``a`` than to
    mean ``b``. The distance is the pairwise accuracy over both classes' held-out epochs,
    minus chance (0.5): 0 for indistinguishable conditions, up to 0.5.

    Parameters
    ----------
    epochs : np.ndarray, shape (n_epochs, n_channels, n_times)
    labels : np.ndarray, shape (n_epochs,)
        Condition of each epoch; at least 2 conditions, each with >= ``n_folds`` epochs.

    Returns
    -------
    rdm : np.ndarray of float64, shape (n_times, n_conditions, n_conditions)
        Symmetric, zero diagonal.
    conditions : np.ndarray, shape (n_conditions,)
        The condition of each row, sorted.
    """
    x = np.asarray(epochs, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 3 or y.shape != (x.shape[0],):
        raise SpecError(f"decoding_rdm expects epochs (n_epochs, n_channels, n_times) and one "
                        f"label per epoch, got {x.shape} and {y.shape}")
    conds, y_idx, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(conds) < 2:
        raise SpecError(f"decoding_rdm needs at least 2 conditions, got {conds.tolist()}")
    if counts.min() < n_folds or n_folds < 2:
        raise SpecError(f"decoding_rdm: every condition needs >= n_folds = {n_folds} (>= 2) "
                        f"epochs, but condition {conds[np.argmin(counts)].item()!r} has {counts.min()}")
    rng = rng or np.random.default_rng(0)
    fold = np.empty(len(y), dtype=int)
    for c in range(len(conds)):
        members = rng.permutation(np.flatnonzero(y_idx == c))
        fold[members] = np.arange(len(members)) % n_folds
    k = len(conds)
    hits = np.zeros((x.shape[2], k, k))
    trials = np.zeros((k, k))
    onehot = np.eye(k)[y_idx]  # (n, k)
    for f in range(n_folds):
        train, test = fold != f, fold == f
        w = onehot[train] / onehot[train].sum(0)  # (n_train, k)
        means = np.einsum("nk,nct->tkc", w, x[train])  # (t, k, c)
        xt = x[test].transpose(2, 0, 1)  # (t, n_test, c)
        dist = (np.einsum("tnc,tnc->tn", xt, xt)[:, :, None]
                - 2 * np.einsum("tnc,tkc->tnk", xt, means)
                + np.einsum("tkc,tkc->tk", means, means)[:, None, :])  # (t, n_test, k)
        own = np.take_along_axis(dist, y_idx[test][None, :, None].repeat(x.shape[2], 0), axis=2)
        correct = (own < dist).astype(float)  # (t, n_test, k): nearer to own than to class j
        hits += np.einsum("tnj,ni->tij", correct, onehot[test])
        trials += onehot[test].sum(0)[:, None] * np.ones((1, k))
    acc_pair = (hits + hits.transpose(0, 2, 1)) / (trials + trials.T)[None]
    rdm = acc_pair - 0.5
    idx = np.arange(k)
    rdm[:, idx, idx] = 0.0
    return rdm, conds
