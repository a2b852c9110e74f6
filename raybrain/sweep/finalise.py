"""How a sweep ends: finished (verdict, report), interrupted, or failed.

- **finished**: the verdict of the judged stage (table printed, ``verdict.csv`` on the
  parent run), the HTML report, the parent run FINISHED;
- **interrupted** (a stop signal): no verdict and no report; the parent and every child
  run still RUNNING become KILLED; the command that resumes the sweep is printed;
- **failed** (configs failed beyond their retries, Ray lost): no verdict; the parent is
  FAILED, open child runs FAILED with the reason; one line says what failed and how to
  resume.
"""

from __future__ import annotations

from typing import Callable

from raybrain.errors import SweepFailed


def finish(pre, tracker, out: Callable[[str], None]):
    """Verdict, report and the parent run closed FINISHED; returns the verdict table."""
    from raybrain.analysis.verdict import format_table, verdict_table

    spec = pre.spec
    _failed_runs(pre, tracker, out)
    table = verdict_table(tracker, spec)
    tracker.client.log_text(tracker.parent_id, table.to_csv(), "verdict.csv")
    out(format_table(table, spec))
    try:
        from raybrain.analysis.report import build_report

        index = build_report(spec.name, spec.tracking.uri, spec.tracking.experiment, table=table)
        out(f"report: {index}")
    except Exception as exc:  # the runs and the verdict are safe in MLflow already
        out(f"the report could not be written ({type(exc).__name__}: {exc}); "
            f"retry with: raybrain report {spec.name} --tracking-uri {spec.tracking.uri}")
    peaks = [r.data.metrics.get("peak_memory_mb") for r in tracker.child_runs()]
    peaks = [p for p in peaks if p]
    if peaks:
        tracker.client.set_tag(tracker.parent_id, "raybrain.peak_trial_memory_mb", f"{max(peaks):.1f}")
        out(f"peak memory of a trial: {max(peaks):.0f} MiB (metric peak_memory_mb of each run)")
    tracker.close_parent("FINISHED")
    out(f"open the MLflow UI: raybrain ui --tracking-uri {spec.tracking.uri} "
        f"--experiment {spec.tracking.experiment} --sweep {spec.name}")
    return table


def _failed_runs(pre, tracker, out: Callable[[str], None]) -> None:
    """Runs whose training raised (the other runs of their config went on): one line
    naming how many and the first reason; with no finished run at all the sweep failed."""
    children = tracker.child_runs()
    failed_runs = [r for r in children if r.info.status == "FAILED"]
    if not failed_runs:
        return
    reason = failed_runs[0].data.tags.get("raybrain.failure_reason", "reason not recorded")
    if not any(r.info.status == "FINISHED" for r in children):
        tracker.close_parent("FAILED")
        raise SweepFailed(f"sweep {pre.spec.name!r} failed: all {len(children)} runs failed "
                          f"(first error: {reason[:300]}); no verdict was written")
    out(f"warning: {len(failed_runs)} of {len(children)} runs failed (first error: "
        f"{reason[:300]}); each failed run's reason is its raybrain.failure_reason tag in "
        f"MLflow; the verdict uses the finished runs only")


def interrupted(pre, tracker, out: Callable[[str], None], immediate: bool = False) -> None:
    """Close the parent and every unfinished child run as KILLED; say how to resume."""
    if tracker is not None and tracker.parent_id is not None:
        try:
            n = tracker.mark_unfinished("KILLED")
            tracker.close_parent("KILLED")
            out(f"sweep {pre.spec.name!r} interrupted: {n} unfinished run(s) and the sweep "
                f"marked KILLED in MLflow; no verdict was written")
        except Exception as exc:  # MLflow down: the resume re-syncs and re-opens them
            out(f"sweep {pre.spec.name!r} interrupted; MLflow could not be updated "
                f"({type(exc).__name__}); the resume brings it up to date")
    else:
        out(f"sweep {pre.spec.name!r} interrupted before any run started")
    out(f"resume with: {pre.resume_command}")


def failed(pre, tracker, status, out: Callable[[str], None]) -> SweepFailed:
    """Close the parent FAILED; the one-line error to raise (what failed, how to resume)."""
    if tracker is not None and tracker.parent_id is not None:
        tracker.mark_unfinished("FAILED", "the sweep failed before this run finished")
        tracker.close_parent("FAILED")
    errors = list(status.errors)
    lines = [ln for ln in str(errors[0]).splitlines() if ln.strip()] if errors else []
    first = lines[-1][:300] if lines else "unknown error"
    return SweepFailed(f"sweep {pre.spec.name!r} failed: {len(errors)} config(s) failed beyond "
                       f"their retries (first error: {first}); no verdict was written; fix "
                       f"the cause, then resume with: {pre.resume_command}")


def stopped_by_error(tracker) -> None:
    """The sweep stopped on an error: a parent run still RUNNING is closed FAILED (best
    effort: MLflow itself may be what failed; a resume re-opens it)."""
    if tracker is None or tracker.parent_id is None:
        return
    try:
        if tracker.client.get_run(tracker.parent_id).info.status == "RUNNING":
            tracker.mark_unfinished("FAILED", "the sweep stopped on an error")
            tracker.close_parent("FAILED")
    except Exception:
        pass
