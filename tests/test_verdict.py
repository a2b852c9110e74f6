"""The verdict table on hand-made run records (known answers)."""

from __future__ import annotations

import math

import pytest

from raybrain.analysis.verdict import build_verdict, format_table

pytestmark = pytest.mark.unit


def _rec(arm, seed, final, area=None, val=None, alpha=0.1, label=None, diverged=False,
         cka=math.nan):
    baseline = arm in ("l2", "none")
    return {"arm": arm, "seed": seed,
            "config_id": f"c{alpha}" if not baseline else f"b-{arm}-{label}",
            "baseline_key": "bk", "label": label if baseline else {"alpha": alpha},
            "final": final, "area": final if area is None else area, "best": final,
            "val": final if val is None else val, "diverged": diverged, "baseline": baseline,
            "align_cka": cka, "align_rsa": math.nan}


def _records(alphas=(0.1,)):
    recs = []
    for s in range(5):
        for alpha in alphas:
            recs.append(_rec("brain", s, 0.9 + s / 100, alpha=alpha, cka=0.8 + s / 100))
            recs.append(_rec("shuffled", s, 0.5 + s / 100, alpha=alpha, cka=0.3 + s / 100))
            recs.append(_rec("noise", s, 0.95 + s / 100, alpha=alpha, cka=0.2))  # better than brain
        recs.append(_rec("l2", s, 0.6, val=0.70, label={"weight_decay": 1e-5}))
        recs.append(_rec("l2", s, 0.99, val=0.60, label={"weight_decay": 1e-3}))
        recs.append(_rec("none", s, 0.7, label={}))
    return recs


def _tests(table, config=None):
    return {(r["comparison"], r["metric"]): r for r in table.of("test", config)}


def test_known_answers():
    table = build_verdict(_records(), expected_arms=["brain", "shuffled", "noise", "l2", "none"])
    tests = _tests(table)
    shuf = tests[("shuffled", "final_test_accuracy")]
    assert shuf["p_mannwhitney"] == pytest.approx(1 / 252)
    assert shuf["p_wilcoxon"] == pytest.approx(1 / 32)
    assert shuf["median"] == pytest.approx(0.4) and shuf["diff"] == pytest.approx(0.4)
    assert shuf["ci_low"] == shuf["ci_high"] == pytest.approx(0.4)  # constant paired difference
    assert tests[("noise", "final_test_accuracy")]["p_mannwhitney"] == pytest.approx(1.0)
    # best L2 is chosen on validation accuracy (wd 1e-5), not on the test metric (1e-3)
    assert ("l2[weight_decay=1e-05]", "final_test_accuracy") in tests
    assert not any(k[0] == "l2[weight_decay=0.001]" for k in tests)
    arms = {(r["arm"], r["metric"]): r for r in table.arm_rows()}
    brain = arms[("brain", "final_test_accuracy")]
    assert brain["n"] == 5 and brain["mean"] == pytest.approx(0.92)
    assert brain["sem"] == pytest.approx(math.sqrt(2.5e-4 / 5))
    assert ("none", "final_test_accuracy") in arms
    # noise beats brain, so the verdict is "no evidence"
    verdicts = {r["metric"]: r["verdict"] for r in table.of("verdict")}
    assert verdicts["final_test_accuracy"] == "no evidence that brain helps"
    text = format_table(table)
    assert "config alpha=0.1" in text and "0.004" in text and "NO EVIDENCE" in text


def test_holm_across_configs_and_the_verdict_rule():
    recs = [r for r in _records(alphas=(0.1, 0.2)) if r["arm"] != "noise"]
    table = build_verdict(recs, expected_arms=["brain", "shuffled", "l2", "none"])
    for config in ("alpha=0.1", "alpha=0.2"):
        t = _tests(table, config)[("shuffled", "final_test_accuracy")]
        assert t["p_mannwhitney"] == pytest.approx(1 / 252)
        assert t["p_mannwhitney_holm"] == pytest.approx(2 / 252)  # two configs in the family
        assert t["p_wilcoxon_holm"] == pytest.approx(min(1.0, 2 / 32))
    verdicts = {(r["config"], r["metric"]): r["verdict"] for r in table.of("verdict")}
    # brain beats shuffled and the best L2 (0.6) at both configs
    assert verdicts[("alpha=0.1", "final_test_accuracy")] == "brain helps"
    assert verdicts[("alpha=0.2", "area_test_accuracy")] == "brain helps"
    # with 13 configs the smallest Holm-adjusted p is 13/252 = 0.052: nothing survives
    many = [r for r in _records(alphas=tuple(0.1 * k for k in range(1, 14)))
            if r["arm"] != "noise"]
    table = build_verdict(many)
    t = _tests(table, "alpha=0.1")[("shuffled", "final_test_accuracy")]
    assert t["p_mannwhitney_holm"] == pytest.approx(13 / 252)
    assert {r["verdict"] for r in table.of("verdict")} == {
        "cannot be positive with n = 5 per arm across 13 configs (smallest attainable "
        "Holm-corrected p = 0.0516)"}


