"""The verdict: per config and arm, summaries over seeds, one-sided tests, alignment.

Read from what MLflow holds (the sweep's finished child runs of the verdict stage: the
confirmation stage when there is one, else the search). For every brain config:

- each arm's mean +/- s.e.m. (and median, best, divergence count) of the final value and
  the trajectory area of the task's primary metric;
- brain against every control (shuffled, noise, task ablations, and the best L2: the
  weight decay with the highest mean validation metric), one-sided (brain better): the
  exact Mann-Whitney U and the paired Wilcoxon signed-rank test over shared seeds, each
  Holm-corrected across the configs of the stage, and a bootstrap CI of the difference of
  means (paired when the seeds pair up);
- the verdict: "brain helps" when the Holm-corrected Mann-Whitney p (the B2M paper's test)
  is below the spec's significance against every control the sweep has;
- alignment: did brain runs align more with the real brain (the task's declared alignment
  metrics, each in its own direction: a CKA is better higher, a GW distance lower) than
  shuffled and noise runs, and does the performance gain over ``none`` at the same seed
  track alignment across runs (Spearman correlation).

Diverged runs count as the worst outcome in the tests. A comparison that cannot be made
(an arm missing, fewer than 2 seeds) is said, never shown as NaN.
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
from raybrain.tasks.base import validation_metric

CONTROL_ORDER = ("shuffled", "noise")
COLUMNS = ["kind", "config", "arm", "control", "comparison", "metric", "n", "mean", "sem",
           "median", "best", "diverged", "diverged_rate", "p_mannwhitney", "p_wilcoxon",
           "n_wilcoxon", "p_mannwhitney_holm", "p_wilcoxon_holm", "p_attainable", "diff",
           "better_sign", "ci_low", "ci_high", "r", "verdict", "note"]


@dataclass
class VerdictTable:
    """Rows as plain dicts; ``kind`` is one of "arm", "test", "verdict", "alignment",
    "note". ``to_csv`` writes them with the columns of :data:`COLUMNS`."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    primary: str = "test_accuracy"
    significance: float = 0.05
    stage: str = "search"

    def of(self, kind: str, config: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["kind"] == kind
                and (config is None or r.get("config") == config)]

    def arm_rows(self) -> list[dict[str, Any]]:
        return self.of("arm")

    def test_rows(self) -> list[dict[str, Any]]:
        return self.of("test")

    def configs(self) -> list[str]:
        return list(dict.fromkeys(r["config"] for r in self.rows if r.get("config")))

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in COLUMNS})
        return buf.getvalue()


# --------------------------------------------------------------------------- records
def runs_to_records(runs, primary: str, stage: str | None = None,
                    align_metrics=()) -> list[dict[str, Any]]:
    """Finished child runs (MLflow ``Run`` objects) -> flat records for :func:`build_verdict`.

    ``align_metrics``: names of the task's alignment metrics (their final values are kept).
    """
    out = []
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        if t.get("raybrain.role") != "run" or r.info.status != "FINISHED":
            continue
        if stage is not None and t.get("raybrain.stage", "search") != stage:
            continue
        diverged = t.get("raybrain.diverged") == "True" or m.get("diverged", 0) > 0
        rec = {
            "run_id": r.info.run_id,
            "arm": t["raybrain.arm"], "seed": int(t["raybrain.seed"]),
            "config_id": t["raybrain.config_id"], "baseline_key": t["raybrain.baseline_key"],
            "label": json.loads(t.get("raybrain.label", "{}")),
            "final": m.get(f"final_{primary}", math.nan),
            "area": m.get(f"final_{primary}_auc", math.nan),
            "best": m.get(f"best_{primary}", math.nan),
            "val": m.get(f"final_{validation_metric(primary)}", math.nan),
            "diverged": bool(diverged),
            "baseline": t.get("raybrain.brain_source", "None") == "None",
        }
        for a in align_metrics:
            rec[a] = m.get(f"final_{a}", math.nan)
        out.append(rec)
    return out


