"""RDMs: every file format, validation errors, NaN policies, memory-mapping of files over
the size limit (never read whole), and RDMs computed from patterns and epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from raybrain.data.rdm import is_memory_mapped, load_rdm, validate_rdm
from raybrain.data.rdm_compute import correlation_rdm, decoding_rdm
from raybrain.errors import SpecError
from tests.conftest import ROOT, SHARED_DATA, WAIT_S

pytestmark = pytest.mark.unit


def _rdms(shape=(2, 3), n=6, seed=0):
    """Euclidean RDMs of random points: symmetric, zero diagonal, shape (*shape, n, n)."""
    x = np.random.default_rng(seed).standard_normal((*shape, n, 4))
    d = np.linalg.norm(x[..., :, None, :] - x[..., None, :, :], axis=-1)
    return d.astype(np.float32)


def _write(path, arr, key="rdm"):
    import h5py
    import scipy.io

    s = path.suffix
    if s == ".npy":
        np.save(path, arr)
    elif s == ".npz":
        np.savez(path, **{key: arr})
    elif s == ".mat":
        scipy.io.savemat(path, {key: arr})
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=arr)
    return path


def _v73(path, arr, key="rdm", compression=None):
    """A MATLAB v7.3-like file: HDF5 with a 512-byte userblock, axes stored reversed."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=arr.transpose(), compression=compression)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5", ".hdf5"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_every_format_static_and_time_resolved(tmp_path, suffix, shape):
    arr = _rdms(shape)
    path = _write(tmp_path / f"r{suffix}", arr)
    got, check = load_rdm(path, return_check=True)
    assert got.shape == arr.shape and not is_memory_mapped(got)
    np.testing.assert_allclose(got, arr, rtol=1e-6)
    assert check.complete and check.n_total == max(1, int(np.prod(shape)))


def test_matlab_v73_is_read_as_hdf5_in_matlab_axis_order(tmp_path):
    """v7.3 .mat files are HDF5 written column-major: (participants, time, n, n) in MATLAB
    is stored as (n, n, time, participants)."""
    arr = _rdms((2, 3), n=5)
    for big in (False, True):
        path = _v73(tmp_path / f"v73_{big}.mat", arr)
        got, check = load_rdm(path, max_bytes=16 if big else 2**30, return_check=True)
        assert got.shape == (2, 3, 5, 5) and is_memory_mapped(got) == big
        np.testing.assert_allclose(got, arr)
        assert check.complete
    bad = arr.copy()
    bad[1, 2, 0, 4] += 1.0  # participant 1, time 2
    with pytest.raises(SpecError, match=r"symmetric, but matrix \(1, 2\) has \[0, 4\]"):
        load_rdm(_v73(tmp_path / "bad.mat", bad), max_bytes=16)


def test_real_things_rdm48():
    path = SHARED_DATA / "things" / "RDM48_triplet.mat"
    if not path.exists():
        pytest.skip("shared data things/RDM48_triplet.mat is absent")
    rdm, check = load_rdm(path, key="RDM48_triplet", return_check=True)
    assert rdm.shape == (48, 48) and check.complete and check.n_nan == 0
    assert 0 < float(rdm[np.triu_indices(48, 1)].min()) and float(rdm.max()) < 1
    assert np.array_equal(load_rdm(path), rdm)  # the only array: no key needed


@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a[..., :5], r"square in their last two axes \(or condensed: a last axis of "
                           r"length n\(n-1\)/2\), got shape \(6, 5\)"),
    (lambda a: a + np.triu(np.ones_like(a), 1),
     r"symmetric, but matrix 0 has \[(\d), (\d)\] = [\d.]+ and \[\2, \1\] = [\d.]+"),
    (lambda a: a + np.eye(6, dtype=a.dtype), r"zero diagonal, but matrix 0 has \[0, 0\] = 1"),
    (lambda a: np.where(np.eye(6) == 0, np.inf, a).astype(a.dtype),
     r"infinite value at matrix 0, entry \(0, 1\)"),
    # a row of 5 is no condensed RDM (5 is not n(n-1)/2); a row of 6 would be one (n = 4)
    (lambda a: a[0, :5], r"at least 2 dimensions \(n, n\), or a condensed vector of length "
                         r"n\(n-1\)/2"),
    (lambda a: a[:1, :1], r"at least 2 conditions"),
])
def test_invalid_rdms_are_one_line_errors(tmp_path, mutate, needle):
    path = _write(tmp_path / "bad.npy", mutate(_rdms((), n=6)))
    with pytest.raises(SpecError, match=needle) as err:
        load_rdm(path)
    assert "bad.npy" in str(err.value) and "\n" not in str(err.value)


