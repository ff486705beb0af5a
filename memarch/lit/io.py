"""Checkpoint I/O that never leaves a half-written file: write to ``<path>.tmp``, then
``os.replace`` (atomic on POSIX), so a crash or SIGKILL mid-save keeps the previous file.

If the save fails (disk full, quota, I/O error), the partial ``.tmp`` is removed, the
previous checkpoint at ``path`` is left untouched, and an ``OSError`` naming the path is
raised (``memarch.checkpoint.atomic_write``).

Every checkpoint records a digest of its tensors (``memarch.checkpoint.with_digest``), and
loading one (resume) checks it: a file damaged after it was written raises
``memarch.checkpoint.CheckpointError`` naming the tensors that changed."""

from __future__ import annotations

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from memarch.checkpoint import atomic_write, verify_digest, with_digest


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        checkpoint = with_digest(checkpoint)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), what="checkpoint")

    def load_checkpoint(self, path, *args, **kwargs):
        ckpt = super().load_checkpoint(path, *args, **kwargs)
        verify_digest(ckpt, path)
        return ckpt
