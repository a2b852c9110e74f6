"""Representational dissimilarity matrix files: read, validate, memory-map.

Files: ``.npy``, ``.npz``, ``.mat`` (MATLAB v5 through scipy; v7.3 files are HDF5) and
``.h5``/``.hdf5``. An RDM file holds one matrix ``(n, n)`` or a stack ``(..., n, n)``,
e.g. participants x time x n x n (THINGS-MEG: 4 x 281 x 1854 x 1854, 14 GiB in float32).
Arrays larger than ``max_bytes`` are memory-mapped, never read whole: ``.npy`` through
``np.load(mmap_mode="r")``, HDF5 through ``np.memmap`` at the dataset's offset (only a
contiguous, uncompressed dataset can be mapped). ``.npz`` and v5 ``.mat`` cannot be mapped:
above the limit they are refused, from their header and before anything is read, with a
message saying to convert. MATLAB v7.3 files store arrays column-major; they come back in
MATLAB's axis order (a free transposed view, memory-mapped or not).

Validation (:func:`validate_rdm`): the last two axes square, the matrices symmetric and
with a zero diagonal (tolerance ``1e-5`` times the largest absolute value of the block
checked), no infinities, and NaN handled by an explicit policy: ``"error"`` (default),
``"zero"`` (replaced by 0 in a copy, as the CLIP-HBA code does; only under ``max_bytes``)
or ``"keep"`` (left for the caller to mask). Entries whose mirror is NaN are not compared.
Work is done block by block so that at most about ``budget_bytes`` of working memory is
held at once. An array in memory is always checked whole. A memory-mapped array larger
than the budget is checked on a deterministic sample that reads about ``budget_bytes`` of
the file: the first, the last and evenly spaced matrices (or, for a column-major v7.3
layout, where one matrix is scattered over the whole file, every matrix restricted to the
first, last and evenly spaced conditions); the returned :class:`RDMCheck` says how much
was checked.

RDMs computed from data are in :mod:`raybrain.data.rdm_compute`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.errors import SpecError

__all__ = ["RDM_SUFFIXES", "RDMCheck", "load_rdm", "validate_rdm", "array_header",
           "read_hdf5_dataset", "is_memory_mapped"]

RDM_SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")
NAN_POLICIES = ("error", "zero", "keep")

#: MATLAB classes reported by ``scipy.io.whosmat`` that hold real numbers.
_MAT_NUMERIC = {"double": "float64", "single": "float32", "int8": "int8", "uint8": "uint8",
                "int16": "int16", "uint16": "uint16", "int32": "int32", "uint32": "uint32",
                "int64": "int64", "uint64": "uint64", "logical": "bool"}

# bytes of working memory per matrix entry checked: float64 rows and mirrored columns
# (2 x 8), the stored values while they are converted, boolean masks, and some slack
_WORK = 32


@dataclass(frozen=True)
class RDMCheck:
    """What :func:`validate_rdm` checked.

    Attributes
    ----------
    n_checked : int
        Matrices checked (all of their checked rows).
    n_total : int
        Matrices in the stack (product of the leading dimensions; 1 for a single RDM).
    n_nan : int
        NaN entries found in what was checked.
    rows_checked : int or None
        None when whole matrices were checked; otherwise (column-major memory-mapped
        stacks) the number of sampled conditions of ``n``: their columns were checked for
        NaN/inf in every matrix, and the submatrix on them for symmetry and diagonal.
    """

    n_checked: int
    n_total: int
    n_nan: int
    rows_checked: int | None = None

    @property
    def complete(self) -> bool:
        """True when every entry of every matrix was checked."""
        return self.n_checked == self.n_total and self.rows_checked is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _pick(keys: list[str], key: str | None, where: str) -> str:
    if key is not None:
        if key not in keys:
            raise SpecError(f"{where} has no array {key!r}; expected one of {sorted(keys)}")
        return key
    if len(keys) != 1:
        shown = sorted(keys)[:10]
        raise SpecError(f"{where} holds {len(keys)} arrays {shown}; name one with key "
                        f"(e.g. key={shown[0] if shown else 'NAME'!r})")
    return keys[0]


def is_memory_mapped(arr: np.ndarray) -> bool:
    """True when ``arr`` is an ``np.memmap`` or a view whose base chain reaches one."""
    base = arr
    while base is not None:
        if isinstance(base, np.memmap):
            return True
        base = getattr(base, "base", None)
    return False


def array_header(path: str | os.PathLike,
                 key: str | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array in a ``.npy``/``.npz``/``.mat``/HDF5 file, unread.

    Parameters
    ----------
    path : str or os.PathLike
    key : str or None
        Array name in ``.npz``/``.mat``/HDF5 (None: the only one).

    Returns
    -------
    shape : tuple of int
        As stored (a v7.3 ``.mat`` reports HDF5's order, the reverse of MATLAB's).
    dtype : np.dtype
        ``object`` for MATLAB cells, structs, strings and sparse matrices.

    Raises
    ------
    SpecError
        Unreadable file, or a missing / ambiguous key.
    """
    p = Path(path)
    where = f"RDM file '{os.fspath(path)}'"
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            with open(p, "rb") as fh:
                return _npy_header(fh)
        if suffix == ".npz":
            with zipfile.ZipFile(p) as zf:
                names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                name = _pick(names, key, where)
                with zf.open(name + ".npy") as fh:
                    return _npy_header(fh)
        if suffix == ".mat" and not _is_hdf5(p):
            import scipy.io

            info = {n: (s, c) for n, s, c in scipy.io.whosmat(p)}
            name = _pick(list(info), key, where)
            shape, cls = info[name]
            return tuple(shape), np.dtype(_MAT_NUMERIC.get(cls, "O"))
        import h5py

        with h5py.File(p, "r") as f:
            names = [n for n in f if isinstance(f[n], h5py.Dataset)]
            ds = f[_pick(names, key, where)]
            return tuple(ds.shape), ds.dtype
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
                        f"expected a {suffix} file holding an RDM array; the file may be corrupt "
                        f"or truncated") from None


