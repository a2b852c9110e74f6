"""The CLIP-HBA tasks (clip-hba-behavior, clip-hba-meg) on the tiny registered ViT.

In-process (unit): each route through the task API (adapters only trained and
checkpointed, the none arm equals the untouched backbone, early stopping restores the best
validation state, the MEG stages and simplex), the control targets and their properties,
and bad input through ``raybrain validate`` (exit 2, one line, nothing written). Through a
real Ray and MLflow (integration): one sweep per route, end to end.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import yaml

import raybrain.tasks as tasks
from tests.conftest import SHARED_DATA, sweep_runs

TINY = "raybrain-tiny-vit"


@pytest.fixture(scope="module")
def behaviour():
    task = tasks.get("clip-hba-behavior")
    data = task.load_data(task.parse_data(task.smoke["data"]), 0)
    return task, data, {**task.defaults(), **task.smoke["params"]}


@pytest.fixture(scope="module")
def meg():
    task = tasks.get("clip-hba-meg")
    data = task.load_data(task.parse_data(task.smoke["data"]), 0)
    return task, data, {**task.defaults(), **task.smoke["params"]}


def _adapters(run):
    from raybrain.models.dora import adapter_parameters

    return adapter_parameters(run._module())


# --------------------------------------------------------------------------- behaviour
@pytest.mark.unit
def test_behaviour_trains_and_checkpoints_the_adapters_only(behaviour):
    task, data, p = behaviour
    run = task.build(data, p, "real", seed=0)
    ad = _adapters(run)
    opt_params = {id(q) for g in run.optimizer.param_groups for q in g["params"]}
    assert isinstance(run.optimizer, torch.optim.AdamW)
    assert opt_params == {id(q) for q in ad.values()}
    assert set(run.trainable_state()) == set(ad)
    frozen = {n: q.detach().clone() for n, q in run.model.named_parameters()
              if not q.requires_grad}
    before = {n: q.detach().clone() for n, q in ad.items()}
    train = run.train_epoch()
    assert np.isfinite(train["loss"])
    after = dict(run.model.named_parameters())
    assert max(float((after[n] - v).abs().max()) for n, v in frozen.items()) == 0.0
    moved = [n for n, q in ad.items() if not torch.equal(q.detach(), before[n])]
    assert any("dora_B" in n for n in moved) and any("magnitude" in n for n in moved)
    # the checkpoint holds the adapters: its size is the adapters', not the backbone's
    state = run.state_dict()
    assert sum(v.numel() for v in state["model"].values()) == sum(q.numel() for q in ad.values())
    assert sum(v.numel() for v in state["model"].values()) < 0.01 * sum(
        q.numel() for q in run.model.parameters())
    metrics = run.evaluate()
    for k in task.metrics:
        if k != "loss":
            assert np.isfinite(metrics[k]), k
    assert 0.0 <= metrics["test_triplet_accuracy"] <= 1.0


@pytest.mark.unit
def test_behaviour_none_arm_is_the_untouched_backbone(behaviour):
    """The none arm trains nothing and scores exactly what the backbone built from the same
    seed scores (computed here directly, without the task)."""
    from raybrain.data.behaviour import rdm_spearman
    from raybrain.data.images import ImageSet
    from raybrain.models.clip import CLIPHBABehavior, build_clip, tokenize_labels

    task, data, p = behaviour
    run = task.build(data, {k: v for k, v in p.items()
                            if not task.params[k].brain}, None, seed=3)
    assert run.train_epoch() == {}
    first = run.evaluate()
    assert run.train_epoch() == {} and run.evaluate() == first and not run.stopped
    torch.manual_seed(3)
    model = CLIPHBABehavior(build_clip(TINY), tokenize_labels(TINY, data.labels)).eval()
    x = torch.from_numpy(ImageSet(data.images.pixels, [], "things").batch(data.test))
    with torch.no_grad():
        pred = model(x).numpy()
    assert first["test_rdm_spearman"] == pytest.approx(rdm_spearman(pred, data.test_rdm),
                                                       abs=1e-6)
    assert first["test_mse"] == pytest.approx(float(np.mean((pred - data.targets[data.test]) ** 2)),
                                              rel=1e-5)


@pytest.mark.unit
def test_early_stopping_restores_the_best_validation_state(behaviour):
    task, data, p = behaviour
    run = task.build(data, {**p, "epochs": 10, "patience": 2}, "real", seed=0)
    val = iter([0.1, 0.5, 0.3, 0.2, 0.9, 0.9])
    snapshots = {}

    def scripted():
        b = float(sum(v.detach().abs().sum() for k, v in _adapters(run).items() if "dora_B" in k))
        snapshots.setdefault(run.epoch, b)
        return {"val_rdm_spearman": next(val), "test_rdm_spearman": b}

    run._evaluate = scripted
    seen = []
    while not run.stopped:
        run.train_epoch()
        seen.append(run.evaluate())
    # best at epoch 2; epochs 3 and 4 do not improve (patience 2): stop at 4 on epoch 2's state
    assert run.epoch == 4 and run.best_epoch == 2 and len(seen) == 4
    assert seen[-1]["test_rdm_spearman"] == pytest.approx(snapshots[2], rel=1e-6)
    assert seen[-1]["best_epoch"] == 2.0
    for k, v in run.trainable_state().items():
        assert torch.equal(v, run.best_state[k]), k
    # the early-stopping state survives a checkpoint
    buf = io.BytesIO()
    torch.save(run.state_dict(), buf)
    buf.seek(0)
    again = task.build(data, {**p, "epochs": 10, "patience": 2}, "real", seed=0)
    again.load_state_dict(torch.load(buf, weights_only=False))
    assert again.stopped and again.best_epoch == 2 and again.best_value == 0.5


# --------------------------------------------------------------------------- MEG
@pytest.mark.unit
def test_meg_stages_simplex_adapter_checkpoint_and_metrics(meg):
    task, data, p = meg
    run = task.build(data, {**p, "epochs": 3, "patience": 5}, "real", seed=0)
    model = run._module()
    ad = _adapters(run)
    groups = run.optimizer.param_groups
    assert isinstance(run.optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in groups] == [p["lr"], p["adapter_lr"]]
    assert {id(q) for q in groups[0]["params"]} == {id(model.reweighting)}
    assert {id(q) for q in groups[1]["params"]} == {id(q) for q in ad.values()}
    assert set(run.trainable_state()) == {"reweighting", *ad}
    w0 = model.reweighting.detach().clone()
    a0 = {n: q.detach().clone() for n, q in ad.items()}
    frozen = {n: q.detach().clone() for n, q in model.named_parameters()
              if n != "reweighting" and n not in ad}
    run.train_epoch()  # stage 1: the reweighting matrix only
    assert not torch.equal(model.reweighting.detach(), w0)
    assert all(torch.equal(q.detach(), a0[n]) for n, q in ad.items())
    w = model.reweighting.detach()
    assert bool((w >= 0).all()) and torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)
    run.evaluate()
    run.train_epoch()  # stage 2: the vision adapters join (magnitudes frozen by default)
    changed = [n for n, q in ad.items() if not torch.equal(q.detach(), a0[n])]
    assert any("dora_B" in n for n in changed)
    assert all(n.startswith("clip.visual.") and "magnitude" not in n for n in changed)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n].detach(), v) for n, v in frozen.items() if n in after)
    m = run.evaluate()
    times = [f"rsa_t{1000 * t:g}" for t in data.times]
    assert [k for k in m if k.startswith("rsa_t")] == times
    assert m["test_rsa_area"] == pytest.approx(np.mean([m[k] for k in times]))
    assert m["align_rsa_peak"] == pytest.approx(max(m[k] for k in times))
    assert "test_own_minus_other_r" in m  # a personal model among 2 participants
    arrays = run.artifacts()
    n_test = len(data.test)
    assert set(arrays) == {"model_rdm_0", "model_rdm_1", "saliency_0", "saliency_1",
                           "saliency_image"}
    assert arrays["model_rdm_0"].shape == (n_test, n_test)
    assert arrays["saliency_0"].shape == (32, 32) and arrays["saliency_image"].shape == (32, 32, 3)


@pytest.mark.unit
def test_meg_none_arm_predicts_one_static_rdm(meg):
    """The untouched backbone: reweighting on the last layer at every time point, so every
    time point whose windowed visual scaler is > 0 has the same RDM (Pearson RDMs ignore a
    positive scale), and nothing trains."""
    task, data, p = meg
    run = task.build(data, {k: v for k, v in p.items() if not task.params[k].brain}, None, 0)
    assert run.train_epoch() == {}
    first = run.evaluate()
    assert run.evaluate() == first
    rdms = run._last_test_rdms
    model = run._module()
    from raybrain.models.clip_meg import window_matrix

    alpha = (window_matrix(model.n_times, model.time_index, model.half_width)
             @ model.alpha.cpu()).numpy()
    live = np.flatnonzero(alpha > 0)
    assert len(live) >= 2
    for t in live[1:]:
        np.testing.assert_allclose(rdms[t], rdms[live[0]], atol=1e-5)
    for t in np.flatnonzero(alpha == 0):
        assert first[f"rsa_t{1000 * data.times[t]:g}"] == 0.0  # constant prediction scores 0


@pytest.mark.unit
def test_saliency_maps_are_divided_by_the_masks_coverage(meg, monkeypatch):
    """Scores that do not depend on the image give a raw RISE map equal to the masks'
    coverage; the kept map is then flat (the score itself)."""
    import raybrain.models.saliency as saliency

    task, data, p = meg
    run = task.build(data, p, "real", seed=0)
    run.evaluate()
    n, grid = data.data.saliency_masks, data.data.saliency_grid
    coverage = saliency.rise_masks(n, 32, grid=grid, seed=0).mean(0) / 0.5
    assert coverage.std() > 0.05  # the raw map would be far from flat
    monkeypatch.setattr(saliency, "meg_saliency",
                        lambda model, image, ti, **kw: np.stack([0.7 * coverage] * len(ti)))
    arrays = run.artifacts()
    for k in range(len(data.data.saliency_times_ms)):
        np.testing.assert_allclose(arrays[f"saliency_{k}"], 0.7, rtol=1e-5)


@pytest.mark.unit
def test_a_checkpoint_backbone_is_shared_by_runs_and_the_head_scale_is_per_run(tmp_path):
    """Runs built from one weights file share its frozen tensors (a process holds the
    backbone once); each has its own adapters and, with data.logit_scale, its own scale."""
    from raybrain.data.images import ImageSet
    from raybrain.models.clip import CLIPHBABehavior, build_clip, tokenize_labels

    torch.manual_seed(5)
    ref = build_clip(TINY)
    torch.save(ref.state_dict(), tmp_path / "tiny.pt")
    task = tasks.get("clip-hba-behavior")
    raw = {**task.smoke["data"], "pretrained": str(tmp_path / "tiny.pt"), "logit_scale": 100.0}
    data = task.load_data(task.parse_data(raw), 0)
    p = {**task.defaults(), **task.smoke["params"]}
    a = task.build(data, p, "real", seed=0)
    b = task.build(data, p, "shuffled", seed=1)
    wa = a.model.clip.visual.conv1.weight
    wb = b.model.clip.visual.conv1.weight
    assert wa.data_ptr() == wb.data_ptr() and not wa.requires_grad
    ad_a, ad_b = _adapters(a), _adapters(b)
    assert all(ad_a[k].data_ptr() != ad_b[k].data_ptr() for k in ad_a)
    assert float(a.model.clip.logit_scale.exp()) == pytest.approx(100.0)
    # at initialisation the run's head is the checkpoint's model with the scale fixed
    model = CLIPHBABehavior(ref, tokenize_labels(TINY, data.labels)).eval()
    x = torch.from_numpy(ImageSet(data.images.pixels, [], "things").batch(data.test))
    with torch.no_grad():
        want = model(x) * 100.0 / float(ref.logit_scale.exp())
        got = a._module().eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- controls
@pytest.mark.unit
def test_stimulus_controls_keep_statistics_and_drop_correspondence():
    from raybrain.data.clip_synthetic import synthetic_clip_data
    from raybrain.data.stimulus_controls import (
        centred_orthogonal,
        mix_embedding,
        permute_rdms,
        rdm_surrogate,
        stimulus_permutation,
    )

    rng = np.random.default_rng(0)
    o = centred_orthogonal(30, rng)
    np.testing.assert_allclose(o @ o.T, np.eye(30), atol=1e-10)
    np.testing.assert_allclose(o @ np.ones(30), np.ones(30), atol=1e-10)
    perm = stimulus_permutation(30, rng)
    assert sorted(perm) == list(range(30)) and not (perm == np.arange(30)).any()
    d = rng.uniform(size=(2, 5, 5))
    np.testing.assert_array_equal(permute_rdms(d, [2, 0, 1, 4, 3]),
                                  d[:, [2, 0, 1, 4, 3]][:, :, [2, 0, 1, 4, 3]])

    x = rng.gamma(0.5, 1.0, (60, 8))
    y = mix_embedding(x, rng)
    np.testing.assert_allclose(y.mean(0), x.mean(0), atol=1e-10)
    np.testing.assert_allclose(np.cov(y.T), np.cov(x.T), atol=1e-10)
    own = np.mean([np.corrcoef(x[i], y[i])[0, 1] for i in range(60)])
    assert abs(own) < 0.25  # rows no longer carry their own stimulus' profile

    syn = synthetic_clip_data(40, n_dims=8, n_triplets=0, seed=0, times_ms=(-100, 400, 50),
                              n_participants=2)
    real = syn.rdms.astype(np.float64)
    raw = rdm_surrogate(real, np.random.default_rng(1), match_values=False).astype(np.float64)
    n = 40
    j = np.eye(n) - 1.0 / n

    def gram(m):
        return -0.5 * j @ m @ j

    iu = np.triu_indices(n, 1)
    for p in range(2):
        gr = [gram(real[p, t]) for t in range(real.shape[1])]
        gs = [gram(raw[p, t]) for t in range(real.shape[1])]
        for t in range(real.shape[1]):
            np.testing.assert_allclose(np.linalg.eigvalsh(gs[t]), np.linalg.eigvalsh(gr[t]),
                                       atol=1e-4)
            assert raw[p, t][iu].mean() == pytest.approx(real[p, t][iu].mean(), rel=1e-5)
        for t in range(0, real.shape[1], 3):
            for s in range(real.shape[1]):
                assert np.sum(gs[t] * gs[s]) == pytest.approx(np.sum(gr[t] * gr[s]), rel=1e-4)
    matched = rdm_surrogate(real, np.random.default_rng(1))
    late = [t for t in range(real.shape[1]) if syn.times[t] > 0.15]
    for t in late:
        np.testing.assert_allclose(np.sort(matched[0, t][iu]), np.sort(real[0, t][iu]),
                                   atol=1e-6)
        assert abs(np.corrcoef(matched[0, t][iu], real[0, t][iu])[0, 1]) < 0.2
        np.testing.assert_allclose(matched[0, t], matched[0, t].T)
    # the same stimulus subset through index= equals mixing the sub-stack
    sub = rdm_surrogate(real, np.random.default_rng(2), index=np.arange(10, 30))
    direct = rdm_surrogate(real[:, :, 10:30, 10:30], np.random.default_rng(2))
    np.testing.assert_allclose(sub, direct, atol=1e-6)


@pytest.mark.unit
def test_arm_views_change_only_training_and_validation_stimuli(behaviour, meg):
    task, data, _ = behaviour
    pool = np.concatenate([data.train, data.val])
    real = data.view("real")
    shuffled = data.view("shuffled")
    noise = data.view("noise")
    np.testing.assert_array_equal(shuffled[data.test], real[data.test])
    np.testing.assert_array_equal(noise[data.test], real[data.test])
    from raybrain.data.stimulus_controls import stimulus_permutation

    perm = stimulus_permutation(len(pool), np.random.default_rng([data.data_seed, 11]))
    np.testing.assert_array_equal(shuffled[pool], real[pool[perm]])  # rows of the pool, moved
    assert sorted(perm) == list(range(len(pool))) and not (perm == np.arange(len(pool))).any()
    np.testing.assert_allclose(noise[pool].mean(0), real[pool].mean(0), atol=1e-4)
    np.testing.assert_allclose(np.cov(noise[pool].T), np.cov(real[pool].T), rtol=1e-3,
                               atol=1e-3)

    task, data, _ = meg
    pool = np.concatenate([data.train, data.val])
    sv, nv, rv = data.view("shuffled"), data.view("noise"), data.view("real")
    idx = data.train[:6]
    perm_idx = sv.pos[idx]
    np.testing.assert_array_equal(data.targets(sv, idx, 0), data.targets(rv, perm_idx, 0))
    assert set(sv.pos[pool]) == set(pool) and (sv.pos[data.test] == data.test).all()
    assert (nv.pos[data.test] == -1).all()
    with pytest.raises(ValueError, match="test stimuli"):
        data.targets(nv, data.test[:3], None)
    iu = np.triu_indices(len(pool), 1)
    for t in range(data.rdms.shape[1]):
        real_vals = np.sort(data.rdms[0, t][np.ix_(pool, pool)][iu])
        np.testing.assert_allclose(np.sort(nv.stack[0, t][iu]), real_vals, atol=1e-6)


@pytest.mark.unit
def test_meg_route_on_an_rdm_file(tmp_path):
    """A (participants, T, N, N) file: checked, its scaling range found once (prepare),
    personal targets read by row, images matched by name through stimuli_file."""
    from raybrain.data.clip_synthetic import procedural_images
    from raybrain.errors import SpecError

    stack = _rdm_stack(9, 24, p=2)
    stack[1] *= 2.0  # the second participant's dissimilarities are twice the first's
    np.save(tmp_path / "rdms.npy", stack)
    np.save(tmp_path / "images.npy", procedural_images(24, 32, np.random.default_rng(0)))
    (tmp_path / "labels.txt").write_text("\n".join(f"label {k}" for k in range(6)))
    task = tasks.get("clip-hba-meg")
    raw = {"source": "rdm_file", "rdm_file": str(tmp_path / "rdms.npy"), "model": TINY,
           "times_ms": [-100, 300, 50], "participants": ["ann", "bob"],
           "images_file": str(tmp_path / "images.npy"),
           "labels_file": str(tmp_path / "labels.txt"), "saliency_times_ms": [100.0],
           "val_fraction": 0.25, "test_fraction": 0.25}
    data = task.parse_data(raw)
    task.check_data(data, {"participant": ["bob"], "rank": [2]})
    prepared, lines, _ = task.prepare(data)
    assert lines[0] == "brain data: RDMs (2, 9, 24, 24) (in memory)"
    assert prepared["scale_range"] == [0.0, float(stack.max())]
    loaded = task.load_data(task.parse_data(prepared), 0)
    assert loaded.participants == ["ann", "bob"] and loaded.rdms.shape == (2, 9, 24, 24)
    idx = loaded.train[:4]
    want = stack[1][:, idx][:, :, idx] / stack.max()
    np.testing.assert_allclose(loaded.targets(loaded.view("real"), idx, 1), want, rtol=1e-6)
    run = task.build(loaded, {**task.defaults(), "rank": 2, "epochs": 1, "batch_size": 6,
                              "stage1_epochs": 0, "participant": "bob"}, "real", seed=0)
    m = {**run.train_epoch(), **run.evaluate()}
    assert np.isfinite(m["loss"]) and "test_own_minus_other_r" in m
    # stimulus names that do not follow the images' order file are refused
    names = [f"img_{k}.png" for k in range(24)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    (tmp_path / "order.txt").write_text("\n".join(names))
    (tmp_path / "stimuli.txt").write_text("\n".join([names[1], names[0], *names[2:]]))
    bad = {**raw, "images_file": None, "images_dir": str(folder),
           "order_file": str(tmp_path / "order.txt"), "stimuli_file": str(tmp_path / "stimuli.txt")}
    with pytest.raises(SpecError, match="image 0 is 'img_0.png' but RDM stimulus 0 is 'img_1.png'"):
        task.check_data(task.parse_data(bad), {})


# --------------------------------------------------------------------------- bad input
def _validate(spec: dict, tmp_path, capsys) -> tuple[int, str]:
    """``raybrain validate`` on ``spec`` (written beside ``tmp_path``, not in it)."""
    from raybrain.cli import main

    path = tmp_path.parent / f"{tmp_path.name}-spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    rc = main(["validate", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
               "--storage-path", str(tmp_path / "results")])
    err = capsys.readouterr().err
    return rc, err


def _spec(task: str, data: dict, params: dict | None = None) -> dict:
    base = copy.deepcopy(tasks.get(task).smoke)
    return {"name": "bad", "task": task, "data": {**base["data"], **data},
            "params": {**base["params"], **(params or {})},
            "search": {"metric": tasks.get(task).primary_metric},
            "arms": {"include": ["brain", "shuffled", "noise", "none"]}, "seeds": 5}


def _rdm_stack(t: int, n: int, p: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(t, n, 4))
    d = ((x[:, :, None] - x[:, None]) ** 2).sum(-1).astype(np.float32)
    return d if p is None else np.stack([d] * p)


def _bad_cases(tmp_path):
    from raybrain.models.clip import build_clip

    wrong = build_clip(TINY).state_dict()
    wrong["visual.proj"] = torch.zeros(64, 32)
    torch.save(wrong, tmp_path / "wrong.pt")
    np.save(tmp_path / "rdm.npy", _rdm_stack(9, 24))
    np.save(tmp_path / "images23.npy", np.zeros((23, 32, 32, 3), np.uint8))
    np.save(tmp_path / "images24.npy", np.zeros((24, 32, 32, 3), np.uint8))
    (tmp_path / "labels.txt").write_text("\n".join(f"label {k}" for k in range(8)))
    files = {"source": "rdm_file", "rdm_file": str(tmp_path / "rdm.npy"),
             "labels_file": str(tmp_path / "labels.txt")}
    return {
        "unknown model": (_spec("clip-hba-behavior", {"model": "ViT-Q-99"}),
                          "unknown CLIP model 'ViT-Q-99'"),
        "checkpoint does not fit": (
            _spec("clip-hba-behavior", {"pretrained": str(tmp_path / "wrong.pt")}),
            "does not fit model 'raybrain-tiny-vit': size mismatch for visual.proj"),
        "rank above the layer width": (_spec("clip-hba-meg", {}, {"rank": {"grid": [4, 65]}}),
                                       "rank must be <= the layer width of the adapted vision "
                                       "blocks of 'raybrain-tiny-vit' (64), got 65"),
        "images and RDM stimuli": (
            _spec("clip-hba-meg", {**files, "images_file": str(tmp_path / "images23.npy"),
                                   "times_ms": [-100, 300, 50], "n_participants": 1},
                  {"participant": ""}),
            "describe 24 stimuli but 23 images were given"),
        "RDM time axis": (
            _spec("clip-hba-meg", {**files, "images_file": str(tmp_path / "images24.npy"),
                                   "times_ms": [-100, 400, 50], "n_participants": 1},
                  {"participant": ""}),
            "has 9 time points but data.times_ms (-100..400 ms every 50 ms) gives 11"),
        "unknown participant": (_spec("clip-hba-meg", {}, {"participant": "zz"}),
                                "params.participant 'zz' is not one of the data's 2"),
    }


@pytest.mark.unit
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    for what, (spec, message) in _bad_cases(tmp_path).items():
        before = sorted(p.name for p in tmp_path.iterdir())
        rc, err = _validate(spec, tmp_path, capsys)
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (what, err)
        assert message in lines[0], (what, lines[0])
        assert sorted(p.name for p in tmp_path.iterdir()) == before, what


@pytest.mark.unit
@pytest.mark.skipif(not (SHARED_DATA / "things").exists(), reason="needs ../shared/data/things")
def test_label_count_differing_from_the_target_dimension_is_refused(tmp_path, capsys):
    np.save(tmp_path / "things_images.npy", np.zeros((1854, 8, 8, 3), np.uint8))
    labels = (SHARED_DATA / "things" / "labels_66.txt").read_text().splitlines()[:65]
    (tmp_path / "labels65.txt").write_text("\n".join(labels))
    spec = {"name": "bad", "task": "clip-hba-behavior",
            "data": {"source": "things", "things_dir": str(SHARED_DATA / "things"),
                     "model": TINY, "images_file": str(tmp_path / "things_images.npy"),
                     "labels_file": str(tmp_path / "labels65.txt")},
            "params": {"rank": 4}, "search": {"metric": "test_rdm_spearman"},
            "arms": {"include": ["brain", "none"]}, "seeds": 5}
    rc, err = _validate(spec, tmp_path, capsys)
    assert rc == 2 and err.count("error: ") == 1
    assert "has 65 labels but the SPoSE targets have 66 dimensions" in err
    assert not (tmp_path / "m.db").exists()


@pytest.mark.unit
def test_paper_specs_validate_up_to_the_missing_weights(capsys):
    from raybrain.cli import main
    from tests.conftest import ROOT

    for name in ("clip_hba_behavior", "clip_hba_meg"):
        capsys.readouterr()
        rc = main(["validate", str(ROOT / "search_spaces" / f"{name}.yaml")])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert rc == 2 and len(lines) == 1, err
        assert "CLIP checkpoint 'weights/ViT-L-14.pt' not found" in lines[0]


@pytest.mark.unit
def test_shipped_quick_specs_validate_and_paper_specs_hold_the_paper_settings(tmp_path,
                                                                              monkeypatch):
    import warnings

    from raybrain.analysis.figures import load_dashboard
    from raybrain.sweep import load_spec
    from raybrain.sweep.spec import validate_spec
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    for name in ("clip_hba_behavior_quick", "clip_hba_behavior_quick_null", "clip_hba_meg_quick",
                 "clip_hba_meg_quick_null"):
        spec = load_spec(ROOT / "search_spaces" / f"{name}.yaml")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning either (seeds reach p < 0.05)
            validate_spec(spec, name)
        assert len(spec.seed_list) >= 5 and spec.data["model"] == TINY
        assert spec.data["generator"] == ("null" if name.endswith("null") else "informative")
        assert set(spec.arms.include) == {"brain", "shuffled", "noise", "none"}
    beh = load_spec(ROOT / "search_spaces" / "clip_hba_behavior.yaml")
    assert beh.data["model"] == "ViT-L-14" and beh.data["pretrained"]
    assert 32 in beh.params["rank"]["choice"] and (beh.params["n_vision"], beh.params["n_text"]
                                                   ) == ({"choice": [1, 2, 4]}, 1)
    assert (beh.params["batch_size"], beh.params["epochs"], beh.params["patience"]) == (64, 500, 20)
    meg = load_spec(ROOT / "search_spaces" / "clip_hba_meg.yaml")
    assert meg.data["times_ms"] == [-100, 1300, 5] and meg.params["n_vision"] == -1
    assert {"rank", "lr", "adapter_lr", "w2", "w3", "half_width", "noise_scale"} <= set(
        meg.searched())
    for task in ("clip-hba-behavior", "clip-hba-meg"):
        t = tasks.get(task)
        charts = load_dashboard(task, t.primary_metric, align_metrics=list(t.align_metrics))
        assert charts["trajectory"]["metric"] == t.primary_metric
    assert load_dashboard("clip-hba-meg", "test_rsa_area")["rsa_curve"]["prefix"] == "final_rsa_t"


# --------------------------------------------------------------------------- sweeps
def _sweep_spec(task: str, tmp_path) -> dict:
    smoke = copy.deepcopy(tasks.get(task).smoke)
    params = {**smoke["params"], "rank": {"grid": [2]}}
    return {"name": f"e2e-{task}", "task": task, "data": smoke["data"], "params": params,
            "search": {"algorithm": "grid", "metric": tasks.get(task).primary_metric,
                       "primary": "rank"},
            "arms": {"include": ["brain", "shuffled", "noise", "none"]}, "seeds": 2,
            "storage": {"path": str(tmp_path / "results")}}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("task", ["clip-hba-behavior", "clip-hba-meg"])
def test_sweep_end_to_end_through_ray_and_mlflow(task, ray_session, tmp_path, monkeypatch):
    from raybrain.analysis.report import run_arrays
    from raybrain.sweep import parse_spec, run_sweep

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    lines: list[str] = []
    spec = _sweep_spec(task, tmp_path)
    result = run_sweep(parse_spec(spec), tracking_uri=uri, out=lines.append)
    tracker, parent, children = sweep_runs(uri, spec["name"])
    # 1 config x (brain, shuffled, noise) x 2 seeds + none x 2 seeds
    assert len(children) == 8 and all(c.info.status == "FINISHED" for c in children)
    primary = tasks.get(task).primary_metric
    arms = {}
    for c in children:
        arms.setdefault(c.data.tags["raybrain.arm"], []).append(c)
        hist = tracker.client.get_metric_history(c.info.run_id, primary)
        assert [h.step for h in hist] == [1, 2]
    assert sorted(arms) == ["brain", "noise", "none", "shuffled"]
    brain = arms["brain"][0]
    arrays = run_arrays(tracker.client, brain.info.run_id)
    assert 2 in arrays
    if task == "clip-hba-meg":
        assert {"model_rdm_0", "saliency_0", "saliency_image", "heldout_rdms"} <= set(arrays[2])
        assert "final_rsa_t100" in brain.data.metrics
        # participant ids reach tracking as pseudonyms only
        assert brain.data.params["participant"].startswith("participant-")
        assert "s1" not in str(brain.data.tags.get("raybrain.label"))
    else:
        assert arrays[2]["model_rdm"].shape == (6, 6)
    rows = result.table.test_rows()
    assert {r["comparison"] for r in rows} == {"shuffled", "noise"}
    report = tmp_path / "raybrain_report" / spec["name"] / "index.html"
    assert report.is_file()
    figures = {p.name for p in report.parent.glob("*.png")}
    wanted = ("rsa_curve", "saliency", "model_rdms") if task == "clip-hba-meg" else (
        "model_rdm", "triplets_vs_rdm")
    for panel in wanted:
        assert any(panel in f for f in figures), (panel, figures)


@pytest.mark.unit
@pytest.mark.skipif(not (SHARED_DATA / "eeg" / "eeglab_tutorial" / "eeglab_data.set").exists(),
                    reason="needs ../shared/data/eeg/eeglab_tutorial")
def test_meg_route_on_rdms_computed_from_a_real_recording(tmp_path):
    """The EEGLAB tutorial recording's 80 'square' onsets, assigned to 12 conditions in
    turn, give time-resolved RDMs (prepared once, cached) that 12 images are fitted to."""
    from raybrain.data.clip_synthetic import procedural_images

    np.save(tmp_path / "images.npy", procedural_images(12, 32, np.random.default_rng(0)))
    (tmp_path / "labels.txt").write_text("\n".join(f"label {k}" for k in range(6)))
    task = tasks.get("clip-hba-meg")
    raw = {"source": "recording", "model": TINY, "images_file": str(tmp_path / "images.npy"),
           "labels_file": str(tmp_path / "labels.txt"), "cache_dir": str(tmp_path / "cache"),
           "recording": {"path": str(SHARED_DATA / "eeg" / "eeglab_tutorial" / "eeglab_data.set"),
                         "events": ["square"], "labels": [k % 12 for k in range(80)],
                         "tmin": -0.1, "tmax": 0.3},
           "val_fraction": 0.34, "test_fraction": 0.25, "saliency_times_ms": [100.0],
           "saliency_masks": 8}
    data = task.parse_data(raw)
    params = {"rank": 2, "epochs": 2, "stage1_epochs": 1, "batch_size": 6, "lr": 0.05,
              "adapter_lr": 0.01, "half_width": 1}
    task.check_data(data, {k: [v] for k, v in params.items()})
    prepared, lines, files = task.prepare(data)
    assert "12 conditions (correlation RDMs, computed and cached)" in lines[0] and files == []
    assert task.prepare(data)[1][0].endswith("from the cache)")
    loaded = task.load_data(task.parse_data(prepared), 0)
    assert [loaded.lo, loaded.hi] == prepared["scale_range"]  # found once, in the driver
    t = loaded.rdms.shape[1]
    assert loaded.rdms.shape == (1, t, 12, 12) and t == len(loaded.times)
    assert loaded.times[0] == pytest.approx(-0.1, abs=0.01)
    run = task.build(loaded, {**task.defaults(), **params}, "real", seed=0)
    metrics = {**run.train_epoch(), **run.evaluate()}
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["test_rsa_area"])
    assert sum(k.startswith("rsa_t") for k in metrics) == t


@pytest.mark.unit
@pytest.mark.skipif(not (SHARED_DATA / "things").exists(), reason="needs ../shared/data/things")
def test_things_targets_route_with_stand_in_images(tmp_path):
    """The THINGS source on the real targets (images here are stand-ins: the THINGS images
    are not available): the 48 RDM objects are the test set, the RDM follows them, the
    human trials kept are the held-out ones, and the untouched backbone is scored."""
    from raybrain.data.clip_synthetic import procedural_images
    from raybrain.data.things import load_things_targets

    things = load_things_targets(SHARED_DATA / "things")
    np.save(tmp_path / "images.npy", procedural_images(1854, 8, np.random.default_rng(0)))
    task = tasks.get("clip-hba-behavior")
    data = task.load_data(task.parse_data(
        {"source": "things", "things_dir": str(SHARED_DATA / "things"), "model": TINY,
         "images_file": str(tmp_path / "images.npy")}), 0)
    np.testing.assert_array_equal(data.test, np.sort(things.rdm48_index))
    k = int(np.argmin(things.rdm48_index))  # the RDM row of the first test object
    j = int(np.argsort(things.rdm48_index)[1])
    assert data.test_rdm[0, 1] == things.rdm48[k, j]
    assert len(data.val) == round(0.2 * 1806) and len(data.train) == 1806 - len(data.val)
    assert 100 < len(data.triplets) < 400  # ~1% of the 20,000 human trials
    assert data.targets.shape == (1854, 66) and data.targets.max() == pytest.approx(100.0)
    run = task.build(data, {**task.defaults(), "rank": 4}, None, seed=0)
    m = run.evaluate()
    assert all(np.isfinite(m[k]) for k in ("test_rdm_spearman", "test_triplet_accuracy",
                                           "test_mse", "align_cka"))
