"""The sweep report: a real tiny sweep (local Ray, MLflow SQLite) rendered to HTML, plus the
figures and chart definitions on hand-made verdicts (no Ray, no MLflow)."""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import pytest

from raybrain.analysis.figures import (PANELS, Panel, ReportData, RunInfo, draw_panels,
                                       load_dashboard, new_figure, register_panel)
from raybrain.analysis.report import add_report_subparser, build_report, run_report_command
from raybrain.analysis.verdict import build_verdict
from raybrain.errors import SpecError
from raybrain.sweep import parse_spec, run_sweep

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def _text(html: str) -> str:
    """The page without its embedded images (base64 can spell anything)."""
    return DATA_URI.sub("data:image/png;base64,", html)


def _no_nan(html: str) -> None:
    assert not re.search(r"\bnan\b", _text(html), re.IGNORECASE)
    assert not re.search(r"\binf\b", _text(html), re.IGNORECASE)


# --------------------------------------------------------------------------- integration
@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:.*seed.*:UserWarning")  # 2 seeds: known, not the point here
def test_report_of_a_real_sweep(ray_session, tmp_path, monkeypatch, tiny_spec_dict):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = parse_spec(tiny_spec_dict)
    result = run_sweep(spec, tracking_uri=uri, out=lambda s: None)

    index = build_report("tiny", tracking_uri=uri)
    assert index == Path("raybrain_report") / "tiny" / "index.html"
    html = index.read_text()
    text = _text(html)
    assert "tiny" in text and "b2m-memory" in text and spec.spec_hash() in text
    for label in ("alpha=0.1", "alpha=0.2"):
        assert f"config {label}" in text
    for arm in ("brain", "shuffled", "noise", "l2[weight_decay=", "none"):
        assert f"<td>{arm}" in text
    # 2 seeds cannot reach p < 0.05: said in place of a verdict
    assert ("cannot be positive with n = 2 per arm across 2 configs (smallest attainable "
            "Holm-corrected p = 0.333)") in text
    assert "Mann-Whitney p" in text and "Wilcoxon p (Holm)" in text and "95% bootstrap CI" in text
    assert "Spearman r" in text and "Divergence" in text
    _no_nan(html)
    out = index.parent
    stems = ["fig1_trajectory", "fig2_area", "fig3_final", "fig4_alignment", "fig5_divergence"]
    assert len(DATA_URI.findall(html)) == len(stems)
    for stem in stems:
        assert (out / f"{stem}.png").stat().st_size > 5_000
        assert (out / f"{stem}.svg").stat().st_size > 5_000
        assert f'id="{stem}"' in html
    assert (out / "verdict.csv").read_bytes().decode() == result.table.to_csv()
    # every metric per epoch, mean and s.e.m. over the 2 seeds, per config and arm
    import csv

    rows = list(csv.DictReader((out / "epochs.csv").open()))
    keyed = {(r["config"], r["arm"], r["metric"], r["epoch"]): r for r in rows}
    for metric in ("test_accuracy", "task_loss", "transfer_loss", "align_cka", "test_accuracy_auc"):
        for epoch in ("1", "2"):
            row = keyed[("alpha=0.1", "brain", metric, epoch)]
            assert row["n"] == "2" and row["sem"] != ""
    brain_acc = [c for c in MlflowClient(uri).search_runs(
        [result.experiment_id], "tags.`raybrain.arm` = 'brain'")
        if c.data.params["alpha"] == "0.1"]
    expected = sum(c.data.metrics["final_test_accuracy"] for c in brain_acc) / len(brain_acc)
    assert float(keyed[("alpha=0.1", "brain", "test_accuracy", "2")]["mean"]) == pytest.approx(expected)
    assert ("baseline", "none", "test_accuracy", "1") in keyed
    # every child run is listed
    assert text.count("<code>") >= 12 + 6
    assert "brain[alpha=0.1] seed=0" in text and "FINISHED" in text
    # nothing outside the page is loaded
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)
    assert "<link" not in html and "<script" not in html

    client = MlflowClient(uri)
    parent = client.get_run(result.parent_run_id)
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"index.html", "verdict.csv", "epochs.csv"} <= logged
    assert {f"{s}.png" for s in stems} <= logged and {f"{s}.svg" for s in stems} <= logged

    # by parent run id, through the CLI entry points, without logging
    parser = argparse.ArgumentParser()
    add_report_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", result.parent_run_id, "--tracking-uri", uri,
                              "--out", str(tmp_path / "by-id"), "--no-log"])
    assert run_report_command(args) == 0
    assert "config alpha=0.2" in (tmp_path / "by-id" / "index.html").read_text()

    # runs of an arm lost (here: the noise runs marked FAILED): the verdict names the
    # comparison that cannot be made and the rest still renders
    for run in client.search_runs([parent.info.experiment_id],
                                  "tags.`raybrain.arm` = 'noise'"):
        client.set_terminated(run.info.run_id, status="FAILED")
    html = build_report("tiny", tracking_uri=uri, out_dir=tmp_path / "lost",
                        log_to_mlflow=False).read_text()
    assert "brain vs noise: cannot be made" in html and "config alpha=0.1" in html
    assert len(DATA_URI.findall(html)) == len(stems)
    _no_nan(html)

    # a second tiny sweep without the noise arm and with 1 seed: "cannot be made" for noise,
    # statistics "not computable", never NaN
    d = copy.deepcopy(tiny_spec_dict)
    d.update(name="tiny-partial", seeds=1, arms={"include": ["brain", "shuffled", "none"]})
    d["params"]["alpha"] = {"grid": [0.2]}
    with pytest.warns(UserWarning, match="seed"):
        run_sweep(parse_spec(d), tracking_uri=uri, out=lambda s: None)
    html = build_report("tiny-partial", tracking_uri=uri).read_text()
    text = _text(html)
    assert "brain vs noise: cannot be made" in text and "brain vs l2: cannot be made" in text
    assert "not computable" in text and "config alpha=0.2" in text
    assert len(DATA_URI.findall(html)) == len(stems)
    _no_nan(html)

    # unknown sweep: one line naming it and the known sweeps
    with pytest.raises(SpecError) as err:
        build_report("no-such-sweep", tracking_uri=uri)
    msg = str(err.value)
    assert "no-such-sweep" in msg and "tiny" in msg and "tiny-partial" in msg
    assert "\n" not in msg
    with pytest.raises(SpecError, match="experiment 'nope' does not exist.*raybrain"):
        build_report("tiny", tracking_uri=uri, experiment="nope")


