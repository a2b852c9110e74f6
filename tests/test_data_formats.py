"""Brain-data files as labs publish them: MATLAB struct arrays and cells read by field path
(v5 through scipy, v7.3 through h5py), condensed RDMs, per-cell spike times converted from
.mat, and ``raybrain data inspect`` telling layouts apart by their keys."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
from scipy.spatial.distance import pdist, squareform

from raybrain.data.matfile import mat_leaves
from raybrain.data.rdm import condensed_size, expand_condensed, is_memory_mapped, load_rdm
from raybrain.data.spikes import convert_mat_spikes, convert_nelpy_npz, load_spikes
from raybrain.errors import SpecError
from tests.conftest import SHARED_DATA
from tests.matlab_v73 import Cell, Struct, write_v73

pytestmark = pytest.mark.unit

RAT_DIR = SHARED_DATA / "spikes" / "rat_hippocampus_linear_track"


def _rdm(n=5, seed=0, dtype=np.float64):
    x = np.random.default_rng(seed).standard_normal((n, 3))
    return squareform(pdist(x)).astype(dtype)


def _v5_struct(records: list[dict]) -> np.ndarray:
    """A 1 x k MATLAB struct array as scipy.io.savemat writes it (a record array)."""
    names = list(records[0])
    arr = np.zeros((1, len(records)), dtype=[(n, "O") for n in names])
    for i, rec in enumerate(records):
        for n in names:
            arr[0, i][n] = rec[n]
    return arr


def _cell(items: list) -> np.ndarray:
    c = np.empty((1, len(items)), dtype=object)
    c[0, :] = items
    return c


def _write_both(tmp_path, name, v5: dict, v73: dict):
    """The same variables as a v5 file (scipy) and a v7.3 file (HDF5 laid out as MATLAB)."""
    p5, p73 = tmp_path / f"{name}_v5.mat", tmp_path / f"{name}_v73.mat"
    scipy.io.savemat(p5, v5)
    write_v73(p73, v73)
    return [p5, p73]


# -- MATLAB structs and cells -------------------------------------------------------------

def test_struct_array_field_path_stacks_every_rdm(tmp_path):
    """The RSA-toolbox layout: RDMs(k).RDM holds each matrix; key RDMs.RDM gives (k, n, n)
    in MATLAB's element order, from v5 and v7.3 files alike."""
    mats = [_rdm(5, seed=i) for i in range(3)]
    recs = [{"RDM": m, "name": f"sub-{i}"} for i, m in enumerate(mats)]
    for path in _write_both(tmp_path, "rsa", {"RDMs": _v5_struct(recs)},
                            {"RDMs": Struct(recs)}):
        rdm, check = load_rdm(path, key="RDMs.RDM", return_check=True)
        assert rdm.shape == (3, 5, 5) and rdm.dtype == np.float64
        np.testing.assert_array_equal(rdm, np.stack(mats))
        assert check.complete and check.note.startswith("3 entries of RDMs.RDM")
        assert "RDMs(1).RDM .. RDMs(3).RDM" in check.note


def test_ambiguous_and_wrong_keys_list_fields_and_sizes_in_one_line(tmp_path):
    recs = [{"RDM": _rdm(4, seed=i), "name": "ab", "color": np.array([[1.0, 0.0, 0.0]])}
            for i in range(2)]
    for path in _write_both(tmp_path, "amb", {"RDMs": _v5_struct(recs), "n": np.ones(3)},
                            {"RDMs": Struct(recs), "n": np.ones(3)}):
        errors = {}
        for key in ("RDMs", "RDMs.rdm", "RDMs.RDM.x", "RDMs.name", None, "RDMs..RDM"):
            with pytest.raises(SpecError) as err:
                load_rdm(path, key=key)
            assert "\n" not in str(err.value) and path.name in str(err.value)
            errors[key] = str(err.value)
        assert ("key 'RDMs' is ambiguous: RDMs is a 1x2 struct with fields RDM (4x4 double), "
                "name (1x2 char), color (1x3 double); name the field holding the numbers, e.g. "
                "key 'RDMs.RDM'") in errors["RDMs"]
        assert errors["RDMs.rdm"].endswith(
            ": RDMs has no field 'rdm'; RDMs is a 1x2 struct with fields RDM (4x4 double), name "
            "(1x2 char), color (1x3 double)")
        assert "RDMs(1).RDM is 4x4 double, not a struct, so it has no field 'x'" in \
            errors["RDMs.RDM.x"]
        assert "RDMs(1).name is 1x2 char; expected real numbers" in errors["RDMs.name"]
        assert "holds 2 arrays ['RDMs', 'n']; name one with key" in errors[None]
        assert "RDMs: 1x2 struct" in errors[None] and "n: 1x3 double" in errors[None]
        assert "is not a MATLAB field path" in errors["RDMs..RDM"]