def config_label(lab: dict[str, Any]) -> str:
    """How a config is named in the verdict and the report: ``alpha=0.1, lr=0.01``."""
    return ", ".join(f"{k}={v}" for k, v in sorted(lab.items())) or "-"


def _sort_key(lab: dict[str, Any]) -> list:
    return [(k, (0, v) if isinstance(v, (int, float)) else (1, str(v)))
            for k, v in sorted(lab.items())]


def _worst(*groups: list[float]) -> list[list[float]]:
    """Replace non-finite values (diverged runs) by a value below every finite one.

    Ranking a diverged run as the worst outcome (rather than dropping it) keeps an arm
    that diverges more from looking better. Values are already oriented so that higher
    is better; callers pass ``-inf`` for a run that diverged by the task's threshold rule
    even though its last value is finite.
    """
    finite = [v for g in groups for v in g if math.isfinite(v)]
    floor = (min(finite) - 1.0) if finite else 0.0
    return [[v if math.isfinite(v) else floor for v in g] for g in groups]


def _ranked(r: dict[str, Any], metric: str, sign: float) -> float:
    """A run's value as the tests rank it: oriented (higher is better), and the worst
    possible when the run diverged (non-finite, or the task's threshold rule)."""
    v = r[metric]
    if r.get("diverged") or not math.isfinite(v):
        return -math.inf
    return sign * v


