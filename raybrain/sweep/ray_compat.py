"""One work-around for Ray 2.60, applied by the sweep's driver before Tune runs.

Tune keeps the last ``num_to_keep`` checkpoints of a trial and deletes older ones through
``ray.train._internal.checkpoint_manager._delete_fs_path``, which asks whether the path is
a directory *before* its own ``try``: a checkpoint that is already gone raises
``FileNotFoundError`` and fails the trial. That happens on every resume after a driver
was killed between deleting an old checkpoint and saving its experiment state (the
restored state still lists the deleted one). Deleting what is not there is a no-op here.
"""

from __future__ import annotations


def tolerate_deleted_checkpoints() -> None:
    """Patch Tune's checkpoint deletion to skip paths that no longer exist (idempotent)."""
    from ray.train._internal import checkpoint_manager, storage

    original = storage._delete_fs_path
    if getattr(checkpoint_manager._delete_fs_path, "_raybrain", False):
        return

    def delete_if_present(fs, fs_path: str) -> None:
        import pyarrow.fs

        if fs.get_file_info(fs_path).type == pyarrow.fs.FileType.NotFound:
            return
        original(fs=fs, fs_path=fs_path)

    delete_if_present._raybrain = True
    checkpoint_manager._delete_fs_path = delete_if_present