def test_entries_of_different_sizes_and_empty_entries_are_refused(tmp_path):
    recs = [{"RDM": _rdm(4)}, {"RDM": _rdm(5)}]
    for path in _write_both(tmp_path, "sizes", {"RDMs": _v5_struct(recs)},
                            {"RDMs": Struct(recs)}):
        with pytest.raises(SpecError, match=r"reaches arrays of different sizes \(RDMs\(1\)\.RDM "
                                            r"is 4x4, RDMs\(2\)\.RDM is 5x5\)"):
            load_rdm(path, key="RDMs.RDM")
    cells = [_rdm(4), np.zeros((0, 0))]
    for path in _write_both(tmp_path, "holes", {"c": _cell(cells)}, {"c": Cell(cells)}):
        with pytest.raises(SpecError, match=r"key 'c': c\{2\} is empty; expected an RDM in every "
                                            r"entry"):
            load_rdm(path, key="c")


def test_cell_array_of_matrices_and_nested_structs(tmp_path):
    mats = [_rdm(4, seed=i) for i in range(2)]
    inner = [{"rdm": m} for m in mats]
    v5 = {"c": _cell(mats), "s": _v5_struct([{"level": _v5_struct(inner)}])}
    v73 = {"c": Cell(mats), "s": Struct([{"level": Struct(inner)}], shape=(1, 1))}
    for path in _write_both(tmp_path, "nested", v5, v73):
        np.testing.assert_array_equal(load_rdm(path, key="c"), np.stack(mats))
        np.testing.assert_array_equal(load_rdm(path, key="s.level.rdm"), np.stack(mats))
        origins = [leaf.origin for leaf in mat_leaves(path, "s.level.rdm", "f")]
        assert origins == ["s.level(1).rdm", "s.level(2).rdm"]


def test_v73_plain_and_single_entry_rdms_stay_memory_mapped_and_stacks_over_the_limit_are_refused(
        tmp_path):
    big = np.stack([_rdm(16, seed=i, dtype=np.float32) for i in range(4)])  # 4 KiB
    path = tmp_path / "one.mat"
    write_v73(path, {"plain": big, "S": Struct([{"RDM": big}], shape=(1, 1)),
                     "A": Struct([{"RDM": big[0]}, {"RDM": big[1]}])})
    for key in ("plain", "S.RDM"):
        arr, check = load_rdm(path, key=key, max_bytes=1024, return_check=True)
        assert is_memory_mapped(arr) and arr.shape == (4, 16, 16)
        np.testing.assert_array_equal(arr, big)
    with pytest.raises(SpecError, match=r"key 'A\.RDM' reaches 2 arrays, 0\.0 MiB in all, over "
                                        r"the 0\.0 MiB limit \(max_bytes\), which cannot be "
                                        r"memory-mapped as one stack"):
        load_rdm(path, key="A.RDM", max_bytes=1024)
    np.testing.assert_array_equal(load_rdm(path, key="A.RDM"), big[:2])


def test_a_truncated_mat_file_says_so(tmp_path):
    recs = [{"RDM": _rdm(30, seed=i)} for i in range(3)]
    for path in _write_both(tmp_path, "cut", {"RDMs": _v5_struct(recs)}, {"RDMs": Struct(recs)}):
        path.write_bytes(path.read_bytes()[:2000])
        with pytest.raises(SpecError, match=r"could not be read|truncated or unreadable") as err:
            load_rdm(path, key="RDMs.RDM")
        assert "\n" not in str(err.value) and "truncated" in str(err.value)


