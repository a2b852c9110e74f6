"""The figures of a sweep report, and the chart definitions that parameterise them.

Five standard panels, after Figure 1 d-f of the B2M paper, grouped by the spec's primary
parameter (``search.primary``, alpha for B2M; the config label when nothing is searched):

``trajectory``  the primary metric over epochs: one curve per value of the parameter for
                the brain arm (mean +/- s.e.m. band over seeds), the ``none`` arm dashed,
                the best L2 as a grey band;
``area``        trajectory area vs the parameter for brain, shuffled and noise (mean +/-
                s.e.m.), ``none`` and best L2 as reference line and band, a star above each
                value whose verdict on the area is "brain helps";
``final``       the same for the final value;
``alignment``   final alignment with the real brain (CKA, RSA) per arm vs the parameter,
                and performance gain vs alignment across runs with the verdict's Spearman r;
``divergence``  diverged runs per arm.

Which metric, title and axis label each panel uses is data: ``dashboards/<task>.yaml``
(see :func:`load_dashboard`; a missing file means the defaults). Tasks add their own panels
with :func:`register_panel`; the report draws every panel registered for its task.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through ``pyplot``, so no global backend or figure registry is touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from raybrain.errors import SpecError
from raybrain.registry import Registry

#: colours per arm (brain red and shuffled beige as in the B2M paper)
ARM_COLORS = {"brain": "#c0392b", "shuffled": "#d4a15a", "noise": "#4a78b5",
              "none": "#222222", "l2": "#8a8a8a"}
OTHER_COLORS = ["#6a3d9a", "#1b9e77", "#e7298a", "#66a61e", "#a6761d"]
BRAIN_DEPENDENT_ORDER = ("brain", "shuffled", "noise")
DASHBOARDS_DIR = Path(__file__).resolve().parents[2] / "dashboards"

STANDARD_PANELS = ("trajectory", "area", "final", "alignment", "divergence")
_PANEL_KEYS = {
    "trajectory": {"metric", "title", "ylabel", "show"},
    "area": {"title", "ylabel", "show"},
    "final": {"title", "ylabel", "show"},
    "alignment": {"metrics", "labels", "title", "show"},
    "divergence": {"title", "show"},
}


# --------------------------------------------------------------------------- dashboards
def default_charts(primary_metric: str,
                   align_metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Chart definitions used when a task has no dashboard file (or leaves a key out).

    ``align_metrics``: the task's declared alignment metrics (default: CKA and RSA).
    """
    words = primary_metric.replace("_", " ")
    if align_metrics is None:
        align_metrics = ["align_cka", "align_rsa"]
    known = {"align_cka": "linear CKA", "align_rsa": "RSA (Spearman)"}
    return {
        "trajectory": {"metric": primary_metric, "title": f"{words} over epochs",
                       "ylabel": words, "show": True},
        "area": {"title": f"area under the {words} trajectory",
                 "ylabel": f"area ({words}, mean over epochs)", "show": True},
        "final": {"title": f"{words} at the end of training", "ylabel": f"final {words}",
                  "show": True},
        "alignment": {"metrics": list(align_metrics),
                      "labels": {m: known.get(m, m.replace("_", " ")) for m in align_metrics},
                      "title": "alignment with the real brain (held-out data)",
                      "show": bool(align_metrics)},
        "divergence": {"title": "diverged runs per arm", "show": True},
    }


