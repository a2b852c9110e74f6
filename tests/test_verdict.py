"""The verdict table on hand-made run records (known answers)."""

from __future__ import annotations

import math

import pytest

from raybrain.analysis.verdict import build_verdict, format_table

pytestmark = pytest.mark.unit


def _rec(arm, seed, final, area=None, val=None, cid="c1", label=None, diverged=False):
    baseline = arm in ("l2", "none")
    return {"arm": arm, "seed": seed, "config_id": cid if not baseline else f"b-{arm}-{label}",
            "baseline_key": "bk", "label": label if baseline else {"alpha": 0.1},
            "final": final, "area": final if area is None else area,
            "val": final if val is None else val, "diverged": diverged, "baseline": baseline}


def _records():
    recs = []
    for s in range(5):
        recs.append(_rec("brain", s, 0.9 + s / 100))
        recs.append(_rec("shuffled", s, 0.5 + s / 100))
        recs.append(_rec("noise", s, 0.95 + s / 100))  # noise better than brain
        recs.append(_rec("l2", s, 0.6, val=0.70, label={"weight_decay": 1e-5}))
        recs.append(_rec("l2", s, 0.99, val=0.60, label={"weight_decay": 1e-3}))
        recs.append(_rec("none", s, 0.7, label={}))
    return recs


def test_known_answers():
    table = build_verdict(_records())
    tests = {(r["comparison"], r["metric"]): r for r in table.test_rows()}
    shuf = tests[("shuffled", "final_test_accuracy")]
    assert shuf["p_mannwhitney"] == pytest.approx(1 / 252)
    assert shuf["p_wilcoxon"] == pytest.approx(1 / 32)
    assert shuf["median"] == pytest.approx(0.4)
    assert tests[("noise", "final_test_accuracy")]["p_mannwhitney"] == pytest.approx(1.0)
    # best L2 is chosen on validation accuracy (wd 1e-5), not on the test metric (1e-3)
    assert ("l2[weight_decay=1e-05]", "final_test_accuracy") in tests
    assert not any(k[0] == "l2[weight_decay=0.001]" for k in tests)
    arms = {(r["arm"], r["metric"]): r for r in table.arm_rows()}
    brain = arms[("brain", "final_test_accuracy")]
    assert brain["n"] == 5 and brain["mean"] == pytest.approx(0.92)
    assert brain["sem"] == pytest.approx(math.sqrt(2.5e-4 / 5))
    assert ("none", "final_test_accuracy") in arms
    text = format_table(table)
    assert "config alpha=0.1" in text and "0.004" in text


def test_diverged_runs_rank_worst_and_are_counted():
    recs = [r for r in _records() if r["arm"] in ("brain", "shuffled")]
    for r in recs:
        if r["arm"] == "brain" and r["seed"] == 0:
            r["final"] = r["area"] = float("nan")
            r["diverged"] = True
    table = build_verdict(recs)
    row = next(r for r in table.test_rows() if r["metric"] == "final_test_accuracy")
    # 4 of 5 brain runs beat every shuffled run; the diverged one ranks below all of them:
    # U = 20 of 25, and P(U >= 20) = (1 + 1 + 2 + 3 + 5 + 7) / C(10, 5) = 19/252
    assert row["p_mannwhitney"] == pytest.approx(19 / 252)
    # paired: seed 0 has the largest |difference| (rank 5) and is negative; the other four
    # tie at rank 2.5, so W+ = 10 and P(W+ >= 10) over the 32 sign flips is 12/32
    assert row["p_wilcoxon"] == pytest.approx(12 / 32)
    arm = next(r for r in table.arm_rows() if r["arm"] == "brain")
    assert arm["diverged"] == 1 and arm["n"] == 5 and arm["mean"] == pytest.approx(0.925)


def test_single_seed_is_not_computable():
    recs = [_rec("brain", 0, 0.9), _rec("shuffled", 0, 0.5)]
    table = build_verdict(recs)
    row = table.test_rows()[0]
    assert row["p_mannwhitney"] is None and row["p_wilcoxon"] is None
    assert table.arm_rows()[0]["sem"] is None
    assert "n/c" in format_table(table)
    assert "nan" not in table.to_csv().lower()