# -- condensed RDMs ---------------------------------------------------------------------------

def test_condensed_rule():
    assert condensed_size((10,)) == 5 and condensed_size((1,)) == 2 and condensed_size((3,)) == 3
    assert condensed_size((7, 6)) == 4 and condensed_size((2, 3, 45)) == 10
    assert condensed_size((6, 6)) is None  # a square trailing pair is a matrix
    assert condensed_size((3, 3)) is None  # 3 = 3*2/2, but square wins
    assert condensed_size((5,)) is None and condensed_size((4, 7)) is None  # not n(n-1)/2
    assert condensed_size(()) is None and condensed_size((0,)) is None


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".h5", ".mat"])
def test_condensed_rdms_expand_as_squareform(tmp_path, suffix):
    """Known answer: every vector of a (2, 3, 15) stack expands to scipy's squareform of it."""
    rng = np.random.default_rng(1)
    vecs = np.stack([[pdist(rng.standard_normal((6, 2))) for _ in range(3)] for _ in range(2)])
    path = tmp_path / f"c{suffix}"
    if suffix == ".npy":
        np.save(path, vecs)
    elif suffix == ".npz":
        np.savez(path, rdm=vecs)
    elif suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            f["rdm"] = vecs
    else:
        scipy.io.savemat(path, {"rdm": vecs})
    rdm, check = load_rdm(path, return_check=True)
    assert rdm.shape == (2, 3, 6, 6) and check.condensed_from == (2, 3, 15)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(rdm[i, j], squareform(vecs[i, j]))
    np.testing.assert_array_equal(expand_condensed(vecs), rdm)


def test_matlab_pdist_row_and_column_vectors_are_one_rdm(tmp_path):
    """MATLAB's pdist returns a 1 x m row; a transposed m x 1 column is the same vector."""
    v = pdist(np.random.default_rng(2).standard_normal((5, 3)))
    for name, arr in (("row", v[None, :]), ("col", v[:, None])):
        p5, p73 = tmp_path / f"{name}5.mat", tmp_path / f"{name}73.mat"
        scipy.io.savemat(p5, {"d": arr})
        write_v73(p73, {"d": arr})
        for path in (p5, p73):
            rdm, check = load_rdm(path, return_check=True)
            np.testing.assert_array_equal(rdm, squareform(v))
            assert check.condensed_from == (10,)
    recs = [{"RDM": pdist(np.random.default_rng(i).standard_normal((4, 2)))[None, :]}
            for i in range(3)]
    for path in _write_both(tmp_path, "cs", {"RDMs": _v5_struct(recs)}, {"RDMs": Struct(recs)}):
        rdm = load_rdm(path, key="RDMs.RDM")
        assert rdm.shape == (3, 4, 4)
        np.testing.assert_array_equal(rdm[2], squareform(recs[2]["RDM"][0]))


def test_condensed_nan_policy_and_expanded_size_limit(tmp_path, monkeypatch):
    v = pdist(np.random.default_rng(3).standard_normal((5, 2)))
    v[2] = np.nan  # pair (0, 3)
    path = tmp_path / "nan.npy"
    np.save(path, v)
    with pytest.raises(SpecError, match=r"2 NaN value\(s\), the first at matrix 0, entry "
                                        r"\(0, 3\).*--nan-policy"):
        load_rdm(path)
    zero = load_rdm(path, nan_policy="zero")
    assert zero[0, 3] == 0 and zero[3, 0] == 0
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((50, 190), dtype=np.float32))  # 50 x 20 x 20 once expanded: 78 KiB

    def never(*a, **k):
        raise AssertionError("the array was read")

    monkeypatch.setattr(np, "load", never)
    with pytest.raises(SpecError, match=r"holds condensed RDMs \(50, 190\) \(n = 20 conditions\); "
                                        r"expanded to \(50, 20, 20\) they take 0\.1 MiB, over the "
                                        r"0\.0 MiB limit \(max_bytes\); expand them once to a "
                                        r"square \.npy"):
        load_rdm(big, max_bytes=40 * 1024)


