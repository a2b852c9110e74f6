"""What a Tune trial reports per epoch, shared by in-process and Ray Train trials.

Each report carries one aggregate objective for the searcher and, as JSON, the records of
every run stepped in that epoch (which the driver-side MLflow writer logs) and the keys of
the runs not finished yet.
"""

from __future__ import annotations

import json
from typing import Any

from raybrain.sweep.execute import aggregate_objective

RECORDS_KEY = "raybrain_records"
#: result key: the trial's runs not finished yet (JSON list of run keys)
OPEN_KEY = "raybrain_open_runs"


def mark_resumed(replay: list[dict[str, Any]]) -> None:
    """Tag the last replayed record of each run with the epoch it resumed from."""
    last: dict[str, dict[str, Any]] = {}
    for rec in replay:
        last[rec["key"]] = rec
    for rec in last.values():
        rec["resumed_from"] = int(rec["epoch"])


def trial_metrics(ctx, runs, latest, done, records, epoch) -> dict[str, Any]:
    """What a trial reports to Tune after an epoch."""
    objective = aggregate_objective(latest, runs, ctx["metric"], ctx["objective"])
    return {"objective": objective, "epoch": epoch, "runs_total": len(runs),
            "runs_done": len(done), RECORDS_KEY: json.dumps(records),
            OPEN_KEY: json.dumps(sorted(r.key for r in runs if r.key not in done))}
