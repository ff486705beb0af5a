"""Checkpoint I/O that never leaves a half-written file: write to ``<path>.tmp``, then
``os.replace`` (atomic on POSIX), so a crash or SIGKILL mid-save keeps the previous file.

If the save fails (disk full, quota, I/O error), the partial ``.tmp`` is removed, the
previous checkpoint at ``path`` is left untouched, and an ``OSError`` naming the path is
raised (same errno); any other failure also removes the ``.tmp`` and propagates as is.

Every checkpoint records a digest of its tensors (``memarch.checkpoint.with_digest``), and
loading one (resume) checks it: a file damaged after it was written raises
``memarch.checkpoint.CheckpointError`` naming the tensors that changed."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from memarch.checkpoint import verify_digest, with_digest


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        checkpoint = with_digest(checkpoint)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise OSError(e.errno, f"cannot save checkpoint {path}: {e.strerror or e}; "
                                       "the previous file (if any) is kept") from e
            raise

    def load_checkpoint(self, path, *args, **kwargs):
        ckpt = super().load_checkpoint(path, *args, **kwargs)
        verify_digest(ckpt, path)
        return ckpt
