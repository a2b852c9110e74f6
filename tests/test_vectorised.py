"""Vectorised seed replicates: the runs of a config trained as one batch of models give
the numbers they give alone, resume per epoch, and keep one record (MLflow child run)
each."""

from __future__ import annotations

import io
import math

import pytest
import torch

import raybrain.tasks as tasks
from raybrain.models.gru import MemoryGRU, gru_stack
from raybrain.sweep.arms import plan_config_runs
from raybrain.sweep.execute import ConfigExecutor
from raybrain.sweep.spec import ArmsSpec

pytestmark = pytest.mark.unit

DATA = {"n_train_episodes": 24, "n_heldout_episodes": 6, "n_val_episodes": 20,
        "n_test_episodes": 30, "pre_bins": 2, "post_bins": 3, "context_bins": 2,
        "min_steps": 2, "max_steps": 6}
PARAMS = {"hidden": 16, "epochs": 4, "batch_size": 4, "transfer": "latent", "alpha": 0.2,
          "lr": 0.01, "dropout": 0.3}
MEMBERS = [("real", 0), ("real", 1), ("shuffled", 0), ("noise", 2), (None, 3)]


@pytest.fixture(scope="module")
def memory():
    task = tasks.get("b2m-memory")
    return task, task.load_data(task.parse_data(DATA), 0)


def _same(a: dict, b: dict) -> None:
    """Equal to floating-point rounding: accuracies exactly, other values closely (rank
    correlations of near-tied distances move most: a 1e-7 change can swap two ranks)."""
    assert set(a) == set(b)
    for k in a:
        if k.endswith("accuracy"):
            assert a[k] == b[k], k
        else:
            tol = 1e-3 if "rsa" in k else 1e-5
            assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), k


