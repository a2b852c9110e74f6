"""The verdict table: per config and arm, summaries over seeds and one-sided tests.

Read from what MLflow holds (the sweep's child runs). For every brain config: each arm's
mean +/- s.e.m. of the final value and of the trajectory area of the task's primary metric,
and one-sided exact Mann-Whitney and paired Wilcoxon p-values of brain against shuffled,
noise and the best L2 (the weight decay with the highest mean validation metric, chosen
once per baseline group), paired by seed. Diverged runs count as the worst outcome.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raybrain.analysis import stats


@dataclass
class VerdictTable:
    """Rows of ``kind`` "arm" (summaries) and "test" (comparisons), as plain dicts."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    primary: str = "test_accuracy"

    def to_csv(self) -> str:
        cols = ["kind", "config", "arm", "comparison", "metric", "n", "mean", "sem", "median",
                "diverged", "p_mannwhitney", "p_wilcoxon"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
        return buf.getvalue()

    def arm_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "arm"]

    def test_rows(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == "test"]


def _runs_to_records(runs, primary: str) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        if t.get("raybrain.role") != "run" or r.info.status != "FINISHED":
            continue
        diverged = t.get("raybrain.diverged") == "True" or m.get("diverged", 0) > 0
        out.append({
            "arm": t["raybrain.arm"], "seed": int(t["raybrain.seed"]),
            "config_id": t["raybrain.config_id"], "baseline_key": t["raybrain.baseline_key"],
            "label": json.loads(t.get("raybrain.label", "{}")),
            "final": m.get(f"final_{primary}", math.nan),
            "area": m.get(f"final_{primary}_auc", math.nan),
            "val": m.get("final_val_accuracy", math.nan),
            "diverged": bool(diverged),
            "baseline": t.get("raybrain.brain_source", "None") == "None",
        })
    return out