@pytest.mark.unit
def test_unknown_store(tmp_path):
    missing = tmp_path / "nothing.db"
    with pytest.raises(SpecError, match="unknown sweep 'x'.*no MLflow store"):
        build_report("x", tracking_uri=f"sqlite:///{missing}")
    assert not missing.exists()  # looking did not create a store


# --------------------------------------------------------------------------- figures
def _spec(arms=("brain", "shuffled", "noise", "l2", "none"), alphas=(0.1, 0.2, 0.4), seeds=5):
    return parse_spec({"name": "hand", "task": "b2m-memory", "seeds": seeds,
                       "params": {"alpha": {"grid": list(alphas)}},
                       "arms": {"include": list(arms), "l2_grid": [1e-4, 1e-3]}})


def _hand_data(spec, task="b2m-memory", level=None, charts=None) -> ReportData:
    """Runs with known outcomes: brain beats every control at alpha 0.2 only."""
    level = level or (lambda arm, alpha, wd: {"brain": 0.9 if alpha == 0.2 else 0.7,
                                              "shuffled": 0.7, "noise": 0.69, "none": 0.7,
                                              "l2": 0.72 if wd == 1e-4 else 0.6}[arm])
    runs, hist = [], {}
    alphas = next(iter(spec.searched()["alpha"].values()))
    plan = [(a, {"alpha": alpha}, False, alpha, None) for alpha in alphas
            for a in ("brain", "shuffled", "noise") if a in spec.arms.include]
    plan += [("l2", {"weight_decay": wd}, True, 0.0, wd) for wd in spec.arms.l2_grid
             if "l2" in spec.arms.include]
    plan += [("none", {}, True, 0.0, None)] if "none" in spec.arms.include else []
    for arm, label, baseline, alpha, wd in plan:
        for seed in spec.seed_list:
            top = level(arm, alpha, wd) + 0.004 * seed
            curve = [0.5 + (top - 0.5) * e / 4 for e in range(1, 5)]
            run_id = f"{arm}-{alpha}-{wd}-{seed}"
            hist[run_id] = list(enumerate(curve, 1))
            runs.append(RunInfo(run_id, run_id, {
                "arm": arm, "seed": seed, "config_id": f"c{alpha}" if not baseline else run_id[:-2],
                "baseline_key": "bk", "label": label, "final": curve[-1],
                "area": sum(curve) / 4, "best": curve[-1], "val": curve[-1],
                "diverged": arm == "noise" and seed == 0, "baseline": baseline,
                "align_cka": 0.6 if arm == "brain" else 0.3 + 0.01 * seed,
                "align_rsa": 0.5 + 0.01 * seed if arm == "brain" else 0.2}))
    table = build_verdict([r.record for r in runs], expected_arms=list(spec.arms.include),
                          align_metrics={"align_cka": "max", "align_rsa": "max"})
    return ReportData(sweep="hand", task=task, spec=spec, table=table, runs=runs,
                      primary_metric="test_accuracy", primary_mode="max", param=spec.primary,
                      charts=charts or load_dashboard("b2m-memory", "test_accuracy"),
                      history_fn=lambda run_id, metric: hist[run_id])


