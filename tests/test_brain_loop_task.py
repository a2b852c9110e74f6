"""The ``brain-loop-gw`` task: its declarations at work, its data sources, bad input through
``raybrain validate`` (one line, exit 2, nothing written), and a tiny sweep end to end
through a real Ray and MLflow store.

The task contract itself (declared metrics, same seed same numbers, resume, every arm,
bad params) is checked for this task by ``tests/test_task_contract.py``, unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings

import numpy as np
import pytest
import torch
import yaml

import raybrain.tasks as tasks
from raybrain.align.concept_metrics import category_one_shot_accuracy
from raybrain.errors import SpecError
from raybrain.tasks.brain_loop_gw import BrainLoopGW
from tests.conftest import SHARED_DATA

TASK = "brain-loop-gw"


@pytest.fixture(scope="module")
def task():
    return tasks.get(TASK)


@pytest.fixture(scope="module")
def smoke(task):
    """(params, data) of the task's smoke configuration."""
    torch.set_num_threads(1)
    data = task.load_data(task.parse_data(task.smoke["data"]), 0)
    params = {**task.defaults(), **task.smoke["params"]}
    task.build(data, params, "real", seed=0)  # imports torch-geometric once, here
    return params, data


# ------------------------------------------------------------------ category one-shot metric

def _naive_category_one_shot(emb, concepts, categories, n_episodes, seed):
    """The metric's definition as a plain loop over queries and supports."""
    rng = np.random.default_rng(seed)
    cats = sorted(set(categories))
    cat_of = dict(zip(concepts, categories, strict=True))
    correct = total = 0
    for _ in range(n_episodes):
        supports = []
        for k in cats:
            members = sorted({c for c in cat_of if cat_of[c] == k})
            chosen = members[rng.integers(len(members))]
            items = [i for i, c in enumerate(concepts) if c == chosen]
            supports.append((chosen, items[rng.integers(len(items))], k))
        chosen_concepts = {s[0] for s in supports}
        for i, c in enumerate(concepts):
            if c in chosen_concepts:
                continue
            sims = [float(emb[i] @ emb[s[1]] / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[s[1]])))
                    for s in supports]
            correct += supports[int(np.argmax(sims))][2] == categories[i]
            total += 1
    return correct / total


@pytest.mark.unit
def test_category_one_shot_equals_a_naive_loop_and_known_answers():
    rng = np.random.default_rng(0)
    concepts = [f"c{i // 3}" for i in range(30)]          # 10 concepts x 3 exemplars
    categories = ["living" if int(c[1:]) < 5 else "object" for c in concepts]
    emb = rng.normal(size=(30, 6))
    got = category_one_shot_accuracy(emb, concepts, categories, n_episodes=7, seed=3)
    assert got == pytest.approx(_naive_category_one_shot(emb, concepts, categories, 7, 3))
    # categories on two orthogonal axes: every query is right
    sep = np.array([[1.0, 0.0] if k == "living" else [0.0, 1.0] for k in categories])
    sep += 0.05 * rng.normal(size=sep.shape)
    assert category_one_shot_accuracy(sep, concepts, categories, n_episodes=5) == 1.0
    # chance on a representation that ignores the categories: one direction for all
    same = np.ones((30, 2))
    # every support ties; argmax takes the first category ("living"): its queries are right
    acc = category_one_shot_accuracy(same, concepts, categories, n_episodes=4)
    assert acc == pytest.approx(0.5)  # 12 living and 12 object queries per episode
    mixed = list(categories)
    mixed[0] = "object"  # one exemplar of c0 (a living concept) filed as an object
    with pytest.raises(SpecError, match="concept 'c0' has items in categories"):
        category_one_shot_accuracy(emb, concepts, mixed, n_episodes=2)
    with pytest.raises(SpecError, match=">= 2 categories"):
        category_one_shot_accuracy(emb, concepts, ["living"] * 30)
    with pytest.raises(SpecError, match="no category"):
        category_one_shot_accuracy(emb, concepts, [None] + categories[1:])


