"""RDMs: every file format, validation errors, NaN policies, memory-mapping of files over
the size limit (never read whole), and RDMs computed from patterns and epochs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from raybrain.data.rdm import correlation_rdm, decoding_rdm, load_rdm, validate_rdm
from raybrain.errors import SpecError
from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.unit


def _rdms(shape=(2, 3), n=6, seed=0):
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


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5", ".hdf5"])
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_every_format_static_and_time_resolved(tmp_path, suffix, shape):
    arr = _rdms(shape)
    path = _write(tmp_path / f"r{suffix}", arr)
    got, check = load_rdm(path, return_check=True)
    np.testing.assert_allclose(got, arr, rtol=1e-6)
    assert check.complete and check.n_total == max(1, int(np.prod(shape)))


def test_matlab_v73_is_read_as_hdf5_in_matlab_axis_order(tmp_path):
    """v7.3 .mat files are HDF5 written column-major: (participants, time, n, n) in MATLAB
    is stored as (n, n, time, participants)."""
    import h5py

    arr = _rdms((2, 3), n=5)
    for big in (False, True):
        path = tmp_path / f"v73_{big}.mat"
        with h5py.File(path, "w", userblock_size=512) as f:
            f.create_dataset("mat", data=arr.transpose())
        got = load_rdm(path, max_bytes=16 if big else 2**30)
        assert got.shape == (2, 3, 5, 5)
        np.testing.assert_allclose(got, arr)


def test_real_things_rdm48():
    path = SHARED_DATA / "things" / "RDM48_triplet.mat"
    if not path.exists():
        pytest.skip("shared data RDM48_triplet.mat is absent")
    rdm = load_rdm(path, key="RDM48_triplet")
    assert rdm.shape == (48, 48)
    assert 0 < float(rdm[np.triu_indices(48, 1)].min()) and float(rdm.max()) < 1


@pytest.mark.parametrize("mutate, needle", [
    (lambda a: a[..., :5], r"square in their last two axes, got shape \(6, 5\)"),
    (lambda a: a + np.triu(np.ones_like(a), 1), r"symmetric, but matrix 0 has \[\d, \d\] = [\d.]+ and"),
    (lambda a: a + np.eye(6, dtype=a.dtype), r"zero diagonal, but matrix 0 has \[0, 0\] = 1"),
    (lambda a: np.where(np.eye(6) == 0, np.inf, a).astype(a.dtype), r"infinite value"),
    (lambda a: a[0], r"at least 2 dimensions"),
])
def test_invalid_rdms_are_one_line_errors(tmp_path, mutate, needle):
    path = _write(tmp_path / "bad.npy", mutate(_rdms((), n=6)))
    with pytest.raises(SpecError, match=needle) as err:
        load_rdm(path)
    assert "bad.npy" in str(err.value) and "\n" not in str(err.value)


def test_nan_policies(tmp_path):
    arr = _rdms((2,), n=5)
    arr[1, 0, 3] = arr[1, 3, 0] = np.nan
    path = _write(tmp_path / "nan.npz", arr)
    with pytest.raises(SpecError, match=r"2 NaN value\(s\), the first at matrix 1, entry \(0, 3\)"):
        load_rdm(path)
    zero = load_rdm(path, nan_policy="zero")
    assert zero[1, 0, 3] == 0 and np.isfinite(zero).all()
    keep, check = load_rdm(path, nan_policy="keep", return_check=True)
    assert np.isnan(keep[1, 0, 3]) and check.n_nan == 2
    with pytest.raises(SpecError, match="nan_policy must be one of"):
        load_rdm(path, nan_policy="drop")


def test_keys_missing_files_and_corrupt_files(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=_rdms(()), b=_rdms(()))
    with pytest.raises(SpecError, match=r"holds 2 arrays \['a', 'b'\]; name one with key"):
        load_rdm(path)
    with pytest.raises(SpecError, match=r"has no array 'c'; arrays: \['a', 'b'\]"):
        load_rdm(path, key="c")
    np.testing.assert_allclose(load_rdm(path, key="b"), _rdms(()))
    with pytest.raises(SpecError, match="not found"):
        load_rdm(tmp_path / "none.npy")
    with pytest.raises(SpecError, match=r"suffix '\.csv'"):
        load_rdm(tmp_path / "x.csv")
    good = _write(tmp_path / "cut.npy", _rdms((4,), n=30))
    good.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(SpecError, match=r"cut\.npy' could not be read .*truncated"):
        load_rdm(good)
    for suffix in (".npz", ".mat", ".h5"):
        junk = tmp_path / f"junk{suffix}"
        junk.write_bytes(np.random.default_rng(0).bytes(4000))
        with pytest.raises(SpecError, match=rf"junk\{suffix}' could not be read"):
            load_rdm(junk)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SpecError, match="must hold real numbers, got dtype object"):
        load_rdm(obj)


def test_oversized_npz_and_mat_are_refused_before_loading(tmp_path):
    arr = _rdms((40,), n=32)  # 160 KiB
    for suffix in (".npz", ".mat"):
        path = _write(tmp_path / f"big{suffix}", arr)
        with pytest.raises(SpecError, match=rf"over the .* limit, and \{suffix} files cannot be "
                                            r"memory-mapped; convert it to \.npy"):
            load_rdm(path, max_bytes=64 * 1024)


_PEAK = """
import json, resource, sys
import numpy as np
from raybrain.data.rdm import load_rdm
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
arr, check = load_rdm(sys.argv[1], max_bytes=2**20, validate_budget_bytes=4 * 2**20,
                      return_check=True)
