"""Arrays a task keeps per epoch reach MLflow once, and the panel kinds a dashboard file
declares draw what they say (no code in analysis/ per protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from raybrain.analysis.figures import ReportData, RunInfo, draw_panels, load_dashboard
from raybrain.analysis.verdict import build_verdict
from raybrain.errors import SpecError
from raybrain.sweep.arms import plan_config_runs
from raybrain.sweep.arrays import storage_sink
from raybrain.sweep.execute import ConfigExecutor
from raybrain.sweep.spec import ArmsSpec
from raybrain.sweep.tracking import Tracker
from raybrain.tasks.b2m_memory import B2MMemory, MemoryRun

pytestmark = pytest.mark.unit


class _KeepsRDM(B2MMemory):
    """The memory task, keeping its embedding's RDM every epoch and stopping after 2."""

    artifact_every = 1

    def build(self, data, params, brain_source, seed, device="cpu"):
        run = super().build(data, params, brain_source, seed, device)
        run.__class__ = _RDMRun
        return run


class _RDMRun(MemoryRun):
    def artifacts(self, brain_data=False):
        import torch

        with torch.no_grad():
            _, emb = self.model(self.data.heldout.inputs[:4])
        x = emb.mean(1).numpy()
        return {"model_rdm": 1 - np.corrcoef(x)}

    def _train_epoch(self, shard):
        out = super()._train_epoch(shard)
        self.stopped = self.epoch >= 2  # early stopping, as a task may declare
        return out


def test_arrays_reach_mlflow_once_and_the_report_reads_them(tmp_path):
    task = _KeepsRDM()
    task.name = "b2m-memory"
    smoke = B2MMemory.smoke
    data = task.load_data(task.parse_data(smoke["data"]), 0)
    params = {**task.defaults(), **smoke["params"], "epochs": 5}
    runs = plan_config_runs("arr", task, params, ["brain"], ArmsSpec(), [0])
    ex = ConfigExecutor(task, data, runs, task.primary_metric,
                        sink=storage_sink(str(tmp_path / "storage"), "arr"))
    tracker = Tracker(f"sqlite:///{tmp_path}/m.db", "raybrain")
    tracker.open_parent("arr", "h", {"task": "b2m-memory"})
    records = []
    while not ex.done:
        for rec in ex.step():
            records.append(rec)
            tracker.log_record(rec)
    assert [r["epoch"] for r in records] == [1, 2]  # stopped early at 2 of 5 epochs
    assert records[-1]["done"] and all(len(r["artifacts"]) == 1 for r in records)
    for rec in ex.replay():  # a restored trial sends everything again: logged once
        tracker.log_record(rec)
    (run,) = tracker.child_runs()
    assert run.info.status == "FINISHED"
    folders = sorted(a.path for a in tracker.client.list_artifacts(run.info.run_id, "arrays"))
    assert folders == ["arrays/epoch_1", "arrays/epoch_2"]
    assert [a.path for a in tracker.client.list_artifacts(run.info.run_id, "arrays/epoch_2")] \
        == ["arrays/epoch_2/model_rdm.npy"]
    from raybrain.analysis.report import run_arrays

    arrays = run_arrays(tracker.client, run.info.run_id)
    assert sorted(arrays) == [1, 2] and arrays[2]["model_rdm"].shape == (4, 4)
    assert np.allclose(np.diag(arrays[2]["model_rdm"]), 0.0, atol=1e-6)
    # a restore keeps the paths (the replay of a resumed trial carries them again)
    state = ex.state()
    key = runs[0].key
    assert sorted(state[key]["artifact_paths"]) == [1, 2] and state[key]["stopped"] is True


def _report_data(tmp_path, charts, arrays=None):
    recs, infos = [], []
    rng = np.random.default_rng(0)
    for arm in ("brain", "shuffled", "none"):
        for seed in range(4):
            gw = rng.uniform(0.1, 0.9)
            acc = 1.0 - gw + rng.normal(0, 0.02)
            rec = {"arm": arm, "seed": seed, "config_id": "c" if arm != "none" else "n",
                   "baseline_key": "b", "label": {"K": 5} if arm != "none" else {},
                   "final": acc, "area": acc, "best": acc, "val": acc, "diverged": False,
                   "baseline": arm == "none"}
            metrics = {"final_gw_distance": gw, "final_test_accuracy": acc,
                       **{f"final_pred_layer_{i}": (0.5 if arm == "brain" else 0.2) + 0.01 * i
                          for i in range(4)}}
            recs.append(rec)
            infos.append(RunInfo(f"{arm}{seed}", f"{arm}{seed}", rec, metrics))
    table = build_verdict(recs, expected_arms=["brain", "shuffled", "none"])
    return ReportData(sweep="s", task="t", spec=type("S", (), {"arms": ArmsSpec(
        include=["brain", "shuffled", "none"])})(), table=table, runs=infos,
        primary_metric="test_accuracy", primary_mode="max", param="K", charts=charts,
        history_fn=lambda run_id, metric: [], arrays_fn=arrays)


