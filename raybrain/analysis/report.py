"""The sweep report: one self-contained HTML page, its figures and the verdict as CSV.

``build_report(sweep)`` reads a finished (or interrupted) sweep back from MLflow: the spec
from the parent run's ``spec.json``, the verdict with
:func:`raybrain.analysis.verdict.verdict_table`, per-epoch histories of the judged stage's
finished child runs. It draws the figures of :mod:`raybrain.analysis.figures` (PNG and
SVG), writes ``index.html`` (PNGs inlined as data URIs, inline CSS, nothing fetched from
elsewhere) and ``verdict.csv`` to ``./raybrain_report/<sweep>/``, and logs them as
artifacts of the parent run under ``report/``. The report runs after the sweep in one
process, so it is the store's only writer while it logs.

Values that cannot be computed (an arm with fewer than 2 seeds, a missing arm) are shown
as "not computable" or explained by the verdict's notes, never as NaN.

CLI: ``raybrain report SWEEP [--out DIR] [--tracking-uri URI] [--experiment NAME]
[--no-log]`` (see :func:`add_report_subparser` and :func:`run_report_command`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from raybrain.analysis.figures import Panel, ReportData, RunInfo, draw_panels, load_dashboard
from raybrain.errors import SpecError

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "raybrain"
NC = "not computable"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------- lookup
def _check_store(uri: str, sweep: str) -> None:
    """A sqlite store that does not exist would be created by opening it: refuse first."""
    if not uri.startswith("sqlite:"):
        return
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///", "sqlite:///:memory:"):
        raise SpecError(f"tracking URI {uri!r} names no database file; expected "
                        f"sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if not path.is_file():
        raise SpecError(f"unknown sweep {sweep!r}: there is no MLflow store {uri!r} (no file "
                        f"{path.resolve()}); run a sweep first or pass --tracking-uri")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def known_sweeps(client, experiment_id: str) -> list[str]:
    """Names of the sweeps (parent runs) of an experiment."""
    names, token = set(), None
    while True:
        page = client.search_runs([experiment_id], filter_string="tags.`raybrain.role` = 'sweep'",
                                  max_results=1000, page_token=token)
        names.update(r.data.tags.get("raybrain.sweep", r.info.run_id) for r in page)
        token = page.token
        if not token:
            return sorted(names)


def find_sweep(client, experiment_id: str, experiment: str, sweep: str):
    """The parent run of ``sweep`` (a sweep name or a parent run id); SpecError otherwise."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`raybrain.sweep` = {_quote(sweep)} and tags.`raybrain.role` = 'sweep'",
        max_results=1)
    if runs:
        return runs[0]
    if _RUN_ID.match(sweep):
        try:
            run = client.get_run(sweep)
        except Exception:  # noqa: BLE001 -- any lookup failure means "not a run id here"
            run = None
        if (run is not None and run.info.experiment_id == experiment_id
                and run.data.tags.get("raybrain.role") == "sweep"):
            return run
    known = known_sweeps(client, experiment_id)
    raise SpecError(f"unknown sweep {sweep!r} in experiment {experiment!r}; known sweeps: "
                    f"{', '.join(known) if known else '(none)'}")


def _spec_of(client, parent) -> Any:
    from raybrain.sweep.spec import parse_spec

    name = parent.data.tags.get("raybrain.sweep", parent.info.run_id)
    quiet = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(quiet)
    os.environ[quiet] = "false"  # no progress bar for one small file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(parent.info.run_id, "spec.json", tmp)
                raw = json.loads(Path(path).read_text())
            except Exception as exc:  # noqa: BLE001 -- missing, unreadable or not JSON
                raise SpecError(f"sweep {name!r}: its parent run has no readable spec.json "
                                f"artifact ({type(exc).__name__}); cannot build a report") from None
    finally:
        if before is None:
            os.environ.pop(quiet, None)
        else:
            os.environ[quiet] = before
    return parse_spec(raw, source=f"sweep {name!r} spec.json")


