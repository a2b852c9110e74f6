"""MATLAB ``.mat`` files: variables, struct field paths and cell arrays, v5 and v7.3.

Labs save brain data in MATLAB's containers: RSA toolboxes save a struct array ``RDMs``
whose field ``RDM`` holds each matrix; spike sorters save cell arrays (often nested: day,
epoch, tetrode, cell) of per-cell structs or spike-time vectors. This module reads them with
maintained readers, never a hand parser: :func:`scipy.io.loadmat` for v5-v7 files (structs
come back as numpy record arrays, cells as object arrays) and h5py for v7.3 files, which are
HDF5 (a struct is a group with a ``MATLAB_class`` attribute of ``struct``; a scalar struct
holds its fields as members, a struct array holds, for each field, a dataset of object
references to the values; a cell array is a dataset of object references with
``MATLAB_class`` ``cell``; values are stored column-major, so their axes come back reversed
and are transposed here to MATLAB's order).

Field paths
-----------
A key ``VAR.FIELD.FIELD...`` names a variable and then fields of the structs it holds.
Evaluating it gives a list of *leaves*, in MATLAB's linear (column-major) order:

- a cell array anywhere on the way (or at the end) is descended transparently, element by
  element (``c{1}``, ``c{2}``, ...);
- a struct array contributes one value per element (``RDMs(1).RDM``, ``RDMs(2).RDM``, ...);
- an empty array found where a struct was expected (MATLAB's placeholder for a missing
  entry, e.g. an unsorted tetrode) is a leaf of kind ``"empty"``; callers skip or refuse it.

Every leaf carries its origin in MATLAB's notation (1-based), e.g. ``spikes{1}{1}{3}{5}.time``
or ``RDMs(2).RDM``. When a path ends on a struct (the key is ambiguous), the one-line error
lists the struct's fields with their MATLAB sizes and classes.

Reading a numeric leaf gives an array in MATLAB's axis order (a row vector is ``(1, m)``).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError

__all__ = ["MAT_NUMERIC", "MatLeaf", "is_hdf5", "split_key", "mat_variables", "open_leaves",
           "mat_leaves", "matlab_vector", "matlab_vector_shape", "file_state"]

#: MATLAB classes holding real numbers, and the numpy dtype of each.
MAT_NUMERIC = {"double": "float64", "single": "float32", "int8": "int8", "uint8": "uint8",
               "int16": "int16", "uint16": "uint16", "int32": "int32", "uint32": "uint32",
               "int64": "int64", "uint64": "uint64", "logical": "bool"}

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_hdf5(path: str | os.PathLike) -> bool:
    """True when the file carries the HDF5 signature (MATLAB v7.3 files do, after a
    512-byte user block)."""
    with open(path, "rb") as fh:
        head = fh.read(2048 + 8)
    return any(head[o:o + 8] == b"\x89HDF\r\n\x1a\n" for o in (0, 512, 1024, 2048))


def split_key(key: str | None, where: str) -> tuple[str | None, list[str]]:
    """``"RDMs.RDM"`` -> ``("RDMs", ["RDM"])``; None -> ``(None, [])``.

    Raises
    ------
    SpecError
        When the key is not a MATLAB variable name followed by ``.field`` parts.
    """
    if key is None:
        return None, []
    if not _KEY.match(key):
        raise SpecError(f"{where}: key {key!r} is not a MATLAB field path; expected VARIABLE or "
                        f"VARIABLE.FIELD[.FIELD...] (e.g. RDMs.RDM)")
    var, *fields = key.split(".")
    return var, fields


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "1x1"


# -- a uniform view of MATLAB values in v5 (scipy) and v7.3 (h5py) files ------------------

class _Node(ABC):
    """One MATLAB value: ``kind`` is numeric, struct, cell, char, empty or other."""

    kind: str
    shape: tuple[int, ...]  # MATLAB's dimensions
    mclass: str  # MATLAB's class name

    @abstractmethod
    def fields(self) -> list[str]:
        """A struct's field names."""

    @abstractmethod
    def field(self, name: str) -> list[_Node]:
        """A struct's field ``name``: one value per element of the struct array."""

    @abstractmethod
    def elements(self) -> list[_Node]:
        """A cell array's elements, in MATLAB's linear (column-major) order."""

    @abstractmethod
    def read(self) -> np.ndarray:
        """A numeric value's array, axes in MATLAB's order."""

    def dtype(self) -> np.dtype:
        return np.dtype(MAT_NUMERIC.get(self.mclass, "float64"))

    def describe(self) -> str:
        if self.kind == "empty":
            return f"empty {self.mclass}" if self.mclass else "empty"
        return f"{_size(self.shape)} {self.mclass}"