# ------------------------------------------------------------------------- declarations

@pytest.mark.unit
def test_declarations(task):
    assert task.brain_weight == "brain_weight" and task.l2_param == "weight_decay"
    assert task.ablations == {"no-gw": {"lambda2": 0.0, "local_weight": 0.0}}
    assert task.align_metrics == {"ot_match_top1": "max", "rsa": "max", "match_top5": "max",
                                  "gw_distance": "min"}
    assert task.primary_metric == "test_oneshot_accuracy" and task.primary_mode == "max"
    brain_knobs = task.brain_params()
    assert {"k1", "k2", "lambda1", "lambda2", "local_weight", "tau", "sinkhorn_reg",
            "sinkhorn_iter", "gnn_conv", "gnn_layers", "gnn_heads", "brain_weight"} <= brain_knobs
    # what baselines train with stays in their key
    assert not {"lr", "epochs", "batch_size", "weight_decay", "self_weight"} & brain_knobs


@pytest.mark.unit
def test_two_optimisers_one_per_step_and_both_step(task, smoke):
    params, data = smoke
    run = task.build(data, params, "real", seed=0)
    assert set(run.optimizers) == {"step1", "step2"}
    before = {k: v.clone() for k, v in run.trainable_state().items()}
    out = run.train_epoch()
    assert {"step1_loss", "step2_loss", "ot", "ce", "gw", "local", "self"} <= set(out)
    for name, opt in run.optimizers.items():
        steps = [s["step"] for s in opt.state_dict()["state"].values()]
        # one step per batch (the smoke data are one batch of 16 training concepts)
        assert steps and all(float(s) == 1.0 for s in steps), name
    moved = {k.split(".")[0] for k, v in run.trainable_state().items()
             if not torch.equal(v, before[k])}
    assert moved == {"adaptor", "brain_encoder", "gnn"}


@pytest.mark.unit
def test_baselines_train_and_checkpoint_the_adaptor_only(task, smoke):
    params, data = smoke
    base = {**params, "brain_weight": 0.0}
    run = task.build(data, base, None, seed=0)
    state = run.trainable_state()
    assert state and {k.split(".")[0] for k in state} == {"adaptor"}
    module = run._module()
    frozen = {k: v.clone() for k, v in module.state_dict().items()
              if not k.startswith("adaptor")}
    adaptor = {k: v.clone() for k, v in state.items()}
    out = run.train_epoch()
    assert set(out) == {"step1_loss", "step2_loss", "self", "loss"}  # no brain term computed
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, run.trainable_state()[k]) for k, v in adaptor.items())
    # baselines with no objective at all are refused, in one line
    with pytest.raises(SpecError, match="self_weight must be > 0"):
        task.build(data, {**base, "self_weight": 0.0}, None, seed=0)
    # a brain-arm checkpoint does not load into a baseline run
    brain = task.build(data, params, "real", seed=0)
    with pytest.raises(ValueError, match="does not fit this run's trainable state"):
        run.load_trainable_state(brain.trainable_state())


@pytest.mark.unit
def test_no_gw_ablation_takes_step_1_only(task, smoke):
    params, data = smoke
    run = task.build(data, {**params, **task.ablations["no-gw"]}, "real", seed=0)
    out = run.train_epoch()
    assert {"ot", "ce"} <= set(out) and not {"gw", "local"} & set(out)
    # step 2 is the own task only: its loss is the exemplar-contrastive term
    m = run._module()
    batch = m.batches(data.concepts, data.train, params["batch_size"],
                      np.random.default_rng(0))[0]
    loss, parts = m.step2_loss(batch)
    assert set(parts) == {"self"} and float(loss.detach()) == pytest.approx(parts["self"], rel=1e-6)
    # K above the batch is refused for brain runs, ignored (capped) for baselines
    with pytest.raises(SpecError, match="K1 must be < the number of concepts per training"):
        task.build(data, {**params, "k1": 40}, "real", seed=0)
    task.build(data, {**params, "k1": 40, "brain_weight": 0.0}, None, seed=0)