# --------------------------------------------------------------------------- build
def build_report(sweep: str, tracking_uri: str = DEFAULT_URI, experiment: str = DEFAULT_EXPERIMENT,
                 out_dir: str | Path | None = None, log_to_mlflow: bool = True,
                 dashboards_dir: str | Path | None = None, table=None) -> Path:
    """Write the report of ``sweep`` and return the path of its ``index.html``.

    Parameters
    ----------
    sweep : str
        Sweep name (the parent run's ``raybrain.sweep`` tag) or the parent run id.
    tracking_uri, experiment : str
        Where the sweep was tracked.
    out_dir : str or Path, optional
        Output directory (default ``./raybrain_report/<sweep>/``).
    log_to_mlflow : bool
        Also log the figures, ``index.html`` and ``verdict.csv`` to the parent run under
        ``report/``.
    dashboards_dir : str or Path, optional
        Where ``<task>.yaml`` chart definitions live (default: the repository's
        ``dashboards/``).
    table : VerdictTable, optional
        The sweep's verdict when the caller has just computed it (the end of a sweep);
        None computes it from MLflow.

    Raises
    ------
    SpecError
        Unknown store, experiment or sweep (one line listing the known sweeps), or a parent
        run without a readable spec.
    """
    from mlflow.tracking import MlflowClient

    import raybrain.tasks as tasks
    from raybrain.analysis.verdict import runs_to_records, verdict_table
    from raybrain.sweep.tracking import Tracker

    _check_store(tracking_uri, sweep)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SpecError(f"unknown sweep {sweep!r}: experiment {experiment!r} does not exist in "
                        f"{_safe_uri(tracking_uri)}; known experiments: "
                        f"{', '.join(names) or '(none)'}")
    parent = find_sweep(client, exp.experiment_id, experiment, sweep)
    name = parent.data.tags.get("raybrain.sweep", parent.info.run_id)
    spec = _spec_of(client, parent)
    task = tasks.get(spec.task)

    tracker = Tracker(tracking_uri, experiment)
    tracker.parent_id = parent.info.run_id
    if table is None:
        table = verdict_table(tracker, spec)
    children = tracker.child_runs()
    runs = []
    for run in children:
        recs = runs_to_records([run], task.primary_metric, table.stage,
                               tuple(task.align_metrics))
        if recs:
            runs.append(RunInfo(run.info.run_id, run.info.run_name or "", recs[0],
                                dict(run.data.metrics)))

    def history(run_id: str, metric: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, metric)]

    def arrays(run_id: str) -> dict[int, dict[str, Any]]:
        return run_arrays(client, run_id)

    charts = load_dashboard(spec.task, task.primary_metric, dashboards_dir,
                            align_metrics=list(task.align_metrics))
    data = ReportData(sweep=name, task=spec.task, spec=spec, table=table, runs=runs,
                      primary_metric=task.primary_metric, primary_mode=task.primary_mode,
                      param=spec.primary, charts=charts, history_fn=history,
                      arrays_fn=arrays)
    out = Path(out_dir) if out_dir is not None else Path("raybrain_report") / name
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("fig[0-9]*_*.png"), *out.glob("fig[0-9]*_*.svg")]:
        old.unlink()  # figures of an earlier report of this sweep (panels may have changed)
    panels = draw_panels(data)
    files: list[Path] = []
    images: list[tuple[Panel, str]] = []
    for i, panel in enumerate(panels, 1):
        stem = f"fig{i}_{panel.name}"
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        panel.figure.savefig(png, format="png", dpi=110, metadata={"Software": None})
        panel.figure.savefig(svg, format="svg", metadata={"Date": None})
        files += [png, svg]
        images.append((panel, stem))
    csv_path = out / "verdict.csv"
    csv_path.write_bytes(table.to_csv().encode("utf-8"))
    epochs_path = out / "epochs.csv"
    metrics = [*task.metrics, f"{task.primary_metric}_auc"]
    epochs_path.write_bytes(epoch_summary(data, metrics).encode("utf-8"))
    files.append(epochs_path)
    page = render_html(data, parent, children, images, out, tracking_uri, experiment)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    files += [csv_path, index]
    if log_to_mlflow:
        for f in files:
            client.log_artifact(parent.info.run_id, str(f), artifact_path="report")
    return index


