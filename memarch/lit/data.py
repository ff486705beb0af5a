"""LightningDataModule: any memarch dataset, served by step so that the data position is a
function of the global step (exact resume, also after a crash).

Micro-batch m on rank r holds sample indices ``(m * world + r) * batch_size + j``; after a
resume the sampler starts at ``m = global_step * accumulate_grad_batches``.
"""

from __future__ import annotations

from typing import Callable

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, Sampler

from memarch.data.segments import StreamSegments


class StepBatchSampler(Sampler):
    def __init__(self, *, batch_size: int, total: int, start: Callable[[], int],
                 world_size: int = 1, rank: int = 0):
        self.B, self.total, self.start = batch_size, total, start
        self.world, self.rank = world_size, rank

    def __iter__(self):
        for m in range(self.start(), self.total):
            base = (m * self.world + self.rank) * self.B
            yield list(range(base, base + self.B))

    def __len__(self) -> int:
        return self.total


class LMDataModule(pl.LightningDataModule):
    """Args:
        dataset: factory ``dataset(seed=..., split=..., size=...)`` (Hydra ``_partial_``).
        vocab_size: the model's vocabulary (checked against the dataset's).
        batch_size: per-device micro-batch.
        val_size: validation items (synthetic; text uses its held-out chunks).
        seed / val_seed: generation seeds of the two splits.
        stateful / segment_len: serve consecutive segments (see memarch.data.segments).
    """

    def __init__(self, *, dataset: Callable[..., Dataset], vocab_size: int, batch_size: int = 32,
                 val_size: int = 512, val_batch_size: int | None = None, seed: int = 0,
                 val_seed: int = 1, num_workers: int = 0, stateful: bool = False,
                 segment_len: int | None = None):
        super().__init__()
        self.dataset, self.vocab_size = dataset, vocab_size
        self.batch_size, self.val_size = batch_size, val_size
        self.val_batch_size = val_batch_size or batch_size
        self.seed, self.val_seed, self.num_workers = seed, val_seed, num_workers
        self.stateful, self.segment_len = stateful, segment_len
        for key, v in (("batch_size", batch_size), ("val_size", val_size)):
            if v < 1:
                raise ValueError(f"data.{key} must be >= 1, got {v}")
        if stateful and not segment_len:
            raise ValueError("data.stateful=true needs data.segment_len (tokens per step)")
        self.train_ds = self.val_ds = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is not None:
            return
        self.train_ds = self.dataset(seed=self.seed, split="train")
        self.val_ds = self.dataset(seed=self.val_seed, split="val", size=self.val_size)
        ds_vocab = getattr(self.train_ds, "vocab_size", None)
        if ds_vocab is not None and ds_vocab > self.vocab_size:
            raise ValueError(f"data.vocab_size={self.vocab_size} is smaller than the dataset's "
                             f"vocabulary ({ds_vocab}); set data.vocab_size={ds_vocab}")

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
        accum = t.accumulate_grad_batches if t is not None else 1
        ds = self.train_ds
        if self.stateful:
            ds = StreamSegments(ds, global_batch=self.batch_size * world,
                                segment_len=self.segment_len)
        max_steps = t.max_steps if t is not None else 10 ** 9   # standalone: unbounded
        if max_steps < 1:
            raise ValueError(f"trainer.max_steps must be >= 1 (training runs by steps), got "
                             f"{max_steps}")
        sampler = StepBatchSampler(
            batch_size=self.batch_size, total=max_steps * accum, world_size=world, rank=rank,
            start=lambda: (t.global_step * accum) if t is not None else 0)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers)

    def task_changes(self) -> list[int]:
        """The optimizer steps at which the training data's task changes: a curriculum's next
        stage (``memarch.data.MQAR(curriculum=...)``) begins in the first step that holds one
        of its sequences (step s holds sequences s * B * world * accumulation onwards). The
        divergence guard restarts its loss window there (a new task, a new loss level)."""
        self.setup()
        t = self.trainer
        world, accum = (t.world_size, t.accumulate_grad_batches) if t is not None else (1, 1)
        per_step = self.batch_size * world * accum
        return sorted({until // per_step
                       for until, _ in getattr(self.train_ds, "curriculum", None) or []})

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_ds, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers)
