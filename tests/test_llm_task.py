"""The llm-steering task: data, arms, both modes, adapters, checkpoints, metric families,
bad input through ``raybrain validate``, and a quick sweep through real Ray and MLflow.

The contract itself (declared metrics, same seed same numbers, resume, every arm, bad
params) is checked for every task in ``tests/test_task_contract.py``.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import raybrain.tasks as tasks  # noqa: E402
from raybrain.errors import SpecError  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

TASK = tasks.get("llm-steering")
SMOKE_DATA = TASK.smoke["data"]
SMOKE = {**TASK.defaults(), **TASK.smoke["params"]}


def _data(**over):
    return TASK.load_data(TASK.parse_data({**copy.deepcopy(SMOKE_DATA), **over}), 0)


@pytest.fixture(scope="module")
def data():
    return _data()


def _epoch(run):
    return {**run.train_epoch(), **run.evaluate()}


def _params(**over):
    return {**SMOKE, **over}


def _weights(run):
    return {k: v.detach().clone() for k, v in run._module().state_dict().items()}


# ------------------------------------------------------------------------------- data


@pytest.mark.unit
def test_splits_are_disjoint_and_transfer_types_are_held_out(data):
    s = data.splits
    parts = [set(s.train), set(s.val), set(s.test), set(s.transfer)]
    assert sum(map(len, parts)) == len(data.problems) == 44
    assert set().union(*parts) == set(range(44))
    types = data.problems.types
    assert {types[i] for i in s.transfer} == {"transitive"}
    for name in ("train", "val", "test"):
        got = {types[i] for i in getattr(s, name)}
        assert got == {"syllogism", "hypothetical", "conditional"}, name
    # deterministic in the data seed, different across data seeds
    again = _data()
    np.testing.assert_array_equal(again.brain.repeats, data.brain.repeats)
    np.testing.assert_array_equal(again.splits.train, s.train)
    other = TASK.load_data(TASK.parse_data(SMOKE_DATA), 1)
    assert not np.array_equal(other.brain.repeats, data.brain.repeats)


@pytest.mark.unit
def test_control_views_of_the_training_responses(data):
    real = data.train_responses("real")
    shuffled = data.train_responses("shuffled")
    noise = data.train_responses("noise")
    assert real.shape == shuffled.shape == noise.shape == (len(data.splits.train), 12)
    # shuffled: the same rows in another order
    rows = {tuple(np.round(r, 6)) for r in real}
    assert {tuple(np.round(r, 6)) for r in shuffled} == rows
    assert not np.allclose(shuffled, real)
    # noise: no row of the data, a spread of the data's size (its exact statistics are
    # checked in test_llm_data.py)
    assert not any(tuple(np.round(r, 6)) in rows for r in noise)
    assert 0.3 < noise.var(0).sum() / real.var(0).sum() < 3
    # one view per source for the whole sweep
    assert data.train_responses("shuffled") is shuffled


# ------------------------------------------------------------------------------- arms


@pytest.mark.unit
def test_each_arm_fits_its_own_directions_and_measures_against_the_real_ones(data):
    runs = {"brain": TASK.build(data, _params(), "real", 0),
            "shuffled": TASK.build(data, _params(), "shuffled", 0),
            "noise": TASK.build(data, _params(), "noise", 0),
            "random": TASK.build(data, _params(random_directions=True), "real", 0),
            "none": TASK.build(data, _params(alpha=0.0), None, 0)}
    real = runs["brain"].real_dirs
    assert runs["brain"].train_dirs is real and runs["none"].train_dirs is None
    assert runs["none"].alpha == 0.0
    for name in ("shuffled", "noise", "random"):
        run = runs[name]
        # same initialisation, so the same real (reference) directions
        np.testing.assert_allclose(run.real_dirs.basis, real.basis)
        b = run.train_dirs.basis
        np.testing.assert_allclose(b @ b.T, np.eye(2), atol=1e-8)
        assert not np.allclose(np.abs(b @ real.basis.T), np.eye(2), atol=1e-3), name
    assert runs["random"].train_dirs.method == "random"
    # random frames differ by seed (each seed a draw of the control)
    other = TASK.build(data, _params(random_directions=True), "real", 1)
    assert not np.allclose(other.train_dirs.basis, runs["random"].train_dirs.basis)


@pytest.mark.unit
def test_finetune_brain_term_is_the_only_difference_from_language_only(data):
    brain = TASK.build(data, _params(), "real", 0)
    none = TASK.build(data, _params(alpha=0.0), None, 0)
    w0 = _weights(brain)
    assert all(torch.equal(w0[k], v) for k, v in _weights(none).items())  # same init
    mb, mn = brain.train_epoch(), none.train_epoch()
    # same batches: the language term is the same before the first step, the brain term
    # is what differs (loss = task + alpha * direction_loss on the real directions)
    assert mb["loss"] == pytest.approx(mb["task_loss"] + 1.0 * mb["direction_loss"], rel=1e-6)
    assert mn["loss"] == pytest.approx(mn["task_loss"])
    wb, wn = _weights(brain), _weights(none)
    moved = {k: float((wb[k] - w0[k]).norm()) for k in w0}
    diff = {k: float((wb[k] - wn[k]).norm()) for k in w0}
    assert all(v > 0 for k, v in moved.items() if "embed" not in k)
    # the brain term's share of the update is not negligible in the block it acts on
    assert diff["model.layers.0.mlp.down_proj.weight"] > 0.05 * moved[
        "model.layers.0.mlp.down_proj.weight"]


@pytest.mark.unit
def test_the_brain_term_pulls_the_states_toward_the_brain_coordinates(data):
    brain = TASK.build(data, _params(epochs=6, lr=0.02), "real", 0)
    none = TASK.build(data, _params(epochs=6, lr=0.02, alpha=0.0), None, 0)
    first = brain.train_epoch()["direction_loss"]
    none.train_epoch()
    for _ in range(5):
        mb, mn = brain.train_epoch(), none.train_epoch()
    # 1 - mean correlation with the brain's coordinates on the training batches
    assert mb["direction_loss"] < 0.6 * first, (first, mb)
    assert mb["direction_loss"] < 0.7 * mn["direction_loss"], (mb, mn)


@pytest.mark.unit
def test_inference_mode_trains_language_only_and_steers_at_evaluation(data):
    p = _params(mode="inference", alpha=2.0)
    brain = TASK.build(data, p, "real", 0)
    shuffled = TASK.build(data, p, "shuffled", 0)
    none = TASK.build(data, {**p, "alpha": 0.0}, None, 0)
    assert brain.train_dirs is None  # no brain term in the loss
    tb, tn = brain.train_epoch(), none.train_epoch()
    shuffled.train_epoch()
    assert tb == tn
    wn = _weights(none)
    assert all(torch.equal(v, wn[k]) for k, v in _weights(brain).items())
    lp_before = brain._score("test")[0]
    eb, en, es = brain.evaluate(), none.evaluate(), shuffled.evaluate()
    # the hook changed what was scored, differently for each arm's directions...
    steered = {k: v for k, v in eb.items() if k.startswith("test_")}
    plain = {k: v for k, v in en.items() if k.startswith("test_")}
    assert steered["test_task_loss"] != plain["test_task_loss"]
    assert es["test_task_loss"] not in (steered["test_task_loss"], plain["test_task_loss"])
    # ...and is gone afterwards
    np.testing.assert_array_equal(brain._score("test")[0], lp_before)


@pytest.mark.unit
def test_lr_zero_trains_nothing_and_checkpoints_nothing(data):
    run = TASK.build(data, _params(mode="inference", lr=0.0), "real", 0)
    w0 = _weights(run)
    m = run.train_epoch()
    assert np.isfinite(m["task_loss"]) and run.epoch == 1
    assert all(torch.equal(w0[k], v) for k, v in _weights(run).items())
    assert run.state_dict()["model"] == {}
    assert not any(q.requires_grad for q in run._module().parameters())


@pytest.mark.unit
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapters_train_and_checkpoint_only_the_adapters(data, method):
    p = _params(adapters=method, adapter_rank=2, lr=0.05)
    run = TASK.build(data, p, "real", 0)
    base0 = {k: v for k, v in _weights(run).items() if "lora_" not in k}
    state = run.state_dict()["model"]
    assert state and all("lora_" in k for k in state)
    if method == "dora":
        assert any("magnitude" in k for k in state)
    before = {k: v.clone() for k, v in state.items()}
    run.train_epoch()
    after = run.state_dict()["model"]
    assert any(not torch.equal(before[k], after[k]) for k in after)  # adapters moved
    assert all(torch.equal(base0[k], v) for k, v in _weights(run).items() if k in base0)
    # resume from the adapter-only checkpoint equals the uninterrupted run
    want = [run.evaluate()]
    want.append(_epoch(run))
    first = TASK.build(data, p, "real", 0)
    first.train_epoch()
    got = [first.evaluate()]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = TASK.build(data, p, "real", 0)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    got.append(_epoch(resumed))
    assert got == want


@pytest.mark.unit
def test_metric_families_per_type_and_per_layer(data):
    run = TASK.build(data, _params(epochs=2), "real", 0)
    first = _epoch(run)
    assert not any(k.startswith("predictivity") for k in first)  # last epoch only
    for t in ("syllogism", "hypothetical", "conditional"):
        assert 0 <= first[f"test_accuracy_{t}"] <= 1
    assert 0 <= first["test_transfer_accuracy_transitive"] <= 1
    assert first["test_transfer_accuracy"] == first["test_transfer_accuracy_transitive"]
    last = _epoch(run)
    for lay in range(3):  # a 2-block model: layers 0 (embeddings), 1, 2
        assert np.isfinite(last[f"predictivity_layer_{lay}"])
        assert f"predictivity_within_layer_{lay}" in last
        assert f"predictivity_type_transitive_layer_{lay}" in last
    assert "predictivity_layer_3" not in last
    # every k epochs as well, when asked
    every = TASK.build(_data(predictivity={"folds": 2, "lambdas": [1.0], "every": 1,
                                           "layers": [1]}), _params(epochs=3), "real", 0)
    assert set(k for k in _epoch(every) if k.startswith("predictivity_layer_")) == {
        "predictivity_layer_1"}


@pytest.mark.unit
def test_predictivity_finds_the_informative_brain_and_not_the_null_one():
    """Known answer: a random model's states encode the problems' words (type, 'not'),
    which the informative brain carries and the null brain does not."""
    over = dict(n_problems=120, n_transfer=30, n_voxels=30, snr=1.0,
                predictivity={"folds": 4, "lambdas": [1.0, 10.0, 100.0, 1000.0]})
    fev = {}
    for gen in ("informative", "null"):
        run = TASK.build(_data(generator=gen, **over), _params(epochs=1, lr=0.0), "real", 0)
        m = {**run.train_epoch(), **run.evaluate()}
        fev[gen] = [m[f"predictivity_layer_{lay}"] for lay in range(3)]
    assert min(fev["informative"]) > 0.15, fev
    assert max(fev["null"]) < 0.03, fev


@pytest.mark.unit
def test_a_local_checkpoint_is_loaded_by_its_folder_name(data, tmp_path):
    from raybrain.models.lm import save_lm, tiny_lm

    folder = tmp_path / "my-lm"
    save_lm(tiny_lm(data.tokenizer, n_layers=3, hidden=16, heads=2, seed=7), data.tokenizer,
            folder)
    d = TASK.parse_data({**SMOKE_DATA, "checkpoints": [str(folder)]})
    params = {k: [v] for k, v in _params(model="my-lm").items()}
    TASK.check_data(d, params)  # 3 blocks, hidden 16: layer 1 and rank 2 fit
    loaded = TASK.load_data(d, 0)
    run = TASK.build(loaded, _params(model="my-lm", layer=3), "real", 0)
    m = _epoch(run)
    assert np.isfinite(m["test_accuracy"]) and "predictivity_layer_3" not in m
    assert len(run._module().model.layers) == 3
    with pytest.raises(SpecError, match="params.layer 4 is outside model 'my-lm'"):
        TASK.check_data(d, {**params, "layer": [4]})


@pytest.mark.unit
@pytest.mark.parametrize("fmt", [".npy", ".h5"])
def test_user_problem_and_response_files(tmp_path, fmt):
    import h5py

    from raybrain.data.reasoning import generate_problems, save_problems, synthetic_brain

    ps = generate_problems(40, seed=3, lexical_roles=1.0)
    save_problems(ps, tmp_path / "problems.jsonl")
    brain = synthetic_brain(ps, np.random.default_rng(0), n_voxels=10)
    order = np.random.default_rng(1).permutation(40)  # rows in another order than the file
    ids = [ps.ids[i] for i in order]
    if fmt == ".npy":
        np.save(tmp_path / "resp.npy", brain.repeats[:, order])
        (tmp_path / "resp.ids.txt").write_text("\n".join(ids) + "\n")
    else:
        with h5py.File(tmp_path / "resp.h5", "w") as f:
            f["responses"] = brain.repeats[:, order]
            f["problem_ids"] = np.array(ids, dtype="S")
    section = {"source": "files", "problems": str(tmp_path / "problems.jsonl"),
               "responses": str(tmp_path / f"resp{fmt}"), "transfer_types": ["transitive"],
               "predictivity": {"folds": 2, "lambdas": [1.0, 100.0]}}
    d = TASK.parse_data(section)
    TASK.check_data(d, {k: [v] for k, v in SMOKE.items()})
    loaded = TASK.load_data(d, 0)
    np.testing.assert_array_equal(loaded.brain.repeats, brain.repeats)  # back in file order
    m = _epoch(TASK.build(loaded, SMOKE, "shuffled", 0))
    assert np.isfinite(m["test_accuracy"]) and np.isfinite(m["test_transfer_accuracy"])
    # no transfer type: the transfer accuracy is not measured (NaN), the rest is
    plain = TASK.load_data(TASK.parse_data({**section, "transfer_types": []}), 0)
    m = TASK.build(plain, SMOKE, "real", 0).evaluate()
    assert np.isnan(m["test_transfer_accuracy"]) and np.isfinite(m["test_accuracy"])


@pytest.mark.unit
def test_data_parallel_wrapper_trains_through_ddp(data, tmp_path):
    """A real DistributedDataParallel (gloo, world size 1): the LM is called through the
    wrapper, and hooks, layers and checkpoints see the LM inside it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        plain = TASK.build(data, _params(), "real", 0)
        run = TASK.build(data, _params(), "real", 0)
        run.wrap_model(torch.nn.parallel.DistributedDataParallel)
        assert isinstance(run.model.module, type(plain._module()))
        assert _epoch(run) == _epoch(plain)
        assert set(run.state_dict()["model"]) == set(plain.state_dict()["model"])
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------- bad input (CLI)