class _V5(_Node):
    def __init__(self, value: Any):
        self.value = value
        if hasattr(value, "tocsc"):  # scipy.sparse
            self.kind, self.shape, self.mclass = "other", tuple(value.shape), "sparse"
            return
        arr = np.asarray(value) if isinstance(value, np.ndarray) else None
        if arr is None:
            self.kind, self.shape, self.mclass = "other", (), type(value).__name__
            return
        self.shape = tuple(arr.shape)
        if arr.dtype.names:
            self.kind, self.mclass = ("empty" if arr.size == 0 else "struct"), "struct"
        elif arr.dtype == object:
            self.kind, self.mclass = ("empty" if arr.size == 0 else "cell"), "cell"
        elif arr.dtype.kind in "US":
            self.kind, self.mclass = "char", "char"
        elif arr.dtype.kind in "biuf":
            self.mclass = _matlab_class(arr.dtype)
            self.kind = "empty" if arr.size == 0 else "numeric"
        else:
            self.kind, self.mclass = "other", str(arr.dtype)

    def fields(self):
        return list(self.value.dtype.names)

    def field(self, name):
        return [_V5(v) for v in self.value[name].ravel(order="F")]

    def elements(self):
        return [_V5(v) for v in self.value.ravel(order="F")]

    def read(self):
        return np.asarray(self.value)

    def dtype(self):
        return np.asarray(self.value).dtype


def _matlab_class(dtype: np.dtype) -> str:
    for name, np_name in MAT_NUMERIC.items():
        if np.dtype(np_name) == dtype:
            return name
    return str(dtype)


def _attr_text(obj, name: str) -> str | None:
    v = obj.attrs.get(name)
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("ascii", "replace")
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        return b"".join(v.ravel().tolist()).decode("ascii", "replace")
    return str(v)


class _V73(_Node):
    def __init__(self, obj, file):
        import h5py

        self.obj, self.file = obj, file
        self.mclass = _attr_text(obj, "MATLAB_class") or ""
        if isinstance(obj, h5py.Group):
            refs = [k for k in obj if isinstance(obj[k], h5py.Dataset)
                    and obj[k].dtype.kind == "O" and _attr_text(obj[k], "MATLAB_class") != "cell"]
            self.kind, self.mclass = "struct", "struct"
            # a struct array holds, per field, a dataset of references; a scalar the values
            self.array = bool(refs)
            self.shape = tuple(reversed(obj[refs[0]].shape)) if refs else (1, 1)
            return
        empty = obj.attrs.get("MATLAB_empty")
        if empty is not None and int(np.asarray(empty).ravel()[0]):
            self.kind, self.shape = "empty", tuple(int(v) for v in np.asarray(obj[()]).ravel())
            return
        self.shape = tuple(reversed(obj.shape))
        if self.mclass == "cell" or (not self.mclass and obj.dtype.kind == "O"):
            self.kind, self.mclass = "cell", "cell"
        elif self.mclass == "char":
            self.kind = "char"
        elif obj.attrs.get("MATLAB_sparse") is not None:
            self.kind, self.mclass = "other", "sparse"
        elif obj.dtype.kind in "biuf" and (self.mclass in MAT_NUMERIC or not self.mclass):
            self.mclass = self.mclass or _matlab_class(obj.dtype)
            self.kind = "empty" if obj.size == 0 else "numeric"
        else:
            self.kind, self.mclass = "other", self.mclass or str(obj.dtype)

    def fields(self):
        names = self.obj.attrs.get("MATLAB_fields")
        if names is not None:
            return [b"".join(np.asarray(n).ravel().tolist()).decode("ascii", "replace")
                    for n in names]
        return [k for k in self.obj if not k.startswith("#")]

    def field(self, name):
        member = self.obj[name]
        if not self.array:
            return [_V73(member, self.file)]
        return [_V73(self.file[r], self.file) for r in np.asarray(member[()]).ravel()]

    def elements(self):
        return [_V73(self.file[r], self.file) for r in np.asarray(self.obj[()]).ravel()]

    def read(self):
        return np.asarray(self.obj[()]).transpose()

    def dtype(self):
        return self.obj.dtype


