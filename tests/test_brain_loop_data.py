"""Concept data for the brain-in-the-loop method: generator, controls, splits, user files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from raybrain.align.concept_metrics import cosine_distances, silhouette_by_category
from raybrain.data.concepts import (THINGS48_FILES, brain_control, build_concept_data,
                                    load_concept_data,
                                    noise_brain, shuffle_brain, spectrum_surrogate,
                                    spectrum_surrogate_rdm, split_concepts, synthetic_concepts,
                                    things48)
from raybrain.data.rdm_compute import correlation_rdm
from raybrain.errors import SpecError
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit

THINGS = SHARED_DATA / "things"


def _upper(m):
    return m[np.triu_indices(m.shape[0], k=1)]


def _rho(a, b):
    return spearmanr(_upper(a), _upper(b))[0]


# ------------------------------------------------------------------------------ generator

def test_generator_is_deterministic_and_shaped():
    a, b = synthetic_concepts(3), synthetic_concepts(3)
    np.testing.assert_array_equal(a.brain, b.brain)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.brain.shape == (128, 128) and a.features.shape == (640, 48)
    assert a.brain_rdm.shape == (128, 128)
    np.testing.assert_array_equal(a.item_concept, np.repeat(np.arange(128), 5))
    assert set(a.superordinate) == {"living", "non-living"} and len(set(a.basic)) == 8
    assert not np.array_equal(a.brain, synthetic_concepts(4).brain)


def test_generator_known_answer_informative_vs_null():
    inf, null = synthetic_concepts(0, informative=True), synthetic_concepts(0, informative=False)
    z = inf.info["semantic_latent"]
    z_rdm = cosine_distances(z)
    # the brain shows the concepts' semantic structure (informative) or someone else's (null)
    assert _rho(inf.brain_rdm, z_rdm) > 0.9
    assert abs(_rho(null.brain_rdm, z_rdm)) < 0.15
    # ... and its hierarchy: superordinate clusters in the brain patterns of the model's concepts
    assert silhouette_by_category(inf.brain, inf.superordinate, metric="correlation") > 0.2
    assert abs(silhouette_by_category(null.brain, null.superordinate,
                                      metric="correlation")) < 0.05
    # the null brain is the informative one with its concepts relabelled
    pi = null.info["brain_permutation"]
    np.testing.assert_allclose(null.brain_rdm, correlation_rdm(null.brain))
    assert _rho(null.brain_rdm[np.ix_(np.argsort(pi), np.argsort(pi))], z_rdm) > 0.9
    # the model side blurs the hierarchy: its concept-mean RDM is only weakly related
    means = np.stack([inf.features[inf.item_concept == c].mean(0) for c in range(128)])
    assert _rho(cosine_distances(means), inf.brain_rdm) < 0.5
    np.testing.assert_array_equal(inf.features, null.features)


# ------------------------------------------------------------------------------- controls

def test_spectrum_surrogate_keeps_spectrum_and_destroys_identity():
    d = synthetic_concepts(1)
    X = d.brain.astype(np.float64)
    S = spectrum_surrogate(X, np.random.default_rng(0))
    np.testing.assert_allclose(S.mean(0), X.mean(0), atol=1e-10)
    Xc, Sc = X - X.mean(0), S - S.mean(0)
    np.testing.assert_allclose(Sc.T @ Sc, Xc.T @ Xc, atol=1e-8)  # voxel covariance
    np.testing.assert_allclose(np.linalg.eigvalsh(Sc @ Sc.T), np.linalg.eigvalsh(Xc @ Xc.T),
                               atol=1e-8)
    assert abs(_rho(correlation_rdm(S), d.brain_rdm)) < 0.1


def test_spectrum_surrogate_rdm_keeps_mds_spectrum():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(30, 4)) + np.repeat(rng.normal(size=(3, 4)) * 3, 10, axis=0)
    D = np.linalg.norm(pts[:, None] - pts[None], axis=2)
    S = spectrum_surrogate_rdm(D, np.random.default_rng(0))
    J = np.eye(30) - 1 / 30

    def spectrum(M):
        return np.linalg.eigvalsh(-0.5 * J @ (M ** 2) @ J)

    np.testing.assert_allclose(spectrum(S), spectrum(D), atol=1e-8)
    np.testing.assert_allclose(S, S.T)
    assert np.all(np.diag(S) == 0) and S.min() >= 0
    assert abs(_rho(S, D)) < 0.2


def test_shuffle_and_noise_controls():
    d = synthetic_concepts(2)
    s = shuffle_brain(d, np.random.default_rng(0))
    perm = s.info["brain_permutation"]
    np.testing.assert_array_equal(s.brain, d.brain[perm])
    np.testing.assert_array_equal(s.brain_rdm, d.brain_rdm[np.ix_(perm, perm)])
    np.testing.assert_array_equal(s.features, d.features)
    assert abs(_rho(s.brain_rdm, d.brain_rdm)) < 0.2
    n = noise_brain(d, np.random.default_rng(0))
    assert n.info["control"] == "noise" and n.brain.shape == d.brain.shape
    np.testing.assert_allclose(n.brain_rdm, correlation_rdm(n.brain), atol=1e-5)
    from dataclasses import replace

    rdm_only = replace(d, brain=None)
    nr = noise_brain(rdm_only, np.random.default_rng(0))
    assert nr.brain is None and nr.brain_rdm.shape == d.brain_rdm.shape
    assert abs(_rho(nr.brain_rdm, d.brain_rdm)) < 0.2
    assert brain_control(d, "real", np.random.default_rng(0)) is d
    np.testing.assert_array_equal(brain_control(d, "shuffled", np.random.default_rng(0)).brain,
                                  s.brain)
    np.testing.assert_array_equal(brain_control(d, "noise", np.random.default_rng(0)).brain,
                                  n.brain)
    with pytest.raises(SpecError, match="brain source must be one of"):
        brain_control(d, "fake", np.random.default_rng(0))


# --------------------------------------------------------------------------------- splits

def test_split_is_disjoint_stratified_and_deterministic():
    d = synthetic_concepts(0)
    sp = split_concepts(d, (0.5, 0.25, 0.25), seed=1)
    all_idx = np.concatenate([sp.train, sp.val, sp.test])
    assert sorted(all_idx.tolist()) == list(range(128))
    for part in (sp.train, sp.val, sp.test):
        assert set(d.basic[part]) == set(d.basic)  # every category on every side
    assert len(sp.train) == 64 and len(sp.val) == 32
    sp2 = split_concepts(d, (0.5, 0.25, 0.25), seed=1)
    np.testing.assert_array_equal(sp.test, sp2.test)
    with pytest.raises(SpecError, match="summing to 1"):
        split_concepts(d, (0.5, 0.5, 0.5))


# ------------------------------------------------------------------------ user data glue

def test_build_concept_data_errors_are_one_line():
    feats = np.ones((4, 3))
    with pytest.raises(SpecError, match=r"concept lists differ: 1 only on the brain side "
                                        r"\(e.g. \['c'\]\), 1 only on the model side"):
        build_concept_data(["a", "b", "c"], ["a", "b", "d", "a"], feats,
                           brain_rdm=np.zeros((3, 3)))
    with pytest.raises(SpecError, match=r"must be square \(n_concepts, n_concepts\), got shape "
                                        r"\(3, 2\)"):
        build_concept_data(["a", "b", "c"], ["a", "b", "c", "a"], feats,
                           brain_rdm=np.zeros((3, 2)))
    with pytest.raises(SpecError, match="brain concepts must be unique"):
        build_concept_data(["a", "a", "b"], ["a", "b", "a", "b"], feats, brain=np.ones((3, 5)))
    D = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], dtype=float)
    with pytest.raises(SpecError, match=r"1 concept\(s\) have no superordinate category \(e.g. "
                                        r"\['c'\]\)") as err:
        build_concept_data(["a", "b", "c"], ["a", "b", "c", "a"], feats, brain_rdm=D,
                           categories={"a": "x", "b": "y", "c": ""}, require_categories=True)
    assert "\n" not in str(err.value)
    ok = build_concept_data(["a", "b", "c"], ["a", "b", "c", "a"], feats, brain_rdm=D,
                            categories={"a": "x", "b": "y"})
    assert ok.superordinate.tolist() == ["x", "y", None]
    np.testing.assert_array_equal(ok.item_concept, [0, 1, 2, 0])


def test_load_concept_data_from_files(tmp_path):
    d = synthetic_concepts(0, n_per_basic=2, n_exemplars=2)
    names = d.concepts
    np.save(tmp_path / "voxels.npy", d.brain)
    np.save(tmp_path / "rdm.npy", d.brain_rdm)
    np.savez(tmp_path / "feats.npz", features=d.features)
    (tmp_path / "brain.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "items.txt").write_text("\n".join(names[i] for i in d.item_concept) + "\n")
    rows = ["concept,superordinate,basic"] + [f"{c},{s},{b}" for c, s, b in
                                              zip(names, d.superordinate, d.basic)]
    (tmp_path / "cats.csv").write_text("\n".join(rows) + "\n")
    common = dict(features_path=tmp_path / "feats.npz", item_concepts_path=tmp_path / "items.txt",
                  brain_concepts_path=tmp_path / "brain.txt",
                  categories_path=tmp_path / "cats.csv", require_categories=True)
    vox = load_concept_data(voxels_path=tmp_path / "voxels.npy", **common)
    np.testing.assert_allclose(vox.brain_rdm, d.brain_rdm, atol=1e-5)
    np.testing.assert_array_equal(vox.item_concept, d.item_concept)
    assert vox.basic.tolist() == d.basic.tolist()
    rdm = load_concept_data(rdm_path=tmp_path / "rdm.npy", **common)
    assert rdm.brain is None and rdm.brain_kind == "rdm"
    np.save(tmp_path / "rect.npy", d.brain_rdm[:, :-2])  # 14 columns: not n(n-1)/2
    with pytest.raises(SpecError, match="square"):
        load_concept_data(rdm_path=tmp_path / "rect.npy", **common)
    # 15 columns = 6 * 5 / 2: the documented rule reads rows as condensed RDMs, and says so
    np.save(tmp_path / "rect.npy", d.brain_rdm[:, :-1])
    with pytest.raises(SpecError, match=r"read as condensed.*a matrix must be square"):
        load_concept_data(rdm_path=tmp_path / "rect.npy", **common)


# -------------------------------------------------------------------------------- THINGS

@pytest.mark.skipif(not all((THINGS / f).exists() for f in THINGS48_FILES),
                    reason="THINGS data not present")
def test_things48_loader():
    d = things48(THINGS)
    assert d.n_concepts == 48 and d.features.shape == (48, 66) and d.brain is None
    assert d.concepts[:3] == ["pizza", "beaver", "macadamia"]
    assert d.brain_rdm.shape == (48, 48) and np.all(np.diag(d.brain_rdm) == 0)
    assert set(d.superordinate) == {"natural", "manmade"}
    assert d.superordinate[d.concepts.index("beaver")] == "natural"
    assert d.superordinate[d.concepts.index("hammer")] == "manmade"