total = float(arr[-1].sum()) + float(arr[0, 0, 1])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
base = arr
mapped = False
while base is not None:
    mapped = mapped or isinstance(base, np.memmap)
    base = getattr(base, "base", None)
print(json.dumps({"grew_kib": after - before, "mapped": mapped, "checked": check.n_checked,
                  "total": check.n_total, "shape": list(arr.shape)}))
"""


@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_large_files_are_memory_mapped_never_read_whole(tmp_path, suffix):
    """A 256 MiB stack with a 1 MiB limit: mapped, validated on a sample within a 4 MiB
    budget, and the process grows by far less than the file (measured in a fresh process)."""
    n, k = 256, 1024  # 1024 matrices of 256 x 256 float32 = 256 MiB
    path = tmp_path / f"big{suffix}"
    one = _rdms((), n=n, seed=3)
    if suffix == ".npy":
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(k, n, n))
        mm[:] = one
        mm.flush()
        del mm
    else:
        import h5py

        with h5py.File(path, "w") as f:
            ds = f.create_dataset("rdm", shape=(k, n, n), dtype=np.float32)
            for s in range(0, k, 128):
                ds[s:s + 128] = one
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["mapped"] and res["shape"] == [k, n, n]
    assert res["total"] == k and 2 <= res["checked"] < k
    assert res["grew_kib"] < 64 * 1024, res  # the file is 256 MiB


def test_compressed_hdf5_over_the_limit_says_to_convert(tmp_path):
    import h5py

    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("rdm", data=_rdms((64,), n=32), compression="gzip")
    with pytest.raises(SpecError, match=r"chunked or compressed, so it cannot be memory-mapped"):
        load_rdm(path, max_bytes=1024)


def test_sampled_validation_still_catches_a_bad_matrix():
    arr = np.zeros((100, 8, 8))
    arr[99, 0, 1] = 1.0  # the last matrix is always checked
    with pytest.raises(SpecError, match=r"matrix 99"):
        validate_rdm(arr, "stack", budget_bytes=8 * 8 * 8 * 5)


def test_correlation_rdm_matches_scipy():
    from scipy.spatial.distance import pdist, squareform

    x = np.random.default_rng(0).standard_normal((7, 20))
    np.testing.assert_allclose(correlation_rdm(x), squareform(pdist(x, "correlation")), atol=1e-12)
    timed = np.random.default_rng(1).standard_normal((5, 7, 20))
    got = correlation_rdm(timed)
    for t in range(5):
        np.testing.assert_allclose(got[t], squareform(pdist(timed[t], "correlation")), atol=1e-12)
    with pytest.raises(SpecError, match="constant"):
        correlation_rdm(np.ones((3, 4)))


def test_decoding_rdm_known_answers():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 30)
    epochs = rng.standard_normal((90, 10, 6))
    epochs[labels == 1, :, 3:] += 4.0  # class 1 separable from t = 3 on
    rdm, conds = decoding_rdm(epochs, labels, n_folds=5, rng=np.random.default_rng(0))
    assert conds.tolist() == [0, 1, 2] and rdm.shape == (6, 3, 3)
    np.testing.assert_allclose(rdm, rdm.transpose(0, 2, 1))
    assert np.all(np.diagonal(rdm, axis1=1, axis2=2) == 0)
    assert np.all(rdm[3:, 0, 1] > 0.45) and np.all(rdm[3:, 1, 2] > 0.45)
    # identically distributed classes: chance; sd of a 60-trial accuracy ~ 0.065
    assert abs(rdm[:, 0, 2].mean()) < 0.1 and abs(rdm[:3, 0, 1].mean()) < 0.1
    with pytest.raises(SpecError, match=r"condition 2 has 3"):
        decoding_rdm(epochs[:63], np.r_[np.repeat([0, 1], 30), [2, 2, 2]], n_folds=5)
