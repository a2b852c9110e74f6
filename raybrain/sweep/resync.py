"""Re-sync MLflow from Tune's on-disk results.

Every trial result a sweep reports carries its runs' records (one per run and epoch), and
Tune writes each result as a line of ``<storage>/<stage>/<trial>/result.json``. Replaying
those lines through the idempotent :class:`~raybrain.sweep.tracking.Tracker` fills
whatever MLflow missed (it was down, or the driver died between two writes) and
re-writes nothing it already has. The storage may be a local or shared path or an object
store URI (read through ``pyarrow.fs``, as Tune does).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from raybrain.sweep.records import RECORDS_KEY
from raybrain.sweep.storage import filesystem

RESULT_FILE = "result.json"


def stored_records(exp_dir: str) -> Iterator[dict[str, Any]]:
    """Every run record in the stage's trial results, trial by trial, oldest first."""
    import pyarrow.fs

    fs, root = filesystem(str(exp_dir))
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    except (FileNotFoundError, OSError):
        return
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.Directory:
            continue
        result = f"{info.path}/{RESULT_FILE}"
        if fs.get_file_info(result).type != pyarrow.fs.FileType.File:
            continue
        with fs.open_input_stream(result) as f:
            text = f.read().decode()
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
            yield from json.loads(row.get(RECORDS_KEY) or "[]")


def resync(tracker, exp_dir: str) -> int:
    """Write to MLflow every stored record it does not have yet; returns how many were new.

    ``tracker`` must have its parent run open. Runs whose final record is in the results
    end FINISHED (or FAILED with their reason); runs still training stay RUNNING.
    """
    tracker.prefill()
    n = 0
    for rec in stored_records(exp_dir):
        key = rec["key"]
        state = (tracker._last_epoch.get(key, 0), key in tracker._closed)
        tracker.log_record(rec)
        n += state != (tracker._last_epoch.get(key, 0), key in tracker._closed)
    return n