def epoch_summary(data: ReportData, metrics: list[str]) -> str:
    """CSV of every metric per epoch, per (config, arm): n, mean and s.e.m. over seeds.

    Baseline runs are grouped under config "baseline" with their arm name (L2 runs by
    weight decay, e.g. ``l2[weight_decay=1e-05]``). s.e.m. is empty below 2 values.
    """
    import csv
    import io

    from raybrain.analysis.verdict import config_label

    groups: dict[tuple[str, str], list[RunInfo]] = {}
    for r in data.runs:
        rec = r.record
        if rec["baseline"]:
            wd = rec["label"].get("weight_decay")
            key = ("baseline", f"l2[weight_decay={wd}]" if rec["arm"] == "l2" else rec["arm"])
        else:
            key = (config_label(rec["label"]), rec["arm"])
        groups.setdefault(key, []).append(r)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["config", "arm", "metric", "epoch", "n", "mean", "sem"])
    for (config, arm), runs in groups.items():
        for metric in metrics:
            by_epoch: dict[int, list[float]] = {}
            for r in runs:
                for step, v in data.history(r.run_id, metric):
                    if v is not None and math.isfinite(v):
                        by_epoch.setdefault(int(step), []).append(float(v))
            for epoch in sorted(by_epoch):
                vals = by_epoch[epoch]
                sem = (float(np.std(vals, ddof=1) / math.sqrt(len(vals)))
                       if len(vals) >= 2 else "")
                w.writerow([config, arm, metric, epoch, len(vals), float(np.mean(vals)), sem])
    return buf.getvalue()


# --------------------------------------------------------------------------- formatting
def _safe_uri(uri: str) -> str:
    """The tracking URI without credentials."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nc() -> str:
    return f'<span class="nc">{NC}</span>'


def _fmt(x: float) -> str:
    """3 decimals for ordinary magnitudes, 3 significant digits for tiny or huge ones."""
    if x != 0 and (abs(x) < 0.01 or abs(x) >= 1000):
        return f"{x:.3g}"
    return f"{x:.3f}"


def _num(x) -> str:
    return _fmt(x) if _finite(x) else _nc()


def _pm(mean, sem) -> str:
    if not _finite(mean):
        return _nc()
    return f"{_fmt(mean)} &plusmn; {_fmt(sem) if _finite(sem) else _nc()}"


def _p(x, significance: float | None = None) -> str:
    if not _finite(x):
        return _nc()
    text = f"{x:.2g}" if x < 0.001 else f"{x:.3f}"
    return f"<b>{text}</b>" if significance is not None and x < significance else text


def _ci(lo, hi) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if _finite(lo) and _finite(hi) else _nc()


def _e(text: Any) -> str:
    return html.escape(str(text))


def _verdict_class(verdict: str | None) -> str:
    if verdict == "brain helps":
        return "yes"
    if verdict and verdict.startswith(("not computable", "cannot be positive")):
        return "nc"
    return "no"


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1100px;padding:1.2em 1.6em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.86em}
th,td{border:1px solid #d8d8d8;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.r,th.r{text-align:right}
tbody tr:nth-child(even){background:#fafafa}
.meta td:first-child{font-weight:600;background:#f7f7f7}
.nc{color:#888;font-style:italic}
.verdict{font-weight:600;padding:.05em .4em;border-radius:3px}
.verdict.yes{background:#e3f4e1;color:#1e6b1e}.verdict.no{background:#f6ecd9;color:#7a5200}
.verdict.nc{background:#eee;color:#555}
.note{color:#8a3b12}.warn{background:#fff4e0;border:1px solid #f0c36d;padding:.5em .8em}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #e5e5e5}
figcaption{font-size:.88em;color:#333;margin-top:.3em}
code{background:#f4f4f4;padding:0 .25em;border-radius:3px}
.small{font-size:.85em;color:#555}
"""


def _meta(data: ReportData, parent, tracking_uri: str, experiment: str) -> str:
    spec = data.spec
    status = parent.info.status
    stage = data.table.stage
    spec_hash = parent.data.tags.get("raybrain.spec_hash", spec.spec_hash())
    better = "higher" if data.primary_mode == "max" else "lower"
    rows = [
        ("sweep", _e(data.sweep)), ("task", _e(data.task)),
        ("stage judged", _e(stage) + (" (fresh seeds; the search's seeds chose the configs)"
                                       if stage == "confirm" else "")),
        ("spec hash", f"<code>{_e(spec_hash)}</code>"),
        ("parent run", f"<code>{_e(parent.info.run_id)}</code> ({_e(status)})"),
        ("tracking", f"<code>{_e(_safe_uri(tracking_uri))}</code>, experiment {_e(experiment)}"),
        ("primary metric", f"{_e(data.primary_metric)} ({better} is better); final value and "
                           f"trajectory area"),
        ("grouped by", _e(data.param or "config label (no searched parameter)")),
        ("arms", _e(", ".join(spec.arms.include))),
        ("seeds per arm", _e(len(spec.confirm_seeds) if data.table.stage == "confirm"
                             else len(spec.seed_list))),
        ("significance", _e(data.table.significance)),
        ("execution", _e(parent.data.tags.get("raybrain.execution", "-"))),
    ]
    out = _table(["", ""], [[k, v] for k, v in rows], "meta").replace(
        "<thead><tr><th></th><th></th></tr></thead>", "")
    if status != "FINISHED":
        out += (f'<p class="warn">The sweep\'s parent run is {_e(status)}: the sweep is not '
                f"complete and this report covers its finished runs only.</p>")
    return out