# -- spike times per cell in MATLAB files --------------------------------------------------

def _units(seed=0, n=3):
    rng = np.random.default_rng(seed)
    return [np.sort(rng.uniform(0, 10, k)) for k in rng.integers(3, 9, n)]


def test_cell_array_of_spike_times_converts(tmp_path):
    """Nested cells (tetrode x cell) of column vectors, with an empty placeholder and a cell
    without spikes: one unit per non-empty vector, MATLAB's order, origins kept."""
    u = _units(0, 4)
    v5 = {"spk": _cell([_cell([u[0][:, None], np.zeros((1, 0))]),
                        _cell([u[1][:, None], u[2][:, None], u[3][:, None]])])}
    v73 = {"spk": Cell([Cell([u[0][:, None], np.zeros((0, 0))]),
                        Cell([u[1][:, None], u[2][:, None], u[3][:, None]])])}
    for path in _write_both(tmp_path, "cells", v5, v73):
        dst = tmp_path / f"{path.stem}.npz"
        rec, note = convert_mat_spikes(path, dst)
        back = load_spikes(dst)
        assert back.n_units == 4 and len(back.spike_times) == sum(len(x) for x in u)
        for k in range(4):
            np.testing.assert_array_equal(back.spike_times[back.unit_index == k], u[k])
        assert np.all(np.diff(back.spike_times) >= 0)
        assert back.extra["unit_origin"].tolist() == ["spk{1}{1}", "spk{2}{1}", "spk{2}{2}",
                                                      "spk{2}{3}"]
        assert note.endswith("(1 cells without spikes skipped)")


def test_struct_field_of_spike_times_converts_and_bad_input_writes_nothing(tmp_path):
    u = _units(1, 3)
    recs = [{"time": x[:, None], "rate": np.array([[1.0]])} for x in u]
    for path in _write_both(tmp_path, "st", {"units": _v5_struct(recs)}, {"units": Struct(recs)}):
        dst = tmp_path / f"{path.stem}.npz"
        with pytest.raises(SpecError, match=r"key 'units' is ambiguous: units is a 1x3 struct "
                                            r"with fields time \(\d+x1 double\), rate \(1x1 "
                                            r"double\); name the field holding the numbers, e.g. "
                                            r"key 'units.time'"):
            convert_mat_spikes(path, dst)
        assert not dst.exists()
        rec, _ = convert_mat_spikes(path, dst, key="units.time")
        assert rec.n_units == 3 and rec.extra["unit_origin"][2] == "units(3).time"
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(bad, {"m": np.ones((4, 3)), "neg": _cell([np.array([-1.0, 2.0])])})
    for key, needle in (("m", r"m is a 4x3 array; expected one vector of spike times per cell"),
                        ("neg", r"spike_times must be >= 0 s")):
        with pytest.raises(SpecError, match=needle):
            convert_mat_spikes(bad, tmp_path / "out.npz", key=key)
        assert not (tmp_path / "out.npz").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_real_matclust_spikes_mat_matches_the_nelpy_parse(tmp_path):
    """The rat recording's MatClust file (spikes{day}{epoch}{tetrode}{cell}.time): the same
    31 units and 28,829 spikes as nelpy's parse of it, unit for unit."""
    src = RAT_DIR / "spikes.mat"
    if not src.exists():
        pytest.skip("shared rat hippocampus recording is absent")
    rec, note = convert_mat_spikes(src, tmp_path / "rat.npz", key="spikes.time")
    assert rec.n_units == 31 and len(rec.spike_times) == 28829
    assert "68 absent entries and 6 cells without spikes skipped" in note
    ref = convert_nelpy_npz(RAT_DIR / "linear_track_parsed.npz", tmp_path / "ref.npz")
    np.testing.assert_array_equal(rec.spike_times, ref.spike_times)
    np.testing.assert_array_equal(rec.unit_index, ref.unit_index)


# -- raybrain data inspect / convert-spikes --------------------------------------------------