def load_dashboard(task: str, primary_metric: str, directory: str | Path | None = None,
                   align_metrics: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The chart definitions for ``task``: ``<directory>/<task>.yaml`` over the defaults.

    The file has a ``panels:`` mapping from panel name to its settings. Standard panels
    accept the keys in ``_PANEL_KEYS``; any other panel name is handed as-is to the extra
    panel registered under that name. ``task:``, if given, must match. A missing file gives
    the defaults; a malformed one raises :class:`SpecError` naming the problem.
    """
    import yaml

    charts = default_charts(primary_metric, align_metrics)
    path = Path(directory or DASHBOARDS_DIR) / f"{task}.yaml"
    if not path.is_file():
        return charts
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with a 'panels' key, got {type(raw).__name__}")
    unknown = set(raw) - {"task", "panels", "description"}
    if unknown:
        raise SpecError(f"{path}: unknown key {sorted(unknown)[0]!r}; expected some of "
                        f"['description', 'panels', 'task']")
    if raw.get("task", task) != task:
        raise SpecError(f"{path}: task {raw['task']!r} does not match the file name's "
                        f"task {task!r}")
    panels = raw.get("panels") or {}
    if not isinstance(panels, dict):
        raise SpecError(f"{path}: panels must be a mapping of panel name to settings")
    for name, settings in panels.items():
        if not isinstance(settings, dict):
            raise SpecError(f"{path}: panels.{name} must be a mapping, got {settings!r}")
        if name in _PANEL_KEYS:
            bad = set(settings) - _PANEL_KEYS[name]
            if bad:
                raise SpecError(f"{path}: unknown key 'panels.{name}.{sorted(bad)[0]}'; "
                                f"expected some of {sorted(_PANEL_KEYS[name])}")
            charts[name] = {**charts[name], **settings}
        else:
            if "kind" in settings:
                from raybrain.analysis.panel_kinds import check_panel

                check_panel(path, name, settings)
            charts[name] = dict(settings)
    return charts


# --------------------------------------------------------------------------- registry
@dataclass
class Panel:
    """One drawn figure: file stem, the figure, and its caption (plain text)."""

    name: str
    figure: Any
    caption: str
    title: str = ""


#: extra panels, registered as ``"<task>:<panel name>"``; see :func:`register_panel`
PanelFn = Callable[["ReportData", dict[str, Any]], "Panel | None"]
PANELS: Registry[PanelFn] = Registry("report panel")


def register_panel(task: str, name: str):
    """Register ``fn(data: ReportData, chart: dict) -> Panel | None`` for ``task``'s report.

    ``chart`` is ``panels.<name>`` of the task's dashboard file (``{}`` when absent). The
    function draws on a fresh ``new_figure()`` and returns a :class:`Panel` (None: nothing
    to draw). Registering the same (task, name) twice is an error.
    """
    if ":" in task or ":" in name:
        raise ValueError(f"task and panel names must not contain ':', got {task!r}, {name!r}")
    return PANELS.register(f"{task}:{name}")


def extra_panels(task: str) -> list[tuple[str, Callable]]:
    """The (name, function) pairs registered for ``task``, in name order."""
    prefix = f"{task}:"
    return [(key[len(prefix):], PANELS.get(key)) for key in PANELS.names()
            if key.startswith(prefix)]


def new_figure(width: float = 7.0, height: float = 4.4):
    """A pyplot-free figure with an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------- data
@dataclass
class RunInfo:
    """A finished child run of the judged stage with its verdict record."""

    run_id: str
    name: str
    record: dict[str, Any]
    #: the run's metrics as MLflow holds them (summary metrics: ``final_*``, ``best_*``)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def arm(self) -> str:
        return self.record["arm"]


@dataclass
class ReportData:
    """Everything the panels draw from.

    ``runs``: finished child runs of the judged stage (``record`` as built by
    :func:`raybrain.analysis.verdict.runs_to_records`); ``table``: the verdict;
    ``history(run_id, metric)`` -> [(epoch, value), ...] read from MLflow (cached).
    """

    sweep: str
    task: str
    spec: Any
    table: Any
    runs: list[RunInfo]
    primary_metric: str
    primary_mode: str
    param: str | None
    charts: dict[str, dict[str, Any]]
    history_fn: Callable[[str, str], list[tuple[int, float]]]
    #: ``arrays_fn(run_id)`` -> {epoch: {name: array}} the task saved for a run (None: none)
    arrays_fn: Callable[[str], dict[int, dict[str, Any]]] | None = None
    _cache: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    _arrays: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)

    def arrays(self, run_id: str) -> dict[int, dict[str, Any]]:
        if self.arrays_fn is None:
            return {}
        if run_id not in self._arrays:
            self._arrays[run_id] = self.arrays_fn(run_id)
        return self._arrays[run_id]

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        key = (run_id, metric)
        if key not in self._cache:
            self._cache[key] = sorted(self.history_fn(run_id, metric))
        return self._cache[key]

    # -- configs and arms ----------------------------------------------------------
    def configs(self) -> list[str]:
        """Config labels in the verdict's order."""
        return self.table.configs()

    def config_label(self, config: str) -> dict[str, Any]:
        from raybrain.analysis.verdict import config_label as _label

        for r in self.runs:
            if not r.record["baseline"] and _label(r.record["label"]) == config:
                return r.record["label"]
        return {}

    def config_runs(self, config: str, arm: str) -> list[RunInfo]:
        """Brain-dependent runs of ``config`` in ``arm``."""
        from raybrain.analysis.verdict import config_label as _label

        return [r for r in self.runs if not r.record["baseline"] and r.arm == arm
                and _label(r.record["label"]) == config]

    def baseline_key(self, config: str) -> str | None:
        from raybrain.analysis.verdict import config_label as _label

        for r in self.runs:
            if not r.record["baseline"] and _label(r.record["label"]) == config:
                return r.record["baseline_key"]
        return None

    def best_l2_arm(self, config: str) -> str | None:
        """The verdict's best-L2 arm name for ``config`` (``l2[weight_decay=...]``)."""
        for row in self.table.of("arm", config):
            if row["arm"].startswith("l2["):
                return row["arm"]
        return None

    def baseline_runs(self, config: str, arm: str) -> list[RunInfo]:
        """``none`` runs, or the best-L2 runs when ``arm`` is ``"best_l2"``, of ``config``."""
        key = self.baseline_key(config)
        if arm == "best_l2":
            name = self.best_l2_arm(config)
            return [r for r in self.runs if r.record["baseline"] and r.arm == "l2"
                    and r.record["baseline_key"] == key
                    and f"l2[weight_decay={r.record['label'].get('weight_decay')}]" == name]
        return [r for r in self.runs if r.record["baseline"] and r.arm == arm
                and r.record["baseline_key"] == key]

    def brain_dependent_arms(self) -> list[str]:
        present = {r.arm for r in self.runs if not r.record["baseline"]}
        return [a for a in BRAIN_DEPENDENT_ORDER if a in present] + sorted(
            present - set(BRAIN_DEPENDENT_ORDER))

    def arm_row(self, config: str, arm: str, metric: str) -> dict[str, Any] | None:
        for row in self.table.of("arm", config):
            if row["arm"] == arm and row["metric"] == metric:
                return row
        return None

    def verdict(self, config: str, metric: str) -> str | None:
        for row in self.table.of("verdict", config):
            if row["metric"] == metric:
                return row["verdict"]
        return None

    # -- x axis ------------------------------------------------------------------------
    def x_axis(self) -> "XAxis":
        configs = self.configs()
        labels = {c: self.config_label(c) for c in configs}
        values = [labels[c].get(self.param) if self.param else None for c in configs]
        numeric = (bool(configs) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                         and math.isfinite(v) for v in values)
                   and len(set(values)) == len(values))
        if numeric:
            pos = dict(zip(configs, (float(v) for v in values)))
            positive = all(v > 0 for v in values)
            log = positive and len(values) > 2 and max(values) / min(values) > 30
            return XAxis(pos, self.param or "config", numeric=True, log=log,
                         ticks={c: f"{v:g}" for c, v in zip(configs, values)})
        distinct = len(set(map(str, values))) == len(values)
        if self.param and all(v is not None for v in values) and distinct:
            ticks = {c: _short(v) for c, v in zip(configs, values)}
            name = self.param
        else:  # the verdict labels a config without searched params "-"
            ticks = {c: ("single config" if c == "-" else c) for c in configs}
            name = "config"
        return XAxis({c: float(i) for i, c in enumerate(configs)}, name, numeric=False,
                     log=False, ticks=ticks)