@pytest.mark.unit
def test_every_arm_is_evaluated_against_the_real_brain(task, smoke):
    """A shuffled run's GW distance and RSA are those of its model RDM against the *real*
    brain RDM of the test concepts, not against the shuffled brain it trained on."""
    from scipy.stats import spearmanr

    from raybrain.align.gw import gw_distance

    params, data = smoke
    run = task.build(data, params, "shuffled", seed=0)
    run.train_epoch()
    out = run.evaluate()
    rdm = run.artifacts()["model_rdm"].astype(np.float64)
    test = data.test
    real = data.concepts.brain_rdm[np.ix_(test, test)]
    shuffled = data.training_data("shuffled").brain_rdm[np.ix_(test, test)]
    assert not np.allclose(real, shuffled)
    gw_real, _ = gw_distance(rdm, real, solver="best")
    assert out["gw_distance"] == pytest.approx(gw_real, rel=1e-6)
    iu = np.triu_indices(len(test), k=1)
    assert out["rsa"] == pytest.approx(spearmanr(rdm[iu], real[iu])[0], abs=1e-6)
    assert out["rsa"] != pytest.approx(spearmanr(rdm[iu], shuffled[iu])[0], abs=1e-6)


@pytest.mark.unit
def test_model_rdm_artifact_is_the_test_concepts_in_category_order(task, smoke):
    params, data = smoke
    run = task.build(data, params, "real", seed=0)
    run.train_epoch()
    run.evaluate()
    arrays = run.artifacts()
    assert list(arrays) == ["model_rdm"]  # never the brain RDM
    rdm = arrays["model_rdm"]
    n = len(data.test)
    assert rdm.shape == (n, n) and np.allclose(rdm, rdm.T) and np.allclose(np.diag(rdm), 0)
    sup = [str(data.concepts.superordinate[i]) for i in data.test]
    assert sup == sorted(sup)  # blocks of the hierarchy
    # the same RDM by hand: cosine distances of each test concept's mean adaptor output
    d = data.concepts
    with torch.no_grad():
        means = np.stack([run._module().embed_model(torch.as_tensor(
            d.features[d.item_concept == c])).numpy().mean(0) for c in data.test])
    u = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(rdm, np.clip(1 - u @ u.T, 0, 2) * (1 - np.eye(n)), atol=1e-5)


@pytest.mark.unit
def test_alignment_every_k_epochs_and_at_the_last(task):
    data = task.load_data(task.parse_data({**task.smoke["data"], "align_every": 2}), 0)
    params = {**task.defaults(), **task.smoke["params"], "epochs": 3}
    run = task.build(data, params, "real", seed=0)
    seen = []
    for _ in range(3):
        run.train_epoch()
        seen.append("gw_distance" in run.evaluate())
    assert seen == [False, True, True]


# --------------------------------------------------------------------------- data sources

