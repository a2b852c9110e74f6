"""Arms, run planning, the lockstep executor and the memory task's runs (in-process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import raybrain.tasks as tasks
from raybrain.sweep import parse_spec
from raybrain.sweep.arms import RunSpec, plan_config_runs
from raybrain.sweep.plan import make_plan
from raybrain.sweep.execute import ConfigExecutor, RunProgress, aggregate_objective

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def task():
    return tasks.get("b2m-memory")


@pytest.fixture(scope="module")
def data(task):
    from tests.conftest import TINY

    return task.load_data(task.parse_data(TINY["data"]), 0)


def _runs(task, spec_dict, params):
    spec = parse_spec(spec_dict)
    return plan_config_runs(spec.name, task, {**spec.fixed(), **params}, spec.arms.include,
                            spec.arms, spec.seed_list, spec.data_seed)


def test_arm_params(task, tiny_spec_dict):
    runs = _runs(task, tiny_spec_dict, {"alpha": 0.1})
    by_arm = {}
    for r in runs:
        by_arm.setdefault(r.arm, []).append(r)
    assert {r.brain_source for r in by_arm["brain"]} == {"real"}
    assert {r.brain_source for r in by_arm["shuffled"]} == {"shuffled"}
    assert {r.brain_source for r in by_arm["noise"]} == {"noise"}
    for arm in ("l2", "none"):
        for r in by_arm[arm]:
            assert r.brain_source is None and r.params["alpha"] == 0.0
            assert "temperature" not in r.params and "transfer" not in r.params
    assert sorted({r.params["weight_decay"] for r in by_arm["l2"]}) == [1e-4, 1e-3]
    assert {r.params["weight_decay"] for r in by_arm["none"]} == {0.0}
    assert all(r.params["alpha"] == 0.1 for a in ("brain", "shuffled", "noise") for r in by_arm[a])
    # paired design: the same seeds in every arm
    seeds = {a: sorted(r.seed for r in rs if r.params.get("weight_decay", 0) in (0, 1e-4))
             for a, rs in by_arm.items()}
    assert all(s == [0, 1] for s in seeds.values())
    # keys are unique and deterministic
    keys = [r.key for r in runs]
    assert len(set(keys)) == len(keys)
    assert keys == [r.key for r in _runs(task, tiny_spec_dict, {"alpha": 0.1})]


def test_baseline_runs_are_shared_across_configs(task, tiny_spec_dict):
    a = _runs(task, tiny_spec_dict, {"alpha": 0.1})
    b = _runs(task, tiny_spec_dict, {"alpha": 0.2})
    base_a = {r.key for r in a if r.is_baseline}
    base_b = {r.key for r in b if r.is_baseline}
    assert base_a == base_b and len(base_a) == (2 + 1) * 2
    brain_a = {r.key for r in a if not r.is_baseline}
    brain_b = {r.key for r in b if not r.is_baseline}
    assert not brain_a & brain_b
    # a different non-brain param makes different baselines
    c = _runs(task, tiny_spec_dict, {"alpha": 0.1, "lr": 0.05})
    assert not base_a & {r.key for r in c if r.is_baseline}
    # the sweep plan counts each baseline run once
    plan = make_plan(parse_spec(tiny_spec_dict), task)
    assert plan.num_configs == 2 and plan.runs_per_config == 3 * 2 and plan.baseline_runs == 6


def test_ledger_logic_claims_each_baseline_once(task, tiny_spec_dict):
    from raybrain.sweep.trial import BaselineClaims

    ledger = BaselineClaims(finished=["done-key"])
    base = [r.key for r in _runs(task, tiny_spec_dict, {"alpha": 0.1}) if r.is_baseline]
    first = ledger.claim(base + ["done-key"], "config-1")
    assert first == base
    assert ledger.claim(base, "config-2") == []
    assert ledger.claim(base, "config-1") == base  # a restarted trial gets its claims back


def test_grid_baselines_are_spread_over_configs(task, tiny_spec_dict):
    """A grid's baseline runs are assigned up front, evenly; each trial reads its share
    from the assignment in its context (no ledger actor), finished runs left out."""
    from raybrain.sweep.arms import assign_baselines
    from raybrain.sweep.trial import claim_baselines

    plans = [_runs(task, tiny_spec_dict, {"alpha": a}) for a in (0.1, 0.2)]
    assigned = assign_baselines(plans)
    base_keys = {r.key for r in plans[0] if r.is_baseline}
    assert set(assigned) == base_keys
    owners = [next(r.config_id for r in p if not r.is_baseline) for p in plans]
    counts = [sum(1 for o in assigned.values() if o == owner) for owner in owners]
    assert sorted(counts) == [3, 3]  # 6 baseline runs, split evenly
    ctx = {"ledger": None, "assigned": assigned, "finished": []}
    got = [set(claim_baselines(ctx, sorted(base_keys), o)) for o in owners]
    assert got[0] | got[1] == base_keys and not got[0] & got[1]
    assert got[0] == set(claim_baselines(ctx, sorted(base_keys), owners[0]))  # a restart
    done = sorted(got[0])[0]
    again = claim_baselines({**ctx, "finished": [done]}, sorted(base_keys), owners[0])
    assert set(again) == got[0] - {done}


def test_vectorised_sweeps_keep_a_baseline_variants_seeds_together(task, tiny_spec_dict):
    """When runs train as batches of models, every seed of one baseline variant (one
    set of params) goes to the same config, and the variants are still spread."""
    from raybrain.sweep.arms import assign_baselines

    spec = {**tiny_spec_dict, "seeds": 3,
            "arms": {"include": ["brain", "l2", "none"], "l2_grid": [1e-4, 1e-3]}}
    plans = [_runs(task, spec, {"alpha": a}) for a in (0.1, 0.2, 0.3)]
    assigned = assign_baselines(plans, together=True)
    variants: dict[tuple, set] = {}
    for r in plans[0]:
        if r.is_baseline:
            variants.setdefault((r.config_id, r.arm), set()).add(assigned[r.key])
    assert len(variants) == 3 and all(len(owners) == 1 for owners in variants.values())
    # three variants of three seeds over three configs of three brain runs: one each
    assert len({next(iter(o)) for o in variants.values()}) == 3
    split = assign_baselines(plans)  # run by run: the seeds of a variant may be split
    assert set(split) == set(assigned)


def test_same_seed_same_initialisation_in_every_arm(task, data, tiny_spec_dict):
    runs = _runs(task, tiny_spec_dict, {"alpha": 0.1})
    seed0 = [r for r in runs if r.seed == 0]
    states = [task.build(data, r.params, r.brain_source, r.seed).model.state_dict() for r in seed0]
    for s in states[1:]:
        assert all(torch.equal(s[k], states[0][k]) for k in s)
    other = task.build(data, runs[0].params, runs[0].brain_source, 1).model.state_dict()
    assert not torch.equal(other["w_embed"], states[0]["w_embed"])


def test_brain_views_are_controls_of_the_real_data(data):
    real, shuf, noise = (data.brain_view(s) for s in ("real", "shuffled", "noise"))
    mask = data.train.brain_mask
    assert real.shape == shuf.shape == noise.shape
    assert not torch.equal(real[mask], shuf[mask])
    # shuffled keeps the multiset of values; noise keeps the overall mean
    assert torch.allclose(real[mask].sort(0).values, shuf[mask].sort(0).values)
    assert torch.allclose(real[mask].mean(0), noise[mask].mean(0), atol=1e-4)
    assert data.brain_view("real") is real  # built once, shared by runs


def test_training_moves_parameters_and_transfer_lowers_transfer_loss(task):
    from tests.conftest import TINY

    # enough steps for the per-step alignment (averaged over each step's bins) to measure
    data = task.load_data(task.parse_data({**TINY["data"], "n_train_episodes": 32,
                                           "snr": 2.0}), 0)
    params = {"hidden": 16, "epochs": 30, "batch_size": 4, "lr": 0.02, "transfer": "latent"}
    brain = task.build(data, {**params, "alpha": 0.5}, "real", 0)
    none = task.build(data, {**params, "alpha": 0.0}, None, 0)
    before = {k: v.clone() for k, v in brain.model.state_dict().items()}
    first_b = brain.train_epoch()["transfer_loss"]
    for _ in range(29):
        last_b = brain.train_epoch()["transfer_loss"]
        last_n = none.train_epoch()["transfer_loss"]
    assert all(not torch.equal(before[k], v) for k, v in brain.model.state_dict().items())
    assert last_b < first_b
    assert last_b < last_n  # only the brain arm is pulled toward the brain
    # and on held-out steps it is closer to the real brain (diagnostics of every arm)
    eb, en = brain.evaluate(), none.evaluate()
    assert 0 <= en["align_cka"] <= 1 and -1 <= en["align_rsa"] <= 1
    assert eb["align_cka"] > en["align_cka"] and eb["align_rsa"] > en["align_rsa"]


def test_resume_from_state_equals_uninterrupted(task, data):
    params = {"hidden": 8, "epochs": 4, "batch_size": 4, "lr": 0.01, "alpha": 0.2,
              "transfer": "latent"}
    a = task.build(data, params, "real", 3)
    ma = [a.train_epoch() for _ in range(4)]
    b = task.build(data, params, "real", 3)
    b.train_epoch(), b.train_epoch()
    state = b.state_dict()
    c = task.build(data, params, "real", 3)
    c.load_state_dict(state)
    mc = [c.train_epoch() for _ in range(2)]
    assert mc == ma[2:]
    assert c.evaluate() == a.evaluate()


def test_lockstep_executor_records_and_objective(task, data, tiny_spec_dict):
    runs = _runs(task, tiny_spec_dict, {"alpha": 0.1})
    ex = ConfigExecutor(task, data, runs, task.primary_metric)
    records = ex.step()
    assert len(records) == len(runs) and not ex.done
    rec = records[0]
    assert rec["epoch"] == 1 and set(task.metrics) <= set(rec["metrics"])
    assert "test_accuracy_auc" in rec["metrics"]
    last = ex.step()
    assert ex.done and all(r["done"] and "summary" in r for r in last)
    assert ex.step() == []
    latest = {r["key"]: r["metrics"] for r in last}
    brain = [latest[r.key]["test_accuracy_auc"] for r in runs if r.arm == "brain"]
    shuf = [latest[r.key]["test_accuracy_auc"] for r in runs if r.arm == "shuffled"]
    assert aggregate_objective(latest, runs, "test_accuracy_auc", "brain") == pytest.approx(np.mean(brain))
    assert aggregate_objective(latest, runs, "test_accuracy_auc", "margin_shuffled") == \
        pytest.approx(np.mean(brain) - np.mean(shuf))
    # results do not depend on how runs are interleaved: rerun one alone
    solo = RunProgress(runs[0], task.build(data, runs[0].params, runs[0].brain_source,
                                           runs[0].seed), task.primary_metric)
    solo.step()
    m = solo.step()
    assert m["test_accuracy"] == latest[runs[0].key]["test_accuracy"]
    assert m["loss"] == latest[runs[0].key]["loss"]


def test_trajectory_area_is_running_mean(task, data):
    spec = RunSpec("s", "b2m-memory", "none", 0, {"hidden": 8, "epochs": 3, "lr": 0.01},
                   None, "c", "b")
    p = RunProgress(spec, task.build(data, spec.params, None, 0), "test_accuracy")
    ms = [p.step() for _ in range(3)]
    accs = [m["test_accuracy"] for m in ms]
    assert [m["test_accuracy_auc"] for m in ms] == pytest.approx(
        [accs[0], np.mean(accs[:2]), np.mean(accs)])
    s = p.summary()
    assert s["final_test_accuracy"] == accs[-1] and s["best_test_accuracy"] == max(accs)
    assert s["diverged"] == 0.0


def test_contrastive_transfer_trains_the_embedding(task, data):
    params = {"hidden": 16, "epochs": 15, "batch_size": 4, "lr": 0.02, "alpha": 0.5,
              "transfer": "contrastive", "temperature": 0.5}
    run = task.build(data, params, "real", 0)
    first = run.train_epoch()["transfer_loss"]
    for _ in range(14):
        last = run.train_epoch()["transfer_loss"]
    assert np.isfinite(last) and last < first


def test_search_setups(task, tiny_spec_dict):
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Float, Integer

    from raybrain.sweep.plan import search_setup as _search_setup

    spec = parse_spec(tiny_spec_dict)
    space, alg, n = _search_setup(spec, make_plan(spec, task))
    assert alg is None and n == 1
    assert space["params"] == {"grid_search": [{"alpha": 0.1}, {"alpha": 0.2}]}
    d = {**tiny_spec_dict, "params": {**tiny_spec_dict["params"],
                                      "alpha": {"loguniform": [0.01, 0.5]},
                                      "hidden": {"int": [4, 16]}},
         "search": {"algorithm": "random", "num_configs": 4}}
    spec = parse_spec(d)
    space, alg, n = _search_setup(spec, make_plan(spec, task, max_configs=3))
    assert isinstance(alg, BasicVariantGenerator) and n == 3
    assert isinstance(space["alpha"], Float) and isinstance(space["hidden"], Integer)
    assert space["hidden"].lower == 4 and space["hidden"].upper == 17  # randint is exclusive
    spec = parse_spec({**d, "search": {"algorithm": "optuna", "num_configs": 4}})
    space, alg, n = _search_setup(spec, make_plan(spec, task))
    assert isinstance(alg, OptunaSearch) and n == 4 and space == {}


def test_data_parallel_shards_take_equal_steps(task, data):
    params = {"hidden": 8, "epochs": 1, "batch_size": 1, "lr": 0.01}
    seen = []
    for rank in range(3):  # 8 training episodes over 3 ranks
        run = task.build(data, params, None, 0)
        calls = []
        real_forward = run.model.forward
        run.model.forward = lambda x, f=real_forward, c=calls: (c.append(x.shape[0]), f(x))[1]
        run.train_epoch(shard=(rank, 3))
        seen.append(len(calls))
    assert seen == [3, 3, 3]  # 8 padded to 9: the same number of steps on every rank


def test_training_on_user_npz_embeddings(task, tmp_path):
    from raybrain.data import MemoryTaskConfig, save_memory_npz, simulate_episodes, synthetic_brain

    cfg = MemoryTaskConfig(pre_bins=1, post_bins=2, context_bins=1, min_steps=2, max_steps=4)
    rng = np.random.default_rng(0)
    episodes = simulate_episodes(10, cfg, rng)
    brain = synthetic_brain(episodes, cfg, rng)
    save_memory_npz(tmp_path / "b.npz", episodes, brain)
    d = task.parse_data({"source": "npz", "path": str(tmp_path / "b.npz"), "pre_bins": 1,
                         "post_bins": 2, "context_bins": 1, "n_test_episodes": 5,
                         "n_val_episodes": 5})
    data = task.load_data(d, 0)
    # 20% of the file's episodes are held out (with their brain data) for the diagnostics
    assert len(data.train) == 8 and len(data.heldout) == 2
    assert data.train.episodes.n_steps + data.heldout.episodes.n_steps == episodes.n_steps
    file_rows = {r.tobytes() for r in brain.reshape(-1, 7)}
    train_rows = data.brain_view("real")[data.train.brain_mask].numpy()
    assert all(r.tobytes() in file_rows for r in train_rows)
    held_rows = data.heldout_brain[data.heldout.brain_mask].numpy()
    assert not {r.tobytes() for r in held_rows} & {r.tobytes() for r in train_rows}
    run = task.build(data, {"hidden": 8, "epochs": 1, "alpha": 0.2}, "real", 0)
    metrics = run.train_epoch()
    assert np.isfinite(metrics["transfer_loss"]) and metrics["transfer_loss"] > 0
    # a model whose embedding size differs from the file's is refused with one clear line
    with pytest.raises(Exception, match="dimension 7 differs from the model's embedding dimension 5"):
        task.build(data, {"embed_dim": 5, "alpha": 0.2}, "real", 0)


class _ScriptedRun:
    """A TaskRun whose losses follow a script (to test the divergence rule alone)."""

    def __init__(self, losses):
        self.losses, self.epoch, self.epochs = list(losses), 0, len(losses)

    def train_epoch(self, shard=(0, 1)):
        self.epoch += 1
        return {"loss": self.losses[self.epoch - 1]}

    def evaluate(self):
        return {"test_accuracy": 0.5}


@pytest.mark.parametrize("losses, diverged, epochs", [
    ([0.5, 0.4, 0.3], False, 3),
    ([0.5, 3.0, 0.4], False, 3),          # crossed the threshold, came back below it
    ([0.5, 3.0, 2.5], True, 3),           # above it and still above at the end
    ([0.5, float("nan"), 0.3], True, 2),  # non-finite: stopped at once
])
def test_divergence_rule(losses, diverged, epochs):
    spec = RunSpec("s", "b2m-memory", "brain", 0, {}, "real", "c", "b")
    p = RunProgress(spec, _ScriptedRun(losses), "test_accuracy", divergence=("loss", 1.0))
    while not p.done:
        p.step()
    assert p.summary()["diverged"] == float(diverged)
    assert p.run.epoch == epochs


def test_a_failing_run_is_recorded_with_its_reason_and_the_others_go_on(task, data,
                                                                        tiny_spec_dict):
    runs = _runs(task, {**tiny_spec_dict, "params": {**tiny_spec_dict["params"], "epochs": 3}},
                 {"alpha": 0.1})
    ex = ConfigExecutor(task, data, runs, task.primary_metric)
    ex.step()
    broken = ex.progress[1]

    def singular(shard=(0, 1)):  # a fault inside one run's training step
        raise np.linalg.LinAlgError("Singular matrix\nin the brain projection")

    broken.run.train_epoch = singular
    records = ex.step()
    failed = [r for r in records if r.get("failed")]
    assert len(failed) == 1 and failed[0]["key"] == broken.spec.key
    assert failed[0]["failed"] == "LinAlgError: Singular matrix"
    assert failed[0]["done"] and failed[0]["epoch"] == 1 and failed[0]["summary"]["epochs_done"] == 1
    others = [r for r in records if not r.get("failed")]
    assert len(others) == len(runs) - 1 and all(r["epoch"] == 2 for r in others)
    last = ex.step()
    assert ex.done and broken.spec.key not in {r["key"] for r in last}
    assert all(r["epoch"] == 3 and r["done"] for r in last)
    # the failure survives a checkpoint: restored, the run is still failed, with its reason
    again = ConfigExecutor(task, data, runs, task.primary_metric)
    again.restore(ex.state())
    assert again.done and again.progress[1].failed == broken.failed


def test_replay_after_restore_carries_every_epoch(task, data, tiny_spec_dict):
    runs = _runs(task, {**tiny_spec_dict, "params": {**tiny_spec_dict["params"], "epochs": 3}},
                 {"alpha": 0.1})[:2]
    ex = ConfigExecutor(task, data, runs, task.primary_metric)
    sent = ex.step() + ex.step()
    again = ConfigExecutor(task, data, runs, task.primary_metric)
    again.restore(ex.state())
    replay = again.replay()
    # exactly what was reported, epoch by epoch, for every run
    assert [(r["key"], r["epoch"]) for r in replay] == sorted(
        ((r["key"], r["epoch"]) for r in sent), key=lambda k: ([x.key for x in runs].index(k[0]), k[1]))
    by = {(r["key"], r["epoch"]): r["metrics"] for r in sent}
    for r in replay:
        assert r["metrics"] == pytest.approx(by[(r["key"], r["epoch"])])
        assert not r["done"]