def _sort_key(lab: dict[str, Any]) -> list:
    return [(k, (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in sorted(lab.items())]


def _label(lab: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(lab.items())) or "-"


def _worst(*groups: list[float]) -> list[list[float]]:
    """Replace non-finite values (diverged runs) by a value below every finite one.

    Ranking a diverged run as the worst outcome (rather than dropping it) keeps an arm
    that diverges more from looking better. Values are already oriented so that higher
    is better.
    """
    finite = [v for g in groups for v in g if math.isfinite(v)]
    floor = (min(finite) - 1.0) if finite else 0.0
    return [[v if math.isfinite(v) else floor for v in g] for g in groups]


def _summary(recs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    vals = [r[metric] for r in recs if math.isfinite(r[metric])]
    return {"n": len(recs), "mean": float(np.mean(vals)) if vals else None,
            "sem": stats.sem(vals), "median": float(np.median(vals)) if vals else None,
            "diverged": sum(r["diverged"] for r in recs)}


def build_verdict(records: list[dict[str, Any]], primary: str = "test_accuracy",
                  mode: str = "max") -> VerdictTable:
    """Build the table from run records (see :func:`_runs_to_records` for the fields)."""
    table = VerdictTable(primary=primary)
    sign = 1.0 if mode == "max" else -1.0
    brain_recs = [r for r in records if not r["baseline"]]
    configs = sorted({r["config_id"] for r in brain_recs},
                     key=lambda c: _sort_key(next(r["label"] for r in brain_recs if r["config_id"] == c)))
    for cid in configs:
        mine = [r for r in records if r["config_id"] == cid]
        label = _label(next(r["label"] for r in mine))
        bkey = mine[0]["baseline_key"]
        # brain, its controls, then any task ablations (alphabetical)
        present = {r["arm"] for r in mine}
        order = ["brain", "shuffled", "noise"] + sorted(present - {"brain", "shuffled", "noise"})
        groups: dict[str, list[dict[str, Any]]] = {
            arm: [r for r in mine if r["arm"] == arm] for arm in order}
        base = [r for r in records if r["baseline_key"] == bkey]
        l2 = [r for r in base if r["arm"] == "l2"]
        if l2:
            by_wd: dict[Any, list] = {}
            for r in l2:
                by_wd.setdefault(r["label"].get("weight_decay"), []).append(r)
            vals = _worst(*[[sign * r["val"] for r in by_wd[w]] for w in by_wd])
            best_wd = list(by_wd)[int(np.argmax([np.mean(v) for v in vals]))]
            groups[f"l2[weight_decay={best_wd}]"] = by_wd[best_wd]
        groups["none"] = [r for r in base if r["arm"] == "none"]
        for arm, recs in groups.items():
            if not recs:
                continue
            for metric in ("final", "area"):
                table.rows.append({"kind": "arm", "config": label, "arm": arm,
                                   "metric": f"{metric}_{primary}", **_summary(recs, metric)})
        brain = {r["seed"]: r for r in groups["brain"]}
        for arm, recs in groups.items():
            if arm in ("brain", "none") or not recs or not groups["brain"]:
                continue
            other = {r["seed"]: r for r in recs}
            for metric in ("final", "area"):
                raw_a = [sign * r[metric] for r in groups["brain"]]
                raw_b = [sign * r[metric] for r in recs]
                a, b = _worst(raw_a, raw_b)
                paired = sorted(set(brain) & set(other))
                pa, pb = _worst([sign * brain[s][metric] for s in paired],
                                [sign * other[s][metric] for s in paired])
                table.rows.append({
                    "kind": "test", "config": label, "arm": "brain", "comparison": arm,
                    "metric": f"{metric}_{primary}", "n": min(len(a), len(b)),
                    "p_mannwhitney": stats.mann_whitney_greater(a, b) if a and b else None,
                    "p_wilcoxon": stats.wilcoxon_greater(pa, pb) if paired else None,
                    "median": (sign * float(np.median(a) - np.median(b))) if a and b else None,
                })
    return table


def verdict_table(tracker, spec) -> VerdictTable:
    """The verdict table of a sweep, read from its MLflow child runs."""
    import raybrain.tasks as tasks

    task = tasks.get(spec.task)
    return build_verdict(_runs_to_records(tracker.child_runs(), task.primary_metric),
                         task.primary_metric, task.primary_mode)


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _p(x) -> str:
    return "n/c" if x is None else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def format_table(table: VerdictTable, spec=None) -> str:
    """Plain-text verdict: per config, arms (mean +/- s.e.m.) then brain's tests."""
    lines = ["", "verdict (mean +/- s.e.m. over seeds; one-sided tests, brain better; "
                 "n/c = not computable)"]
    prim = table.primary
    for config in dict.fromkeys(r["config"] for r in table.rows):
        lines.append(f"config {config}")
        lines.append(f"  {'arm':<28}{'n':>3}  {'final ' + prim:>24}  {'area ' + prim:>24}  diverged")
        arms = [r for r in table.arm_rows() if r["config"] == config]
        for arm in dict.fromkeys(r["arm"] for r in arms):
            f = next(r for r in arms if r["arm"] == arm and r["metric"].startswith("final"))
            a = next(r for r in arms if r["arm"] == arm and r["metric"].startswith("area"))
            lines.append(f"  {arm:<28}{f['n']:>3}  {_fmt(f['mean']) + ' +/- ' + _fmt(f['sem']):>24}"
                         f"  {_fmt(a['mean']) + ' +/- ' + _fmt(a['sem']):>24}  {f['diverged']}")
        tests = [r for r in table.test_rows() if r["config"] == config]
        if tests:
            lines.append(f"  {'brain vs':<28}{'metric':<26}{'MW p':>8}{'Wilcoxon p':>12}{'median diff':>13}")
            for r in tests:
                lines.append(f"  {r['comparison']:<28}{r['metric']:<26}{_p(r['p_mannwhitney']):>8}"
                             f"{_p(r['p_wilcoxon']):>12}{_fmt(r['median'], 4):>13}")
    return "\n".join(lines)