def test_tolerance_is_relative_to_the_scale():
    big = _rdms((), n=6).astype(np.float64) * 1e6
    big[0, 1] += 1.0  # 1 in 1e6: rounding at this scale
    validate_rdm(big)
    small = _rdms((), n=6).astype(np.float64) * 1e-6
    small[0, 1] += 1e-9  # 1e-3 of the scale: a real asymmetry
    with pytest.raises(SpecError, match="symmetric"):
        validate_rdm(small)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5"])
def test_nan_policies(tmp_path, suffix):
    arr = _rdms((2,), n=5)
    arr[1, 0, 3] = arr[1, 3, 0] = np.nan
    path = _write(tmp_path / f"nan{suffix}", arr)
    with pytest.raises(SpecError, match=r"nan\S*' *: 2 NaN value\(s\), the first at matrix 1, "
                                        r"entry \(0, 3\); expected none") as err:
        load_rdm(path)
    assert "\n" not in str(err.value)
    zero, check = load_rdm(path, nan_policy="zero", return_check=True)
    assert zero[1, 0, 3] == 0 and zero[1, 3, 0] == 0 and np.isfinite(zero).all()
    assert check.n_nan == 2 and np.isnan(arr[1, 0, 3])  # a copy
    np.testing.assert_array_equal(zero[0], arr[0])
    keep, check = load_rdm(path, nan_policy="keep", return_check=True)
    assert np.isnan(keep[1, 0, 3]) and check.n_nan == 2
    with pytest.raises(SpecError, match="nan_policy must be one of"):
        load_rdm(path, nan_policy="drop")


def test_nan_zero_is_refused_over_the_limit_and_inf_is_always_an_error(tmp_path):
    arr = _rdms((4,), n=8)
    arr[0, 1, 2] = arr[0, 2, 1] = np.nan
    path = _write(tmp_path / "nan.npy", arr)
    with pytest.raises(SpecError, match=r"'zero' copies the array.*over the .* limit"):
        load_rdm(path, nan_policy="zero", max_bytes=512)
    keep = load_rdm(path, nan_policy="keep", max_bytes=512)
    assert is_memory_mapped(keep) and np.isnan(keep[0, 1, 2])
    arr[0, 1, 2] = arr[0, 2, 1] = np.inf
    for policy in ("keep", "zero"):
        with pytest.raises(SpecError, match=r"infinite value at matrix 0, entry \(1, 2\)"):
            load_rdm(_write(tmp_path / "inf.npy", arr), nan_policy=policy)


def test_keys_missing_files_and_corrupt_files(tmp_path):
    for suffix in (".npz", ".mat", ".h5"):
        path = tmp_path / f"two{suffix}"
        _write(path, _rdms(()), key="a")
        if suffix == ".npz":
            np.savez(path, a=_rdms(()), b=_rdms((), seed=1))
        elif suffix == ".mat":
            import scipy.io

            scipy.io.savemat(path, {"a": _rdms(()), "b": _rdms((), seed=1)})
        else:
            import h5py

            with h5py.File(path, "a") as f:
                f["b"] = _rdms((), seed=1)
        with pytest.raises(SpecError, match=rf"two\{suffix}' holds 2 arrays \['a', 'b'\]; "
                                            r"name one with key"):
            load_rdm(path)
        with pytest.raises(SpecError, match=rf"two\{suffix}' has no array 'c'; expected one "
                                            r"of \['a', 'b'\]"):
            load_rdm(path, key="c")
        np.testing.assert_allclose(load_rdm(path, key="b"), _rdms((), seed=1), rtol=1e-6)
    with pytest.raises(SpecError, match="none.npy' not found"):
        load_rdm(tmp_path / "none.npy")
    with pytest.raises(SpecError, match=r"x\.csv' has suffix '\.csv'"):
        load_rdm(tmp_path / "x.csv")
    for suffix in (".npy", ".npz", ".mat", ".h5"):
        cut = _write(tmp_path / f"cut{suffix}", _rdms((4,), n=30))
        cut.write_bytes(cut.read_bytes()[:1500])
        with pytest.raises(SpecError, match=rf"cut\{suffix}' could not be read .*corrupt or "
                                            r"truncated") as err:
            load_rdm(cut)
        assert "\n" not in str(err.value)
        junk = tmp_path / f"junk{suffix}"
        junk.write_bytes(np.random.default_rng(0).bytes(4000))
        with pytest.raises(SpecError, match=rf"junk\{suffix}' could not be read"):
            load_rdm(junk)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SpecError, match="must hold real numbers, got dtype object"):
        load_rdm(obj)