def _glance(data: ReportData) -> str:
    prim = data.primary_metric
    rows = []
    for config in data.configs():
        cells = [_e(config)]
        for which in ("final", "area"):
            v = data.verdict(config, f"{which}_{prim}")
            cells.append(f'<span class="verdict {_verdict_class(v)}">{_e(v)}</span>' if v
                         else _nc())
        tests = data.table.of("test", config)
        cells.append(_e(", ".join(dict.fromkeys(r["comparison"] for r in tests)) or "none"))
        rows.append(cells)
    if not rows:
        return (f'<p class="warn">No finished runs of the {_e(data.table.stage)} stage: '
                f"nothing to judge yet.</p>")
    return _table(["config", f"verdict on final {_e(prim)}", f"verdict on area ({_e(prim)})",
                   "brain compared with"], rows)


def _config_section(data: ReportData, config: str) -> str:
    prim = data.primary_metric
    t = data.table
    shown = "- (no searched parameter)" if config == "-" else config
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", config)
    parts = [f'<h3 id="config-{_e(slug)}">config {_e(shown)}</h3>']
    for r in t.of("verdict", config):
        parts.append(f'<p>verdict on {_e(r["metric"])}: <span class="verdict '
                     f'{_verdict_class(r["verdict"])}">{_e(r["verdict"])}</span> '
                     f'<span class="small">(rule: {_e(r["note"])})</span></p>')
    arms = t.of("arm", config)
    if arms:
        rows = []
        for arm in dict.fromkeys(r["arm"] for r in arms):
            f = next((r for r in arms if r["arm"] == arm and r["metric"] == f"final_{prim}"), None)
            a = next((r for r in arms if r["arm"] == arm and r["metric"] == f"area_{prim}"), None)
            if f is None or a is None:
                continue
            rows.append([_e(arm), str(f["n"]), _pm(f["mean"], f["sem"]), _num(f["median"]),
                         _num(f["best"]), _pm(a["mean"], a["sem"]), _num(a["median"]),
                         f"{f['diverged']}/{f['n']}"])
        parts.append(_table(["arm", "n", f"final {_e(prim)} (mean &plusmn; s.e.m.)", "median",
                             f"best {_e(prim)} (mean)", "area (mean &plusmn; s.e.m.)", "median",
                             "diverged"], rows))
    tests = t.of("test", config)
    if tests:
        sig = t.significance
        rows = [[_e(r["comparison"]), _e(r["metric"]), str(r["n"]), _p(r["p_mannwhitney"]),
                 _p(r["p_mannwhitney_holm"], sig), _p(r.get("p_attainable")),
                 _p(r["p_wilcoxon"]) + (f" (n = {r['n_wilcoxon']})"
                                        if r.get("n_wilcoxon") is not None else ""),
                 _p(r["p_wilcoxon_holm"], sig), _num(r["diff"]), _ci(r["ci_low"], r["ci_high"])]
                for r in tests]
        favours = "&gt; 0" if tests[0].get("better_sign", "+") == "+" else "&lt; 0"
        parts.append(_table(["brain vs", "metric", "n", "Mann-Whitney p", "MW p (Holm)",
                             "smallest attainable (Holm)", "Wilcoxon p (n non-zero pairs)",
                             "Wilcoxon p (Holm)",
                             f"brain - control (means; {favours} favours brain)",
                             "95% bootstrap CI"], rows))
        parts.append(f'<p class="small">One-sided p-values, brain better; Holm-corrected p '
                     f"below {_e(sig)} in bold. The smallest attainable p is what fully "
                     f"separated arms of these sizes would give: when it is not below "
                     f"{_e(sig)}, no data could have made the verdict positive.</p>")
    notes = [r["note"] for r in t.of("note", config)]
    notes += [f"{r['comparison']}, {r['metric']}: {r['note']}" for r in tests if r.get("note")]
    if notes:
        parts.append("<ul>" + "".join(f'<li class="note">note: {_e(n)}</li>' for n in notes)
                     + "</ul>")
    return "\n".join(parts)


