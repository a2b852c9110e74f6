"""Where the arrays a task keeps for its runs go (``TaskRun.artifacts``).

A trial writes them under the sweep's storage (shared by every node on a cluster), as
``<storage>/<sweep>-arrays/<run key>/epoch_<e>/<name>.npy``; the run's record carries
their paths, and the driver's MLflow writer logs each file as an artifact
``arrays/epoch_<e>/<name>.npy`` of the run's child run, once.
"""

from __future__ import annotations

import io
import re
from typing import Any, Callable

from raybrain.sweep import storage as st


def storage_sink(storage: str, sweep: str) -> Callable[[Any, int, dict[str, Any]], list[str]]:
    """A ``sink(run_spec, epoch, arrays) -> [paths]`` writing ``.npy`` files to storage."""
    root = st.join(storage, f"{sweep}-arrays")

    def sink(spec, epoch: int, arrays: dict[str, Any]) -> list[str]:
        import numpy as np

        folder = st.join(st.join(root, re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.key)),
                         f"epoch_{int(epoch)}")
        paths = []
        for name, array in sorted(arrays.items()):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"array name {name!r} must be letters, digits, '_', '.', '-'")
            buf = io.BytesIO()
            np.save(buf, np.asarray(array), allow_pickle=False)
            path = st.join(folder, f"{name}.npy")
            fs, p = st.filesystem(path)
            fs.create_dir(folder if "://" not in folder else p.rsplit("/", 1)[0], recursive=True)
            with fs.open_output_stream(p) as f:
                f.write(buf.getvalue())
            paths.append(path)
        return paths

    return sink


def log_arrays(client, run_id: str, epoch: int, paths: list[str]) -> None:
    """Log stored arrays as the run's artifacts ``arrays/epoch_<e>/<name>.npy``."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            fs, p = st.filesystem(path)
            local = os.path.join(tmp, path.rsplit("/", 1)[-1])
            with fs.open_input_stream(p) as src, open(local, "wb") as dst:
                dst.write(src.read())
            client.log_artifact(run_id, local, f"arrays/epoch_{int(epoch)}")