def _files(tmp_path, rdm=False, drop_category=None, brain_names=None, rdm_shape=None,
           images=False):
    """A user data set written to files: 12 concepts x 2 exemplars, 2 categories."""
    rng = np.random.default_rng(0)
    names = [f"obj{i:02d}" for i in range(12)]
    cats = {n: ("animal" if i < 6 else "tool") for i, n in enumerate(names)}
    items = [n for n in names for _ in range(2)]
    (tmp_path / "items.txt").write_text("\n".join(items) + "\n")
    (tmp_path / "brain.txt").write_text("\n".join(brain_names or names) + "\n")
    rows = ["concept,superordinate"] + [f"{n},{'' if n == drop_category else cats[n]}"
                                        for n in names]
    (tmp_path / "cats.csv").write_text("\n".join(rows) + "\n")
    d = {"source": "files", "item_concepts_file": str(tmp_path / "items.txt"),
         "brain_concepts_file": str(tmp_path / "brain.txt"),
         "categories_file": str(tmp_path / "cats.csv"), "split": [0.5, 0.25, 0.25],
         "oneshot_episodes": 3}
    if images:
        np.save(tmp_path / "images.npy",
                rng.integers(0, 256, size=(len(items), 24, 24, 3), dtype=np.uint8))
        d.update(images_file=str(tmp_path / "images.npy"), cache_dir=str(tmp_path / "cache"),
                 backbone={"name": "resnet18", "library": "torchvision", "image_size": 32})
    else:
        np.save(tmp_path / "features.npy", rng.normal(size=(len(items), 10)).astype(np.float32))
        d["features_file"] = str(tmp_path / "features.npy")
    voxels = rng.normal(size=(12, 20)).astype(np.float32)
    if rdm:
        from raybrain.data.rdm_compute import correlation_rdm

        r = correlation_rdm(voxels)
        np.save(tmp_path / "rdm.npy", r if rdm_shape is None else r[:, :rdm_shape[1]])
        d["rdm_file"] = str(tmp_path / "rdm.npy")
    else:
        np.save(tmp_path / "voxels.npy", voxels)
        d["voxels_file"] = str(tmp_path / "voxels.npy")
    return d


_SMALL = {"epochs": 1, "batch_size": 64, "k1": 3, "k2": 3, "embed_dim": 8, "adaptor_hidden": 16,
          "brain_width": 8, "brain_depth": 1, "brain_heads": 2, "brain_tokens": 4,
          "brain_hidden": 16, "gnn_layers": 1, "gnn_heads": 2, "sinkhorn_iter": 10}


@pytest.mark.unit
@pytest.mark.parametrize("rdm", [False, True], ids=["voxels", "rdm"])
def test_user_files_train_and_evaluate(task, tmp_path, rdm):
    spec = _files(tmp_path, rdm=rdm)
    parsed = task.parse_data(spec)
    task.check_data(parsed, {"k1": [3], "k2": [3]})
    prepared, lines, files = task.prepare(parsed)
    assert prepared["features_file"] == str(tmp_path / "features.npy") and files == []
    data = task.load_data(task.parse_data(prepared), 0)
    assert data.concepts.brain_kind == ("rdm" if rdm else "voxels")
    # 6 concepts per category: 2 train, 2 validation, 2 test each
    assert len(data.train) == len(data.val) == len(data.test) == 4
    run = task.build(data, {**task.defaults(), **_SMALL}, "noise", seed=0)
    run.train_epoch()
    out = run.evaluate()
    assert 0 <= out["test_oneshot_accuracy"] <= 1 and np.isfinite(out["gw_distance"])