def test_missing_arm_is_said_and_the_rest_rendered():
    recs = [r for r in _records() if r["arm"] != "noise"]
    table = build_verdict(recs, expected_arms=["brain", "shuffled", "noise", "l2", "none"])
    notes = [r["note"] for r in table.of("note")]
    assert notes == ["brain vs noise: cannot be made, arm 'noise' has no finished runs for this config"]
    assert ("shuffled", "area_test_accuracy") in _tests(table)
    assert "cannot be made" in format_table(table)


def test_diverged_runs_rank_worst_and_are_counted():
    recs = [r for r in _records() if r["arm"] in ("brain", "shuffled")]
    for r in recs:
        if r["arm"] == "brain" and r["seed"] == 0:
            r["final"] = r["area"] = r["best"] = float("nan")
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
    assert arm["diverged"] == 1 and arm["diverged_rate"] == pytest.approx(0.2)
    assert arm["n"] == 5 and arm["mean"] == pytest.approx(0.925)
    assert "1/5" in format_table(table)


ALIGN = {"align_cka": "max", "align_rsa": "max"}


def test_alignment_questions():
    table = build_verdict(_records(), align_metrics=ALIGN)
    rows = {(r["metric"], r["comparison"]): r for r in table.of("alignment")}
    q1 = rows[("align_cka", "shuffled")]
    assert q1["diff"] == pytest.approx(0.5) and q1["p_mannwhitney"] == pytest.approx(1 / 252)
    q2 = rows[("align_cka", "gain vs alignment")]
    # computed over the 15 brain-dependent runs (gain over 'none' at the same seed)
    assert q2["n"] == 15 and -1 <= q2["r"] <= 1
    assert rows[("align_rsa", "gain vs alignment")]["note"].startswith("not computable")


def test_alignment_metrics_come_from_the_task_with_their_direction():
    """A distance (lower is better) is tested in its own direction: the same numbers that
    show 'brain aligned more' for a "max" metric show the opposite for a "min" one."""
    recs = _records()
    for r in recs:
        r["gw_distance"] = r["align_cka"]
    hi = build_verdict(recs, align_metrics={"gw_distance": "max"})
    lo = build_verdict(recs, align_metrics={"gw_distance": "min"})
    row_hi = next(r for r in hi.of("alignment") if r["comparison"] == "shuffled")
    row_lo = next(r for r in lo.of("alignment") if r["comparison"] == "shuffled")
    assert row_hi["p_mannwhitney"] == pytest.approx(1 / 252)  # brain's values are higher
    assert row_lo["p_mannwhitney"] == pytest.approx(1.0)      # ... which is worse for a distance
    assert row_hi["diff"] == row_lo["diff"] == pytest.approx(0.5)
    gain = next(r for r in lo.of("alignment") if r["comparison"] == "gain vs alignment")
    assert "better when lower" in gain["note"]
    # a task that declares no alignment metric gets no alignment rows
    assert build_verdict(recs).of("alignment") == []


def test_single_seed_is_not_computable():
    recs = [_rec("brain", 0, 0.9), _rec("shuffled", 0, 0.5)]
    table = build_verdict(recs)
    row = table.test_rows()[0]
    assert row["p_mannwhitney"] is None and row["p_wilcoxon"] is None
    assert row["ci_low"] is None
    assert table.arm_rows()[0]["sem"] is None
    assert table.of("verdict")[0]["verdict"].startswith("not computable")
    assert "n/c" in format_table(table)
    assert "nan" not in table.to_csv().lower()


def test_the_one_divergence_rule():
    from raybrain.analysis.divergence import diverged

    rule = ("test_loss", 1.0)
    assert not diverged({"test_loss": [0.5, 1.4, 0.8]}, rule)  # went above, came back
    assert diverged({"test_loss": [0.5, 1.4, 1.2]}, rule)  # never came back
    assert not diverged({"test_loss": [0.5, 1.0]}, rule)  # at the threshold is not above
    assert diverged({"test_loss": [0.5, float("nan")]}, rule)
    assert diverged({}, None, non_finite=True) and not diverged({"loss": [9.0]}, None)


