"""What a sweep keeps under its storage path, besides Tune's own experiment state.

``<storage>/<stage name>/raybrain_spec.json`` records, per stage, the spec hash it was
started with and the command-line overrides that shaped it (``--seeds``,
``--max-configs``), so a plain ``--resume`` reapplies them and a changed spec is refused.
``<storage>/raybrain_sweeps.json`` indexes the sweeps started under this storage (name,
spec file, spec name), so ``--resume`` without ``--name`` finds a sweep that was started
under another name. Paths may be local or object-store URIs (read through ``pyarrow.fs``
as Tune does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPEC_FILE = "raybrain_spec.json"
CHOSEN_FILE = "raybrain_confirm_configs.json"
INDEX_FILE = "raybrain_sweeps.json"


def storage_root(path: str) -> str:
    """A storage path, absolute (local) or as given (``s3://``, ``gs://``...)."""
    if "://" in path:
        return path.rstrip("/")
    return str(Path(path).expanduser().resolve())


def join(root, name: str) -> str:
    return f"{str(root).rstrip('/')}/{name}"


def filesystem(path: str):
    """``(pyarrow filesystem, path in it)`` for a local path or a URI (s3://, gs://...)."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def read_text(path: str) -> str | None:
    import pyarrow.fs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(text.encode())


def stage_exists(storage, name: str) -> bool:
    from ray.tune import Tuner

    return Tuner.can_restore(join(storage, name))


def stage_names(name: str) -> tuple[str, str]:
    """The Tune experiments of sweep ``name``: its search and its confirmation stage."""
    return name, f"{name}-confirm"


def stored_stage(storage, stage: str) -> dict[str, Any] | None:
    """What ``raybrain_spec.json`` of a stage holds (None: the stage was never started)."""
    text = read_text(join(join(storage, stage), SPEC_FILE))
    return json.loads(text) if text is not None else None


def write_stage(storage, stage: str, record: dict[str, Any]) -> None:
    write_text(join(join(storage, stage), SPEC_FILE), json.dumps(record, indent=1, sort_keys=True))


def recorded_overrides(storage, name: str) -> dict[str, Any] | None:
    """The overrides the sweep ``name`` was started with (None: no such sweep here)."""
    for stage in stage_names(name):
        stored = stored_stage(storage, stage)
        if stored is not None:
            return dict(stored.get("overrides") or {})
    return None


def read_index(storage) -> dict[str, dict[str, Any]]:
    text = read_text(join(storage, INDEX_FILE))
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def record_sweep(storage, name: str, entry: dict[str, Any]) -> None:
    """Add (or refresh) sweep ``name`` in the storage's index of sweeps."""
    index = read_index(storage)
    index[name] = {**index.get(name, {}), **entry}
    write_text(join(storage, INDEX_FILE), json.dumps(index, indent=1, sort_keys=True))


def sweeps_of(storage, spec_file: str | None, spec_name: str) -> list[str]:
    """Names of the sweeps under ``storage`` started from this spec file or spec name."""
    out = []
    for name, entry in read_index(storage).items():
        if (spec_file and entry.get("spec_file") == spec_file) or entry.get("spec_name") == spec_name:
            out.append(name)
    return sorted(out)
