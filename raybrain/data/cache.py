"""A cache of prepared brain data, shared by every trial of a sweep.

Preparing brain targets (reading a recording, filtering, epoching, fitting CEBRA) can
take far longer than one training run, and a sweep of 200 runs must do it once. An entry
is keyed by a SHA-256 of

- the preparation's name and its settings (a JSON-able dict), and
- for each input file: its absolute path, size, modification time (ns) and a *sampled*
  content digest (:func:`file_fingerprint`: the first, middle and last 64 KiB and eight
  evenly spaced 4 KiB blocks), so a multi-GB recording is never hashed whole per run.

An entry is one ``<key>.npz`` of plain arrays (no pickles) plus ``<key>.json`` with its
provenance (settings, input fingerprints with pseudonymised paths, array shapes, the
seconds it took). Both are written to temporary files in the cache directory and renamed
into place (the ``.npz`` last, and the ``.npz`` is what marks an entry complete), so a
reader never sees half an entry. Concurrent preparers of the same key take an exclusive
``flock`` on ``<key>.lock``: the first computes, the others wait and then read its entry.
The lock file is removed when its holder is done (:func:`file_lock`), and temporary files
a killed preparer left are removed by the next one, so a preparation that raises leaves
nothing behind: no entry, no lock, no temporary file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raybrain.errors import SpecError
from raybrain.privacy import pseudonym

__all__ = ["CacheEntry", "cached_arrays", "file_fingerprint", "cache_key", "default_cache_dir",
           "file_lock"]

_HEAD = 64 * 1024
_BLOCK = 4 * 1024
_N_BLOCKS = 8


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Identity of an input file without reading all of it.

    Returns
    -------
    dict
        ``path`` (absolute), ``size`` (bytes), ``mtime_ns`` and ``digest``: SHA-256 of the
        first, middle and last 64 KiB and of eight evenly spaced 4 KiB blocks. At most
        ~224 KiB are read whatever the file's size.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise SpecError(f"input file '{path}' cannot be read ({exc.strerror}); expected an "
                        f"existing file") from None
    h = hashlib.sha256()
    size = st.st_size
    offsets = [0, max(0, size // 2 - _HEAD // 2), max(0, size - _HEAD)]
    lengths = [_HEAD] * 3
    for k in range(_N_BLOCKS):
        offsets.append(size * (2 * k + 1) // (2 * _N_BLOCKS))
        lengths.append(_BLOCK)
    with open(p, "rb") as fh:
        for off, n in zip(offsets, lengths):
            fh.seek(off)
            h.update(fh.read(n))
    return {"path": str(p), "size": size, "mtime_ns": st.st_mtime_ns, "digest": h.hexdigest()}


def cache_key(kind: str, settings: dict[str, Any], inputs: Iterable[str | os.PathLike]) -> str:
    """SHA-256 (hex, first 24 characters) of the preparation, settings and input files."""
    payload = {"kind": kind, "settings": settings,
               "inputs": [file_fingerprint(p) for p in inputs]}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_cache_dir(first_input: str | os.PathLike) -> Path:
    """``.raybrain-cache`` beside the first input file (the spec may name another place)."""
    return Path(first_input).resolve().parent / ".raybrain-cache"


@dataclass
class CacheEntry:
    """A prepared entry: its arrays, provenance and whether this call computed it."""

    key: str
    path: Path
    arrays: dict[str, np.ndarray]
    provenance: dict[str, Any]
    computed: bool


@contextmanager
def file_lock(lock_path: Path):
    """Hold an exclusive ``flock`` on ``lock_path`` inside the block; remove it after.

    The lock file exists only while someone holds or waits for it, so a finished or failed
    preparation leaves none behind. Removing a lock file that others wait on is safe with
    this protocol: the holder unlinks it while still holding the lock, and a waiter that
    then gets the lock checks that the path still names the file it locked (same inode);
    if not, it starts again on a fresh file, so two processes never hold the lock at once.
    """
    lock_path = Path(lock_path)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(lock_path)
                current = (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        fcntl.flock(fd, fcntl.LOCK_UN)  # the holder we waited for removed it: again
        os.close(fd)
    try:
        yield
    finally:
        try:
            lock_path.unlink(missing_ok=True)  # while still holding the lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _remove_orphans(directory: Path, key: str) -> None:
    """Temporary files of ``key`` left by a preparer that was killed mid-write (only the
    lock holder writes them, so under the lock any that exist are orphans)."""
    for tmp in directory.glob(f".{key}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _read(npz_path: Path, json_path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    provenance = json.loads(json_path.read_text()) if json_path.exists() else {}
    return arrays, provenance


def _atomic_write(directory: Path, final: Path, write: Callable[[Any], None], mode: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_arrays(kind: str, settings: dict[str, Any], inputs: list[str | os.PathLike],
                  build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
                  cache_dir: str | os.PathLike | None = None) -> CacheEntry:
    """Return the cached entry for (kind, settings, inputs), building it once if missing.

    Parameters
    ----------
    kind : str
        Name of the preparation (e.g. ``"driving-pairs"``); part of the key.
    settings : dict
        Every setting that changes the result (JSON-able); part of the key.
    inputs : list of paths
        Input files; their fingerprints are part of the key.
    build : callable
        ``build() -> (arrays, info)``: the arrays to store (plain numeric/str arrays) and
        extra provenance (JSON-able). Called at most once per key across processes.
    cache_dir : path or None
        Where entries live; default :func:`default_cache_dir` of the first input.

    Returns
    -------
    CacheEntry
    """
    if cache_dir is None:
        if not inputs:
            raise SpecError(f"cache for {kind!r} needs a cache directory or at least one input")
        cache_dir = default_cache_dir(inputs[0])
    directory = Path(cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpecError(f"cache directory '{directory}' cannot be created ({exc.strerror}); "
                        f"set data.cache_dir to a writable place") from None
    fingerprints = [file_fingerprint(p) for p in inputs]
    key = cache_key(kind, settings, inputs)
    npz_path, json_path = directory / f"{key}.npz", directory / f"{key}.json"
    if npz_path.exists():
        arrays, prov = _read(npz_path, json_path)
        return CacheEntry(key, npz_path, arrays, prov, computed=False)
    with file_lock(directory / f"{key}.lock"):
        if npz_path.exists():  # another process built it while we waited
            arrays, prov = _read(npz_path, json_path)
            return CacheEntry(key, npz_path, arrays, prov, computed=False)
        _remove_orphans(directory, key)
        t0 = time.perf_counter()
        arrays, info = build()
        seconds = time.perf_counter() - t0
        provenance = {
            "kind": kind, "key": key, "settings": settings, "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            # paths may name a participant: only their keyed pseudonyms are written
            "inputs": [{**{k: v for k, v in fp.items() if k != "path"},
                        "file": pseudonym(fp["path"], "file")} for fp in fingerprints],
            "arrays": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)}
                       for k, v in arrays.items()},
            **info,
        }
        _atomic_write(directory, json_path,
                      lambda fh: fh.write(json.dumps(provenance, indent=1, default=str)), "w")
        try:
            _atomic_write(directory, npz_path,
                          lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}),
                          "wb")
        except BaseException:  # no entry: its provenance goes too
            json_path.unlink(missing_ok=True)
            raise
    return CacheEntry(key, npz_path, {k: np.asarray(v) for k, v in arrays.items()},
                      provenance, computed=True)