def test_a_verdict_that_sample_sizes_decided_says_so():
    """2 seeds per arm: the smallest exact one-sided Mann-Whitney p is 1/C(4, 2) = 1/6, so
    no data could give "brain helps"; table, csv and text say so instead of a verdict."""
    recs = [r for r in _records() if r["seed"] < 2 and r["arm"] != "noise"]
    table = build_verdict(recs, expected_arms=["brain", "shuffled", "l2", "none"])
    msg = "cannot be positive with n = 2 per arm (smallest attainable p = 0.167)"
    assert {r["verdict"] for r in table.of("verdict")} == {msg}
    assert msg in table.to_csv() and msg in format_table(table)
    assert "NO EVIDENCE" not in format_table(table)
    t = _tests(table)[("shuffled", "final_test_accuracy")]
    assert t["p_attainable"] == pytest.approx(1 / 6) and t["p_mannwhitney"] == pytest.approx(1 / 6)


def test_runs_diverged_by_the_threshold_rule_rank_worst():
    """Five brain runs of a loss task whose last epoch broke the task's threshold (so they
    diverged, though their primary values look best) must not give "brain helps"."""
    recs = []
    for s in range(5):
        recs.append(_rec("brain", s, 0.10 + s / 100, diverged=True))
        recs.append(_rec("shuffled", s, 0.50 + s / 100))
    table = build_verdict(recs, mode="min", expected_arms=["brain", "shuffled"])
    t = _tests(table)[("shuffled", "final_test_accuracy")]
    assert t["p_mannwhitney"] == pytest.approx(1.0)  # brain ranked below every control run
    assert {r["verdict"] for r in table.of("verdict")} == {"no evidence that brain helps"}
    arm = next(r for r in table.arm_rows() if r["arm"] == "brain")
    assert arm["diverged"] == 5
    # the same values without the flag would have "helped": the flag is what decides
    for r in recs:
        r["diverged"] = False
    table = build_verdict(recs, mode="min", expected_arms=["brain", "shuffled"])
    assert {r["verdict"] for r in table.of("verdict")} == {"brain helps"}


def test_wilcoxon_reports_its_effective_n():
    recs = []
    for s in range(5):
        brain = 0.9 if s < 2 else 0.6  # seeds 2-4 tie with the control
        recs.append(_rec("brain", s, brain))
        recs.append(_rec("shuffled", s, 0.6))
    t = _tests(build_verdict(recs))[("shuffled", "final_test_accuracy")]
    assert t["n_wilcoxon"] == 2 and "3 zero difference(s) dropped" in t["note"]
    same = [dict(r, final=0.6, area=0.6) for r in recs]
    table = build_verdict(same)
    t = _tests(table)[("shuffled", "final_test_accuracy")]
    assert t["n_wilcoxon"] == 0 and t["note"].startswith("every paired difference is zero")
    assert "every paired difference is zero" in format_table(table)


def test_gain_vs_alignment_leaves_out_seeds_without_a_none_run():
    recs = [r for r in _records() if not (r["arm"] == "none" and r["seed"] == 4)]
    table = build_verdict(recs, align_metrics=ALIGN)
    row = next(r for r in table.of("alignment") if r["comparison"] == "gain vs alignment"
               and r["metric"] == "align_cka")
    assert row["n"] == 12  # 15 brain-dependent runs minus the 3 of seed 4
    assert "3 run(s) of seed(s) [4] left out: no 'none' run at that seed" in row["note"]


def test_the_diff_column_says_which_sign_favours_brain():
    lower = build_verdict(_records(), mode="min")
    assert "(brain - control; < 0 favours brain)" in format_table(lower)
    assert "(brain - control; > 0 favours brain)" in format_table(build_verdict(_records()))


def test_a_task_may_declare_none_a_control():
    """A task whose `none` arm is a training budget the claim must beat (language-only
    fine-tuning) has the verdict judge brain against it too."""
    recs = _records()
    plain = build_verdict(recs, expected_arms=["brain", "shuffled", "noise", "l2", "none"])
    judged = build_verdict(recs, expected_arms=["brain", "shuffled", "noise", "l2", "none"],
                           baseline_controls=("none",))
    assert ("none", "final_test_accuracy") not in _tests(plain)
    t = _tests(judged)[("none", "final_test_accuracy")]
    assert t["control"] == "none" and t["p_mannwhitney"] == pytest.approx(1 / 252)
    verdict = next(r for r in judged.of("verdict") if r["metric"] == "final_test_accuracy")
    assert "none" in verdict["note"]