def _divergence(data: ReportData) -> str:
    order = list(dict.fromkeys([*data.spec.arms.include, *(r.arm for r in data.runs)]))
    rows = []
    for arm in order:
        runs = [r for r in data.runs if r.arm == arm]
        k = sum(r.record["diverged"] for r in runs)
        rate = f"{k / len(runs):.0%}" if runs else _nc()
        rows.append([_e(arm), f"{k}/{len(runs)}" if runs else "no finished runs", rate])
    return (_table(["arm", "diverged / finished runs", "rate"], rows)
            + '<p class="small">A run diverges when its loss is non-finite, or rises above the '
              "task's threshold and is still above it at the end. Diverged runs count as the "
              "worst outcome in the tests (they are not dropped). The l2 row counts every "
              "weight decay of the grid.</p>")


def _alignment(data: ReportData) -> str:
    sig = data.table.significance
    labels = data.charts.get("alignment", {}).get("labels") or {}
    rows = []
    for config in data.configs():
        for r in data.table.of("alignment", config):
            p = r.get("p_mannwhitney")
            if not _finite(p):
                answer = _nc() + " (fewer than 2 runs in an arm)"
            elif p < sig:
                answer = '<span class="verdict yes">yes</span>'
            else:
                answer = '<span class="verdict no">no evidence</span>'
            rows.append([_e(config), _e(labels.get(r["metric"], r["metric"])),
                         f"brain vs {_e(r['comparison'])}", str(r["n"]), _num(r["mean"]),
                         _num(r["diff"]), _p(p), answer])
    out = []
    if rows:
        out.append(_table(["config", "alignment", "comparison", "n", "brain mean",
                           "brain - control", "Mann-Whitney p (one-sided)",
                           f"brain aligned more (p < {sig})?"], rows))
    else:
        out.append(f"<p>Brain vs shuffled/noise alignment: {_nc()} (no brain runs with a "
                   f"control arm that has alignment values).</p>")
    items = []
    for r in data.table.of("alignment", ""):
        name = _e(labels.get(r["metric"], r["metric"]))
        if _finite(r.get("r")):
            items.append(f"<li>does the performance gain track {name}? Spearman r = "
                         f"{r['r']:.3f} across {r['n']} brain-dependent runs "
                         f"({_e(r['note'])})</li>")
        else:
            items.append(f"<li>does the performance gain track {name}? Spearman r "
                         f"{_nc()} ({_e(r.get('note') or 'no runs')})</li>")
    if items:
        out.append("<ul>" + "".join(items) + "</ul>")
    out.append('<p class="small">Alignment is measured at the end of training on held-out '
               "steps with brain data, always against the real (unshuffled) brain targets, for "
               "every arm.</p>")
    return "\n".join(out)


def _figures(images: list[tuple[Panel, str]], out: Path) -> str:
    parts = []
    for i, (panel, stem) in enumerate(images, 1):
        b64 = base64.b64encode((out / f"{stem}.png").read_bytes()).decode("ascii")
        parts.append(f'<figure id="{_e(stem)}"><img src="data:image/png;base64,{b64}" '
                     f'alt="{_e(panel.title or panel.name)}"><figcaption><b>Figure {i}.</b> '
                     f"{_e(panel.caption)} <span class=\"small\">(files {_e(stem)}.png, "
                     f"{_e(stem)}.svg)</span></figcaption></figure>")
    return "\n".join(parts)