def _stars(ax) -> list[float]:
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() == "*"]


@pytest.mark.unit
def test_figures_show_what_the_verdict_says():
    data = _hand_data(_spec())
    assert data.table.of("verdict", "alpha=0.2")[0]["verdict"] == "brain helps"
    panels = {p.name: p for p in draw_panels(data)}
    assert list(panels) == ["trajectory", "area", "final", "alignment", "divergence"]
    for name in ("area", "final"):
        (ax,) = panels[name].figure.axes
        assert _stars(ax) == [0.2]  # a star exactly where the verdict says "brain helps"
        assert ax.get_xlabel() == "alpha" and ax.get_ylabel()
        labels = ax.get_legend_handles_labels()[1]
        assert {"brain", "shuffled", "noise", "none"} <= set(labels)
        assert any(lab.startswith("best L2 (wd=0.0001)") for lab in labels)
        assert "Stars at: 0.2." in panels[name].caption
    (ax,) = panels["trajectory"].figure.axes
    labels = ax.get_legend_handles_labels()[1]
    assert [lab for lab in labels if lab.startswith("brain")] == [
        "brain, alpha=0.1", "brain, alpha=0.2", "brain, alpha=0.4"]
    assert "none (no brain term)" in labels and any(lab.startswith("best L2") for lab in labels)
    # the controls the verdict is built on are drawn too, at every value of the parameter
    for arm in ("shuffled", "noise"):
        assert [lab for lab in labels if lab.startswith(arm)] == [
            f"{arm}, alpha=0.1", f"{arm}, alpha=0.2", f"{arm}, alpha=0.4"]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "test accuracy"
    assert [line.get_linestyle() for line in ax.get_lines()
            if line.get_label().startswith("none")] == ["--"]
    axes = panels["alignment"].figure.axes
    assert len(axes) == 4 and "Spearman r = " in axes[2].get_title()
    (ax,) = panels["divergence"].figure.axes
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0/15", "0/15", "3/15", "0/10", "0/5"]  # zero bars are labelled too


@pytest.mark.unit
def test_figures_with_one_seed_and_a_missing_arm():
    data = _hand_data(_spec(arms=("brain", "shuffled", "none"), alphas=(0.2,), seeds=1))
    panels = draw_panels(data)
    assert len(panels) == 5
    assert "not computable" in data.table.of("verdict")[0]["verdict"]
    for p in panels:
        fig = p.figure
        fig.canvas.draw()
        assert "nan" not in p.caption.lower()
    assert "no bands" in panels[0].caption
    assert _stars(panels[1].figure.axes[0]) == []


@pytest.mark.unit
def test_dashboard_file_and_extra_panels(tmp_path):
    (tmp_path / "my-task.yaml").write_text(
        "task: my-task\npanels:\n  area: {title: Learning speed, ylabel: AUC}\n"
        "  final: {show: false}\n  spikes: {bins: 7}\n")
    charts = load_dashboard("my-task", "test_accuracy", tmp_path)
    assert charts["area"]["title"] == "Learning speed" and charts["area"]["ylabel"] == "AUC"
    assert charts["trajectory"]["metric"] == "test_accuracy"  # default kept
    assert charts["spikes"] == {"bins": 7}
    assert load_dashboard("absent", "loss", tmp_path)["trajectory"]["metric"] == "loss"

    seen = {}

    @register_panel("my-task", "spikes")
    def spikes(data, chart):
        seen.update(chart)
        fig = new_figure()
        fig.add_subplot().plot([0, 1], [0, 1])
        return Panel("spikes", fig, "an extra panel")

    try:
        data = _hand_data(_spec(), task="my-task", charts=charts)
        names = [p.name for p in draw_panels(data)]
        assert names == ["trajectory", "area", "alignment", "divergence", "spikes"]
        assert seen == {"bins": 7}
        assert data.charts["area"]["title"] == "Learning speed"
        with pytest.raises(ValueError, match="already registered"):
            register_panel("my-task", "spikes")(lambda data, chart: None)
    finally:
        PANELS._items.pop("my-task:spikes", None)

    (tmp_path / "bad.yaml").write_text("panels:\n  area: {colour: red}\n")
    with pytest.raises(SpecError, match="panels.area.colour"):
        load_dashboard("bad", "test_accuracy", tmp_path)
    (tmp_path / "worse.yaml").write_text("pannels: {}\n")
    with pytest.raises(SpecError, match="unknown key 'pannels'"):
        load_dashboard("worse", "test_accuracy", tmp_path)


@pytest.mark.unit
def test_shipped_dashboard_parses():
    charts = load_dashboard("b2m-memory", "test_accuracy")
    assert charts["trajectory"]["metric"] == "test_accuracy"
    assert charts["alignment"]["metrics"] == ["align_cka", "align_rsa"]