def _validate(tmp_path, capsys, spec: dict):
    import yaml

    from raybrain.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code = main(["validate", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                 "--storage-path", str(tmp_path / "results")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning:")]
    return code, err


def _spec(**over):
    d = {"name": "llm-bad", "task": "llm-steering", "data": copy.deepcopy(SMOKE_DATA),
         "params": copy.deepcopy(TASK.smoke["params"]),
         "arms": {"include": ["brain", "shuffled", "none"]}, "seeds": 5}
    for k, v in over.items():
        d[k] = {**d[k], **v}
    return d


@pytest.mark.unit
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys):
    from raybrain.data.reasoning import generate_problems, save_problems

    ps = generate_problems(36, seed=0)
    save_problems(ps, tmp_path / "p.jsonl")
    np.save(tmp_path / "r.npy", np.zeros((2, 36, 5), dtype=np.float32))
    ids = list(ps.ids)
    (tmp_path / "r.ids.txt").write_text("\n".join(ids[:-1] + ["stranger"]) + "\n")
    no_config = tmp_path / "ckpt"
    no_config.mkdir()
    files = {"source": "files", "problems": str(tmp_path / "p.jsonl"),
             "responses": str(tmp_path / "r.npy")}
    cases = [
        (_spec(params={"layer": 3}), "params.layer 3 is outside model 'tiny', which has "
                                     "layers 0..2"),
        (_spec(params={"layer": {"grid": [1, 5]}}), "params.layer 5 is outside model"),
        (_spec(params={"rank": 20}), "params.rank must be <= the number of training "
                                     "problems - 1 (17), got 20"),
        (_spec(params={"rank": 13}), "params.rank must be <= the number of voxels (12), "
                                     "got 13"),
        (_spec(data=files), "row 35 has problem id 'stranger', which is not in the problem set"),
        (_spec(data={"checkpoints": [str(no_config)]}, params={"model": "ckpt"}),
         "has no config.json"),
        (_spec(data={"checkpoints": [str(tmp_path / "gone")]}, params={"model": "gone"}),
         "not found"),
        (_spec(params={"model": "gpt-9"}), "params.model 'gpt-9' is neither 'tiny' nor"),
        (_spec(params={"directions": "cca", "tiny_hidden": 32}),
         "needs fewer dimensions than training problems"),
        (_spec(params={"tiny_hidden": 15}), "tiny_hidden (15) must be divisible"),
        (_spec(data={"predictivity": {"layers": [7]}}), "data.predictivity.layers has 7"),
        (_spec(params={"alpha": 0.0}), "params.alpha must be > 0 for the brain arm"),
    ]
    for spec, needle in cases:
        if "source" in spec["data"]:
            for k in ("n_problems", "n_transfer", "n_voxels", "snr"):
                spec["data"].pop(k, None)
        code, err = _validate(tmp_path, capsys, spec)
        assert code == 2 and len(err) == 1 and "Traceback" not in err[0], (needle, err)
        assert needle in err[0], (needle, err[0])
    # nothing written: no MLflow store, no results folder
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "results").exists()
    # single-repeat responses have no noise ceiling: predictivity refuses them
    np.save(tmp_path / "r1.npy", np.zeros((36, 5), dtype=np.float32))
    (tmp_path / "r1.ids.txt").write_text("\n".join(ids) + "\n")
    spec = _spec(data={**files, "responses": str(tmp_path / "r1.npy")})
    for k in ("n_problems", "n_transfer", "n_voxels", "snr"):
        spec["data"].pop(k, None)
    code, err = _validate(tmp_path, capsys, spec)
    assert code == 2 and len(err) == 1 and "at least 2 repeats" in err[0], err
    # missing rows name the problem
    (tmp_path / "r.ids.txt").write_text("\n".join(ids[:-1] + [ids[0]]) + "\n")
    spec = _spec(data=files)
    for k in ("n_problems", "n_transfer", "n_voxels", "snr"):
        spec["data"].pop(k, None)
    code, err = _validate(tmp_path, capsys, spec)
    assert code == 2 and len(err) == 1 and f"problem id {ids[0]!r} has two rows" in err[0]