# -- leaves of a field path ---------------------------------------------------------------

@dataclass
class MatLeaf:
    """One value a field path reaches.

    Attributes
    ----------
    origin : str
        Where it sits, in MATLAB's notation (1-based): ``RDMs(2).RDM``, ``c{1}{3}.time``.
    kind : str
        ``"numeric"`` or ``"empty"`` (an empty array: an absent entry, or a vector with no
        values).
    shape : tuple of int
        MATLAB's dimensions (a vector is ``(1, m)`` or ``(m, 1)``).
    dtype : np.dtype
    node : object
        The reader's handle; read it with :meth:`read`.
    absent : bool
        An empty array found where a struct was expected (MATLAB's placeholder for a
        missing entry), as opposed to an empty value at the end of the path.
    """

    origin: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    node: Any
    absent: bool = False

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The values, in MATLAB's axis order (empty leaves give an empty float64 array)."""
        if self.kind == "empty":
            return np.zeros(0)
        return self.node.read()

    @property
    def h5_dataset(self):
        """The h5py dataset of a v7.3 leaf (for memory-mapping), else None."""
        return getattr(self.node, "obj", None)


def _struct_summary(node: _Node, origin: str) -> str:
    """``"RDMs is a 1x3 struct with fields RDM (4x4 double), name (1x4 char)"``: sizes of
    the first element's fields."""
    parts = []
    for f in node.fields()[:12]:
        try:
            vals = node.field(f)
            parts.append(f"{f} ({vals[0].describe() if vals else 'empty'})")
        except Exception:  # a field the reader cannot describe is still named
            parts.append(f)
    more = ", ..." if len(node.fields()) > 12 else ""
    return f"{origin} is a {_size(node.shape)} struct with fields {', '.join(parts)}{more}"


def _numeric_field(node: _Node) -> str:
    """The first field of a struct whose first value holds several numbers (else the first
    field): the example an ambiguous-key error suggests."""
    names = node.fields()
    for f in names:
        try:
            vals = node.field(f)
        except Exception:
            continue
        if vals and vals[0].kind in ("numeric", "cell") and \
                int(np.prod(vals[0].shape, dtype=np.int64)) > 1:
            return f
    return names[0] if names else "FIELD"


