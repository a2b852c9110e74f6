"""Write MATLAB v7.3 files the way MATLAB lays them out in HDF5, for tests.

A 512-byte user block; every value column-major (its axes reversed); ``MATLAB_class`` on
every value; a scalar struct is a group holding its fields, a struct array a group holding,
per field, a dataset of object references (axes reversed) to values in ``#refs#``; a cell
array a dataset of references with ``MATLAB_class`` ``cell``; an empty array a dataset of
its dimensions with ``MATLAB_empty`` = 1; ``MATLAB_fields`` lists a struct's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_CLASS = {np.dtype("float64"): "double", np.dtype("float32"): "single",
          np.dtype("int32"): "int32", np.dtype("int64"): "int64", np.dtype("uint8"): "uint8",
          np.dtype("uint16"): "uint16", np.dtype("bool"): "logical"}


@dataclass
class Struct:
    """A MATLAB struct array: one dict of field values per element, MATLAB size ``shape``."""

    elements: list[dict]
    shape: tuple[int, ...] = None
    fields: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.shape is None:
            self.shape = (1, len(self.elements))
        if not self.fields:
            self.fields = list(self.elements[0])


@dataclass
class Cell:
    """A MATLAB cell array, elements in MATLAB's linear (column-major) order."""

    elements: list
    shape: tuple[int, ...] = None

    def __post_init__(self):
        if self.shape is None:
            self.shape = (1, len(self.elements))


def _attr_class(obj, name: str) -> None:
    obj.attrs.create("MATLAB_class", np.bytes_(name))


def _fields_attr(group, names: list[str]) -> None:
    import h5py

    vlen = h5py.vlen_dtype(np.dtype("S1"))
    data = np.empty(len(names), dtype=object)
    data[:] = [np.array([c.encode() for c in n], dtype="S1") for n in names]
    group.attrs.create("MATLAB_fields", data, dtype=vlen)


class _Writer:
    def __init__(self, f):
        self.f, self.count = f, 0

    def refs(self):
        return self.f.require_group("#refs#")

    def ref_to(self, value):
        name = f"r{self.count}"
        self.count += 1
        obj = self.write(self.refs(), name, value)
        return obj.ref

    def write(self, parent, name, value):
        import h5py

        if isinstance(value, Struct):
            g = parent.create_group(name)
            _attr_class(g, "struct")
            _fields_attr(g, value.fields)
            if len(value.elements) == 1 and value.shape == (1, 1):
                for k in value.fields:
                    self.write(g, k, value.elements[0][k])
                return g
            for k in value.fields:
                refs = [self.ref_to(e[k]) for e in value.elements]
                arr = np.array(refs, dtype=h5py.ref_dtype).reshape(value.shape[::-1])
                g.create_dataset(k, data=arr)
            return g
        if isinstance(value, Cell):
            refs = [self.ref_to(e) for e in value.elements]
            ds = parent.create_dataset(name, data=np.array(
                refs, dtype=h5py.ref_dtype).reshape(value.shape[::-1]))
            _attr_class(ds, "cell")
            return ds
        if isinstance(value, str):
            ds = parent.create_dataset(name, data=np.array(
                [[ord(c)] for c in value], dtype=np.uint16))
            _attr_class(ds, "char")
            ds.attrs.create("MATLAB_int_decode", np.int32(2))
            return ds
        arr = np.asarray(value)
        if arr.ndim < 2:
            arr = arr.reshape(1, -1)  # MATLAB: a row vector
        if arr.size == 0:
            ds = parent.create_dataset(name, data=np.array(arr.shape, dtype=np.uint64))
            _attr_class(ds, _CLASS[arr.dtype])
            ds.attrs.create("MATLAB_empty", np.uint8(1))
            return ds
        ds = parent.create_dataset(name, data=arr.transpose())
        _attr_class(ds, _CLASS[arr.dtype])
        return ds


def write_v73(path, variables: dict) -> None:
    """Write ``variables`` (numpy arrays, :class:`Struct`, :class:`Cell`, str) as v7.3."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        w = _Writer(f)
        for name, value in variables.items():
            w.write(f, name, value)
    with open(path, "r+b") as fh:  # MATLAB's text header in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: test, HDF5 schema 1.00 .".ljust(116)
                 + b"\x00" * 8 + b"\x00\x02IM")
