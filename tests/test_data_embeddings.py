"""SPoSE behavioural embeddings (real THINGS files and written ones) and fMRI voxel arrays
(npy, HDF5, NIfTI + mask)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from raybrain.data.embeddings import load_spose, load_voxels, spose_odd_one_out, spose_rdm
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
    acc = float(np.mean(spose_odd_one_out(emb.values, trials[:, :3]) == trials[:, 3] - 1))
    assert 0.60 < acc < 0.68  # SPoSE's published ~64% on these trials
    rows = list(csv.reader(open(_things("spose_embedding66d_rescaled_48val_reordered.csv"))))[1:]
    idx = np.array([int(r[0]) for r in rows])
    from raybrain.data.rdm import load_rdm

    rdm48 = load_rdm(_things("RDM48_triplet.mat"), key="RDM48_triplet")
    iu = np.triu_indices(48, 1)
    r = float(np.corrcoef(spose_rdm(emb.values[idx])[iu], rdm48[iu])[0, 1])
    assert r > 0.85  # ~0.90
    seen = ROOT / "tests" / "artifacts" / "real_files.json"
    notes = json.loads(seen.read_text()) if seen.exists() else {}
    notes["things/spose_embedding_66d_sorted.txt"] = {
        "shape": list(emb.values.shape), "clipped": emb.n_clipped,
        "triplet accuracy": round(acc, 4), "r with RDM48_triplet": round(r, 3)}
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
    assert np.isfinite(spose_rdm(x * 100)).all()  # large values do not overflow to NaN


def test_odd_one_out_known_answer():
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    assert spose_odd_one_out(x, np.array([[0, 1, 2], [2, 0, 1]])).tolist() == [2, 0]


def test_written_spose_files_and_their_errors(tmp_path):
    good = tmp_path / "emb.txt"
    good.write_text("0.1 0.2 0.0\n-0.0004 1.5 0.3\n")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    emb = load_spose(good, labels)
    assert emb.values.shape == (2, 3) and emb.n_clipped == 1 and emb.values[1, 0] == 0
    cases = {
        "0.1 0.2\n0.3\n": r"row 2 has 1 values but row 1 has 2",
        "0.1 abc\n": r"row 1 holds 'abc', not a number",
        "0.1 nan\n": r"NaN/inf at row 1, column 2",
        "0.1 -0.5\n": r"value -0.5 at row 1, column 2 is negative beyond rounding",
        "": r"is empty",
    }
    for text, needle in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(SpecError, match=needle) as err:
            load_spose(bad)
        assert "bad.txt" in str(err.value)
    labels.write_text("a\nb\n")
    with pytest.raises(SpecError, match=r"has 2 labels but .* has 3 dimensions"):
        load_spose(good, labels)


def test_voxels_npy_h5_and_nifti_with_mask(tmp_path):
    import h5py
    import nibabel as nib

    arr = np.random.default_rng(0).standard_normal((10, 50)).astype(np.float32)
    np.save(tmp_path / "v.npy", arr)
    np.testing.assert_array_equal(load_voxels(tmp_path / "v.npy"), arr)
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["betas"] = arr
    np.testing.assert_array_equal(load_voxels(tmp_path / "v.h5"), arr)
    vol = np.random.default_rng(1).standard_normal((4, 5, 6, 7)).astype(np.float32)
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 2:4, 0:6] = 1
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "mask.nii.gz")
    got = load_voxels(tmp_path / "bold.nii.gz", mask_path=tmp_path / "mask.nii.gz")
    assert got.shape == (7, 24)
    np.testing.assert_allclose(got, vol[mask.astype(bool)].T)


def test_voxel_errors(tmp_path):
    import nibabel as nib

    vol = np.zeros((4, 5, 6, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bold.nii")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 5), np.uint8), np.eye(4)), tmp_path / "m1.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), np.eye(4)), tmp_path / "m0.nii")
    nib.save(nib.Nifti1Image(vol[..., 0], np.eye(4)), tmp_path / "three.nii")
    with pytest.raises(SpecError, match=r"mask '.*m1\.nii' has shape \(4, 5, 5\) but .* \(4, 5, 6\)"):
        load_voxels(tmp_path / "bold.nii", mask_path=tmp_path / "m1.nii")
    with pytest.raises(SpecError, match="selects no voxel"):
        load_voxels(tmp_path / "bold.nii", mask_path=tmp_path / "m0.nii")
    with pytest.raises(SpecError, match="expected a 4-D image"):
        load_voxels(tmp_path / "three.nii", mask_path=tmp_path / "m0.nii")
    with pytest.raises(SpecError, match="give a brain mask"):
        load_voxels(tmp_path / "bold.nii")
    nan = np.zeros((3, 4))
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(SpecError, match=r"NaN/inf at item 1, voxel 2"):
        load_voxels(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(SpecError, match=r"must be \(n_items, n_voxels\), got shape \(5,\)"):
        load_voxels(tmp_path / "flat.npy")