def _cli(capsys, *args):
    from raybrain.cli import main

    code = main(["data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err):
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_inspect_tells_npz_layouts_apart_by_their_keys(tmp_path, capsys):
    from raybrain.data import MemoryTaskConfig, simulate_episodes
    from raybrain.data.npz import save_memory_npz
    from raybrain.data.spikes import SpikeRecording, save_spikes

    spikes = save_spikes(tmp_path / "spk.npz", SpikeRecording(
        np.array([0.1, 0.5, 0.9]), np.array([0, 1, 0]), 2))
    cfg = MemoryTaskConfig(pre_bins=1, post_bins=2, context_bins=1, min_steps=2, max_steps=4)
    eps = simulate_episodes(5, cfg, np.random.default_rng(0))
    memory = save_memory_npz(tmp_path / "mem.npz", eps,
                             np.zeros((eps.n_steps, 3, 7), dtype=np.float32))
    rdm = tmp_path / "rdm.npz"
    np.savez(rdm, anything=_rdm(4))
    code, out, _ = _cli(capsys, "inspect", str(spikes), str(memory), str(rdm))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert "spk.npz: spike file, 2 units, 3 spikes" in lines[0]
    assert (f"mem.npz: memory-task brain embeddings (n_steps, bins_per_step, dim) = "
            f"({eps.n_steps}, 3, 7): 5 episodes") in lines[1]
    assert "pre_bins + post_bins = 3 and embed_dim = 7" in lines[1]
    assert "rdm.npz: RDM stack (4, 4) float64, validated" in lines[2]
    nelpy = tmp_path / "nelpy.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = np.array([0.5])
    np.savez(nelpy, spike_times_s=obj, pos_time_s=np.arange(2.0), pos_x_px=np.arange(2.0))
    line = _one_error(*_cli(capsys, "inspect", str(nelpy))[::2])
    assert "is nelpy's parsed spike layout" in line and "raybrain data convert-spikes" in line
    other = tmp_path / "two.npz"
    np.savez(other, a=np.zeros(2), b=np.zeros(3))
    line = _one_error(*_cli(capsys, "inspect", str(other))[::2])
    assert "holds 2 arrays ['a', 'b'] in no known layout" in line and "--key" in line


def test_inspect_says_truncated_and_directory_plainly(tmp_path, capsys):
    from raybrain.data.spikes import SpikeRecording, save_spikes

    good = save_spikes(tmp_path / "spk.npz", SpikeRecording(
        np.linspace(0.1, 5, 200), np.arange(200) % 3, 3))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for extra in ([], ["--as", "spikes"]):
        line = _one_error(*_cli(capsys, "inspect", str(cut), *extra)[::2])
        assert "cut.npz' is truncated or unreadable" in line and "convert" not in line
    line = _one_error(*_cli(capsys, "inspect", str(tmp_path))[::2])
    assert line == (f"error: '{tmp_path}' is a directory; expected a brain-data file (EEG/MEG "
                    f"recording, .npy/.npz/.mat/.h5 array, NIfTI image, SPoSE .txt)")
    line = _one_error(*_cli(capsys, "inspect", str(tmp_path / "nope.npy"))[::2])
    assert "nope.npy' not found" in line


def test_every_option_an_error_recommends_exists(tmp_path, capsys):
    """The NaN error names --nan-policy; that option then reads the file. The size error
    names max_bytes; --max-bytes sets it. The ambiguous-key error names key; --key works."""
    arr = _rdm(5)
    arr[0, 1] = arr[1, 0] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, arr)
    line = _one_error(*_cli(capsys, "inspect", str(path))[::2])
    option = re.search(r"raybrain data inspect (--[a-z-]+)", line).group(1)
    code, out, _ = _cli(capsys, "inspect", str(path), option, "keep")
    assert code == 0 and "2 NaN value(s) kept" in out
    code, out, _ = _cli(capsys, "inspect", str(path), option, "zero")
    assert code == 0 and "2 NaN value(s) set to 0" in out
    npz = tmp_path / "big.npz"
    np.savez(npz, rdm=np.stack([_rdm(16, seed=i) for i in range(8)]))
    line = _one_error(*_cli(capsys, "inspect", str(npz), "--max-bytes", "4096")[::2])
    assert "(max_bytes)" in line
    assert _cli(capsys, "inspect", str(npz), "--max-bytes", str(2**20))[0] == 0
    mat = tmp_path / "rsa.mat"
    scipy.io.savemat(mat, {"RDMs": _v5_struct([{"RDM": _rdm(4)}, {"RDM": _rdm(4, 1)}])})
    line = _one_error(*_cli(capsys, "inspect", str(mat))[::2])
    suggested = re.search(r"e\.g\. key '([\w.]+)'", line).group(1)
    code, out, _ = _cli(capsys, "inspect", str(mat), "--key", suggested)
    assert code == 0 and "RDM stack (2, 4, 4) float64" in out and "2 entries of RDMs.RDM" in out


def test_inspect_condensed_and_convert_spikes_from_mat(tmp_path, capsys):
    v = pdist(np.random.default_rng(4).standard_normal((6, 3)))
    np.save(tmp_path / "c.npy", v)
    code, out, _ = _cli(capsys, "inspect", str(tmp_path / "c.npy"))
    assert code == 0 and "RDM stack (6, 6)" in out and "read as condensed: stored (15,)" in out
    u = _units(5, 2)
    src = tmp_path / "cells.mat"
    scipy.io.savemat(src, {"spk": _cell([x[:, None] for x in u])})
    code, out, _ = _cli(capsys, "inspect", str(src), "--as", "spikes")
    assert code == 0 and "2 units" in out and "convert it once" in out
    dst = tmp_path / "out.npz"
    code, out, _ = _cli(capsys, "convert-spikes", str(src), str(dst))
    assert code == 0 and out.startswith(f"{dst}: 2 units") and "spk{1} .. spk{2}" in out
    assert load_spikes(dst).n_units == 2
    for args, needle in (([str(src), str(tmp_path / "x.txt")], "must end in .npz"),
                         ([str(src), str(tmp_path)], "must end in .npz"),
                         ([str(src), str(tmp_path / "y.npz"), "--key", "spk.t"],
                          r"spk\{1\} is \d+x1 double, not a struct"),
                         ([str(tmp_path / "missing.mat"), str(tmp_path / "z.npz")], "not found")):
        line = _one_error(*_cli(capsys, "convert-spikes", *args)[::2])
        assert re.search(needle, line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "cells.mat", "out.npz"]


def test_real_spikes_mat_through_the_cli(tmp_path, capsys):
    src = RAT_DIR / "spikes.mat"
    if not src.exists():
        pytest.skip("shared rat hippocampus recording is absent")
    line = _one_error(*_cli(capsys, "convert-spikes", str(src), str(tmp_path / "r.npz"))[::2])
    assert "e.g. key 'spikes.time'" in line and not (tmp_path / "r.npz").exists()
    code, out, _ = _cli(capsys, "convert-spikes", str(src), str(tmp_path / "r.npz"),
                        "--key", "spikes.time")
    assert code == 0 and "31 units, 28829 spikes over 1968.1 s" in out
    code, out, _ = _cli(capsys, "inspect", str(tmp_path / "r.npz"))
    assert code == 0 and "spike file, 31 units" in out


def test_driving_validation_reads_the_frames_header(tmp_path):
    import raybrain.tasks as tasks

    task = tasks.get("b2m-driving")
    eeg = tmp_path / "rec.bdf"
    eeg.write_bytes(b"0")
    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((4, 8, 8), dtype=np.uint8))  # no colour axis
    data = task.parse_data({"source": "files", "sessions": [{"eeg": str(eeg),
                                                             "frames": str(frames)}]})
    with pytest.raises(SpecError, match=r"frames\.npy': expected shape \(n_frames, height, "
                                        r"width, 3\) or \(n_frames, 3, height, width\), got "
                                        r"\(4, 8, 8\)"):
        task.check_data(data, {})
    np.save(frames, np.zeros((4, 8, 8, 3), dtype=np.int16))
    with pytest.raises(SpecError, match=r"frames must be uint8 \(0\.\.255\) or float"):
        task.check_data(data, {})
