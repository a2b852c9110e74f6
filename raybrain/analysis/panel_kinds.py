"""Panel kinds a task's dashboard file declares, so a new protocol's report needs no code.

``dashboards/<task>.yaml`` may add panels beside the standard five; each names its kind:

``scatter``  two summary metrics of every finished run against each other, coloured by arm,
             with Pearson and Spearman r across the runs (e.g. GW distance against
             downstream accuracy)::

                 gw_vs_accuracy: {kind: scatter, x: final_gw_distance,
                                  y: final_test_oneshot_accuracy, title: ...}

``curve``    a family of summary metrics sharing a prefix, read as a curve over the number
             that ends each name (per layer, per time point), one line per arm (mean +/-
             s.e.m. over seeds) at the config whose brain runs have the best mean area::

                 predictivity: {kind: curve, prefix: final_predictivity_layer_,
                                xlabel: layer, ylabel: fraction of explainable variance}

``arrays``   arrays a task saved for a run (``TaskRun.artifacts``), drawn as images over
             epochs: one row per array name, one column per epoch (first, middle, last),
             for the first seed's brain run of that config::

                 rdms: {kind: arrays, names: [model_rdm, brain_rdm], title: ...}

``pairwise`` second-order comparison across configs: for each value of a param (``by``,
             e.g. the participant), the brain run of the first seed; the dissimilarity
             (1 - Spearman) between every two runs' saved ``array`` (their models) against
             the same between their ``reference`` arrays (their brain targets, saved only
             when the spec logs brain data), and the Spearman r between the two::

                 individual_differences: {kind: pairwise, array: heldout_rdms,
                                          reference: target_rdms, by: participant}

Every kind accepts ``title`` and ``show``; a kind's own keys are checked (an unknown key
is a one-line error naming it).
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from raybrain.errors import SpecError

KIND_KEYS = {
    "scatter": {"kind", "x", "y", "title", "xlabel", "ylabel", "show", "arms"},
    "curve": {"kind", "prefix", "title", "xlabel", "ylabel", "show", "x_values"},
    "arrays": {"kind", "names", "title", "show", "epochs", "arm"},
    "pairwise": {"kind", "array", "reference", "by", "arm", "title", "show"},
}
REQUIRED = {"scatter": ("x", "y"), "curve": ("prefix",), "arrays": ("names",),
            "pairwise": ("array", "by")}


def check_panel(path, name: str, settings: dict[str, Any]) -> None:
    """One-line errors for a malformed generic panel of a dashboard file."""
    kind = settings.get("kind")
    if kind not in KIND_KEYS:
        raise SpecError(f"{path}: panels.{name}.kind must be one of {sorted(KIND_KEYS)}, "
                        f"got {kind!r}")
    bad = set(settings) - KIND_KEYS[kind]
    if bad:
        raise SpecError(f"{path}: unknown key 'panels.{name}.{sorted(bad)[0]}' for kind "
                        f"{kind!r}; expected some of {sorted(KIND_KEYS[kind])}")
    for key in REQUIRED[kind]:
        if key not in settings:
            raise SpecError(f"{path}: panels.{name} (kind {kind!r}) needs '{key}'")


def draw(data, name: str, chart: dict[str, Any]):
    """The :class:`~raybrain.analysis.figures.Panel` of a generic panel (None: no data)."""
    return {"scatter": scatter_panel, "curve": curve_panel, "arrays": arrays_panel,
            "pairwise": pairwise_panel}[chart["kind"]](data, name, chart)


def _color(arm: str, i: int) -> str:
    from raybrain.analysis.figures import _arm_color

    return _arm_color(arm, i)


# --------------------------------------------------------------------------- scatter
def scatter_panel(data, name: str, chart: dict[str, Any]):
    from scipy.stats import pearsonr, spearmanr

    from raybrain.analysis.figures import Panel, _no_data, new_figure

    x, y = chart["x"], chart["y"]
    fig = new_figure(6.2, 4.6)
    ax = fig.add_subplot()
    arms = list(dict.fromkeys(r.arm for r in data.runs))
    if chart.get("arms"):
        arms = [a for a in arms if a in chart["arms"]]
    pts = [(r.metrics.get(x, math.nan), r.metrics.get(y, math.nan), r.arm) for r in data.runs
           if r.arm in arms]
    pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    for i, arm in enumerate(arms):
        mine = [p for p in pts if p[2] == arm]
        if mine:
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=24, alpha=0.8,
                       color=_color(arm, i), label=arm, edgecolors="none")
    stats = "r: not computable (fewer than 3 runs or no variation)"
    r_p = r_s = None
    if len(pts) >= 3 and len({p[0] for p in pts}) > 1 and len({p[1] for p in pts}) > 1:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        r_p, r_s = float(pearsonr(xs, ys).statistic), float(spearmanr(xs, ys).statistic)
        stats = f"Pearson r = {r_p:.2f}, Spearman r = {r_s:.2f} (n = {len(pts)} runs)"
    if pts:
        ax.legend(fontsize=8, frameon=False)
    else:
        _no_data(ax, f"no finished runs with both {x} and {y}")
    ax.set_xlabel(chart.get("xlabel", x))
    ax.set_ylabel(chart.get("ylabel", y))
    title = chart.get("title", f"{y} vs {x}")
    ax.set_title(f"{title}\n{stats}", fontsize=10)
    ax.grid(alpha=0.25)
    caption = (f"{title.capitalize()}: one point per finished run of the {data.table.stage} "
               f"stage, coloured by arm; {stats}.")
    panel = Panel(name, fig, caption, title)
    panel.stats = {"pearson_r": r_p, "spearman_r": r_s, "n": len(pts)}
    return panel


# --------------------------------------------------------------------------- curve
def _family(metrics: dict[str, float], prefix: str) -> dict[float, float]:
    out = {}
    for k, v in metrics.items():
        if k.startswith(prefix):
            m = re.fullmatch(r"[-+]?\d+(\.\d+)?", k[len(prefix):])
            if m:
                out[float(k[len(prefix):])] = v
    return out


def best_config(data) -> str | None:
    """The config whose brain runs have the best mean area (the report's showcase)."""
    best, best_v = None, None
    sign = 1.0 if data.primary_mode == "max" else -1.0
    for config in data.configs():
        vals = [r.record["area"] for r in data.config_runs(config, "brain")
                if math.isfinite(r.record["area"])]
        if vals and (best_v is None or sign * np.mean(vals) > best_v):
            best, best_v = config, sign * float(np.mean(vals))
    return best


def curve_panel(data, name: str, chart: dict[str, Any]):
    from raybrain.analysis.figures import Panel, _no_data, new_figure

    prefix = chart["prefix"]
    config = best_config(data)
    fig = new_figure(6.6, 4.4)
    ax = fig.add_subplot()
    arms = [*data.brain_dependent_arms(), "none"]
    drawn = False
    for i, arm in enumerate(arms):
        runs = (data.config_runs(config, arm) if arm != "none"
                else data.baseline_runs(config, "none")) if config else []
        fams = [_family(r.metrics, prefix) for r in runs]
        xs = sorted({x for f in fams for x in f})
        if not xs:
            continue
        mean, sem = [], []
        for xv in xs:
            vals = [f[xv] for f in fams if xv in f and math.isfinite(f[xv])]
            mean.append(np.mean(vals) if vals else np.nan)
            sem.append(np.std(vals, ddof=1) / math.sqrt(len(vals)) if len(vals) > 1 else np.nan)
        xplot = np.array(xs, dtype=float)
        if chart.get("x_values") and len(chart["x_values"]) == len(xs):
            xplot = np.array(chart["x_values"], dtype=float)
        mean, sem = np.array(mean), np.array(sem)
        ax.plot(xplot, mean, color=_color(arm, i), lw=1.6, label=arm,
                ls="--" if arm == "none" else "-")
        ok = np.isfinite(sem)
        if ok.any():
            ax.fill_between(xplot[ok], (mean - sem)[ok], (mean + sem)[ok],
                            color=_color(arm, i), alpha=0.18, lw=0)
        drawn = True
    if drawn:
        ax.legend(fontsize=8, frameon=False)
    else:
        _no_data(ax, f"no finished runs with metrics {prefix}*")
    ax.set_xlabel(chart.get("xlabel", "index"))
    ax.set_ylabel(chart.get("ylabel", prefix.rstrip("_")))
    title = chart.get("title", prefix.rstrip("_"))
    ax.set_title(title)
    ax.grid(alpha=0.25)
    caption = (f"{title.capitalize()} at the end of training, per arm (mean +/- s.e.m. over "
               f"seeds) for config {config} (the best brain area), 'none' dashed.")
    return Panel(name, fig, caption, title)


# --------------------------------------------------------------------------- arrays
def arrays_panel(data, name: str, chart: dict[str, Any]):
    from raybrain.analysis.figures import Panel, _no_data, new_figure

    names = list(chart["names"])
    config = best_config(data)
    arm = chart.get("arm", "brain")
    runs = sorted(data.config_runs(config, arm), key=lambda r: r.record["seed"]) if config else []
    arrays = data.arrays(runs[0].run_id) if runs and data.arrays_fn else {}
    epochs = sorted(arrays)
    if epochs and not chart.get("epochs"):
        epochs = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
    elif chart.get("epochs"):
        epochs = [e for e in chart["epochs"] if e in arrays]
    title = chart.get("title", ", ".join(names))
    if not epochs:
        fig = new_figure(5.0, 3.0)
        _no_data(fig.add_subplot(), f"no saved arrays {names} for this sweep")
        return Panel(name, fig, f"{title}: no arrays were saved.", title)
    fig = new_figure(2.6 * len(epochs) + 0.6, 2.5 * len(names) + 0.4)
    axes = fig.subplots(len(names), len(epochs), squeeze=False)
    for i, n in enumerate(names):
        for j, e in enumerate(epochs):
            ax = axes[i][j]
            a = arrays[e].get(n)
            if a is None:
                ax.set_axis_off()
                continue
            a = np.asarray(a, dtype=float)
            if a.ndim == 3 and a.shape[0] in (1, 3):
                a = np.moveaxis(a, 0, -1).squeeze()
            im = ax.imshow(a, cmap="viridis", interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{n}, epoch {e}", fontsize=9)
    fig.suptitle(title)
    caption = (f"{title.capitalize()}: the arrays the task saved for the {arm} run of seed "
               f"{runs[0].record['seed']} at config {config}, at epochs "
               f"{', '.join(map(str, epochs))}.")
    return Panel(name, fig, caption, title)


# --------------------------------------------------------------------------- pairwise
def _upper(a) -> np.ndarray:
    """The upper triangles (k=1) of a matrix or a stack of them, concatenated."""
    a = np.asarray(a, dtype=float)
    n = a.shape[-1]
    iu = np.triu_indices(n, 1)
    return a[..., iu[0], iu[1]].reshape(-1)


def dissimilarity(vectors: list[np.ndarray]) -> np.ndarray:
    """(k, k) matrix of 1 - Spearman r between every two vectors."""
    from scipy.stats import spearmanr

    k = len(vectors)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            r = spearmanr(vectors[i], vectors[j]).statistic
            out[i, j] = out[j, i] = 1.0 - (float(r) if np.isfinite(r) else 0.0)
    return out


def pairwise_panel(data, name: str, chart: dict[str, Any]):
    from scipy.stats import spearmanr

    from raybrain.analysis.figures import Panel, _no_data, new_figure

    by, arm = chart["by"], chart.get("arm", "brain")
    title = chart.get("title", f"{chart['array']} across {by}")
    picked: dict[str, Any] = {}
    for r in sorted((r for r in data.runs if r.arm == arm and by in r.record["label"]),
                    key=lambda r: r.record["seed"]):
        picked.setdefault(str(r.record["label"][by]), r)
    keys = sorted(picked)
    model, reference = [], []
    for k in keys:
        arrays = data.arrays(picked[k].run_id) if data.arrays_fn else {}
        last = max(arrays) if arrays else None
        last_with = lambda n: max((e for e in arrays if n in arrays[e]), default=None)  # noqa: E731
        em, er = last_with(chart["array"]), last_with(chart.get("reference", ""))
        if em is not None:
            model.append((k, _upper(arrays[em][chart["array"]])))
        if er is not None and chart.get("reference"):
            reference.append((k, _upper(arrays[er][chart["reference"]])))
        del last
    if len(model) < 3:
        fig = new_figure(5.0, 3.0)
        _no_data(fig.add_subplot(), f"needs saved '{chart['array']}' for at least 3 values of "
                                    f"'{by}' (the {arm} arm); found {len(model)}")
        return Panel(name, fig, f"{title}: not enough runs to compare.", title)
    names = [k for k, _ in model]
    dm = dissimilarity([v for _, v in model])
    have_ref = [k for k, _ in reference] == names
    fig = new_figure(9.4 if have_ref else 5.2, 4.2)
    axes = fig.subplots(1, 2 if have_ref else 1, squeeze=False)[0]
    r_text = "reference not saved (the spec does not log brain data)"
    stats = {"n": len(names), "spearman_r": None}
    panels = [(axes[0], dm, f"models: 1 - Spearman ({chart['array']})")]
    if have_ref:
        dr = dissimilarity([v for _, v in reference])
        iu = np.triu_indices(len(names), 1)
        rho = float(spearmanr(dm[iu], dr[iu]).statistic)
        stats["spearman_r"] = rho
        r_text = f"Spearman r between the two = {rho:.2f} ({len(iu[0])} pairs)"
        panels.append((axes[1], dr, f"targets: 1 - Spearman ({chart['reference']})"))
    for ax, m, sub in panels:
        im = ax.imshow(m, cmap="magma", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_xticks(range(len(names)))
        ax.set_yticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        ax.set_title(sub, fontsize=9)
    fig.suptitle(f"{title}\n{r_text}", fontsize=10)
    caption = (f"{title.capitalize()}: for each {by} ({len(names)}), the {arm} run of the first "
               f"seed; left, how differently the models predict (1 - Spearman between their "
               f"'{chart['array']}'); right, how differently the targets look; {r_text}.")
    panel = Panel(name, fig, caption, title)
    panel.stats = stats
    return panel