def _npy_header(fh) -> tuple[tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(fh)
    read = (np.lib.format.read_array_header_1_0 if major == 1
            else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def _is_hdf5(p: Path) -> bool:
    # the HDF5 signature sits at byte 0, 512, 1024, ... (MATLAB v7.3 has a 512-byte userblock)
    with open(p, "rb") as fh:
        head = fh.read(2048 + 8)
    return any(head[o:o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512, 1024, 2048))


def load_rdm(path: str | os.PathLike, *, key: str | None = None, nan_policy: str = "error",
             max_bytes: int = 2**30, validate_budget_bytes: int = 256 * 2**20,
             return_check: bool = False):
    """Read and validate an RDM (or a stack of RDMs).

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy``, ``.npz``, ``.mat`` (v5 or v7.3) or ``.h5``/``.hdf5``.
    key : str or None
        Array name inside ``.npz``/``.mat``/HDF5 (None: the only one; an error lists the
        names when there are several).
    nan_policy : {"error", "zero", "keep"}
        What NaN entries do: raise, become 0 (a copy; refused over ``max_bytes``), or stay.
    max_bytes : int
        Arrays above this size are memory-mapped (``.npy``, contiguous uncompressed HDF5)
        or refused (``.npz``, v5 ``.mat``, chunked/compressed HDF5) with a message saying
        to convert.
    validate_budget_bytes : int
        Working memory for validation; see :func:`validate_rdm`.
    return_check : bool
        Also return the :class:`RDMCheck`.

    Returns
    -------
    rdm : np.ndarray, shape (..., n, n)
        float32 (float64 if stored so) in memory under ``max_bytes``; above it a read-only
        ``np.memmap`` (or a transposed view of one, for v7.3) in the stored dtype.
    check : RDMCheck
        Only with ``return_check=True``.

    Raises
    ------
    SpecError
        One line naming the file: wrong suffix, missing, unreadable/corrupt/truncated,
        missing or ambiguous key, non-numeric, too large for its format, or an invalid RDM.
    """
    if nan_policy not in NAN_POLICIES:
        raise SpecError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    p = Path(path)
    where = f"RDM file '{os.fspath(path)}'"
    suffix = p.suffix.lower()
    if suffix not in RDM_SUFFIXES:
        raise SpecError(f"{where} has suffix {suffix or '(none)'!r}; expected one of "
                        f"{RDM_SUFFIXES}")
    if not p.is_file():
        raise SpecError(f"{where} not found; expected an existing file")
    shape, dtype = array_header(p, key)
    if dtype.kind not in "biuf":
        raise SpecError(f"{where}: the RDM must hold real numbers, got dtype {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    big = nbytes > max_bytes
    v5_mat = suffix == ".mat" and not _is_hdf5(p)
    if big and (suffix == ".npz" or v5_mat):
        raise SpecError(f"{where} holds a {nbytes / 2**20:.1f} MiB array {shape}, over the "
                        f"{max_bytes / 2**20:.1f} MiB limit (max_bytes), and {suffix} files "
                        f"cannot be memory-mapped; convert it to .npy (numpy.save) or an "
                        f"uncompressed HDF5 dataset")
    if big and nan_policy == "zero":
        raise SpecError(f"{where}: nan_policy 'zero' copies the array, and its "
                        f"{nbytes / 2**20:.1f} MiB are over the {max_bytes / 2**20:.1f} MiB "
                        f"limit (max_bytes); use 'keep' (and mask NaNs) or clean the file first")
    try:
        if suffix == ".npy":
            arr = np.load(p, mmap_mode="r" if big else None, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                arr = npz[_pick(list(npz.files), key, where)]
        elif v5_mat:
            import scipy.io

            names = [n for n, _, _ in scipy.io.whosmat(p)]
            name = _pick(names, key, where)
            arr = np.asarray(scipy.io.loadmat(p, variable_names=[name])[name])
        else:
            arr = read_hdf5_dataset(p, key, where, mapped=big)
            if suffix == ".mat":
                # MATLAB v7.3 writes column-major: a (participants, time, n, n) array is
                # stored as (n, n, time, participants); reversing the axes is a free view
                arr = arr.transpose()
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
                        f"the file may be corrupt or truncated") from None
    if not big:
        arr = np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    check = validate_rdm(arr, where, nan_policy, validate_budget_bytes)
    if nan_policy == "zero" and check.n_nan:
        arr = np.where(np.isnan(arr), arr.dtype.type(0), arr)
    return (arr, check) if return_check else arr


def read_hdf5_dataset(path: str | os.PathLike, key: str | None, where: str, *,
                      mapped: bool) -> np.ndarray:
    """One dataset of an HDF5 file: read into memory, or memory-mapped without reading.

    Parameters
    ----------
    path : str or os.PathLike
    key : str or None
        Dataset name at the file's root (None: the only one).
    where : str
        How error messages name the file.
    mapped : bool
        Map with ``np.memmap`` at the dataset's offset instead of reading it; only a
        contiguous, uncompressed dataset can be mapped (else a SpecError says to rewrite it).

    Returns
    -------
    np.ndarray
        In the stored shape and dtype; read-only ``np.memmap`` when ``mapped``.
    """
    import h5py

    with h5py.File(path, "r") as f:
        names = [n for n in f if isinstance(f[n], h5py.Dataset)]
        ds = f[_pick(names, key, where)]
        if not mapped:
            return np.asarray(ds[()])
        offset = ds.id.get_offset()
        if offset is None or ds.chunks is not None or ds.compression is not None \
                or ds.dtype.kind not in "biuf":
            layout = "chunked or compressed" if ds.chunks is not None else "not contiguous"
            raise SpecError(f"{where}: dataset {ds.name!r} {ds.shape} is over the size limit "
                            f"(max_bytes) and {layout}, so it cannot be memory-mapped; rewrite "
                            f"it as a contiguous uncompressed dataset or convert it to .npy")
        shape, dtype = ds.shape, ds.dtype
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _even(total: int, k: int) -> np.ndarray:
    """``k`` (>= 2, <= total) evenly spaced indices of ``range(total)``, first and last."""
    k = int(min(total, max(2, k)))
    return np.unique(np.linspace(0, total - 1, k).round().astype(np.int64))


def validate_rdm(arr: np.ndarray, where: str = "RDM", nan_policy: str = "error",
                 budget_bytes: int = 256 * 2**20) -> RDMCheck:
    """Check the RDM invariants (module docstring); raise one-line SpecErrors.

    Parameters
    ----------
    arr : np.ndarray, shape (..., n, n)
        In memory or memory-mapped; never read whole when mapped and over the budget.
    where : str
        How error messages name the data (e.g. the file).
    nan_policy : {"error", "zero", "keep"}
        "error" raises when a NaN is found (with their count and the first index); the
        other two accept NaNs (they are counted; :func:`load_rdm` replaces them for "zero").
    budget_bytes : int
        Working memory held at once, and for a memory-mapped array over this size, about
        how much of the file the sample reads.

    Returns
    -------
    RDMCheck
        How many matrices (and rows) were checked, of how many; NaNs found.

    Raises
    ------
    SpecError
        Fewer than 2 dimensions, not square, fewer than 2 conditions, an infinite value,
        a NaN under "error", an asymmetric entry or a non-zero diagonal entry, each with
        the matrix (leading index) and entry.
    """
    if nan_policy not in NAN_POLICIES:
        raise SpecError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if arr.ndim < 2:
        raise SpecError(f"{where}: an RDM needs at least 2 dimensions (n, n), got shape "
                        f"{arr.shape}")
    n = arr.shape[-1]
    if arr.shape[-2] != n:
        raise SpecError(f"{where}: RDMs must be square in their last two axes, got shape "
                        f"{arr.shape}")
    if n < 2:
        raise SpecError(f"{where}: an RDM needs at least 2 conditions, got shape {arr.shape}")
    lead = arr.shape[:-2]
    total = int(np.prod(lead, dtype=np.int64))
    if total == 0:
        raise SpecError(f"{where}: the RDM stack is empty, got shape {arr.shape}")
    mapped = is_memory_mapped(arr)
    fetch, column_major = _fetcher(arr, mapped)

    mats = np.arange(total)
    rows = np.arange(n)
    rows_checked = None
    if mapped and arr.size * arr.itemsize > budget_bytes:
        if column_major:  # one matrix is spread over the whole file: sample conditions
            return _check_column_major_sample(arr, where, nan_policy, budget_bytes)
        mats = _even(total, budget_bytes // (n * n * arr.itemsize))
    per_matrix = n * len(rows) * _WORK
    if per_matrix <= budget_bytes:
        mat_step, row_step = max(1, budget_bytes // per_matrix), len(rows)
    else:
        mat_step, row_step = 1, max(1, budget_bytes // (n * _WORK))

    def name(u: int) -> str:
        idx = np.unravel_index(u, lead) if lead else ()
        return f"matrix {tuple(int(i) for i in idx)}" if len(lead) > 1 else f"matrix {u}"

    n_nan, first_nan = 0, ""
    for m0 in range(0, len(mats), mat_step):
        sel = mats[m0:m0 + mat_step]
        for r0 in range(0, len(rows), row_step):
            rblk = rows[r0:r0 + row_step]
            r, c = fetch(sel, rblk)  # (k, b, n): r[k, a, j] = M[r_a, j], c[k, a, j] = M[j, r_a]
            if np.isinf(r).any():
                k, a, j = (int(v) for v in np.argwhere(np.isinf(r))[0])
                raise SpecError(f"{where}: infinite value at {name(int(sel[k]))}, entry "
                                f"({int(rblk[a])}, {j}); expected finite dissimilarities")
            nan = np.isnan(r)
            if nan.any():
                if not n_nan:
                    k, a, j = (int(v) for v in np.argwhere(nan)[0])
                    first_nan = f"{name(int(sel[k]))}, entry ({int(rblk[a])}, {j})"
                n_nan += int(nan.sum())
            nan |= np.isnan(c)  # pairs with a NaN on either side are not compared
            r[nan] = 0.0
            c[nan] = 0.0
            del nan
            scale = max(float(r.max()), -float(r.min()), float(c.max()), -float(c.min()), 1e-12)
            tol = 1e-5 * scale
            asym = np.abs(np.subtract(r, c, out=c), out=c)  # in place: c is not needed again
            if asym.max() > tol:
                k, a, j = (int(v) for v in np.unravel_index(np.argmax(asym), asym.shape))
                i = int(rblk[a])
                mirror = fetch(sel[k:k + 1], rblk[a:a + 1])[1][0, 0, j]  # M[j, i], re-read
                raise SpecError(f"{where}: RDMs must be symmetric, but {name(int(sel[k]))} "
                                f"has [{i}, {j}] = {r[k, a, j]:.6g} and [{j}, {i}] = "
                                f"{mirror:.6g} (tolerance {tol:.3g})")
            diag = np.abs(r[:, np.arange(len(rblk)), rblk])  # (k, b)
            if diag.max() > tol:
                k, a = (int(v) for v in np.unravel_index(np.argmax(diag), diag.shape))
                i = int(rblk[a])
                raise SpecError(f"{where}: RDMs must have a zero diagonal, but "
                                f"{name(int(sel[k]))} has [{i}, {i}] = {r[k, a, i]:.6g} "
                                f"(tolerance {tol:.3g})")
    if n_nan and nan_policy == "error":
        part = "" if len(mats) == total and rows_checked is None else " (in the sample checked)"
        raise SpecError(f"{where}: {n_nan} NaN value(s){part}, the first at {first_nan}; "
                        f"expected none, or set nan_policy to 'zero' or 'keep' to accept them")
    return RDMCheck(int(len(mats)), total, n_nan, rows_checked)


def _check_column_major_sample(arr: np.ndarray, where: str, nan_policy: str,
                               budget_bytes: int) -> RDMCheck:
    """Sampled check of a memory-mapped column-major stack (a v7.3 ``.mat``).

    Stored as ``(n, n, *lead[::-1])``, one of its rows holds one column of every matrix,
    contiguous on disk, while one matrix is scattered over the whole file. So the sample
    is a set of conditions (first, last, evenly spaced): their whole columns in every
    matrix are checked for NaN/inf, and the principal submatrix on them for symmetry and
    a zero diagonal. Reads about ``budget_bytes`` of the file, one row at a time.
    """
    n = arr.shape[-1]
    lead = arr.shape[:-2]
    stored = arr.T.reshape(n, n, -1)  # stored[j, i, m] = M_m[i, j]
    total = stored.shape[2]
    rows = _even(n, budget_bytes // (n * total * (arr.itemsize + 8)))

    def name(m: int) -> str:
        idx = np.unravel_index(m, lead[::-1])[::-1] if lead else ()
        if len(lead) > 1:
            return f"matrix {tuple(int(i) for i in idx)}"
        return f"matrix {m if lead else 0}"

    sub = np.empty((len(rows), len(rows), total))  # sub[x, y, m] = M_m[rows[y], rows[x]]
    n_nan, first_nan = 0, ""
    for x, i in enumerate(rows):
        col = np.asarray(stored[i], dtype=np.float64)  # (n, total): col[j, m] = M_m[j, i]
        if np.isinf(col).any():
            j, m = (int(v) for v in np.argwhere(np.isinf(col))[0])
            raise SpecError(f"{where}: infinite value at {name(m)}, entry ({j}, {int(i)}); "
                            f"expected finite dissimilarities")
        nan = np.isnan(col)
        if nan.any():
            if not n_nan:
                j, m = (int(v) for v in np.argwhere(nan)[0])
                first_nan = f"{name(m)}, entry ({j}, {int(i)})"
            n_nan += int(nan.sum())
        sub[x] = col[rows]
    if n_nan and nan_policy == "error":
        raise SpecError(f"{where}: {n_nan} NaN value(s) (in the sample checked), the first at "
                        f"{first_nan}; expected none, or set nan_policy to 'zero' or 'keep' to "
                        f"accept them")
    mirror = sub.transpose(1, 0, 2)
    skip = np.isnan(sub) | np.isnan(mirror)
    sub = np.where(skip, 0.0, sub)
    mirror = sub.transpose(1, 0, 2)
    tol = 1e-5 * max(float(np.abs(sub).max()), 1e-12)
    asym = np.abs(sub - mirror)
    if asym.max() > tol:
        x, y, m = (int(v) for v in np.unravel_index(np.argmax(asym), asym.shape))
        i, j = int(rows[y]), int(rows[x])  # sub[x, y] = M[i, j]
        raise SpecError(f"{where}: RDMs must be symmetric, but {name(m)} has [{i}, {j}] = "
                        f"{sub[x, y, m]:.6g} and [{j}, {i}] = {sub[y, x, m]:.6g} "
                        f"(tolerance {tol:.3g})")
    diag = np.abs(sub[np.arange(len(rows)), np.arange(len(rows))])  # (k, total)
    if diag.max() > tol:
        x, m = (int(v) for v in np.unravel_index(np.argmax(diag), diag.shape))
        i = int(rows[x])
        raise SpecError(f"{where}: RDMs must have a zero diagonal, but {name(m)} has "
                        f"[{i}, {i}] = {sub[x, x, m]:.6g} (tolerance {tol:.3g})")
    return RDMCheck(total, total, n_nan, len(rows) if len(rows) < n else None)


def _fetcher(arr: np.ndarray, mapped: bool):
    """``fetch(sel, rows) -> (r, c)`` float64 blocks of the matrices ``sel`` (flat indices
    over the leading axes, C order), never copying more than those blocks; and whether the
    array is column-major (a transposed view, as v7.3 files give)."""
    n = arr.shape[-1]
    lead = arr.shape[:-2]
    if not arr.flags.c_contiguous and arr.T.flags.c_contiguous and arr.ndim >= 2:
        stored = arr.T.reshape(n, n, -1)  # a view: stored[j, i, m] = M_u[i, j]
        lead_rev = lead[::-1]

        def to_stored(sel):
            if not lead:
                return sel
            return np.ravel_multi_index(np.unravel_index(sel, lead)[::-1], lead_rev)

        def fetch_f(sel, rows):
            m = to_stored(sel)
            r = stored[:, rows[None, :], m[:, None]].transpose(1, 2, 0)  # M[r_a, j]
            c = stored[rows[None, :], :, m[:, None]]  # (k, b, n): M[j, r_a]
            return r.astype(np.float64), c.astype(np.float64)

        return fetch_f, True
    flat = arr.reshape(-1, n, n) if arr.flags.c_contiguous or not mapped else None
    if flat is None:  # a mapped view of some other layout: matrix by matrix, no full copy

        def fetch_any(sel, rows):
            mats = [arr[np.unravel_index(int(u), lead)] if lead else arr for u in sel]
            r = np.stack([np.asarray(m[rows, :]) for m in mats]).astype(np.float64)
            c = np.stack([np.asarray(m[:, rows]).T for m in mats]).astype(np.float64)
            return r, c

        return fetch_any, False

    def fetch_c(sel, rows):
        r = flat[sel[:, None], rows[None, :]]  # (k, b, n)
        c = flat[sel[:, None], :, rows[None, :]]  # (k, b, n): flat[s, j, r_a]
        return r.astype(np.float64), c.astype(np.float64)

    return fetch_c, False