@pytest.mark.unit
def test_shipped_specs(tmp_path, capsys):
    from raybrain.cli import main
    from raybrain.sweep import load_spec

    for name in ("llm_steering_quick.yaml", "llm_steering_quick_null.yaml"):
        code = main(["validate", str(ROOT / "search_spaces" / name), "--tracking-uri",
                     f"sqlite:///{tmp_path}/m.db", "--storage-path", str(tmp_path / "r")])
        out = capsys.readouterr()
        assert code == 0, out.err
        spec = load_spec(ROOT / "search_spaces" / name)
        assert len(spec.seed_list) >= 5
        assert {"brain", "shuffled", "noise", "random-directions", "none"} <= set(
            spec.arms.include)
    null = load_spec(ROOT / "search_spaces" / "llm_steering_quick_null.yaml")
    assert null.data["generator"] == "null"
    # the paper-style spec is valid but for the checkpoint it names, which is not shipped
    code = main(["validate", str(ROOT / "search_spaces" / "llm_steering.yaml"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--storage-path",
                 str(tmp_path / "r")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(err) == 1 and "LM checkpoint directory" in err[0], err
    paper = load_spec(ROOT / "search_spaces" / "llm_steering.yaml")
    assert paper.search.algorithm == "optuna" and paper.confirm_configs >= 1
    assert {"layer", "alpha", "rank", "ridge_lambda"} <= set(paper.searched())


# ----------------------------------------------------------------- the sweep, for real


@pytest.mark.integration
@pytest.mark.slow
def test_quick_llm_sweep_end_to_end(ray_session, tmp_path, monkeypatch):
    from raybrain.sweep import parse_spec, run_sweep
    from tests.conftest import sweep_runs

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    spec = {"name": "llm-e2e", "task": "llm-steering", "data": copy.deepcopy(SMOKE_DATA),
            "params": {**copy.deepcopy(TASK.smoke["params"]), "alpha": {"grid": [0.5, 1.0]}},
            "search": {"primary": "alpha"},
            "arms": {"include": ["brain", "shuffled", "noise", "random-directions", "l2",
                                 "none"], "l2_grid": [1e-3]},
            "seeds": 2, "storage": {"path": str(tmp_path / "results")}}
    lines: list[str] = []
    result = run_sweep(parse_spec(spec), tracking_uri=uri, out=lines.append)
    text = "\n".join(lines)
    assert "brain data: 44 problems x 12 voxels x 2 repeat(s)" in text
    tracker, parent, children = sweep_runs(uri, "llm-e2e")
    # 2 configs x (brain, shuffled, noise, random-directions) x 2 seeds + (l2, none) x 2
    assert len(children) == 20 and all(c.info.status == "FINISHED" for c in children)
    arms = {c.data.tags["raybrain.arm"] for c in children}
    assert arms == {"brain", "shuffled", "noise", "random-directions", "l2", "none"}
    for c in children:
        hist = tracker.client.get_metric_history(c.info.run_id, "test_accuracy")
        assert [h.step for h in hist] == [1, 2]
        m = c.data.metrics
        for key in ("final_val_accuracy", "final_test_transfer_accuracy",
                    "final_align_directions", "final_predictivity_layer_0",
                    "final_predictivity_layer_2", "final_test_accuracy_syllogism"):
            assert key in m, (c.data.tags["raybrain.arm"], key)
    rows = result.table.test_rows()
    # the verdict tests brain against the brain-data controls, the ablation, the best L2
    # and the task's declared baseline control 'none' (language-only fine-tuning, same budget)
    assert {r["comparison"] for r in rows} == {"shuffled", "noise", "random-directions",
                                               "l2[weight_decay=0.001]", "none"}
    assert "none" in {r["arm"] for r in result.table.arm_rows()}
    verdicts = [r for r in result.table.rows if r["kind"] == "verdict"]
    assert len(verdicts) == 4  # 2 configs x (final, area)
    # the report draws the task's panels, the predictivity curve among them
    from raybrain.analysis.report import build_report

    index = build_report("llm-e2e", tracking_uri=uri, out_dir=tmp_path / "report",
                         log_to_mlflow=False)
    html = index.read_text()
    assert "Neural predictivity per layer" in html and "Transfer to held-out" in html