def test_the_gru_stack_follows_torch_gru():
    """Known answer: the stacked recurrence equals torch.nn.GRU with the same weights."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 8, batch_first=True)
    x = torch.randn(3, 5, 4)
    w = [getattr(ref, n).detach()[None] for n in ("weight_ih_l0", "weight_hh_l0",
                                                  "bias_ih_l0", "bias_hh_l0")]
    assert torch.allclose(gru_stack(x[None], *w)[0], ref(x)[0], atol=1e-6)


def test_the_written_out_backward_gives_torch_gru_gradients():
    """Known answer: the hand-written backpropagation through time of the stack gives the
    gradients autograd gives through torch.nn.GRU (same weights, each model of a stack of
    two, float64), for the weights, the biases and the inputs."""
    torch.manual_seed(1)
    refs = [torch.nn.GRU(3, 5, batch_first=True).double() for _ in range(2)]
    x = torch.randn(2, 4, 7, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 7, 5, dtype=torch.float64)
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    w = [torch.stack([getattr(r, n).detach() for r in refs]).requires_grad_() for n in names]
    (gru_stack(x, *w) * upstream).sum().backward()
    for k, ref in enumerate(refs):
        xk = x.detach()[k].clone().requires_grad_()
        (ref(xk)[0] * upstream[k]).sum().backward()
        for n, got in zip(names, w):
            assert torch.allclose(got.grad[k], getattr(ref, n).grad, atol=1e-12), n
        assert torch.allclose(x.grad[k], xk.grad, atol=1e-12)


def test_the_gru_stack_has_gradients_and_trains():
    model = MemoryGRU(4, 8, 3, dropout=0.0).double()
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    w = [p for p in model.parameters()]
    assert torch.autograd.gradcheck(lambda *ps: gru_stack(x[None], *ps[:4]).sum(),
                                    tuple(q.detach().clone().requires_grad_() for q in w[:4]))
    before = [p.detach().clone() for p in model.parameters()]
    out, emb = model(x)
    (out ** 2).mean().backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_group_gives_each_run_the_numbers_it_gives_alone(memory):
    task, data = memory
    group = task.build_group(data, PARAMS, MEMBERS)
    alone = [task.build(data, PARAMS, src, seed) for src, seed in MEMBERS]
    active = list(range(len(MEMBERS)))
    for _ in range(3):
        trained, evaluated = group.train_epoch(active), group.evaluate(active)
        for k, run in enumerate(alone):
            _same({**trained[k], **evaluated[k]}, {**run.train_epoch(), **run.evaluate()})
    # the seeds differ from one another (a stack is not one model copied)
    assert group.evaluate([0, 1])[0]["test_task_loss"] != group.evaluate([0, 1])[1]["test_task_loss"]


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_member_checkpoints_resume_in_a_group_or_alone(memory):
    task, data = memory
    straight = task.build_group(data, PARAMS, MEMBERS)
    active = list(range(len(MEMBERS)))
    for _ in range(2):
        straight.train_epoch(active)
    states = [_roundtrip(m.state_dict()) for m in straight.members]
    want_train = straight.train_epoch(active)
    want = straight.evaluate(active)
    # a fresh group restored from the members' checkpoints continues identically
    resumed = task.build_group(data, PARAMS, MEMBERS)
    for m, st in zip(resumed.members, states):
        m.load_state_dict(st)
    assert [m.epoch for m in resumed.members] == [2] * len(MEMBERS)
    got_train, got = resumed.train_epoch(active), resumed.evaluate(active)
    for k in active:
        assert {**got_train[k], **got[k]} == {**want_train[k], **want[k]}
    # a member's checkpoint is a run's checkpoint: it resumes alone too
    for k, (src, seed) in enumerate(MEMBERS):
        run = task.build(data, PARAMS, src, seed)
        run.load_state_dict(states[k])
        _same({**run.train_epoch(), **run.evaluate()}, {**want_train[k], **want[k]})


def test_the_executor_groups_runs_and_keeps_one_record_per_run(memory):
    task, data = memory
    params = {**task.defaults(), **PARAMS}
    runs = plan_config_runs("v", task, params, ["brain", "shuffled", "noise", "l2", "none"],
                            ArmsSpec(l2_grid=[1e-3]), [0, 1, 2])
    vec = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=True)
    seq = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=False)
    # brain/shuffled/noise share their params: one group of 9; l2 and none: 3 each
    assert sorted(len(idx) for _, idx in vec.groups) == [3, 3, 9] and vec.vectorised == 15
    assert seq.groups == [] and seq.vectorised == 0
    rec_v, rec_s = {}, {}
    while not vec.done:
        for r in vec.step():
            rec_v.setdefault(r["key"], []).append(r)
    while not seq.done:
        for r in seq.step():
            rec_s.setdefault(r["key"], []).append(r)
    assert set(rec_v) == set(rec_s) == {r.key for r in runs}
    for key in rec_s:
        assert [r["epoch"] for r in rec_v[key]] == [1, 2, 3, 4]
        assert rec_v[key][-1]["done"] and "summary" in rec_v[key][-1]
        for a, b in zip(rec_v[key], rec_s[key]):
            _same({k: v for k, v in a["metrics"].items() if math.isfinite(v)},
                  {k: v for k, v in b["metrics"].items() if math.isfinite(v)})


def test_a_diverged_member_stops_and_the_others_go_on(memory, monkeypatch):
    task, data = memory
    params = {**task.defaults(), **PARAMS}
    runs = plan_config_runs("d", task, params, ["brain"], ArmsSpec(), [0, 1, 2])
    ex = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=True)
    (group, idx), = ex.groups
    original = group.train_epoch

    def poisoned(active):
        out = original(active)
        if 1 in out:
            out[1] = {**out[1], "loss": float("nan")}
        return out

    monkeypatch.setattr(group, "train_epoch", poisoned)
    records = ex.step()
    assert [r["done"] for r in records] == [False, True, False]
    assert ex.progress[idx[1]].diverged and records[1]["summary"]["diverged"] == 1.0
    while not ex.done:
        for r in ex.step():
            assert r["key"] != runs[1].key  # the diverged run is not stepped again
    assert [p.run.epoch for p in ex.progress] == [4, 1, 4]


def test_restoring_members_at_different_epochs_splits_the_group(memory):
    task, data = memory
    params = {**task.defaults(), **PARAMS}
    runs = plan_config_runs("s", task, params, ["brain"], ArmsSpec(), [0, 1])
    ex = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=True)
    ex.step()
    state = ex.state()
    alone = task.build(data, params, "real", 1)
    alone.train_epoch()
    alone.evaluate()
    alone.train_epoch()  # run 1 checkpointed at epoch 2 (trained alone, elsewhere)
    state[runs[1].key]["run"] = alone.state_dict()
    fresh = ConfigExecutor(task, data, runs, task.primary_metric, vectorise=True)
    fresh.restore(state)
    assert fresh.groups == [] and [p.run.epoch for p in fresh.progress] == [1, 2]
    while not fresh.done:
        fresh.step()
    assert [p.run.epoch for p in fresh.progress] == [4, 4]


def test_the_spec_switch_and_the_plan_say_so(tiny_spec_dict):
    from raybrain.sweep.plan import make_plan
    from raybrain.sweep.spec import parse_spec

    on = parse_spec(tiny_spec_dict)
    off = parse_spec({**tiny_spec_dict, "resources": {"vectorise": False}})
    task = tasks.get("b2m-memory")
    assert "seeds vectorised" in make_plan(on, task).describe()
    assert "seeds vectorised" not in make_plan(off, task).describe()
    assert on.spec_hash() == off.spec_hash()  # where runs train does not change the sweep