def test_declared_panel_kinds_draw_what_they_say(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "panels:\n"
        "  trajectory: {show: false}\n  area: {show: false}\n  final: {show: false}\n"
        "  alignment: {show: false}\n  divergence: {show: false}\n"
        "  gw: {kind: scatter, x: final_gw_distance, y: final_test_accuracy, title: GW vs acc}\n"
        "  layers: {kind: curve, prefix: final_pred_layer_, xlabel: layer}\n"
        "  rdms: {kind: arrays, names: [model_rdm]}\n")
    charts = load_dashboard("t", "test_accuracy", tmp_path)
    rdm = {1: {"model_rdm": np.eye(3)}, 5: {"model_rdm": np.ones((3, 3))}}
    data = _report_data(tmp_path, charts, arrays=lambda run_id: rdm if run_id == "brain0" else {})
    panels = {p.name: p for p in draw_panels(data)}
    assert list(panels) == ["gw", "layers", "rdms"]
    gw = panels["gw"]
    assert gw.stats["n"] == 12 and gw.stats["pearson_r"] < -0.9  # acc = 1 - gw + noise
    assert "Pearson r = " in gw.figure.axes[0].get_title()
    (ax,) = panels["layers"].figure.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"brain", "shuffled", "none"}
    assert list(lines["brain"].get_xdata()) == [0, 1, 2, 3]
    assert np.allclose(lines["brain"].get_ydata(), [0.5, 0.51, 0.52, 0.53])
    titles = [a.get_title() for a in panels["rdms"].figure.axes if a.get_title()]
    assert titles == ["model_rdm, epoch 1", "model_rdm, epoch 5"]


def test_a_malformed_panel_kind_is_one_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("panels:\n  gw: {kind: scatter, x: a}\n")
    with pytest.raises(SpecError, match=r"panels.gw \(kind 'scatter'\) needs 'y'"):
        load_dashboard("t", "test_accuracy", tmp_path)
    path.write_text("panels:\n  gw: {kind: pie}\n")
    with pytest.raises(SpecError, match="panels.gw.kind must be one of"):
        load_dashboard("t", "test_accuracy", tmp_path)
    path.write_text("panels:\n  gw: {kind: curve, prefix: p, colour: red}\n")
    with pytest.raises(SpecError, match="unknown key 'panels.gw.colour'"):
        load_dashboard("t", "test_accuracy", tmp_path)


def test_arrays_derived_from_brain_data_only_on_opt_in(tmp_path):
    """The spec's tracking.log_brain_data reaches the run's artifacts(): off by default."""
    import raybrain.tasks as tasks

    task = tasks.get("brain-loop-gw")
    smoke = task.smoke
    data = task.load_data(task.parse_data(smoke["data"]), 0)
    params = {**task.defaults(), **smoke["params"], "epochs": 1}
    runs = plan_config_runs("b", task, params, ["brain"], ArmsSpec(), [0])
    for opt_in, names in ((False, ["model_rdm"]), (True, ["brain_rdm", "model_rdm"])):
        stored: dict = {}

        def sink(spec, epoch, arrays):
            stored.update(arrays)
            return [f"{n}.npy" for n in arrays]

        ex = ConfigExecutor(task, data, runs, task.primary_metric, sink=sink,
                            brain_data=opt_in)
        while not ex.done:
            ex.step()
        assert sorted(stored) == names
    assert stored["brain_rdm"].shape == stored["model_rdm"].shape


def test_the_pairwise_panel_compares_models_with_their_targets(tmp_path):
    """Known answer: four 'participants' whose targets differ by known amounts and models
    that copy them: model-to-model dissimilarity tracks participant-to-participant
    dissimilarity (r = 1); without the targets the panel says they were not saved."""
    from raybrain.analysis.panel_kinds import dissimilarity, pairwise_panel

    rng = np.random.default_rng(0)
    base = rng.random((3, 6, 6))
    targets = {}
    for i, who in enumerate(["s1", "s2", "s3", "s4"]):
        t = base + (i + 1) * 0.15 * rng.random((3, 6, 6))
        targets[who] = (t + t.transpose(0, 2, 1)) / 2
    runs, arrays = [], {}
    for who, t in targets.items():
        rec = {"arm": "brain", "seed": 0, "config_id": who, "baseline_key": "b",
               "label": {"participant": who}, "final": 0.5, "area": 0.5, "best": 0.5,
               "val": 0.5, "diverged": False, "baseline": False}
        runs.append(RunInfo(who, who, rec, {}))
        arrays[who] = {7: {"heldout_rdms": t + 1e-3 * rng.random(t.shape), "target_rdms": t}}
    data = _report_data(tmp_path, {})
    data.runs = runs
    data.arrays_fn = lambda run_id: arrays[run_id]
    panel = pairwise_panel(data, "ind", {"array": "heldout_rdms", "reference": "target_rdms",
                                         "by": "participant"})
    assert panel.stats["n"] == 4 and panel.stats["spearman_r"] > 0.9
    d = dissimilarity([np.arange(5.0), np.arange(5.0)[::-1], np.arange(5.0)])
    assert d[0, 1] == pytest.approx(2.0) and d[0, 2] == pytest.approx(0.0)
    for who in arrays:  # the spec did not log brain data: no targets
        del arrays[who][7]["target_rdms"]
    data._arrays.clear()
    panel = pairwise_panel(data, "ind", {"array": "heldout_rdms", "reference": "target_rdms",
                                         "by": "participant"})
    assert panel.stats["spearman_r"] is None and "not saved" in panel.caption