def _walk(node: _Node, fields: list[str], origin: str, where: str, var: str,
          done: list[str], out: list[MatLeaf]) -> None:
    if node.kind == "cell":
        for i, el in enumerate(node.elements()):
            _walk(el, fields, f"{origin}{{{i + 1}}}", where, var, done, out)
        return
    if node.kind == "empty":
        out.append(MatLeaf(origin, "empty", node.shape, np.dtype("float64"), node,
                           absent=bool(fields)))
        return
    if not fields:
        if node.kind == "struct":
            example = ".".join([var, *done, _numeric_field(node)])
            raise SpecError(f"{where}: key {'.'.join([var, *done])!r} is ambiguous: "
                            f"{_struct_summary(node, origin)}; name the field holding the "
                            f"numbers, e.g. key {example!r}")
        if node.kind != "numeric":
            raise SpecError(f"{where}: {origin} is {node.describe()}; expected real numbers")
        out.append(MatLeaf(origin, "numeric", node.shape, np.dtype(node.dtype()), node))
        return
    name = fields[0]
    if node.kind != "struct":
        raise SpecError(f"{where}: {origin} is {node.describe()}, not a struct, so it has no "
                        f"field {name!r}; use key {'.'.join([var, *done])!r}")
    if name not in node.fields():
        raise SpecError(f"{where}: {origin} has no field {name!r}; "
                        f"{_struct_summary(node, origin)}")
    values = node.field(name)
    for i, v in enumerate(values):
        step = f"({i + 1}).{name}" if len(values) > 1 else f".{name}"
        _walk(v, fields[1:], origin + step, where, var, [*done, name], out)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def mat_variables(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Variables of a ``.mat`` file, unread: name -> (MATLAB size, MATLAB class).

    v5 files through :func:`scipy.io.whosmat`; v7.3 files from the HDF5 root (groups and
    datasets not starting with ``#``).
    """
    if not is_hdf5(path):
        import scipy.io

        return {n: (tuple(s), c) for n, s, c in scipy.io.whosmat(path)}
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        for name in f:
            if name.startswith("#"):
                continue
            node = _V73(f[name], f)
            out[name] = (node.shape, node.mclass or node.kind)
    return out


class open_leaves:
    """``with open_leaves(path, key, where) as leaves:`` the leaves of a field path (see
    :func:`mat_leaves`), their file kept open inside the block so that a v7.3 leaf is read
    (or memory-mapped, through :attr:`MatLeaf.h5_dataset`) only when asked."""

    def __init__(self, path: str | os.PathLike, key: str | None, where: str):
        self.path, self.key, self.where, self.file = path, key, where, None

    def __enter__(self) -> list[MatLeaf]:
        var, fields = split_key(self.key, self.where)
        where = self.where
        try:
            variables = mat_variables(self.path)
            if var is None:
                if len(variables) != 1:
                    shown = ", ".join(f"{n} ({_size(s)} {c})" for n, (s, c) in
                                      sorted(variables.items())[:10])
                    raise SpecError(f"{where} holds {len(variables)} variables "
                                    f"({shown or 'none'}); name one with key")
                var = next(iter(variables))
            if var not in variables:
                raise SpecError(f"{where} has no variable {var!r}; expected one of "
                                f"{sorted(variables)}")
            if is_hdf5(self.path):
                import h5py

                self.file = h5py.File(self.path, "r")
                root: _Node = _V73(self.file[var], self.file)
            else:
                import scipy.io

                root = _V5(scipy.io.loadmat(self.path, variable_names=[var], squeeze_me=False,
                                            struct_as_record=True, chars_as_strings=False)[var])
            out: list[MatLeaf] = []
            _walk(root, fields, var, where, var, [], out)
            return out
        except BaseException as exc:
            self.__exit__(None, None, None)
            if isinstance(exc, SpecError) or not isinstance(exc, Exception):
                raise
            raise SpecError(f"{where} is truncated or unreadable as a MATLAB file "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def mat_leaves(path: str | os.PathLike, key: str | None, where: str) -> list[MatLeaf]:
    """The leaves a field path reaches in a ``.mat`` file (module docstring), read.

    Parameters
    ----------
    path : str or os.PathLike
        A v5-v7 or v7.3 ``.mat`` file.
    key : str or None
        ``VAR`` or ``VAR.FIELD...`` (None: the file's only variable).
    where : str
        How error messages name the file.

    Returns
    -------
    list of MatLeaf
        In MATLAB's linear order; numeric and empty leaves only, their values read.

    Raises
    ------
    SpecError
        One line: missing or ambiguous variable, a path through something that is not a
        struct, a missing field (the fields are listed), a path ending on a struct (fields
        and their sizes listed), a non-numeric leaf, or an unreadable file.
    """
    with open_leaves(path, key, where) as leaves:
        try:
            for leaf in leaves:
                if leaf.kind == "numeric":
                    leaf.node = _Read(leaf.node.read())
        except Exception as exc:
            raise SpecError(f"{where} is truncated or unreadable as a MATLAB file "
                            f"({type(exc).__name__}: {_first_line(exc)})") from None
    return leaves


class _Read:
    """A leaf's values, read."""

    def __init__(self, arr: np.ndarray):
        self.arr = arr

    def read(self) -> np.ndarray:
        return self.arr


def matlab_vector_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(1, m)`` or ``(m, 1)`` with ``m > 1`` -> ``(m,)``; any other shape unchanged."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2 and 1 in shape and shape[0] * shape[1] > 1:
        return (shape[0] * shape[1],)
    return shape


def matlab_vector(arr: np.ndarray) -> np.ndarray:
    """A MATLAB vector, ``(1, m)`` or ``(m, 1)`` with ``m > 1``, as ``(m,)``; anything else
    unchanged (MATLAB stores every vector as 2-D, with an orientation that means nothing
    here)."""
    shape = matlab_vector_shape(arr.shape)
    return arr.reshape(shape) if shape != arr.shape else arr


def file_state(path: str | os.PathLike, where: str, expected: str) -> Path:
    """``path`` as a Path when it is an existing regular file; else a one-line SpecError
    saying it is missing or a directory (``expected`` says what was wanted)."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"{where} is a directory; expected {expected}")
    if not p.is_file():
        raise SpecError(f"{where} not found; expected {expected}")
    return p