@dataclass
class XAxis:
    pos: dict[str, float]
    name: str
    numeric: bool
    log: bool
    ticks: dict[str, str]

    def apply(self, ax) -> None:
        if self.log:
            ax.set_xscale("log")
        ax.set_xticks(list(self.pos.values()))
        tilt = not self.numeric and len(self.pos) > 1
        ax.set_xticklabels(list(self.ticks.values()), rotation=20 if tilt else 0,
                           ha="right" if tilt else "center")
        ax.minorticks_off()
        ax.set_xlabel(self.name)
        if len(self.pos) == 1:  # one point: give it some room
            (x,) = self.pos.values()
            if self.log:
                ax.set_xlim(x / 2, x * 2)
            else:
                half = abs(x) * 0.5 if self.numeric and x else 0.5
                ax.set_xlim(x - half, x + half)
        elif not self.numeric:
            ax.set_xlim(-0.5, len(self.pos) - 0.5)
        else:
            ax.margins(x=0.1)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _arm_color(arm: str, i: int = 0) -> str:
    return ARM_COLORS.get(arm, OTHER_COLORS[i % len(OTHER_COLORS)])


def _mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    from raybrain.analysis import stats

    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), (stats.sem(vals) if len(vals) >= 2 else None)


def _dodge(ax, fig, k: int, n: int, spacing: float = 7.0):
    """A transform shifting arm ``k`` of ``n`` sideways by a few points (any x scale)."""
    from matplotlib.transforms import offset_copy

    return offset_copy(ax.transData, fig=fig, x=(k - (n - 1) / 2) * spacing, y=0, units="points")