def test_oversized_npz_and_mat_are_refused_from_the_header(tmp_path, monkeypatch):
    import scipy.io

    arr = _rdms((40,), n=32)  # 160 KiB
    paths = [_write(tmp_path / f"big{s}", arr) for s in (".npz", ".mat")]

    def never(*args, **kwargs):
        raise AssertionError("the array was loaded")

    monkeypatch.setattr(np, "load", never)
    monkeypatch.setattr(scipy.io, "loadmat", never)
    for path in paths:
        with pytest.raises(SpecError, match=rf"big\{path.suffix}' holds a 0\.2 MiB array "
                                            r"\(40, 32, 32\), over the 0\.1 MiB limit "
                                            rf"\(max_bytes\), and \{path.suffix} files cannot "
                                            r"be memory-mapped; convert it to \.npy"):
            load_rdm(path, max_bytes=64 * 1024)


# Peak RSS in a fresh process. ru_maxrss alone is not enough on Linux: a child starts
# with the parent's (pytest's) peak RSS, kept across fork and exec, which masks anything
# smaller; /proc/self/status VmHWM is the peak of this program's own address space.
_PEAK = """
import json, resource, sys
import h5py, scipy.io  # imported before the baseline: their own memory is not the array's
import numpy as np
from raybrain.data.rdm import is_memory_mapped, load_rdm

def peak_kib():
    try:
        with open("/proc/self/status") as fh:
            return int(next(ln for ln in fh if ln.startswith("VmHWM:")).split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

path, max_bytes = sys.argv[1], int(sys.argv[2])
before = peak_kib()
arr, check = load_rdm(path, max_bytes=max_bytes, validate_budget_bytes=4 * 2**20,
                      return_check=True)
value = float(arr[-1, -1, 0, 1])  # one entry: a whole matrix of a column-major file spans it
after = peak_kib()
print(json.dumps({"grew_mib": (after - before) / 1024, "mapped": is_memory_mapped(arr),
                  "checked": check.n_checked, "total": check.n_total,
                  "rows": check.rows_checked, "shape": list(arr.shape)}))
"""


def _peak(path, max_bytes):
    # drop the file from the page cache, as a large real file would be: the kernel maps
    # cached neighbouring pages (large folios) on a fault, which would blur the measure
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(max_bytes)],
                         capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("fmt", [".npy", ".h5", "v7.3 .mat"])
def test_large_files_are_memory_mapped_never_read_whole(tmp_path, fmt):
    """A 64 MiB stack (4 participants x 64 times x 256 x 256, float32) with a 1 MiB limit
    and a 4 MiB validation budget: mapped, validated on a sample, and the peak RSS of a
    fresh process grows by far less than the file."""
    import h5py

    shape, n = (4, 64), 256
    one = _rdms((), n=n, seed=3)
    path = tmp_path / ("big.mat" if fmt.endswith(".mat") else f"big{fmt}")
    if fmt == ".npy":
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(*shape, n, n))
        mm[:] = one
        mm.flush()
        del mm
    else:
        data = np.broadcast_to(one, (*shape, n, n))
        with h5py.File(path, "w", userblock_size=512 if fmt != ".h5" else 0) as f:
            f.create_dataset("rdm", data=np.ascontiguousarray(
                data if fmt == ".h5" else data.transpose()))
    res = _peak(path, 2**20)
    assert res["mapped"] and res["shape"] == [*shape, n, n], res
    assert res["total"] == 256
    if fmt.endswith(".mat"):  # column-major: every matrix, on a sample of conditions
        assert res["checked"] == 256 and 2 <= res["rows"] < n, res
    else:
        assert 2 <= res["checked"] < 256 and res["rows"] is None, res
    assert res["grew_mib"] < 16, res  # the file is 64 MiB


def test_the_peak_rss_measurement_sees_a_whole_read(tmp_path):
    """Control for the test above: loading the same 64 MiB into memory shows up."""
    path = tmp_path / "big.npy"
    np.save(path, np.broadcast_to(_rdms((), n=256, seed=3), (4, 64, 256, 256)))
    res = _peak(path, 2**30)
    assert not res["mapped"] and res["checked"] == 256 and res["grew_mib"] > 60, res