def _children(children) -> str:
    def key(run):
        t = run.data.tags
        return (t.get("raybrain.stage", ""), t.get("raybrain.label", ""),
                t.get("raybrain.arm", ""), int(t.get("raybrain.seed", 0) or 0))

    rows = []
    for run in sorted(children, key=key):
        t = run.data.tags
        try:
            label = json.loads(t.get("raybrain.label", "{}"))
            label = ", ".join(f"{k}={v}" for k, v in sorted(label.items())) or "-"
        except ValueError:
            label = t.get("raybrain.label", "")
        rows.append([_e(run.info.run_name or t.get("mlflow.runName", "")),
                     _e(t.get("raybrain.arm", "")), _e(t.get("raybrain.seed", "")), _e(label),
                     _e(t.get("raybrain.stage", "search")), _e(run.info.status),
                     _e(t.get("raybrain.diverged", "-")), f"<code>{_e(run.info.run_id)}</code>"])
    return _table(["run", "arm", "seed", "params", "stage", "status", "diverged", "run id"], rows)


def render_html(data: ReportData, parent, children, images: list[tuple[Panel, str]], out: Path,
                tracking_uri: str, experiment: str) -> str:
    """The report page (self-contained: inline CSS, PNGs as data URIs)."""
    sections = [f"<h1>raybrain report: {_e(data.sweep)}</h1>",
                _meta(data, parent, tracking_uri, experiment),
                "<h2>Verdict at a glance</h2>", _glance(data),
                f"<p class=\"small\">One-sided tests (brain better) of the brain arm against "
                f"each control at the same config and against the best L2 (the weight decay "
                f"with the highest mean validation metric). Exact Mann-Whitney U and paired "
                f"Wilcoxon signed-rank over shared seeds, each Holm-corrected across the configs "
                f"of the judged stage; 95% percentile bootstrap CI of the difference of means. "
                f"'brain helps' needs the Holm-corrected Mann-Whitney p below "
                f"{_e(data.table.significance)} against every control the sweep has. "
                f"'{NC}': fewer than 2 seeds in an arm, or no runs.</p>",
                "<h2>Verdict per config</h2>"]
    for config in data.configs():
        sections.append(_config_section(data, config))
    sections += ["<h2>Divergence</h2>", _divergence(data),
                 "<h2>Alignment with the real brain</h2>", _alignment(data),
                 "<h2>Figures</h2>", _figures(images, out),
                 f"<h2>Child runs ({len(children)})</h2>", _children(children),
                 '<p class="small">Also in this directory: verdict.csv (the verdict table), '
                 "epochs.csv (every metric per epoch, mean and s.e.m. over seeds per config and "
                 "arm) and each figure as PNG and SVG; logged to the parent run under report/ "
                 "unless --no-log.</p>"]
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>raybrain report: {_e(data.sweep)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n")


# --------------------------------------------------------------------------- CLI
def add_report_subparser(subparsers):
    """Add ``report SWEEP [--out DIR] [--tracking-uri URI] [--experiment NAME] [--no-log]``."""
    p = subparsers.add_parser(
        "report", help="write a sweep's HTML report (verdict, figures, runs) and log it to MLflow")
    p.add_argument("sweep", help="sweep name (or its parent run id)")
    p.add_argument("--out", help="output directory (default: ./raybrain_report/<sweep>/)")
    p.add_argument("--tracking-uri", default=DEFAULT_URI,
                   help=f"MLflow tracking URI (default: {DEFAULT_URI})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT})")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the report as artifacts of the sweep's parent run")
    return p


def run_report_command(args) -> int:
    """Run ``raybrain report``; SpecError propagates (the CLI prints it and exits 2)."""
    path = build_report(args.sweep, tracking_uri=args.tracking_uri, experiment=args.experiment,
                        out_dir=args.out, log_to_mlflow=not args.no_log)
    print(f"report written to {path}")
    if not args.no_log:
        print(f"logged to the sweep's parent run under report/ (experiment {args.experiment!r})")
    return 0


def run_arrays(client, run_id: str) -> dict[int, dict[str, Any]]:
    """The arrays a task saved for a run: artifacts ``arrays/epoch_<e>/<name>.npy``."""
    import re
    import tempfile

    import numpy as np

    out: dict[int, dict[str, Any]] = {}
    try:
        folders = client.list_artifacts(run_id, "arrays")
    except Exception:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            m = re.fullmatch(r"arrays/epoch_(\d+)", folder.path)
            if not (folder.is_dir and m):
                continue
            epoch = int(m.group(1))
            for f in client.list_artifacts(run_id, folder.path):
                if f.path.endswith(".npy"):
                    local = client.download_artifacts(run_id, f.path, tmp)
                    out.setdefault(epoch, {})[f.path.rsplit("/", 1)[-1][:-4]] = np.load(
                        local, allow_pickle=False)
    return out
