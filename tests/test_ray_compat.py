"""The Ray 2.60 work-around: Tune deleting a checkpoint that is already gone."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_deleting_a_missing_checkpoint_is_a_no_op(tmp_path):
    import pyarrow.fs
    from ray.train._internal import checkpoint_manager

    from raybrain.sweep.ray_compat import tolerate_deleted_checkpoints

    from ray.train._internal import storage

    fs = pyarrow.fs.LocalFileSystem()
    with pytest.raises(FileNotFoundError):  # the bug: Ray's own helper raises
        storage._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000001"))
    tolerate_deleted_checkpoints()
    tolerate_deleted_checkpoints()  # idempotent
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(tmp_path / "checkpoint_000002"))
    kept = tmp_path / "checkpoint_000003"
    kept.mkdir()
    (kept / "state.pkl").write_bytes(b"x")
    checkpoint_manager._delete_fs_path(fs=fs, fs_path=str(kept))  # still deletes what exists
    assert not kept.exists()