def test_compressed_hdf5_over_the_limit_says_to_convert(tmp_path):
    arr = _rdms((64,), n=32)
    for path in (tmp_path / "gz.h5", tmp_path / "gz.mat"):
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "w") as f:
                f.create_dataset("rdm", data=arr, compression="gzip")
        else:
            _v73(path, arr, compression="gzip")
        with pytest.raises(SpecError, match=r"chunked or compressed, so it cannot be "
                                            r"memory-mapped; rewrite it as a contiguous "
                                            r"uncompressed dataset or convert it to \.npy"):
            load_rdm(path, max_bytes=1024)
        np.testing.assert_allclose(load_rdm(path), arr)  # under the limit: read


def _mapped(tmp_path, arr, name="m.npy"):
    np.save(tmp_path / name, arr)
    return np.load(tmp_path / name, mmap_mode="r")


def test_sampled_validation_of_a_mapped_stack(tmp_path):
    arr = np.zeros((100, 8, 8))
    arr[99, 0, 1] = 1.0  # the last matrix is always in the sample
    budget = 8 * 8 * 8 * 5
    with pytest.raises(SpecError, match=r"matrix 99"):
        validate_rdm(_mapped(tmp_path, arr), "stack", budget_bytes=budget)
    arr[99, 0, 1] = 0.0
    arr[60, 0, 1] = 1.0  # not in the sample (0, 25, 50, 74, 99)
    check = validate_rdm(_mapped(tmp_path, arr, "ok.npy"), "stack", budget_bytes=budget)
    assert check.n_total == 100 and 2 <= check.n_checked < 100 and not check.complete
    assert check == validate_rdm(_mapped(tmp_path, arr, "ok2.npy"), budget_bytes=budget)
    # an array in memory is always checked whole, in blocks
    with pytest.raises(SpecError, match=r"matrix 60 has \[0, 1\] = 1"):
        validate_rdm(arr, "stack", budget_bytes=budget)


def test_one_matrix_larger_than_the_budget_is_checked_in_row_blocks(tmp_path):
    arr = _rdms((), n=64).astype(np.float64)
    arr[63, 62] += 1.0  # in the last row block
    mm = _mapped(tmp_path, arr)
    with pytest.raises(SpecError, match=r"\[63, 62\]"):
        validate_rdm(mm, budget_bytes=64 * 8 * 40)  # 1/8 of the 64 x 64 working set
    arr[63, 62] -= 1.0
    check = validate_rdm(_mapped(tmp_path, arr, "ok.npy"), budget_bytes=2**20)
    assert check.complete


def test_correlation_rdm_matches_scipy():
    from scipy.spatial.distance import pdist, squareform

    x = np.random.default_rng(0).standard_normal((7, 20))
    got = correlation_rdm(x)
    np.testing.assert_allclose(got, squareform(pdist(x, "correlation")), atol=1e-12)
    assert np.all(np.diag(got) == 0) and np.array_equal(got, got.T)
    timed = np.random.default_rng(1).standard_normal((5, 7, 20))
    got = correlation_rdm(timed)
    for t in range(5):
        np.testing.assert_allclose(got[t], squareform(pdist(timed[t], "correlation")),
                                   atol=1e-12)
    validate_rdm(got)
    with pytest.raises(SpecError, match=r"condition 1 \(time 0\) has a constant pattern"):
        correlation_rdm(np.r_[x[:1], np.ones((1, 20))])
    with pytest.raises(SpecError, match="must be finite"):
        correlation_rdm(np.where(x > 2, np.nan, x))


def _naive_decoding(epochs, labels, n_folds, seed):
    """Reference: loops over folds, times, pairs and epochs (same fold assignment)."""
    rng = np.random.default_rng(seed)
    conds = np.unique(labels)
    fold = np.empty(len(labels), dtype=int)
    for c in conds:
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % n_folds
    k, n_times = len(conds), epochs.shape[2]
    hit, seen = np.zeros((n_times, k, k)), np.zeros((k, k))
    for f in range(n_folds):
        for t in range(n_times):
            means = [epochs[(fold != f) & (labels == c), :, t].mean(0) for c in conds]
            for a in range(k):
                for b in range(k):
                    if a == b:
                        continue
                    for e in np.flatnonzero((fold == f) & (labels == conds[a])):
                        da = np.linalg.norm(epochs[e, :, t] - means[a])
                        db = np.linalg.norm(epochs[e, :, t] - means[b])
                        hit[t, a, b] += da < db
                        seen[a, b] += t == 0
    out = (hit + hit.transpose(0, 2, 1)) / (seen + seen.T + np.eye(k)) - 0.5
    out[:, np.arange(k), np.arange(k)] = 0
    return out


