"""Segment view for stateful training (truncated BPTT over long sequences).

Each of the ``global_batch`` rows of a step is a stream: row b at step s reads segment
``s mod n_seg`` of document ``(s // n_seg) * global_batch + b`` of the base dataset
(documents of length L, segments of ``segment_len`` tokens, n_seg = L // segment_len).
Consecutive steps therefore see consecutive segments of the same documents, and the model
state carried between steps is the state at the end of the previous segment. Items carry
``segment`` (0 starts a new document: the trainer resets the state there).

Sample index i (what the batch sampler yields) = s * global_batch + b.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class StreamSegments(Dataset):
    def __init__(self, base: Dataset, *, global_batch: int, segment_len: int):
        item = base[0]
        L = item["input_ids"].shape[0]
        if segment_len < 1 or L % segment_len:
            raise ValueError(f"data.segment_len={segment_len} must divide the base sequence "
                             f"length {L} (data.dataset.seq_len)")
        self.base, self.B, self.seg = base, global_batch, segment_len
        self.n_seg = L // segment_len
        self.vocab_size = getattr(base, "vocab_size", None)

    def __len__(self) -> int:
        return (len(self.base) // self.B) * self.n_seg * self.B

    def __getitem__(self, i: int) -> dict:
        s, b = divmod(i, self.B)
        doc = (s // self.n_seg) * self.B + b
        k = s % self.n_seg
        item = self.base[doc % len(self.base)]
        sl = slice(k * self.seg, (k + 1) * self.seg)
        return {"input_ids": item["input_ids"][sl], "labels": item["labels"][sl],
                "segment": torch.tensor(k)}