@pytest.mark.unit
def test_images_through_a_backbone_are_prepared_once_and_cached(task, tmp_path):
    spec = _files(tmp_path, images=True)
    parsed = task.parse_data(spec)
    task.check_data(parsed, {"k1": [3], "k2": [3]})  # counts the images; runs no backbone
    assert not (tmp_path / "cache").exists()
    prepared, lines, _ = task.prepare(parsed)
    assert "24 images x 512 through torchvision resnet18 (computed and cached" in lines[0]
    assert prepared["backbone"] is None and prepared["features_key"] == "features"
    assert prepared["features_file"].startswith(str(tmp_path / "cache"))
    _, again, _ = task.prepare(parsed)
    assert "from the cache" in again[0]
    data = task.load_data(task.parse_data(prepared), 0)
    # the backbone's features of the images read at its input size (random weights drawn
    # under torch seed 0)
    from raybrain.data.images import load_image_array
    from raybrain.models.backbones import backbone_features

    pixels = load_image_array(tmp_path / "images.npy", 32, normalisation="none").pixels
    torch.manual_seed(0)
    want = backbone_features(pixels, "resnet18", library="torchvision", image_size=32)
    np.testing.assert_allclose(data.concepts.features, want, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
@pytest.mark.skipif(not (SHARED_DATA / "things" / "RDM48_triplet.mat").exists(),
                    reason="THINGS data not present")
def test_things48_source_trains_with_the_rdm_encoder(task):
    parsed = task.parse_data({"source": "things48", "things_dir": str(SHARED_DATA / "things"),
                              "oneshot_episodes": 5})
    task.check_data(parsed, {"k1": [3], "k2": [3]})
    data = task.load_data(parsed, 0)
    assert data.concepts.n_concepts == 48 and data.concepts.brain_kind == "rdm"
    run = task.build(data, {**task.defaults(), **_SMALL, "k1": 10, "k2": 10}, "real", seed=0)
    run.train_epoch()
    out = run.evaluate()
    assert "test_concept_oneshot" not in out  # one exemplar per object
    assert np.isfinite(out["test_silhouette"]) and np.isfinite(out["match_top5"])


# ---------------------------------------------------------------- bad input: validate CLI

def _validate(tmp_path, spec: dict) -> tuple[int, str]:
    from raybrain.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["validate", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                   "--storage-path", str(tmp_path / "results")])
    return rc, err.getvalue()


def _spec(data=None, **params):
    return {"name": "gw-bad", "task": TASK, "data": data or {},
            "params": {"epochs": 1, **params}, "seeds": 5}


