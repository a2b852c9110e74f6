"""The prepared-data cache: reuse, invalidation, sampled fingerprints, atomic entries and
one preparation across concurrent processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from raybrain.data.cache import cache_key, cached_arrays, file_fingerprint, file_lock
from raybrain.errors import SpecError

pytestmark = pytest.mark.unit


def _input(tmp_path: Path, content: bytes = b"recording" * 1000) -> Path:
    p = tmp_path / "sub-07_eeg.bdf"
    p.write_bytes(content)
    return p


def test_built_once_then_served(tmp_path):
    src = _input(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(6.0).reshape(2, 3), "names": np.array(["a", "b"])}, {"note": 1}

    first = cached_arrays("demo", {"k": 1}, [src], build, tmp_path / "cache")
    second = cached_arrays("demo", {"k": 1}, [src], build, tmp_path / "cache")
    assert (first.computed, second.computed, len(calls)) == (True, False, 1)
    np.testing.assert_array_equal(second.arrays["x"], np.arange(6.0).reshape(2, 3))
    assert second.arrays["names"].tolist() == ["a", "b"]
    prov = json.loads(first.path.with_suffix(".json").read_text())
    assert prov["settings"] == {"k": 1} and prov["note"] == 1
    assert prov["arrays"]["x"] == {"shape": [2, 3], "dtype": "float64"}
    # the path names a participant: only its pseudonym is written
    text = first.path.with_suffix(".json").read_text()
    assert "sub-07" not in text and prov["inputs"][0]["file"].startswith("file-")


def test_settings_and_inputs_change_the_key(tmp_path):
    src = _input(tmp_path)
    k0 = cache_key("demo", {"k": 1}, [src])
    assert cache_key("demo", {"k": 2}, [src]) != k0
    assert cache_key("other", {"k": 1}, [src]) != k0
    os.utime(src, ns=(time.time_ns(), time.time_ns() + 10**9))
    k1 = cache_key("demo", {"k": 1}, [src])
    assert k1 != k0
    src.write_bytes(b"recordinG" * 1000)  # same size, new content and mtime
    assert cache_key("demo", {"k": 1}, [src]) != k1


def test_default_location_is_beside_the_data(tmp_path):
    src = _input(tmp_path)
    entry = cached_arrays("demo", {}, [src], lambda: ({"x": np.ones(2)}, {}))
    assert entry.path.parent == tmp_path / ".raybrain-cache"


def test_fingerprint_samples_a_large_file(tmp_path):
    """A 4 GiB (sparse) file is fingerprinted from ~224 KiB, and a change in a sampled block
    changes the digest."""
    big = tmp_path / "big.npy"
    with open(big, "wb") as fh:
        fh.truncate(4 * 2**30)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def seek(self, off):
            self.fh.seek(off)

        def read(self, n):
            data = self.fh.read(n)
            reads.append(len(data))
            return data

    import raybrain.data.cache as cache_mod

    cache_mod.open = lambda p, mode="r": Counting(real_open(p, mode))  # shadows the builtin
    try:
        fp = file_fingerprint(big)
    finally:
        del cache_mod.open
    assert fp["size"] == 4 * 2**30
    assert sum(reads) <= 3 * 64 * 1024 + 8 * 4096
    with open(big, "r+b") as fh:
        fh.seek(2**31 - 100)  # inside the middle 64 KiB block
        fh.write(b"x")
    os.utime(big, ns=(1, 1))
    fp2 = file_fingerprint(big)
    assert fp2["digest"] != fp["digest"]


def test_a_failing_build_leaves_nothing(tmp_path):
    """No entry, no lock file, no temporary file: the cache folder is as it was."""
    src = _input(tmp_path)

    def build():
        raise SpecError("bad file")

    with pytest.raises(SpecError, match="bad file"):
        cached_arrays("demo", {}, [src], build, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_a_failing_write_leaves_nothing(tmp_path, monkeypatch):
    """The build succeeds but the entry cannot be written (the disk is full): the partial
    temporary files and the lock are removed too."""
    src = _input(tmp_path)

    def full_disk(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):
        cached_arrays("demo", {}, [src], lambda: ({"x": np.ones(3)}, {}), tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_orphans_of_a_killed_preparer_are_removed(tmp_path):
    src = _input(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    key = cache_key("demo", {}, [src])
    orphan = cache / f".{key}.npz.abc123.tmp"  # what a preparer killed mid-write leaves
    orphan.write_bytes(b"half")
    other = cache / ".0123456789abcdef01234567.npz.x.tmp"  # another key's, maybe live: kept
    other.write_bytes(b"")
    entry = cached_arrays("demo", {}, [src], lambda: ({"x": np.ones(2)}, {}), cache)
    assert entry.computed and not orphan.exists() and other.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [other.name, f"{key}.json", f"{key}.npz"])


def test_file_lock_excludes_across_removal(tmp_path):
    """The lock file is removed by each holder; holders still never overlap. flock locks
    belong to open file descriptions, so threads opening the file each contend."""
    import threading

    lock = tmp_path / "x.lock"
    inside, overlaps, entries = [0], [], []

    def worker():
        for _ in range(40):
            with file_lock(lock):
                inside[0] += 1
                if inside[0] != 1:
                    overlaps.append(inside[0])
                entries.append(1)
                time.sleep(0.0005)
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)  # a condition (the work is done), with a generous bound
    assert not any(t.is_alive() for t in threads)
    assert overlaps == [] and len(entries) == 160
    assert not lock.exists()


def _worker(args):
    cache_dir, src, counter = args

    def build():
        with open(counter, "a") as fh:
            fh.write("built\n")
        time.sleep(1.0)
        return {"x": np.full((500, 500), 3.0)}, {}

    entry = cached_arrays("demo", {"k": "concurrent"}, [src], build, cache_dir)
    return float(entry.arrays["x"].sum()), entry.computed


def _reader(args):
    """Look at the cache until the workers are done (the test creates ``stop``), then once
    more: a visible entry must always be complete. Not a wall-clock window: the generous
    ``deadline`` only stops a reader whose test died."""
    cache_dir, stop, deadline = args
    seen = 0
    while time.time() < deadline:
        done = os.path.exists(stop)  # read before looking, so the last look follows it
        for p in Path(cache_dir).glob("*.npz"):
            with np.load(p) as npz:  # a visible entry is always complete
                assert npz["x"].shape == (500, 500)
            seen += 1
        if done:
            break
    return seen


def test_concurrent_preparers_build_once_and_readers_never_see_half(tmp_path):
    src = _input(tmp_path)
    cache_dir, counter = tmp_path / "cache", tmp_path / "count.txt"
    stop = tmp_path / "workers-done"
    cache_dir.mkdir()
    ctx = mp.get_context("spawn")
    with ctx.Pool(5) as pool:
        reader = pool.apply_async(_reader, ((str(cache_dir), str(stop), time.time() + 600),))
        results = pool.map_async(_worker, [(str(cache_dir), str(src), str(counter))] * 4)
        results = results.get(timeout=600)
        stop.touch()
        seen = reader.get(timeout=600)
    assert counter.read_text().count("built") == 1
    assert sorted(c for _, c in results) == [False, False, False, True]
    assert all(total == 3.0 * 500 * 500 for total, _ in results)
    assert seen > 0
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npz"]  # no lock, no tmp
