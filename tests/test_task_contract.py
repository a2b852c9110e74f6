"""The task contract, checked on every registered task (POT runs its tests over every
backend the same way): a new protocol that passes these runs under the sweep, the verdict
and the report without an edit there.

Each task is exercised on its declared smoke configuration (``Task.smoke``).
"""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import raybrain.tasks as tasks
from raybrain.errors import SpecError
from raybrain.sweep.arms import arm_names, plan_config_runs
from raybrain.sweep.spec import ArmsSpec, SpecWarning, parse_spec, validate_spec
from raybrain.tasks.base import validation_metric

pytestmark = pytest.mark.unit

TASKS = tasks.names()


def _spec_dict(task) -> dict:
    smoke = copy.deepcopy(task.smoke)
    return {"name": f"contract-{task.name}", "task": task.name, "data": smoke["data"],
            "params": smoke["params"], "arms": {"include": ["brain", "shuffled", "noise"]},
            "seeds": 2}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Per task: (task, params, data) on the smoke configuration, prepared as a sweep would."""
    cache = {}

    def get(name):
        if name not in cache:
            task = tasks.get(name)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(tmp_path_factory.mktemp(name))
                spec = parse_spec(_spec_dict(task))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SpecWarning)
                    checked = validate_spec(spec)
                prepared, _, _ = task.prepare(checked["data"])
                data = task.load_data(task.parse_data(prepared or spec.data), 0)
            params = {**task.defaults(), **spec.params}
            cache[name] = (task, params, data)
        return cache[name]

    return get


def _epoch(run) -> dict[str, float]:
    return {**run.train_epoch(), **run.evaluate()}


@pytest.mark.parametrize("name", TASKS)
def test_declarations_are_consistent(name):
    task = tasks.get(name)
    assert task.smoke.get("data") is not None and task.smoke.get("params") is not None, \
        f"{name} declares no smoke configuration"
    assert task.primary_metric in task.metrics and task.primary_mode in ("max", "min")
    assert task.primary_metric.startswith("test_"), "the primary metric has a validation twin"
    assert validation_metric(task.primary_metric) in task.metrics
    for metric, mode in task.align_metrics.items():
        assert metric in task.metrics and mode in ("max", "min"), (metric, mode)
    if task.brain_weight is not None:
        assert task.brain_weight in task.params
    if task.l2_param is not None:
        assert task.l2_param in task.params and not task.params[task.l2_param].brain
    assert task.epochs_param in task.params
    for arm, overrides in task.ablations.items():
        assert set(overrides) <= set(task.params), (arm, overrides)
    # every declared path key is a field of the data section (at some depth)
    fields = _all_fields(task.data_model)
    assert set(task.data_paths) <= fields, set(task.data_paths) - fields


def _all_fields(model) -> set[str]:
    from pydantic import BaseModel

    out = set()
    for fname, info in model.model_fields.items():
        out.add(fname)
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                out |= _all_fields(arg)
            for inner in getattr(arg, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out |= _all_fields(inner)
    return out


@pytest.mark.parametrize("name", TASKS)
def test_declared_metrics_are_returned(name, loaded):
    task, params, data = loaded(name)
    run = task.build(data, params, "real", seed=0)
    train = run.train_epoch()
    evaluated = run.evaluate()
    got = {**train, **evaluated}
    missing = set(task.metrics) - set(got)
    assert not missing, f"{name} declares metrics it does not return: {sorted(missing)}"
    # the test metric and its validation twin come from evaluation (held-out data)
    assert task.primary_metric in evaluated
    assert validation_metric(task.primary_metric) in evaluated
    assert all(isinstance(v, float) for v in got.values())
    assert math.isfinite(got[task.primary_metric])
    for metric in task.align_metrics:
        assert metric in evaluated, f"alignment metric {metric} is measured on held-out data"
    # arrays kept after evaluation: called as the sweep calls it, both ways of the
    # tracking.log_brain_data switch; named numpy arrays, brain-derived only on opt-in
    import numpy as np

    plain = run.artifacts(brain_data=False)
    opted = run.artifacts(brain_data=True)
    for arrays in (plain, opted):
        assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items())
    assert set(plain) <= set(opted)


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_numbers_and_seeds_differ(name, loaded):
    task, params, data = loaded(name)
    a = _epoch(task.build(data, params, "real", seed=3))
    b = _epoch(task.build(data, params, "real", seed=3))
    c = _epoch(task.build(data, params, "real", seed=4))
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", TASKS)
def test_resumed_run_equals_uninterrupted(name, loaded):
    task, params, data = loaded(name)
    straight = task.build(data, params, "real", seed=1)
    want = [_epoch(straight) for _ in range(2)]

    first = task.build(data, params, "real", seed=1)
    got = [_epoch(first)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # the checkpoint as it goes to disk
    buf.seek(0)
    resumed = task.build(data, params, "real", seed=1)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.epoch == 1
    got.append(_epoch(resumed))
    assert got == want


@pytest.mark.parametrize("name", TASKS)
def test_every_arm_builds_and_trains(name, loaded):
    task, params, data = loaded(name)
    include = [a for a in arm_names(task) if a != "l2" or task.l2_param is not None]
    runs = plan_config_runs("c", task, params, include, ArmsSpec(l2_grid=[1e-4]), [0])
    assert {r.arm for r in runs} == set(include)
    for r in runs:
        if r.is_baseline and task.brain_weight is not None:
            assert r.params[task.brain_weight] == 0.0
        run = task.build(data, r.params, r.brain_source, r.seed)
        metrics = _epoch(run)
        assert task.primary_metric in metrics, r.arm


@pytest.mark.parametrize("name", TASKS)
def test_bad_params_are_refused(name, loaded, write_spec):
    task, params, data = loaded(name)
    if task.brain_weight is not None:
        with pytest.raises(SpecError, match=task.brain_weight):
            task.build(data, {**params, task.brain_weight: 0.0}, "real", seed=0)
    base = _spec_dict(task)
    bad = {**base, "params": {**base["params"], "no_such_knob": 1}}
    with pytest.raises(SpecError, match="no_such_knob"):
        validate_spec(parse_spec(bad), check_data=False)
    for pname, p in task.params.items():
        if p.low is not None and p.kind in (int, float):
            low = p.low - 1 if p.kind is int else p.low - abs(p.low) - 1.0
            bad = {**base, "params": {**base["params"], pname: p.kind(low)}}
            with pytest.raises(SpecError, match=pname):
                validate_spec(parse_spec(bad), check_data=False)
        if p.choices is not None:
            bad = {**base, "params": {**base["params"], pname: "not-a-choice"}}
            with pytest.raises(SpecError, match=pname):
                validate_spec(parse_spec(bad), check_data=False)


def test_tasks_outside_the_package_register_through_entry_points(tmp_path):
    """A lab's package declares its task in the ``raybrain.tasks`` entry-point group; a
    fresh interpreter (as a Ray worker is) finds it without importing it by hand."""
    pkg = tmp_path / "labtasks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        from raybrain.tasks.b2m_memory import B2MMemory

        class LabTask(B2MMemory):
            """A lab's protocol (here: the memory task under another name)."""
    '''))
    dist = tmp_path / "labtasks-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: labtasks\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[raybrain.tasks]\nlab-task = labtasks:LabTask\n")
    code = ("import raybrain.tasks as t; task = t.get('lab-task'); "
            "print(task.name, type(task).__name__, 'b2m-memory' in t.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lab-task", "LabTask", "True"]
    # a broken entry point is an error naming it, never a task that silently vanished
    (dist / "entry_points.txt").write_text("[raybrain.tasks]\nbroken = labtasks:Missing\n")
    out = subprocess.run([sys.executable, "-c", "import raybrain.tasks as t; t.names()"],
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=600)
    assert out.returncode != 0 and "task entry point 'broken'" in out.stderr


GROUP_TASKS = [n for n in TASKS if tasks.get(n).can_vectorise]


@pytest.mark.parametrize("name", GROUP_TASKS)
def test_a_vectorised_group_gives_each_run_its_numbers(name, loaded):
    """Tasks with a vectorised path: each member of a group trains as its run alone (to
    rounding), and its checkpoint is a run's checkpoint."""
    task, params, data = loaded(name)
    members = [("real", 0), ("shuffled", 1), (None, 2)]
    group = task.build_group(data, params, members)
    alone = [task.build(data, params, src, seed) for src, seed in members]
    trained, evaluated = group.train_epoch([0, 1, 2]), group.evaluate([0, 1, 2])
    for k, run in enumerate(alone):
        want = {**run.train_epoch(), **run.evaluate()}
        got = {**trained[k], **evaluated[k]}
        assert set(got) == set(want)
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-3), key
    for k, (src, seed) in enumerate(members):
        run = task.build(data, params, src, seed)
        run.load_state_dict(group.members[k].state_dict())
        assert run.epoch == 1


@pytest.mark.parametrize("name", [n for n in TASKS if tasks.get(n).max_workers is not None])
def test_more_workers_than_a_task_can_use_are_refused(name):
    task = tasks.get(name)
    d = {**_spec_dict(task), "resources": {"num_workers": task.max_workers + 1}}
    with pytest.raises(SpecError, match="num_workers must be <="):
        validate_spec(parse_spec(d), check_data=False)
