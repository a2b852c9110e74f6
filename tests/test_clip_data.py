"""CLIP-HBA data: images, target curves and batches, synthetic teacher data, THINGS targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d
from scipy.spatial.distance import pdist, squareform
from scipy.stats import spearmanr

from raybrain.data.behaviour import (
    behaviour_rdm,
    odd_one_out_accuracy,
    rdm_spearman,
    rescale_spose,
    restrict_triplets,
)
from raybrain.data.clip_synthetic import Teacher, procedural_images, synthetic_clip_data
from raybrain.data.images import (
    THINGS_MEAN,
    THINGS_STD,
    ImageSet,
    load_image_array,
    load_image_folder,
)
from raybrain.data.meg_targets import (
    check_stimuli,
    check_time_axis,
    generalization_curve,
    noise_level_curve,
    rdm_value_range,
    richness_curve,
    target_batch,
    time_axis,
)
from raybrain.errors import SpecError
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.unit

THINGS = SHARED_DATA / "things"


# -- images ---------------------------------------------------------------------------------

def test_image_folder_with_order_file(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)
    for k, name in enumerate(["b.png", "a.png", "c.png"]):
        Image.fromarray(pics[k]).save(tmp_path / name)
    (tmp_path / "order.txt").write_text("# stimulus order\nc.png\nb.png\n\n")
    imgs = load_image_folder(tmp_path, tmp_path / "order.txt", size=16)
    assert imgs.names == ["c.png", "b.png"] and imgs.pixels.shape == (2, 16, 16, 3)
    expected = np.asarray(Image.fromarray(pics[2]).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(imgs.pixels[0], expected)  # stimulus 0 is c.png
    batch = imgs.batch([1, 0])
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    ref = (imgs.pixels[1].transpose(2, 0, 1) / 255.0 - np.array(THINGS_MEAN)[:, None, None]) / (
        np.array(THINGS_STD)[:, None, None])
    np.testing.assert_allclose(batch[0], ref, rtol=1e-5, atol=1e-5)
    for order, pattern in [(["c.png", "zz.png"], "'zz.png' .stimulus 1. not found"),
                           (tmp_path / "none.txt", "not found")]:
        with pytest.raises(SpecError, match=pattern):
            load_image_folder(tmp_path, order, size=16)
    (tmp_path / "dup.txt").write_text("a.png\nb.png\na.png\n")
    with pytest.raises(SpecError, match="twice"):
        load_image_folder(tmp_path, tmp_path / "dup.txt")
    with pytest.raises(SpecError, match="names 2 images but the targets describe 3 stimuli"):
        load_image_folder(tmp_path, tmp_path / "order.txt", n_stimuli=3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(SpecError, match="could not be read"):
        load_image_folder(tmp_path, ["bad.png"], size=16)


def test_image_arrays_uint8_and_float(tmp_path):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    a = load_image_array(tmp_path / "u8.npy", size=10, normalisation="none")
    np.testing.assert_array_equal(a.pixels, u8)
    np.testing.assert_allclose(a.batch([2])[0], u8[2].transpose(2, 0, 1) / 255.0, atol=1e-6)
    fl = rng.uniform(0, 1, (4, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "fl.npz", images=fl)
    b = load_image_array(tmp_path / "fl.npz", size=6, normalisation="none")
    assert b.pixels.shape == (4, 3, 6, 6) and b.size == 6
    # bilinear down by 2 keeps the mean of a smooth image
    np.testing.assert_allclose(b.pixels.mean(axis=(2, 3)), fl.mean(axis=(2, 3)), atol=0.05)
    for arr, pattern in [(rng.uniform(0, 2, (2, 3, 4, 4)), r"in \[0, 1\]"),
                         (np.zeros((2, 4, 4), np.uint8), r"\(N, H, W, 3\)")]:
        np.save(tmp_path / "bad.npy", arr)
        with pytest.raises(SpecError, match=pattern):
            load_image_array(tmp_path / "bad.npy", size=4)
    with pytest.raises(SpecError, match="holds 4 images but the targets describe 5"):
        load_image_array(tmp_path / "u8.npy", n_stimuli=5)
    with pytest.raises(SpecError, match="normalisation"):
        ImageSet(u8, [], "imagenet")


# -- target RDM stacks ----------------------------------------------------------------------

def _stack(rng, p, t, n):
    return np.stack([np.stack([squareform(rng.uniform(0, 1, n * (n - 1) // 2))
                               for _ in range(t)]) for _ in range(p)]).astype(np.float32)


def test_time_axis_and_checks():
    times = time_axis(-100, 1300, 5)
    assert len(times) == 281 and times[0] == -0.1 and times[20] == 0.0
    rdms = np.zeros((2, 221, 4, 4))
    with pytest.raises(SpecError, match=r"have 221 time points but the spec's time axis "
                                        r"\(-100..1300 ms, 281 samples\)") as exc:
        check_time_axis(rdms, times)
    assert "\n" not in str(exc.value)
    check_time_axis(rdms, time_axis(-100, 1000, 5))
    with pytest.raises(SpecError, match="whole number"):
        time_axis(0, 10, 3)
    with pytest.raises(SpecError, match="describe 4 stimuli but 5 images"):
        check_stimuli(5, rdms)
    with pytest.raises(SpecError, match="image 1 is 'b.jpg' but RDM stimulus 1 is 'c.jpg'"):
        check_stimuli(2, np.zeros((2, 2)), image_names=["a.jpg", "b.jpg"],
                      stimulus_names=["a.jpg", "c.jpg"])


def test_target_batch_matches_direct_indexing_and_reads_a_memmap(tmp_path):
    rng = np.random.default_rng(2)
    rdms = _stack(rng, 3, 5, 9)
    np.save(tmp_path / "r.npy", rdms)
    mm = np.load(tmp_path / "r.npy", mmap_mode="r")
    idx = np.array([7, 2, 5, 0])
    expected = rdms[[0, 2]][:, :, idx][:, :, :, idx].mean(0)[[1, 3]]
    got = target_batch(mm, idx, participants=[0, 2], time_index=[1, 3])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(target_batch(rdms[0], idx), rdms[0][:, idx][:, :, idx], rtol=1e-6)
    with pytest.raises(SpecError, match="index"):
        target_batch(rdms, [3])
    assert rdm_value_range(mm, budget_bytes=1000) == (float(rdms.min()), float(rdms.max()))


def test_curves_against_direct_computation(tmp_path):
    rng = np.random.default_rng(3)
    rdms = _stack(rng, 2, 6, 8)
    times = np.array([-0.02, 0.0, 0.02, 0.04, 0.06, 0.08])
    i, j = np.triu_indices(8, k=1)
    mean = rdms[:, :, i, j].mean(axis=2).mean(axis=0)
    alpha = (mean - mean.min()) / (mean.max() - mean.min())
    alpha[:2] = 0.0  # at and before onset
    prof = []
    for p in range(2):
        g = np.corrcoef(rdms[p][:, i, j]).mean(axis=1)
        prof.append((g - g.min()) / (g.max() - g.min()))
    beta = np.mean(prof, axis=0)
    beta[:2] = 0.0
    np.save(tmp_path / "r.npy", rdms)
    mm = np.load(tmp_path / "r.npy", mmap_mode="r")
    for src, budget in [(rdms, 64 * 2**20), (mm, 200)]:  # one block, and many tiny blocks
        np.testing.assert_allclose(richness_curve(src, times, budget_bytes=budget), alpha,
                                   atol=1e-6)
        np.testing.assert_allclose(generalization_curve(src, times, budget_bytes=budget), beta,
                                   atol=1e-6)
    sub = [0, 3, 4, 6, 7]
    si, sj = np.triu_indices(5, k=1)
    m_sub = rdms[:, :, sub][:, :, :, sub][:, :, si, sj].mean(axis=2).mean(axis=0)
    np.testing.assert_allclose(richness_curve(rdms, times, stimuli=sub)[2:],
                               ((m_sub - m_sub.min()) / np.ptp(m_sub))[2:], atol=1e-6)
    nl = noise_level_curve(beta, noise_scale=0.5, sigma=1.5)
    sm = gaussian_filter1d(1 - beta, 1.5)
    np.testing.assert_allclose(nl, (sm - sm.min()) / (sm.max() - sm.min()) * 0.5)
    flat = np.ones((4, 5, 5)) - np.eye(5)
    np.testing.assert_allclose(richness_curve(flat, [0.1, 0.2, 0.3, 0.4]), 1.0)  # no range
    np.testing.assert_allclose(generalization_curve(flat, [0.1, 0.2, 0.3, 0.4]), 1.0)


# -- behaviour measures ---------------------------------------------------------------------

def test_behaviour_measures_against_direct_computations():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (10, 6))
    trip = np.array([rng.choice(10, 3, replace=False) for _ in range(50)])
    odd = rng.integers(0, 3, 50)
    naive = []
    for (a, b, c), o in zip(trip, odd):
        sims = [x[b] @ x[c], x[a] @ x[c], x[a] @ x[b]]
        naive.append(int(np.argmax(sims)) == o)
    assert odd_one_out_accuracy(x, trip, odd) == pytest.approx(np.mean(naive))
    np.testing.assert_allclose(behaviour_rdm(x), squareform(pdist(x, "correlation")),
                               atol=1e-12)
    flat = x.copy()
    flat[3] = 0.5  # a constant row: dissimilarity 1 to every other row
    np.testing.assert_allclose(np.delete(behaviour_rdm(flat)[3], 3), 1.0)
    target = squareform(pdist(rng.normal(size=(10, 3))))
    i, j = np.triu_indices(10, k=1)
    assert rdm_spearman(x, target) == pytest.approx(
        spearmanr((1 - np.corrcoef(x))[i, j], target[i, j]).statistic)
    np.testing.assert_allclose(rescale_spose([[-1.0, 1.0, 3.0]], -1.0, 3.0), [[0, 50, 100]])
    held = np.array([7, 2, 5, 9, 0])
    sub, sub_odd = restrict_triplets(trip, odd, held)
    inside = [k for k, tr in enumerate(trip) if set(tr) <= set(held)]
    np.testing.assert_array_equal(held[sub], trip[inside])  # positions map back to items
    np.testing.assert_array_equal(sub_odd, odd[inside])
    assert odd_one_out_accuracy(x[held], sub, sub_odd) == pytest.approx(
        np.mean([naive[k] for k in inside]))
    with pytest.raises(SpecError, match="lo < hi"):
        rescale_spose(x, 1.0, 1.0)
    with pytest.raises(SpecError, match="one position"):
        odd_one_out_accuracy(x, trip, odd + 1)


# -- synthetic teacher data -----------------------------------------------------------------

def test_synthetic_data_shapes_determinism_and_teacher():
    d = synthetic_clip_data(30, n_dims=12, n_participants=2, n_triplets=40, seed=5,
                            times_ms=(-100, 300, 100))
    assert d.images.shape == (30, 32, 32, 3) and d.images.dtype == np.uint8
    assert d.embeddings.shape == (30, 12) and (d.embeddings >= 0).all()
    assert d.rdms.shape == (2, 5, 30, 30) and len(d.labels) == 12 == len(set(d.labels))
    np.testing.assert_allclose(d.times, [-0.1, 0.0, 0.1, 0.2, 0.3])
    assert d.triplets.shape == (40, 3) and set(np.unique(d.odd)) <= {0, 1, 2}
    again = synthetic_clip_data(30, n_dims=12, n_participants=2, n_triplets=40, seed=5,
                                times_ms=(-100, 300, 100))
    np.testing.assert_array_equal(again.rdms, d.rdms)
    np.testing.assert_array_equal(again.odd, d.odd)
    # the targets are the hidden teacher's outputs on these very images (one image at a time)
    _, emb = Teacher(12, 5, 32).features(d.images)
    np.testing.assert_allclose(d.embeddings, emb)
    _, one = Teacher(12, 5, 32).features(d.images[3:4])
    np.testing.assert_allclose(one[0], emb[3])
    null = synthetic_clip_data(30, n_dims=12, n_triplets=0, seed=5, informative=False,
                               times_ms=(-100, 300, 100))
    np.testing.assert_array_equal(null.images, d.images)  # same images, unrelated targets
    assert not np.allclose(null.embeddings, d.embeddings)
    argmax = synthetic_clip_data(30, n_dims=12, n_triplets=60, seed=5, choice="argmax",
                                 times_ms=(-100, 300, 100))
    assert odd_one_out_accuracy(argmax.embeddings, argmax.triplets, argmax.odd) == 1.0


def _cv_ridge_r2(x, y, alpha=10.0, k=5):
    """Pooled R^2 of a k-fold cross-validated ridge regression (closed form)."""
    n = len(x)
    res = tot = 0.0
    for f in np.array_split(np.arange(n), k):
        tr = np.setdiff1d(np.arange(n), f)
        mx, my = x[tr].mean(0), y[tr].mean(0)
        a, b = x[tr] - mx, y[tr] - my
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ b)
        res += ((y[f] - (x[f] - mx) @ w - my) ** 2).sum()
        tot += ((y[f] - y[f].mean(0)) ** 2).sum()
    return 1.0 - res / tot


def test_informative_targets_are_predictable_from_pixels_and_null_ones_are_not():
    """Known answer: a cross-validated ridge from 8 x 8 pixels predicts informative targets
    (R^2 > 0.1) and not null ones (R^2 < 0)."""
    scores = {}
    for informative in (True, False):
        d = synthetic_clip_data(200, n_triplets=0, informative=informative, seed=1,
                                times_ms=(0, 100, 100))
        x = d.images.reshape(200, 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(200, -1) / 255.0
        scores[informative] = _cv_ridge_r2(x, d.embeddings)
    assert scores[True] > 0.1 and scores[False] < 0.0, scores


def test_synthetic_rdms_time_course_and_individual_differences():
    from raybrain.align.temporal import temporal_rsa

    kw = dict(n_triplets=0, seed=2, times_ms=(-100, 400, 50), rdm_noise=0.5)
    d = synthetic_clip_data(40, n_participants=3, distortion=1.0, **kw)
    pre, post = d.times <= 0, d.times >= 0.25
    # pre-onset RDMs are noise: participants agree only after onset
    between = temporal_rsa(d.rdms[0], d.rdms[1])
    assert np.abs(between[pre]).max() < 0.15 and between[post].min() > 0.3
    # the late RDMs carry the behavioural embedding's structure
    late = d.rdms[:, post].mean(axis=(0, 1))
    assert rdm_spearman(d.embeddings, late) > 0.3
    # participant-specific distortions: participants differ more with distortion
    same = synthetic_clip_data(40, n_participants=3, distortion=0.0, latency_jitter_ms=0.0, **kw)
    agree = np.nanmean(temporal_rsa(same.rdms[0], same.rdms[1])[post])
    assert np.nanmean(between[post]) < agree - 0.05


def test_procedural_images_vary_and_bad_inputs_are_errors():
    im = procedural_images(20, 16, np.random.default_rng(0))
    assert im.shape == (20, 16, 16, 3) and im.std(axis=0).mean() > 20
    for kw, pattern in [({"n_images": 2}, "n_images"), ({"choice": "soft"}, "choice"),
                        ({"n_dims": 100}, "n_dims"), ({"distortion": -1}, ">= 0")]:
        with pytest.raises(SpecError, match=pattern):
            synthetic_clip_data(**{"n_images": 10, **kw})


# -- real THINGS targets --------------------------------------------------------------------

@pytest.mark.skipif(not THINGS.exists(), reason="../shared/data/things is absent")
def test_things_targets_reproduce_the_authors_rescaled_rows_and_human_triplets():
    from raybrain.data.things import load_things_targets

    t = load_things_targets(THINGS)
    assert t.spose.shape == (1854, 66) and len(t.labels) == 66 and len(t.unique_ids) == 1854
    assert t.lo == pytest.approx(-0.00052, abs=1e-5) and t.hi == pytest.approx(2.7415, abs=1e-4)
    # the CLIP-HBA authors' rescaled CSV of the 48 test objects: same values from our rescaling
    rows = [ln.split(",") for ln in (THINGS / "spose_embedding66d_rescaled_48val_reordered.csv")
            .read_text().splitlines()[1:]]
    np.testing.assert_array_equal([int(r[0]) for r in rows], t.rdm48_index)
    authors = np.array([[float(v) for v in r[2:]] for r in rows])
    np.testing.assert_allclose(t.rescaled(t.rdm48_index), authors, rtol=1e-9, atol=1e-9)
    assert t.spose_raw.shape == (1854, 66) and t.spose.min() >= 0 > t.spose_raw.min()
    assert [r[1] for r in rows] == t.rdm48_images
    assert t.triplets.shape == (20000, 3) and set(np.unique(t.odd)) == {0, 1, 2}
    acc = odd_one_out_accuracy(t.spose, t.triplets, t.odd)  # README: SPoSE predicts ~64%
    assert 0.6 < acc < 0.68
    assert rdm_spearman(t.spose[t.rdm48_index], t.rdm48) > 0.5