def _arm_errorbar(ax, fig, xs, ys, es, k: int, n: int, *, numeric: bool, color: str,
                  label: str) -> None:
    """Mean +/- s.e.m. of one arm, shifted sideways so arms do not hide each other.

    Artists drawn with an offset transform do not count for autoscaling, so their extent is
    added to the data limits by hand.
    """
    ax.errorbar(xs, ys, yerr=es, fmt="o-" if numeric else "o", color=color, capsize=3,
                lw=1.4, ms=5, label=label, transform=_dodge(ax, fig, k, n))
    pts = [(x, y + s) for x, y, s in zip(xs, ys, es)] + [(x, y - s) for x, y, s in zip(xs, ys, es)]
    ax.update_datalim(pts)
    ax.autoscale_view()


LEGEND_ORDER = ("brain", "shuffled", "noise")


def _legend(ax, fontsize: float = 8) -> None:
    """Legend with the arms first (brain, shuffled, noise, others), references, then stars."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return

    def rank(item):
        label = item[1]
        if label in LEGEND_ORDER:
            return (0, LEGEND_ORDER.index(label))
        if label.startswith("brain helps"):
            return (3, 0)
        if label.startswith(("none", "best L2")):
            return (2, 0 if label.startswith("none") else 1)
        return (1, 0)

    pairs = sorted(zip(handles, labels), key=rank)
    ax.legend([h for h, _ in pairs], [lab for _, lab in pairs], fontsize=fontsize, loc="best",
              frameon=True, framealpha=0.85, edgecolor="none")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            color="#777777", fontsize=10, wrap=True)


def _mean_sem_curve(histories: list[list[tuple[int, float]]]):
    """Per-epoch mean and s.e.m. over runs (finite values only)."""
    by_step: dict[int, list[float]] = {}
    for h in histories:
        for step, v in h:
            if v is not None and math.isfinite(v):
                by_step.setdefault(int(step), []).append(float(v))
    steps = sorted(by_step)
    mean = np.array([np.mean(by_step[s]) for s in steps], dtype=float)
    sem = np.array([(np.std(by_step[s], ddof=1) / math.sqrt(len(by_step[s])))
                    if len(by_step[s]) >= 2 else np.nan for s in steps], dtype=float)
    return np.array(steps, dtype=float), mean, sem


def _seeds(runs: list[RunInfo]) -> int:
    return len({r.record["seed"] for r in runs})


# --------------------------------------------------------------------------- panels
def trajectory_panel(data: ReportData, chart: dict[str, Any]) -> Panel:
    """(a) The metric over epochs per value of the parameter (brain arm), none and best L2."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    metric = chart["metric"]
    fig = new_figure()
    ax = fig.add_subplot()
    configs = [c for c in data.configs() if data.config_runs(c, "brain")]
    xaxis = data.x_axis()
    cmap = mpl.colormaps["Reds"]
    shades = np.linspace(0.4, 0.95, max(len(configs), 1))
    drawn = 0
    for shade, config in zip(shades, configs):
        runs = data.config_runs(config, "brain")
        steps, mean, sem = _mean_sem_curve([data.history(r.run_id, metric) for r in runs])
        if not len(steps):
            continue
        color = cmap(float(shade))
        label = f"brain, {xaxis.name}={xaxis.ticks[config]}" if xaxis.name != "config" \
            else f"brain, {config}"
        ax.plot(steps, mean, color=color, lw=1.8, marker="o", ms=3, label=label)
        ok = np.isfinite(sem)
        if ok.any():
            ax.fill_between(steps[ok], (mean - sem)[ok], (mean + sem)[ok], color=color,
                            alpha=0.18, lw=0)
        drawn += 1
    # the brain-data controls the verdict is built on, at the same values of the parameter
    styles = {"shuffled": ":", "noise": "-."}
    for j, arm in enumerate(a for a in data.brain_dependent_arms() if a != "brain"):
        for k, config in enumerate(configs):
            runs = data.config_runs(config, arm)
            steps, mean, sem = _mean_sem_curve([data.history(r.run_id, metric) for r in runs])
            if not len(steps):
                continue
            color = _arm_color(arm, j)
            label = (f"{arm}, {xaxis.name}={xaxis.ticks[config]}" if xaxis.name != "config"
                     else f"{arm}, {config}")
            ax.plot(steps, mean, color=color, lw=1.3, ls=styles.get(arm, "--"),
                    alpha=0.55 + 0.4 * (k + 1) / max(len(configs), 1), label=label)
            drawn += 1
    # baselines: one curve per distinct set of baseline runs
    seen: set[tuple] = set()
    multi = len({data.baseline_key(c) for c in data.configs()}) > 1
    for config in data.configs():
        for arm in ("best_l2", "none"):
            runs = data.baseline_runs(config, arm)
            key = tuple(sorted(r.run_id for r in runs))
            if not runs or key in seen:
                continue
            seen.add(key)
            steps, mean, sem = _mean_sem_curve([data.history(r.run_id, metric) for r in runs])
            if not len(steps):
                continue
            suffix = f" ({config})" if multi else ""
            if arm == "none":
                ax.plot(steps, mean, color=ARM_COLORS["none"], ls="--", lw=1.6,
                        label=f"none (no brain term){suffix}")
            else:
                name = data.best_l2_arm(config)
                wd = name[len("l2[weight_decay="):-1] if name else "?"
                ok = np.isfinite(sem)
                lo = np.where(ok, mean - np.nan_to_num(sem), mean)
                hi = np.where(ok, mean + np.nan_to_num(sem), mean)
                ax.fill_between(steps, lo, hi, color=ARM_COLORS["l2"], alpha=0.35, lw=0,
                                label=f"best L2, wd={wd} (mean +/- s.e.m.){suffix}")
                ax.plot(steps, mean, color=ARM_COLORS["l2"], lw=0.8)
            drawn += 1
    if not drawn:
        _no_data(ax, f"no finished runs with a {metric} history")
    else:
        ax.legend(fontsize=8, loc="best", frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(chart["ylabel"])
    ax.set_title(chart["title"])
    ax.grid(alpha=0.25)
    n = _seeds([r for c in configs for r in data.config_runs(c, "brain")])
    caption = (f"{chart['title'].capitalize()} on the {data.table.stage} stage: mean over "
               f"{n} seed(s) for the brain arm at each {xaxis.name} (shaded: +/- s.e.m.), the "
               f"shuffled (dotted) and noise (dash-dot) controls at the same values, the "
               f"'none' arm dashed, and the best L2 as a grey band (mean +/- s.e.m.; the "
               f"weight decay with the best mean validation metric).")
    if n < 2:
        caption += " With fewer than 2 seeds the s.e.m. is not computable: no bands."
    return Panel("trajectory", fig, caption, chart["title"])


def _summary_panel(data: ReportData, chart: dict[str, Any], which: str) -> Panel:
    """(b)/(c) Area or final value vs the parameter, arms side by side, stars."""
    metric = f"{which}_{data.primary_metric}"
    fig = new_figure()
    ax = fig.add_subplot()
    xaxis = data.x_axis()
    configs = data.configs()
    arms = data.brain_dependent_arms()
    tops: dict[str, float] = {}
    drawn = False
    for k, arm in enumerate(arms):
        xs, ys, es = [], [], []
        for config in configs:
            row = data.arm_row(config, arm, metric)
            if row is None or row["mean"] is None:
                continue
            sem = row["sem"] or 0.0
            xs.append(xaxis.pos[config])
            ys.append(row["mean"])
            es.append(sem)
            tops[config] = max(tops.get(config, -math.inf), row["mean"] + sem)
        if not xs:
            continue
        _arm_errorbar(ax, fig, xs, ys, es, k, len(arms), numeric=xaxis.numeric,
                      color=_arm_color(arm, k), label=arm)
        drawn = True
    _reference_lines(ax, data, xaxis, lambda c, a: _row_stats(data, c, a, metric))
    xaxis.apply(ax)
    # stars: "brain helps" on this metric after Holm
    starred = [c for c in configs if data.verdict(c, metric) == "brain helps"]
    if drawn:
        ymin, ymax = ax.get_ylim()
        span = (ymax - ymin) or 1.0
        for config in starred:
            y = tops.get(config, ymax) + 0.06 * span
            ax.plot([xaxis.pos[config]], [y], marker="*", ms=14, color="black", ls="none",
                    label="brain helps (Holm)" if config == starred[0] else None, zorder=5)
        if starred:
            ax.set_ylim(ymin, max(ymax, max(tops.get(c, ymax) for c in starred) + 0.14 * span))
        _legend(ax)
    else:
        _no_data(ax, "no finished brain-dependent runs")
    ax.set_ylabel(chart["ylabel"])
    ax.set_title(chart["title"])
    ax.grid(alpha=0.25)
    sig = data.table.significance
    n = _seeds([r for r in data.runs if r.arm == "brain"])
    words = "trajectory area" if which == "area" else "final value"
    caption = (f"{chart['title'].capitalize()} vs {xaxis.name} on the {data.table.stage} stage: "
               f"mean +/- s.e.m. over {n} seed(s) per arm ({', '.join(arms) or 'no arms'}; "
               f"arms drawn side by side at each {xaxis.name}). Black dashed line: the 'none' arm; "
               f"grey band: the best L2 (mean +/- s.e.m.). A star marks each {xaxis.name} whose "
               f"verdict on the {words} is 'brain helps': Holm-corrected exact one-sided "
               f"Mann-Whitney p < {sig} against every control. ")
    caption += (f"Stars at: {', '.join(xaxis.ticks[c] for c in starred)}." if starred
                else "No value earned a star.")
    n_div = sum(r.record["diverged"] for r in data.runs)
    if n_div:
        caption += (f" {n_div} run(s) diverged: their non-finite values are left out of the "
                    f"means, and the tests rank diverged runs worst.")
    return Panel(which, fig, caption, chart["title"])


def _row_stats(data: ReportData, config: str, arm: str, metric: str):
    name = data.best_l2_arm(config) if arm == "best_l2" else arm
    row = data.arm_row(config, name, metric) if name else None
    if row is None or row["mean"] is None:
        return None
    return row["mean"], row["sem"], name


def _reference_lines(ax, data: ReportData, xaxis: XAxis, stats_of) -> None:
    """``none`` as a dashed line, the best L2 as a grey band; per config when they differ."""
    for arm in ("best_l2", "none"):
        per = {c: stats_of(c, arm) for c in data.configs()}
        per = {c: v for c, v in per.items() if v is not None}
        if not per:
            continue
        distinct = {(round(v[0], 12), None if v[1] is None else round(v[1], 12))
                    for v in per.values()}
        label_name = next(iter(per.values()))[2]
        label = ("none" if arm == "none" else
                 f"best L2 ({label_name[3:-1].replace('weight_decay=', 'wd=')})")
        if len(distinct) == 1:
            mean, sem, _ = next(iter(per.values()))
            if arm == "none":
                ax.axhline(mean, color=ARM_COLORS["none"], ls="--", lw=1.3, label=label)
            else:
                s = sem or 0.0
                ax.axhspan(mean - s, mean + s, color=ARM_COLORS["l2"], alpha=0.3, lw=0,
                           label=label + " +/- s.e.m.")
                ax.axhline(mean, color=ARM_COLORS["l2"], lw=0.8)
        else:  # configs with different baselines: one short marker per config
            xs = [xaxis.pos[c] for c in per]
            ys = [v[0] for v in per.values()]
            es = [v[1] or 0.0 for v in per.values()]
            none = arm == "none"
            ax.errorbar(xs, ys, yerr=es, fmt="_" if none else "s", ms=12 if none else 5,
                        color=ARM_COLORS["none" if none else "l2"], capsize=3,
                        ls="none", label=label.split(" (")[0])


def area_panel(data: ReportData, chart: dict[str, Any]) -> Panel:
    return _summary_panel(data, chart, "area")


def final_panel(data: ReportData, chart: dict[str, Any]) -> Panel:
    return _summary_panel(data, chart, "final")


def _gain_points(data: ReportData, metric: str):
    """(alignment, gain, arm) per brain-dependent run, the gain as the verdict defines it."""
    sign = 1.0 if data.primary_mode == "max" else -1.0
    none = {(r.record["baseline_key"], r.record["seed"]): r.record["area"] for r in data.runs
            if r.arm == "none" and math.isfinite(r.record["area"])}
    pts = []
    for r in data.runs:
        rec = r.record
        if (rec["baseline"] or not math.isfinite(rec["area"])
                or not math.isfinite(rec.get(metric, math.nan))):
            continue
        ref = none.get((rec["baseline_key"], rec["seed"]), 0.0)
        pts.append((rec[metric], sign * (rec["area"] - ref), r.arm))
    return pts, bool(none)


def alignment_panel(data: ReportData, chart: dict[str, Any]) -> Panel:
    """(d) Final alignment per arm vs the parameter; gain vs alignment across runs."""
    metrics = list(chart["metrics"])
    labels = chart.get("labels") or {}
    fig = new_figure(4.2 * max(len(metrics), 1), 7.4)
    axes = fig.subplots(2, max(len(metrics), 1), squeeze=False)
    xaxis = data.x_axis()
    arms = data.brain_dependent_arms()
    configs = data.configs()
    for j, metric in enumerate(metrics):
        name = labels.get(metric, metric)
        ax = axes[0][j]
        drawn = False
        for k, arm in enumerate(arms):
            xs, ys, es = [], [], []
            for config in configs:
                mean, sem = _mean_sem([r.record.get(metric, math.nan)
                                       for r in data.config_runs(config, arm)])
                if mean is None:
                    continue
                xs.append(xaxis.pos[config])
                ys.append(mean)
                es.append(sem or 0.0)
            if xs:
                _arm_errorbar(ax, fig, xs, ys, es, k, len(arms), numeric=xaxis.numeric,
                              color=_arm_color(arm, k), label=arm)
                drawn = True

        def base_stats(config, arm, metric=metric):
            runs = data.baseline_runs(config, arm)
            mean, sem = _mean_sem([r.record.get(metric, math.nan) for r in runs])
            if mean is None:
                return None
            return mean, sem, data.best_l2_arm(config) if arm == "best_l2" else arm

        _reference_lines(ax, data, xaxis, base_stats)
        if drawn:
            _legend(ax, 7)
        else:
            _no_data(ax, f"no finished runs with final {metric}")
        xaxis.apply(ax)
        ax.set_ylabel(f"final {name}")
        ax.set_title(f"final {name} per arm", fontsize=10)
        ax.grid(alpha=0.25)

        # gain vs alignment
        ax = axes[1][j]
        pts, has_none = _gain_points(data, metric)
        for k, arm in enumerate(arms):
            mine = [p for p in pts if p[2] == arm]
            if mine:
                ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=22, alpha=0.8,
                           color=_arm_color(arm, k), label=arm, edgecolors="none")
        row = next((r for r in data.table.of("alignment", "") if r.get("metric") == metric
                    and r.get("comparison") == "gain vs alignment"), None)
        if row is not None and row.get("r") is not None:
            text = f"Spearman r = {row['r']:.2f} (n = {row['n']})"
        else:
            text = "Spearman r: not computable"
        ax.set_title(f"performance gain vs {name}\n{text}", fontsize=10)
        if pts:
            ax.legend(fontsize=7, loc="best", frameon=False)
        else:
            _no_data(ax, "no brain-dependent runs with both values")
        ax.axhline(0.0, color="#bbbbbb", lw=0.8)
        ax.set_xlabel(f"final {name}")
        ax.set_ylabel("area - area of 'none' (same seed)" if has_none else "area (no 'none' arm)")
        ax.grid(alpha=0.25)
    fig.suptitle(chart["title"])
    caption = (f"{chart['title'].capitalize()}. Top: final alignment of the model's embedding "
               f"with the real (unshuffled) brain data on held-out data, per arm vs "
               f"{xaxis.name} (mean +/- s.e.m. over seeds; 'none' dashed, best L2 grey band). "
               f"Bottom: per brain-dependent run, performance gain (trajectory area minus the "
               f"'none' run's area at the same seed) against final alignment; r is the "
               f"verdict's Spearman correlation across those runs.")
    return Panel("alignment", fig, caption, chart["title"])