def _summary(recs: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    vals = [r[metric] for r in recs if math.isfinite(r[metric])]
    best = [r["best"] for r in recs if math.isfinite(r["best"])]
    n_div = sum(r["diverged"] for r in recs)
    return {"n": len(recs), "mean": float(np.mean(vals)) if vals else None,
            "sem": stats.sem(vals) if len(vals) >= 2 else None,
            "median": float(np.median(vals)) if vals else None,
            "best": float(np.mean(best)) if best else None,
            "diverged": n_div, "diverged_rate": n_div / len(recs) if recs else None}


def _compare(a_recs, b_recs, metric: str, sign: float) -> dict[str, Any]:
    """One-sided tests of brain (a) against a control (b) on ``metric``, and the
    difference of means with its bootstrap CI.

    The tests rank diverged runs worst; the difference and CI describe the finite values
    only (a diverged run has no value to average), paired by seed when every run pairs.
    """
    a, b = _worst([_ranked(r, metric, sign) for r in a_recs],
                  [_ranked(r, metric, sign) for r in b_recs])
    by_a = {r["seed"]: r for r in a_recs}
    by_b = {r["seed"]: r for r in b_recs}
    paired = sorted(set(by_a) & set(by_b))
    pa, pb = _worst([_ranked(by_a[s], metric, sign) for s in paired],
                    [_ranked(by_b[s], metric, sign) for s in paired])
    enough = len(a) >= 2 and len(b) >= 2
    # the signed-rank test drops zero differences: its effective n
    n_wilcoxon = sum(1 for x, y in zip(pa, pb) if x != y)
    fa = [r[metric] for r in a_recs if math.isfinite(r[metric])]
    fb = [r[metric] for r in b_recs if math.isfinite(r[metric])]
    fpair = [s for s in paired if math.isfinite(by_a[s][metric]) and math.isfinite(by_b[s][metric])]
    ci = None
    if len(fa) >= 2 and len(fb) >= 2:
        if len(fpair) == len(fa) == len(fb):
            ci = stats.bootstrap_diff_ci([by_a[s][metric] for s in fpair],
                                         [by_b[s][metric] for s in fpair], paired=True)
        else:
            ci = stats.bootstrap_diff_ci(fa, fb, paired=False)
    wnote = None
    if len(paired) >= 2 and n_wilcoxon == 0:
        wnote = "every paired difference is zero: the Wilcoxon test has nothing to rank"
    elif len(paired) >= 2 and n_wilcoxon < len(paired):
        wnote = (f"Wilcoxon on {n_wilcoxon} of {len(paired)} pairs "
                 f"({len(paired) - n_wilcoxon} zero difference(s) dropped)")
    return {
        "n": min(len(a), len(b)), "n_brain": len(a), "n_control": len(b),
        "p_mannwhitney": stats.mann_whitney_greater(a, b) if enough else None,
        "p_wilcoxon": stats.wilcoxon_greater(pa, pb) if len(paired) >= 2 else None,
        "n_wilcoxon": n_wilcoxon if len(paired) >= 2 else None,
        "better_sign": "+" if sign > 0 else "-",
        "note": wnote,
        "diff": float(np.mean(fa) - np.mean(fb)) if fa and fb else None,
        "median": float(np.median(fa) - np.median(fb)) if fa and fb else None,
        "ci_low": None if ci is None else ci[0],
        "ci_high": None if ci is None else ci[1],
    }


def _holm_by_group(rows: list[dict[str, Any]]) -> None:
    """Holm-correct each (control, metric) family across the configs, in place.

    Also the smallest Holm-corrected Mann-Whitney p each test could reach at all, from its
    sample sizes alone (fully separated arms: ``1 / C(n_a + n_b, n_a)``, times the number
    of tests in the family): ``p_attainable``. When that is not below the significance
    level, no data could have made the verdict positive.
    """
    families: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault((r["control"], r["metric"]), []).append(r)
    for fam in families.values():
        for test in ("p_mannwhitney", "p_wilcoxon"):
            adjusted = stats.holm([r[test] for r in fam])
            for r, p in zip(fam, adjusted):
                r[f"{test}_holm"] = p
        k = sum(1 for r in fam if r["p_mannwhitney"] is not None)
        for r in fam:
            if r["p_mannwhitney"] is None:
                continue
            single = 1.0 / math.comb(r["n_brain"] + r["n_control"], r["n_brain"])
            r["p_attainable"] = min(1.0, k * single)
            r["p_attainable_single"] = single
            r["family_size"] = k


def _cannot_be_positive(row: dict[str, Any]) -> str:
    """The verdict in place of one that sample sizes alone decided before training."""
    na, nb = row["n_brain"], row["n_control"]
    n = f"n = {na} per arm" if na == nb else f"n = {na} brain and {nb} {row['comparison']} runs"
    if row["p_attainable_single"] >= row["p_attainable"] or row.get("family_size", 1) == 1:
        return f"cannot be positive with {n} (smallest attainable p = {row['p_attainable']:.3g})"
    return (f"cannot be positive with {n} across {row['family_size']} configs (smallest "
            f"attainable Holm-corrected p = {row['p_attainable']:.3g})")


# --------------------------------------------------------------------------- build
def build_verdict(records: list[dict[str, Any]], primary: str = "test_accuracy",
                  mode: str = "max", significance: float = 0.05,
                  expected_arms: list[str] | None = None, stage: str = "search",
                  align_metrics: dict[str, str] | None = None,
                  baseline_controls: tuple[str, ...] = ()) -> VerdictTable:
    """Build the verdict from run records (see :func:`runs_to_records` for the fields).

    ``expected_arms``: the arms the spec asked for; a missing one is reported as a
    comparison that cannot be made. ``align_metrics``: the task's alignment metrics and
    their direction (``{"align_cka": "max", "gw_distance": "min"}``).
    ``baseline_controls``: baseline arms the task declares as controls too (``("none",)``).
    """
    align_metrics = dict(align_metrics or {})
    table = VerdictTable(primary=primary, significance=significance, stage=stage)
    sign = 1.0 if mode == "max" else -1.0
    expected = list(expected_arms) if expected_arms else sorted({r["arm"] for r in records})
    brain_recs = [r for r in records if not r["baseline"]]
    cids = sorted({r["config_id"] for r in brain_recs},
                  key=lambda c: _sort_key(next(r["label"] for r in brain_recs if r["config_id"] == c)))
    tests: list[dict[str, Any]] = []
    for cid in cids:
        mine = [r for r in records if r["config_id"] == cid]
        label = config_label(next(r["label"] for r in mine))
        base = [r for r in records if r["baseline"] and r["baseline_key"] == mine[0]["baseline_key"]]
        present = {r["arm"] for r in mine}
        order = ["brain", *[a for a in CONTROL_ORDER if a in present],
                 *sorted(present - {"brain", *CONTROL_ORDER})]
        groups: dict[str, list[dict[str, Any]]] = {a: [r for r in mine if r["arm"] == a]
                                                   for a in order}
        controls = {a: a for a in order[1:]}
        l2 = [r for r in base if r["arm"] == "l2"]
        if l2:
            by_wd: dict[Any, list] = {}
            for r in l2:
                by_wd.setdefault(r["label"].get("weight_decay"), []).append(r)
            vals = _worst(*[[sign * r["val"] for r in by_wd[w]] for w in by_wd])
            best_wd = list(by_wd)[int(np.argmax([np.mean(v) for v in vals]))]
            name = f"l2[weight_decay={best_wd}]"
            groups[name] = by_wd[best_wd]
            controls[name] = "best_l2"
        if any(r["arm"] == "none" for r in base):
            groups["none"] = [r for r in base if r["arm"] == "none"]
            if "none" in baseline_controls:
                controls["none"] = "none"
        for arm, recs in groups.items():
            for metric in ("final", "area"):
                table.rows.append({"kind": "arm", "config": label, "arm": arm,
                                   "metric": f"{metric}_{primary}", **_summary(recs, metric)})
        for arm in ("shuffled", "noise", "l2"):
            if arm not in expected:
                table.rows.append({"kind": "note", "config": label, "control": arm,
                                   "note": f"brain vs {arm}: cannot be made, the sweep has no "
                                           f"'{arm}' arm (not in arms.include); the verdict "
                                           f"judges the other controls only"})
            elif (arm if arm != "l2" else "best_l2") not in controls.values():
                table.rows.append({"kind": "note", "config": label, "control": arm,
                                   "note": f"brain vs {arm}: cannot be made, arm '{arm}' has "
                                           f"no finished runs for this config"})
        if not groups["brain"]:
            table.rows.append({"kind": "note", "config": label, "control": "brain",
                               "note": "no finished brain runs for this config: no tests"})
        if not groups["brain"]:
            continue
        for arm, control in controls.items():
            for metric in ("final", "area"):
                row = {"kind": "test", "config": label, "arm": "brain", "control": control,
                       "comparison": arm, "metric": f"{metric}_{primary}",
                       **_compare(groups["brain"], groups[arm], metric, sign)}
                tests.append(row)
                table.rows.append(row)
        _alignment_rows(table, label, groups, align_metrics)
    _holm_by_group(tests)
    for cid_label in table.configs():
        for metric in ("final", "area"):
            rows = [r for r in tests if r["config"] == cid_label and r["metric"] == f"{metric}_{primary}"]
            if not rows:
                continue
            ps = [r["p_mannwhitney_holm"] for r in rows]
            blocked = [r for r in rows if r.get("p_attainable") is not None
                       and r["p_attainable"] >= significance]
            if any(p is None for p in ps):
                verdict = "not computable (fewer than 2 seeds in an arm)"
            elif blocked:
                verdict = _cannot_be_positive(blocked[0])
            elif all(p < significance for p in ps):
                verdict = "brain helps"
            else:
                verdict = "no evidence that brain helps"
            versus = ", ".join(r["comparison"] for r in rows)
            table.rows.append({"kind": "verdict", "config": cid_label, "metric": f"{metric}_{primary}",
                               "verdict": verdict,
                               "note": f"Holm-corrected exact Mann-Whitney p < {significance} "
                                       f"against each of: {versus}"})
    _alignment_tracking(table, records, sign, align_metrics)
    return table


def _alignment_rows(table: VerdictTable, label: str, groups,
                    align_metrics: dict[str, str]) -> None:
    """Did the brain arm align more with the real brain than its brain-data controls?

    One-sided in each metric's direction; ``diff`` is brain - control as measured (for a
    "min" metric a negative diff means brain aligned more).
    """
    for metric, mode in align_metrics.items():
        s = 1.0 if mode == "max" else -1.0
        brain = [r for r in groups["brain"] if math.isfinite(r.get(metric, math.nan))]
        if not brain:
            continue
        for control in CONTROL_ORDER:
            other = [r for r in groups.get(control, []) if math.isfinite(r.get(metric, math.nan))]
            if not other:
                continue
            a, b = [r[metric] for r in brain], [r[metric] for r in other]
            table.rows.append({
                "kind": "alignment", "config": label, "arm": "brain", "control": control,
                "comparison": control, "metric": metric, "n": min(len(a), len(b)),
                "mode": mode, "mean": float(np.mean(a)), "diff": float(np.mean(a) - np.mean(b)),
                "p_mannwhitney": stats.mann_whitney_greater([s * x for x in a], [s * x for x in b])
                if len(a) >= 2 and len(b) >= 2 else None})


def _alignment_tracking(table: VerdictTable, records, sign: float,
                        align_metrics: dict[str, str]) -> None:
    """Across brain-dependent runs: Spearman r between final alignment (as measured) and
    the gain in trajectory area over the ``none`` run of the same seed (raw area when there
    is none). For a "min" metric (a distance) gain tracking alignment shows as r < 0."""
    from scipy.stats import spearmanr

    none = {(r["baseline_key"], r["seed"]): r["area"] for r in records
            if r["arm"] == "none" and math.isfinite(r["area"])}
    runs = [r for r in records if not r["baseline"] and math.isfinite(r["area"])]
    if not none:
        for metric in align_metrics:
            table.rows.append({"kind": "alignment", "config": "", "metric": metric,
                               "comparison": "gain vs alignment", "n": 0,
                               "note": "not computable: the sweep has no finished 'none' runs "
                                       "to measure gains against"})
        return
    # a gain needs the 'none' run of the same seed: runs without one are left out (their
    # raw area is not a gain)
    unmatched = [r for r in runs if (r["baseline_key"], r["seed"]) not in none]
    runs = [r for r in runs if (r["baseline_key"], r["seed"]) in none]
    dropped = (f"; {len(unmatched)} run(s) of seed(s) "
               f"{sorted({r['seed'] for r in unmatched})} left out: no 'none' run at that seed"
               if unmatched else "")
    for metric, mode in align_metrics.items():
        pts = [(r[metric], sign * (r["area"] - none[(r["baseline_key"], r["seed"])]))
               for r in runs if math.isfinite(r.get(metric, math.nan))]
        if len(pts) < 3 or len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
            table.rows.append({"kind": "alignment", "config": "", "metric": metric,
                               "comparison": "gain vs alignment", "n": len(pts),
                               "note": "not computable (fewer than 3 runs or no variation)"
                                       + dropped})
            continue
        res = spearmanr([p[0] for p in pts], [p[1] for p in pts])
        oriented = ("" if mode == "max" else
                    f"; {metric} is better when lower, so r < 0 means gain tracks alignment")
        table.rows.append({"kind": "alignment", "config": "", "metric": metric,
                           "comparison": "gain vs alignment", "n": len(pts),
                           "r": float(res.statistic), "p_mannwhitney": None,
                           "note": f"Spearman r across runs, p = {float(res.pvalue):.3g} "
                                   f"(two-sided); gain = area - area of 'none' at the same "
                                   f"seed{oriented}{dropped}"})


def verdict_table(tracker, spec) -> VerdictTable:
    """The verdict of a sweep, read from its MLflow child runs of the verdict stage."""
    import raybrain.tasks as tasks

    task = tasks.get(spec.task)
    stage = spec.verdict_stage
    return build_verdict(runs_to_records(tracker.child_runs(), task.primary_metric, stage,
                                         tuple(task.align_metrics)),
                         task.primary_metric, task.primary_mode, spec.significance,
                         spec.arms.include, stage, task.align_metrics,
                         tuple(task.baseline_controls))


# --------------------------------------------------------------------------- text
def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _p(x) -> str:
    return "n/c" if x is None else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def format_table(table: VerdictTable, spec=None) -> str:
    """Plain-text verdict: per config, arms (mean +/- s.e.m.), tests, verdict; alignment."""
    prim = table.primary
    lines = ["", f"verdict on the {table.stage} stage (mean +/- s.e.m. over seeds; one-sided "
                 f"tests, brain better; Holm across configs; n/c = not computable)"]
    for config in table.configs():
        arms = table.of("arm", config)
        if not arms:
            continue
        lines.append(f"config {config}")
        lines.append(f"  {'arm':<28}{'n':>3}  {'final ' + prim:>24}  {'area ' + prim:>24}  diverged")
        for arm in dict.fromkeys(r["arm"] for r in arms):
            f = next(r for r in arms if r["arm"] == arm and r["metric"].startswith("final"))
            a = next(r for r in arms if r["arm"] == arm and r["metric"].startswith("area"))
            lines.append(f"  {arm:<28}{f['n']:>3}  {_fmt(f['mean']) + ' +/- ' + _fmt(f['sem']):>24}"
                         f"  {_fmt(a['mean']) + ' +/- ' + _fmt(a['sem']):>24}  "
                         f"{f['diverged']}/{f['n']}")
        tests = table.of("test", config)
        if tests:
            favours = "> 0" if tests[0].get("better_sign", "+") == "+" else "< 0"
            lines.append(f"  {'brain vs':<28}{'metric':<26}{'MW p':>8}{'(Holm)':>8}"
                         f"{'Wilcoxon p (n)':>16}{'(Holm)':>8}   diff [95% CI] "
                         f"(brain - control; {favours} favours brain)")
            for r in tests:
                ci = (f"[{_fmt(r['ci_low'], 4)}, {_fmt(r['ci_high'], 4)}]"
                      if r["ci_low"] is not None else "[n/c]")
                wn = f" ({r['n_wilcoxon']})" if r.get("n_wilcoxon") is not None else ""
                lines.append(f"  {r['comparison']:<28}{r['metric']:<26}{_p(r['p_mannwhitney']):>8}"
                             f"{_p(r['p_mannwhitney_holm']):>8}{_p(r['p_wilcoxon']) + wn:>16}"
                             f"{_p(r['p_wilcoxon_holm']):>8}   {_fmt(r['diff'], 4)} {ci}")
            for r in tests:
                if r.get("note"):
                    lines.append(f"  note ({r['comparison']}, {r['metric']}): {r['note']}")
        for r in table.of("note", config):
            lines.append(f"  note: {r['note']}")
        for r in table.of("verdict", config):
            v = r["verdict"]
            shown = v.upper() if v in ("brain helps", "no evidence that brain helps") else v
            lines.append(f"  verdict ({r['metric']}): {shown}")
        align = [r for r in table.of("alignment", config)]
        if align:
            lines.append("  alignment with the real brain (final, held-out data): " + "; ".join(
                f"{r['metric']} brain - {r['comparison']} = {_fmt(r['diff'], 3)} "
                f"(MW p {_p(r['p_mannwhitney'])})" for r in align))
    for r in table.of("alignment", ""):
        if r.get("r") is not None:
            lines.append(f"performance gain vs {r['metric']} across {r['n']} runs: "
                         f"r = {r['r']:.3f}; {r['note']}")
        else:
            lines.append(f"performance gain vs {r['metric']}: {r['note']}")
    return "\n".join(lines)
