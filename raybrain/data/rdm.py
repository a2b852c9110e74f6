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

MATLAB structs and cells (:mod:`raybrain.data.matfile`): a ``.mat`` key may be a field
path, ``key="RDMs.RDM"`` for the struct array RSA toolboxes save (``RDMs(k).RDM`` holds
each matrix). The matrices it reaches (cells are descended, struct arrays give one entry
per element, in MATLAB's order) are stacked along a new leading axis, ``(k, n, n)``; one
entry gives ``(n, n)``. A key that ends on a struct is refused with its fields and their
sizes listed. A stack of several entries is read into memory (within ``max_bytes``); a
single v7.3 entry over the limit is memory-mapped like a plain variable.

Condensed RDMs: the upper triangle as a vector, as :func:`scipy.spatial.distance.pdist`
returns it. Rule: a trailing axis of length ``m`` holds condensed RDMs iff ``m = n(n-1)/2``
for an integer ``n >= 2`` and the last two axes are not already a square pair; such an
array ``(..., m)`` is expanded to ``(..., n, n)`` with
:func:`scipy.spatial.distance.squareform` semantics (row-major upper triangle, zero
diagonal). The expanded stack must fit under ``max_bytes`` (it is built in memory).
MATLAB stores every vector as 2-D, so in a ``.mat`` file a ``(1, m)`` or ``(m, 1)``
variable or entry is taken as the vector ``(m,)`` first. :class:`RDMCheck` records the
stored shape of an RDM read as condensed.

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

import dataclasses
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybrain.data.matfile import (MAT_NUMERIC, file_state, is_hdf5, mat_variables,
                                   matlab_vector, matlab_vector_shape, open_leaves, split_key)
from raybrain.errors import SpecError

__all__ = ["RDM_SUFFIXES", "NAN_POLICIES", "RDMCheck", "load_rdm", "validate_rdm",
           "array_header", "read_hdf5_dataset", "is_memory_mapped", "condensed_size",
           "expand_condensed"]

RDM_SUFFIXES = (".npy", ".npz", ".mat", ".h5", ".hdf5")
NAN_POLICIES = ("error", "zero", "keep")

#: MATLAB classes reported by ``scipy.io.whosmat`` that hold real numbers.
_MAT_NUMERIC = MAT_NUMERIC

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
    condensed_from : tuple of int or None
        Set by :func:`load_rdm` when the file held condensed RDMs: their stored shape
        ``(..., n(n-1)/2)``.
    note : str
        How :func:`load_rdm` read the file when it did more than load one array (e.g.
        ``"3 entries of RDMs.RDM stacked"``); empty otherwise.
    """

    n_checked: int
    n_total: int
    n_nan: int
    rows_checked: int | None = None
    condensed_from: tuple[int, ...] | None = None
    note: str = ""

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
    return is_hdf5(p)


def condensed_size(shape: tuple[int, ...]) -> int | None:
    """``n`` when ``shape`` holds condensed RDMs by the module's rule, else None.

    The trailing axis of length ``m`` is condensed iff ``m = n(n-1)/2`` for an integer
    ``n >= 2`` and the last two axes are not a square pair. E.g. ``(10,) -> 5``,
    ``(4, 6) -> 4``, ``(6, 6) -> None`` (square), ``(5,) -> None`` (not triangular).
    """
    if len(shape) == 0 or (len(shape) >= 2 and shape[-1] == shape[-2]):
        return None
    m = int(shape[-1])
    n = int(round((1 + math.sqrt(1 + 8 * m)) / 2))
    return n if n >= 2 and n * (n - 1) // 2 == m else None


def expand_condensed(arr: np.ndarray) -> np.ndarray:
    """Condensed RDMs ``(..., n(n-1)/2)`` to square ``(..., n, n)``.

    Each vector is expanded by :func:`scipy.spatial.distance.squareform` (its upper
    triangle in row-major order, mirrored, zero diagonal); the dtype is kept.

    Raises
    ------
    SpecError
        When the trailing axis is not condensed by the module's rule.
    """
    from scipy.spatial.distance import squareform

    n = condensed_size(arr.shape)
    if n is None:
        raise SpecError(f"an array of shape {arr.shape} does not hold condensed RDMs; expected "
                        f"a trailing axis of length n(n-1)/2 for an integer n >= 2")
    flat = np.asarray(arr).reshape(-1, arr.shape[-1])
    out = np.empty((flat.shape[0], n, n), dtype=flat.dtype)
    for i, v in enumerate(flat):
        out[i] = squareform(v, force="tomatrix", checks=False)
    return out.reshape(*arr.shape[:-1], n, n)


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
        names when there are several). In a ``.mat`` file, a field path such as
        ``"RDMs.RDM"`` (module docstring).
    nan_policy : {"error", "zero", "keep"}
        What NaN entries do: raise, become 0 (a copy; refused over ``max_bytes``), or stay.
    max_bytes : int
        Arrays above this size are memory-mapped (``.npy``, contiguous uncompressed HDF5)
        or refused (``.npz``, v5 ``.mat``, chunked/compressed HDF5, stacks of struct or cell
        entries, condensed RDMs once expanded) with a message saying to convert.
    validate_budget_bytes : int
        Working memory for validation; see :func:`validate_rdm`.
    return_check : bool
        Also return the :class:`RDMCheck`.

    Returns
    -------
    rdm : np.ndarray, shape (..., n, n)
        float32 (float64 if stored so) in memory under ``max_bytes``; above it a read-only
        ``np.memmap`` (or a transposed view of one, for v7.3) in the stored dtype. Condensed
        input ``(..., n(n-1)/2)`` comes back expanded.
    check : RDMCheck
        Only with ``return_check=True``.

    Raises
    ------
    SpecError
        One line naming the file: wrong suffix, missing, a directory,
        unreadable/corrupt/truncated, missing or ambiguous key (or field path: the struct's
        fields and their sizes are listed), non-numeric, too large for its format, or an
        invalid RDM.
    """
    if nan_policy not in NAN_POLICIES:
        raise SpecError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    p = Path(path)
    where = f"RDM file '{os.fspath(path)}'"
    suffix = p.suffix.lower()
    if suffix not in RDM_SUFFIXES:
        raise SpecError(f"{where} has suffix {suffix or '(none)'!r}; expected one of "
                        f"{RDM_SUFFIXES}")
    p = file_state(p, where, f"an existing {suffix} file holding an RDM array")
    note = ""
    if suffix == ".mat":
        key, mat_path = _mat_variable(p, key, where)
        if mat_path:
            arr, note = _read_mat_entries(p, mat_path, where, max_bytes)
            return _finish(arr, where, nan_policy, max_bytes, validate_budget_bytes,
                           return_check, note)
    shape, dtype = array_header(p, key)
    if dtype.kind not in "biuf":
        raise SpecError(f"{where}: the RDM must hold real numbers, got dtype {dtype}")
    v5_mat = suffix == ".mat" and not _is_hdf5(p)
    v73_mat = suffix == ".mat" and not v5_mat
    logical = tuple(reversed(shape)) if v73_mat else tuple(shape)  # MATLAB's axis order
    if suffix == ".mat":
        logical = matlab_vector_shape(logical)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    n_cond = condensed_size(logical)
    if n_cond is not None:
        out_size = 8 if dtype == np.float64 else 4
        expanded = int(np.prod(logical[:-1], dtype=np.int64)) * n_cond * n_cond * out_size
        if expanded > max_bytes:
            raise SpecError(f"{where} holds condensed RDMs {logical} (n = {n_cond} conditions); "
                            f"expanded to {(*logical[:-1], n_cond, n_cond)} they take "
                            f"{expanded / 2**20:.1f} MiB, over the {max_bytes / 2**20:.1f} MiB "
                            f"limit (max_bytes); expand them once to a square .npy "
                            f"(scipy.spatial.distance.squareform) and load that")
    big = nbytes > max_bytes and n_cond is None
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
    if suffix == ".mat":
        arr = matlab_vector(arr)
    return _finish(arr, where, nan_policy, max_bytes, validate_budget_bytes, return_check, note)


def _finish(arr: np.ndarray, where: str, nan_policy: str, max_bytes: int, budget: int,
            return_check: bool, note: str):
    """Expand condensed input, convert in-memory arrays to float32/64, validate."""
    condensed_from = None
    if condensed_size(arr.shape) is not None:
        condensed_from = tuple(arr.shape)
        arr = expand_condensed(np.asarray(arr))
    if not is_memory_mapped(arr):
        arr = np.asarray(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)
    nbytes = arr.size * arr.itemsize
    if nan_policy == "zero" and is_memory_mapped(arr) and nbytes > max_bytes:
        raise SpecError(f"{where}: nan_policy 'zero' copies the array, and its "
                        f"{nbytes / 2**20:.1f} MiB are over the {max_bytes / 2**20:.1f} MiB "
                        f"limit (max_bytes); use 'keep' (and mask NaNs) or clean the file first")
    check = validate_rdm(arr, where, nan_policy, budget)
    check = dataclasses.replace(check, condensed_from=condensed_from, note=note)
    if nan_policy == "zero" and check.n_nan:
        arr = np.where(np.isnan(arr), arr.dtype.type(0), arr)
    return (arr, check) if return_check else arr


def _mat_variable(p: Path, key: str | None, where: str) -> tuple[str | None, str | None]:
    """(plain variable name or None, field path or None) for ``key`` in a ``.mat`` file.

    A numeric variable named alone keeps the plain route (header first, memory-mapped when
    large); a field path, a struct or a cell goes through :mod:`raybrain.data.matfile`.
    """
    try:
        variables = mat_variables(p)
    except Exception as exc:
        raise SpecError(f"{where} could not be read ({type(exc).__name__}: {_first_line(exc)}); "
                        f"expected a .mat file holding an RDM array; the file may be corrupt "
                        f"or truncated") from None
    var, fields = (split_key(key, where) if key is not None and "." in key else (key, []))
    names = sorted(variables)
    if var is None and len(names) != 1:
        shown = names[:10]
        sizes = ", ".join(f"{n}: {'x'.join(map(str, variables[n][0]))} {variables[n][1]}"
                          for n in shown)
        raise SpecError(f"{where} holds {len(names)} arrays {shown}; name one with key "
                        f"(e.g. key={shown[0] if shown else 'NAME'!r}; {sizes})")
    name = _pick(names, var, where)
    if fields or variables[name][1] not in MAT_NUMERIC:
        return None, ".".join([name, *fields])
    return name, None


def _read_mat_entries(p: Path, key: str, where: str, max_bytes: int) -> tuple[np.ndarray, str]:
    """The matrices a field path reaches, stacked ``(k, ...)`` (one entry: itself)."""
    v5 = not is_hdf5(p)
    if v5 and p.stat().st_size > max_bytes:
        raise SpecError(f"{where} is a {p.stat().st_size / 2**20:.1f} MiB v5 .mat file, over the "
                        f"{max_bytes / 2**20:.1f} MiB limit (max_bytes), and v5 files cannot "
                        f"be memory-mapped; save the matrices as one numeric array with "
                        f"save -v7.3, or convert to .npy")
    with open_leaves(p, key, where) as leaves:
        empty = [lf for lf in leaves if lf.kind == "empty"]
        if empty or not leaves:
            what = f"{empty[0].origin} is empty" if empty else "it reaches no arrays"
            raise SpecError(f"{where}: key {key!r}: {what}; expected an RDM in every entry "
                            f"(spike times per cell: raybrain data inspect --as spikes)")
        shapes = [matlab_vector_shape(lf.shape) for lf in leaves]
        if len(set(shapes)) > 1:
            j = next(i for i, s in enumerate(shapes) if s != shapes[0])
            raise SpecError(f"{where}: key {key!r} reaches arrays of different sizes "
                            f"({leaves[0].origin} is {'x'.join(map(str, leaves[0].shape))}, "
                            f"{leaves[j].origin} is {'x'.join(map(str, leaves[j].shape))}); "
                            f"expected one size to stack (spike times per cell: raybrain "
                            f"data inspect --as spikes)")
        total = sum(lf.nbytes for lf in leaves)
        note = (f"{len(leaves)} entries of {key} ({leaves[0].origin} .. {leaves[-1].origin}) "
                f"stacked" if len(leaves) > 1 else f"read from {leaves[0].origin}")
        n_cond = condensed_size((len(leaves), *shapes[0]) if len(leaves) > 1 else shapes[0])
        if total > max_bytes:
            ds = leaves[0].h5_dataset
            if len(leaves) == 1 and ds is not None and n_cond is None:
                return _map_dataset(p, ds, where).transpose(), note
            raise SpecError(f"{where}: key {key!r} reaches {len(leaves)} arrays, "
                            f"{total / 2**20:.1f} MiB in all, over the "
                            f"{max_bytes / 2**20:.1f} MiB limit (max_bytes), which cannot be "
                            f"memory-mapped as one stack; save them as one numeric array "
                            f"(e.g. cat(3, RDMs.RDM) with save -v7.3) or convert to .npy")
        try:
            arrays = [matlab_vector(np.asarray(lf.read())) for lf in leaves]
        except Exception as exc:
            raise SpecError(f"{where} could not be read ({type(exc).__name__}: "
                            f"{_first_line(exc)}); the file may be corrupt or truncated") from None
    arr = np.stack(arrays) if len(arrays) > 1 else arrays[0]
    if arr.dtype.kind not in "biuf":
        raise SpecError(f"{where}: the RDM must hold real numbers, got dtype {arr.dtype}")
    return arr, note


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
        return _map_dataset(path, ds, where)


def _map_dataset(path: str | os.PathLike, ds, where: str) -> np.ndarray:
    """``np.memmap`` of an open h5py dataset of ``path`` (contiguous, uncompressed only)."""
    offset = ds.id.get_offset()
    if offset is None or ds.chunks is not None or ds.compression is not None \
            or ds.dtype.kind not in "biuf":
        layout = "chunked or compressed" if ds.chunks is not None else "not contiguous"
        raise SpecError(f"{where}: dataset {ds.name!r} {ds.shape} is over the size limit "
                        f"(max_bytes) and {layout}, so it cannot be memory-mapped; rewrite "
                        f"it as a contiguous uncompressed dataset or convert it to .npy")
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


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
        raise SpecError(f"{where}: an RDM needs at least 2 dimensions (n, n), or a condensed "
                        f"vector of length n(n-1)/2 as scipy's pdist gives, got shape "
                        f"{arr.shape}")
    n = arr.shape[-1]
    if arr.shape[-2] != n:
        raise SpecError(f"{where}: RDMs must be square in their last two axes (or condensed: "
                        f"a last axis of length n(n-1)/2), got shape {arr.shape}")
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
                        f"expected none, or set nan_policy to 'zero' or 'keep' to accept them "
                        f"(raybrain data inspect --nan-policy)")
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
                        f"accept them (raybrain data inspect --nan-policy)")
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