def divergence_panel(data: ReportData, chart: dict[str, Any]) -> Panel:
    """(e) Diverged runs per arm, labelled k/n (zero bars too)."""
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    present = list(dict.fromkeys(r.arm for r in data.runs))
    order = [a for a in (*BRAIN_DEPENDENT_ORDER, "l2", "none") if a in present or
             a in data.spec.arms.include]
    order += [a for a in present + list(data.spec.arms.include) if a not in order]
    order = list(dict.fromkeys(order))
    counts = [(arm, sum(r.record["diverged"] for r in data.runs if r.arm == arm),
               sum(1 for r in data.runs if r.arm == arm)) for arm in order]
    xs = np.arange(len(counts))
    heights = [k for _, k, _ in counts]
    ax.bar(xs, heights, color=[_arm_color(a, i) for i, (a, _, _) in enumerate(counts)],
           width=0.6, edgecolor="black", linewidth=0.6)
    top = max(heights + [1])
    for x, (arm, k, n) in zip(xs, counts):
        text = f"{k}/{n}" if n else "no runs"
        ax.text(x, k + 0.03 * top, text, ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels([a for a, _, _ in counts])
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("diverged runs")
    ax.set_xlabel("arm")
    ax.set_title(chart["title"])
    ax.grid(axis="y", alpha=0.25)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    total = sum(heights)
    caption = (f"{chart['title'].capitalize()} on the {data.table.stage} stage (label: diverged/"
               f"finished runs; l2 counts every weight decay). A run diverges when its loss is "
               f"non-finite or stays above the task's threshold; diverged runs rank worst in "
               f"the tests. {total} run(s) diverged in all.")
    return Panel("divergence", fig, caption, chart["title"])


STANDARD = {"trajectory": trajectory_panel, "area": area_panel, "final": final_panel,
            "alignment": alignment_panel, "divergence": divergence_panel}


def draw_panels(data: ReportData) -> list[Panel]:
    """The standard panels the dashboard shows, then the task's registered extra panels."""
    panels = []
    for name in STANDARD_PANELS:
        chart = data.charts.get(name, {})
        if chart.get("show", True):
            panels.append(STANDARD[name](data, chart))
    from raybrain.analysis import panel_kinds

    for name, chart in data.charts.items():  # the dashboard's own panels (declared kinds)
        if name not in STANDARD and "kind" in chart and chart.get("show", True) is not False:
            panel = panel_kinds.draw(data, name, chart)
            if panel is not None:
                panels.append(panel)
    for name, fn in extra_panels(data.task):
        chart = data.charts.get(name, {})
        if chart.get("show", True) is False:
            continue
        panel = fn(data, chart)
        if panel is not None:
            panels.append(panel)
    return panels