@pytest.mark.unit
@pytest.mark.parametrize("case, message", [
    ("k_too_large", "params.k1 must be < the number of training concepts per batch (64 = "
                    "min(batch_size 256, 64 training concepts)), got 64"),
    ("k_grid_too_large", "params.k2 must be < the number of training concepts per batch (32 = "
                         "min(batch_size 32, 64 training concepts)), got 40"),
    ("lambda_negative", "params.lambda2 must be >= 0.0, got -1.0"),
    ("concepts_differ", "brain and model concept lists differ: 1 only on the brain side "
                        "(e.g. ['zebra']), 1 only on the model side (e.g. ['obj11'])"),
    ("rdm_not_square", "RDMs must be square in their last two axes (or condensed: a last "
                       "axis of length n(n-1)/2), got shape (12, 11)"),
    ("no_category", "1 concept(s) have no superordinate category (e.g. ['obj03']); the "
                    "silhouette metric needs one for every concept"),
    ("no_rdm_file", "rdm.npy' not found"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, case, message):
    files = lambda **kw: _files(tmp_path, **kw)  # noqa: E731
    spec = {
        "k_too_large": lambda: _spec(k1=64),
        "k_grid_too_large": lambda: _spec(batch_size=32, k2={"grid": [5, 40]}),
        "lambda_negative": lambda: _spec(lambda2=-1.0),
        "concepts_differ": lambda: _spec(files(brain_names=[f"obj{i:02d}" for i in range(11)]
                                               + ["zebra"]), k1=3, k2=3),
        "rdm_not_square": lambda: _spec(files(rdm=True, rdm_shape=(12, 11)), k1=3, k2=3),
        "no_category": lambda: _spec(files(drop_category="obj03"), k1=3, k2=3),
        "no_rdm_file": lambda: _spec({**files(rdm=True), "rdm_file": str(tmp_path / "rdm.npy")},
                                     k1=3, k2=3),
    }[case]()
    if case == "no_rdm_file":
        (tmp_path / "rdm.npy").unlink()
    rc, err = _validate(tmp_path, spec)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "results").exists()


@pytest.mark.unit
def test_data_section_errors_name_the_key(task):
    with pytest.raises(Exception, match="data.source 'files' needs data.item_concepts_file"):
        task.parse_data({"source": "files"})
    with pytest.raises(Exception, match="data.features_file is read only with data.source "
                                        "'files'"):
        task.parse_data({"features_file": "x.npy"})
    with pytest.raises(Exception, match="images need data.backbone"):
        task.parse_data({"source": "files", "item_concepts_file": "a", "brain_concepts_file": "b",
                         "categories_file": "c", "rdm_file": "r.npy", "images_file": "i.npy"})
    with pytest.raises(Exception, match="bare null"):
        task.parse_data({"generator": None})


@pytest.mark.unit
def test_data_parallel_training_is_refused_in_one_line(task, smoke):
    params, data = smoke
    run = task.build(data, params, "real", seed=0)
    with pytest.raises(SpecError, match="set resources.num_workers: 1"):
        run.wrap_model(lambda m: m)


# ------------------------------------------------------------------ the sweep, end to end

def _tiny_sweep(tmp_path) -> dict:
    smoke = copy.deepcopy(BrainLoopGW.smoke)
    return {"name": "gw-tiny", "task": TASK,
            "data": {**smoke["data"], "align_every": 2},
            "params": {**smoke["params"], "epochs": 3, "lambda2": {"grid": [10.0]}},
            "search": {"metric": "test_oneshot_accuracy_auc", "mode": "max",
                       "primary": "lambda2"},
            "arms": {"include": ["brain", "shuffled", "noise", "no-gw", "l2", "none"],
                     "l2_grid": [1e-3]},
            "seeds": 2, "storage": {"path": str(tmp_path / "results")}}


@pytest.mark.integration
@pytest.mark.slow
def test_tiny_sweep_end_to_end_through_ray_and_mlflow(ray_session, tmp_path, monkeypatch):
    from raybrain.analysis.report import build_report
    from raybrain.sweep import parse_spec, run_sweep
    from tests.conftest import sweep_runs

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_sweep(parse_spec(_tiny_sweep(tmp_path)), tracking_uri=uri,
                           out=lines.append)
    tracker, parent, children = sweep_runs(uri, "gw-tiny")
    # 1 config x (brain, shuffled, noise, no-gw) x 2 seeds + (l2 + none) x 2 seeds
    assert len(children) == 12 and all(c.info.status == "FINISHED" for c in children)
    arms = sorted(c.data.tags["raybrain.arm"] for c in children)
    assert arms.count("no-gw") == 2
    for c in children:
        m = c.data.metrics
        hist = tracker.client.get_metric_history(c.info.run_id, "test_oneshot_accuracy")
        assert [h.step for h in hist] == [1, 2, 3] and all(0 <= h.value <= 1 for h in hist)
        gw = tracker.client.get_metric_history(c.info.run_id, "gw_distance")
        assert [h.step for h in gw] == [2, 3]  # align_every 2, and the last epoch
        assert "final_rsa" in m and "final_val_oneshot_accuracy" in m
        arm = c.data.tags["raybrain.arm"]
        assert ("final_gw" in m) == (arm in ("brain", "shuffled", "noise"))
        # the model RDM of epochs 3 (artifact_every 5: only the last epoch) as an artifact
        saved = [a.path for a in tracker.client.list_artifacts(c.info.run_id, "arrays/epoch_3")]
        assert saved == ["arrays/epoch_3/model_rdm.npy"]
    rows = result.table.test_rows()
    assert {r["comparison"] for r in rows} >= {"shuffled", "noise", "no-gw"}
    align = [r for r in result.table.of("alignment") if r.get("comparison") in ("shuffled",)]
    assert {r["metric"] for r in align} == {"ot_match_top1", "rsa", "match_top5", "gw_distance"}

    index = build_report("gw-tiny", tracking_uri=uri, out_dir=tmp_path / "report",
                         log_to_mlflow=False)
    html = index.read_text()
    assert "GW distance vs one-shot accuracy across runs" in html
    assert "Pearson r = " in html and "(n = 12 runs)" in html
    assert "Model RDM of the test concepts" in html and "at epochs 3." in html
    assert "no saved arrays" not in html
