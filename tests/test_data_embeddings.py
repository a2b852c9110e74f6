"""SPoSE behavioural embeddings (real THINGS files and written ones) and fMRI voxel arrays
(npy, HDF5, NIfTI + mask)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from raybrain.data.embeddings import (
    load_spose,
    load_voxels,
    spose_odd_one_out,
    spose_predict_odd_one_out,
    spose_rdm,
)
from raybrain.errors import SpecError
from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.unit

THINGS = SHARED_DATA / "things"


def _things(name):
    path = THINGS / name
    if not path.exists():
        pytest.skip(f"shared data file things/{name} is absent")
    return path


def test_real_spose_embedding_predicts_human_triplets():
    emb = load_spose(_things("spose_embedding_66d_sorted.txt"), _things("labels_66.txt"),
                     _things("words.txt"))
    assert emb.values.shape == (1854, 66) and emb.values.dtype == np.float32
    assert emb.values.min() == 0.0 and emb.n_clipped > 0  # min -5.2e-4: rounding
    assert emb.labels[:2] == ["metallic/artificial", "food-related"]
    assert emb.words[0] == "aardvark"
    trials = np.load(_things("test_triplets_things_order.npy"))
    acc = float(np.mean(spose_predict_odd_one_out(emb.values, trials[:, :3])
                        == trials[:, 3] - 1))
    assert 0.60 < acc < 0.68  # SPoSE's published ~64% on these trials
    with open(_things("spose_embedding66d_rescaled_48val_reordered.csv")) as fh:
        rows = list(csv.reader(fh))[1:]
    assert len(rows) == 48 and all(len(r) == 68 for r in rows)
    idx = np.array([int(r[0]) for r in rows])  # 0-based rows of the full embedding
    rescaled = np.array([[float(v) for v in r[2:]] for r in rows])
    from raybrain.data.rdm import load_rdm

    rdm48 = load_rdm(_things("RDM48_triplet.mat"), key="RDM48_triplet")
    iu = np.triu_indices(48, 1)
    r_csv = float(np.corrcoef(spose_rdm(rescaled)[iu], rdm48[iu])[0, 1])
    r = float(np.corrcoef(spose_rdm(emb.values[idx])[iu], rdm48[iu])[0, 1])
    assert r_csv > 0.85 and r > 0.88  # 0.88 and 0.90
    shuffled = np.random.default_rng(0).permutation(48)
    assert abs(np.corrcoef(spose_rdm(rescaled[shuffled])[iu], rdm48[iu])[0, 1]) < 0.2
    seen = ROOT / "tests" / "artifacts" / "real_files.json"
    notes = json.loads(seen.read_text()) if seen.exists() else {}
    notes["things/spose_embedding_66d_sorted.txt"] = {
        "shape": list(emb.values.shape), "clipped": emb.n_clipped,
        "triplet accuracy": round(acc, 4), "r with RDM48_triplet": round(r, 3),
        "r with RDM48_triplet (rescaled csv rows)": round(r_csv, 3)}
    seen.parent.mkdir(parents=True, exist_ok=True)
    seen.write_text(json.dumps(notes, indent=1, sort_keys=True))


def test_spose_rdm_matches_a_naive_loop():
    x = np.random.default_rng(0).uniform(0, 1.5, (6, 4))
    s = x @ x.T
    ref = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            if i != j:
                ps = [np.exp(s[i, j]) / (np.exp(s[i, j]) + np.exp(s[i, k]) + np.exp(s[j, k]))
                      for k in range(6) if k not in (i, j)]
                ref[i, j] = 1 - np.mean(ps)
    np.testing.assert_allclose(spose_rdm(x), ref, atol=1e-12)
    np.testing.assert_allclose(spose_rdm(x, budget_bytes=1), ref, atol=1e-12)  # row blocks
    assert np.isfinite(spose_rdm(x * 100)).all()  # large values do not overflow to NaN
    from raybrain.data.rdm import validate_rdm

    validate_rdm(spose_rdm(x))
    with pytest.raises(SpecError, match=">= 3 objects"):
        spose_rdm(x[:2])


def test_odd_one_out_known_answer():
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    assert spose_predict_odd_one_out(x, np.array([[0, 1, 2], [2, 0, 1]])).tolist() == [2, 0]
    assert spose_odd_one_out is spose_predict_odd_one_out  # the former name
    with pytest.raises(SpecError, match=r"row 1, column 2 is 3; expected a row index in \[0, 3\)"):
        spose_predict_odd_one_out(x, np.array([[0, 1, 2], [0, 1, 3]]))
    with pytest.raises(SpecError, match=r"shape \(n, 3\)"):
        spose_predict_odd_one_out(x, np.array([[0, 1]]))


def test_written_spose_files_and_their_errors(tmp_path):
    good = tmp_path / "emb.txt"
    good.write_text("0.1 0.2 0.0\n\n-0.0004 1.5 0.3\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc d\n\n")
    words = tmp_path / "words.txt"
    words.write_text("cat\ndog\n")
    emb = load_spose(good, labels, words)
    assert emb.values.shape == (2, 3) and emb.values.dtype == np.float32
    assert emb.n_clipped == 1 and emb.values[1, 0] == 0 and emb.values.min() == 0
    assert emb.labels == ["a", "b", "c d"] and emb.words == ["cat", "dog"]
    assert load_spose(good).labels == ["dim1", "dim2", "dim3"]
    with pytest.raises(SpecError, match=r"line 3, column 1 is -0.0004, negative beyond "
                                        r"rounding; expected >= -0.0001"):
        load_spose(good, tolerance=1e-4)
    cases = {
        "0.1 0.2\n0.3\n": r"line 2 has 1 values but line 1 has 2; expected a rectangular",
        "0.1 abc\n": r"line 1, column 2 holds 'abc'; expected a number",
        "0.1 0.2\n0.3 nan\n": r"line 2, column 2 is nan; expected finite values",
        "0.1 -inf\n": r"line 1, column 2 is -inf; expected finite values",
        "0.1 -0.5\n": r"line 1, column 2 is -0.5, negative beyond rounding",
        "\n\n": r"is empty",
    }
    for text, needle in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(SpecError, match=needle) as err:
            load_spose(bad)
        assert "bad.txt" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SpecError, match="none.txt' not found"):
        load_spose(tmp_path / "none.txt")
    labels.write_text("a\nb\n")
    with pytest.raises(SpecError, match=r"labels.txt' has 2 lines but .*emb.txt' has 3 "
                                        r"dimensions \(columns\); expected 3"):
        load_spose(good, labels)
    labels.write_text("a\n\nc\n")
    with pytest.raises(SpecError, match=r"labels.txt': line 2 is empty"):
        load_spose(good, labels)
    words.write_text("cat\n")
    with pytest.raises(SpecError, match=r"words.txt' has 1 lines but .* has 2 rows"):
        load_spose(good, words_path=words)


def test_voxels_npy_h5_and_nifti_with_mask(tmp_path):
    import h5py
    import nibabel as nib

    from raybrain.data.rdm import is_memory_mapped

    arr = np.random.default_rng(0).standard_normal((10, 50)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr.astype(np.float64))
    got = load_voxels(tmp_path / "v.npy")
    assert got.dtype == np.float32 and not is_memory_mapped(got)
    np.testing.assert_array_equal(got, arr)
    mapped = load_voxels(tmp_path / "v.npy", max_bytes=1024)  # 4000 bytes: mapped
    assert is_memory_mapped(mapped) and mapped.shape == (10, 50)
    np.testing.assert_array_equal(mapped, arr)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["betas"] = arr
        f["other"] = np.zeros(3)
    with pytest.raises(SpecError, match=r"v.h5' holds 2 datasets \['betas', 'other'\]; name one"):
        load_voxels(tmp_path / "v.h5")
    with pytest.raises(SpecError, match=r"v.h5' has no dataset 'x'"):
        load_voxels(tmp_path / "v.h5", key="x")
    np.testing.assert_array_equal(load_voxels(tmp_path / "v.h5", key="betas"), arr)
    mapped = load_voxels(tmp_path / "v.h5", key="betas", max_bytes=1024)
    assert is_memory_mapped(mapped)
    np.testing.assert_array_equal(mapped, arr)
    with h5py.File(tmp_path / "gz.h5", "w") as f:
        f.create_dataset("betas", data=arr, compression="gzip")
    with pytest.raises(SpecError, match="cannot be memory-mapped; rewrite it"):
        load_voxels(tmp_path / "gz.h5", max_bytes=1024)

    vol = np.random.default_rng(1).standard_normal((4, 5, 6, 7)).astype(np.float32)
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 2:4, 0:6] = 1
    mask[0, 0, 5] = 2  # any non-zero value is inside
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    got = load_voxels(tmp_path / "bold.nii.gz", mask_path=tmp_path / "mask.nii.gz")
    assert got.shape == (7, 25) and got.dtype == np.float32
    coords = np.argwhere(mask != 0)  # C order of the mask
    for t in (0, 6):
        for v in (0, 13, 24):
            x, y, z = coords[v]
            assert got[t, v] == vol[x, y, z, t]
    np.testing.assert_array_equal(got, vol[mask != 0].T)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bold.nii")  # uncompressed
    nib.save(nib.Nifti1Image(mask[..., None], np.eye(4)), tmp_path / "mask4.nii")
    np.testing.assert_array_equal(
        load_voxels(tmp_path / "bold.nii", mask_path=tmp_path / "mask4.nii"), got)


def test_voxel_errors(tmp_path):
    import nibabel as nib

    vol = np.zeros((4, 5, 6, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bold.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 5), np.uint8), np.eye(4)), tmp_path / "m1.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), tmp_path / "m0.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.uint8), np.eye(4)), tmp_path / "m.nii")
    nib.save(nib.Nifti1Image(vol[..., 0], np.eye(4)), tmp_path / "three.nii")
    cases = [
        ("bold.nii", "m1.nii",
         r"mask '.*m1\.nii' has shape \(4, 5, 5\) but .*bold.nii' has spatial shape \(4, 5, 6\)"),
        ("bold.nii", "m0.nii", r"m0.nii' selects no voxel"),
        ("three.nii", "m.nii", r"three.nii': expected a 4-D image .*got shape \(4, 5, 6\)"),
        ("bold.nii", None, r"bold.nii' is a NIfTI image; expected a brain mask"),
        ("bold.nii", "none.nii", r"mask '.*none.nii' not found"),
    ]
    for image, mask, needle in cases:
        with pytest.raises(SpecError, match=needle) as err:
            load_voxels(tmp_path / image, mask_path=None if mask is None else tmp_path / mask)
        assert "\n" not in str(err.value)
    vol[2, 3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(SpecError, match=r"nan.nii': volume 1, voxel \d+ of the mask "
                                        r"\(x, y, z = \(2, 3, 4\)\) is nan"):
        load_voxels(tmp_path / "nan.nii", mask_path=tmp_path / "m.nii")
    outside = np.ones((4, 5, 6), np.uint8)
    outside[2, 3, 4] = 0  # the NaN voxel is outside the mask: fine
    nib.save(nib.Nifti1Image(outside, np.eye(4)), tmp_path / "out.nii")
    assert load_voxels(tmp_path / "nan.nii", mask_path=tmp_path / "out.nii").shape == (3, 119)
    with pytest.raises(SpecError, match=r"3 volumes x 120 voxels .* over the .* limit"):
        load_voxels(tmp_path / "bold.nii", mask_path=tmp_path / "m.nii", max_bytes=1000)
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"not a nifti" * 40)
    with pytest.raises(SpecError, match=r"junk.nii' could not be read by nibabel"):
        load_voxels(junk, mask_path=tmp_path / "m.nii")

    nan = np.zeros((3, 4))
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(SpecError, match=r"nan.npy': item 1, voxel 2 is nan; expected finite"):
        load_voxels(tmp_path / "nan.npy")
    with pytest.raises(SpecError, match=r"item 1, voxel 2 is nan"):  # mapped: checked too
        load_voxels(tmp_path / "nan.npy", max_bytes=8)
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(SpecError, match=r"must be 2-D \(n_items, n_voxels\), got shape \(5,\)"):
        load_voxels(tmp_path / "flat.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "nan.npy").read_bytes()[:100])
    with pytest.raises(SpecError, match=r"cut.npy' could not be read .*corrupt or truncated"):
        load_voxels(tmp_path / "cut.npy")
    (tmp_path / "v.csv").write_text("1,2\n")
    with pytest.raises(SpecError, match=r"v.csv': unknown format; expected \.npy"):
        load_voxels(tmp_path / "v.csv")
    with pytest.raises(SpecError, match=r"none.npy' not found"):
        load_voxels(tmp_path / "none.npy")