def test_decoding_rdm_matches_a_naive_loop():
    rng = np.random.default_rng(5)
    labels = np.repeat([3, 7, 9, 11], [6, 7, 5, 8])
    epochs = rng.standard_normal((26, 4, 3)) + labels[:, None, None] * 0.1
    got, conds = decoding_rdm(epochs, labels, n_folds=5, rng=np.random.default_rng(4))
    assert conds.tolist() == [3, 7, 9, 11]
    np.testing.assert_allclose(got, _naive_decoding(epochs, labels, 5, 4), atol=1e-12)


def test_decoding_rdm_known_answers():
    rng = np.random.default_rng(2)
    n_per, n_times = 30, 20
    labels = np.repeat([0, 1, 2], n_per)
    epochs = rng.standard_normal((3 * n_per, 10, n_times))
    epochs[labels == 1, :, 10:] += 4.0  # class 1 far from the others from t = 10 on
    rdm, conds = decoding_rdm(epochs, labels, n_folds=5, rng=np.random.default_rng(0))
    assert conds.tolist() == [0, 1, 2] and rdm.shape == (n_times, 3, 3)
    np.testing.assert_array_equal(rdm, rdm.transpose(0, 2, 1))
    assert np.all(np.diagonal(rdm, axis1=1, axis2=2) == 0)
    assert np.all(rdm[10:, 0, 1] > 0.45) and np.all(rdm[10:, 1, 2] > 0.45)  # ~0.5
    # identically distributed classes: each pair's accuracy over 2 x 30 held-out epochs has
    # sd sqrt(0.25 / 60) = 0.065 under chance, its mean over k independent time points
    # 0.065 / sqrt(k); 4 sd bounds the means
    chance = np.r_[rdm[:, 0, 2], rdm[:10, 0, 1], rdm[:10, 1, 2]]  # 40 time points
    assert abs(chance.mean()) < 4 * 0.065 / np.sqrt(40)
    assert abs(rdm[:, 0, 2].mean()) < 4 * 0.065 / np.sqrt(n_times)
    with pytest.raises(SpecError, match=r"n_folds = 5 epochs, but condition 2 has 3"):
        decoding_rdm(epochs[:63], np.r_[np.repeat([0, 1], 30), [2, 2, 2]], n_folds=5)
    with pytest.raises(SpecError, match="at least 2 conditions"):
        decoding_rdm(epochs[:30], labels[:30])
    with pytest.raises(SpecError, match="n_folds must be an integer >= 2"):
        decoding_rdm(epochs, labels, n_folds=1)


def test_sampled_validation_of_a_mapped_column_major_stack(tmp_path):
    """A mapped v7.3 stack over the budget: every matrix on a sample of conditions
    (here 0, 10 and 19 of 20): their columns for NaN/inf, their submatrix for symmetry."""
    arr = _rdms((3, 4), n=20).astype(np.float32)
    budget = 3 * 20 * 12 * 12  # three stored rows of 20 x 12 matrices, float32 + float64
    arr[1, 2, 5, 7] += 1.0  # outside the sampled submatrix: not seen
    rdm, check = load_rdm(_v73(tmp_path / "a.mat", arr), max_bytes=16,
                          validate_budget_bytes=budget, return_check=True)
    assert is_memory_mapped(rdm) and not check.complete
    assert (check.n_checked, check.n_total, check.n_nan, check.rows_checked) == (12, 12, 0, 3)
    bad = arr.copy()
    bad[1, 2, 19, 0] += 1.0
    with pytest.raises(SpecError, match=r"symmetric, but matrix \(1, 2\) has \[19, 0\] = "):
        load_rdm(_v73(tmp_path / "b.mat", bad), max_bytes=16, validate_budget_bytes=budget)
    bad = arr.copy()
    bad[2, 1, 3, 10] = np.nan
    with pytest.raises(SpecError, match=r"1 NaN value\(s\) \(in the sample checked\), the "
                                        r"first at matrix \(2, 1\), entry \(3, 10\)"):
        load_rdm(_v73(tmp_path / "c.mat", bad), max_bytes=16, validate_budget_bytes=budget)
