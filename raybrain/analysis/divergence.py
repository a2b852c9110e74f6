"""The one divergence rule (DESIGN.md section 6), shared by every task.

A run has diverged when a loss became non-finite, or when the task declares a
``(metric, threshold)`` rule and the metric went above the threshold and is still above it
at the run's last epoch (it never came back). The B2M driving task declares
``("test_loss", 1.0)``: the paper's "test loss above 1 that never recovers".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["diverged"]


def diverged(history: Mapping[str, Sequence[float]], rule: tuple[str, float] | None,
             non_finite: bool = False) -> bool:
    """Apply the rule to a run's per-epoch ``history`` (metric -> values, oldest first).

    ``non_finite``: a loss already came out NaN/inf (the run was stopped there).
    """
    if non_finite:
        return True
    if rule is None:
        return False
    metric, threshold = rule
    values = [v for v in history.get(metric, [])]
    if any(not math.isfinite(v) for v in values):
        return True
    return bool(values) and max(values) > threshold and values[-1] > threshold
