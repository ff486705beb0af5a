"""Synthetic recall tasks generated on the fly, deterministic per (seed, index).
The splits differ by seed (``split`` is accepted for a uniform dataset interface).

MQAR (multi-query associative recall; Arora et al., "Zoology", 2312.04927), zoology's
layout: ``k_1 v_1 k_2 v_2 ... k_N v_N`` then a query region where every key appears once
at an even offset 2 g (g drawn without replacement from a power law p(g) ~ g^(a-1),
zoology's ``power_a``), other slots filler 0. The loss is taken only at query keys, whose
label is the key's value. Vocabulary: 0 filler, keys 1..K, values K+1..K+V.

Long-range MQAR (``gap`` > 0: memory beyond the attention window): ``gap`` filler tokens
(id 0) sit between the key-value block and the query region, and the queries are drawn as
above over the remaining ``seq_len - 2N - gap`` tokens. The last value is at position
2N - 1 and the first query at >= 2N + gap, so every pair lies more than ``gap`` tokens
before every query. A stack of L windowed layers with window W (key j visible to query i
iff i - W < j <= i) plus short causal convolutions of widths K_1, K_2, ... sees back
R = L x (W - 1) + sum(K_i - 1) tokens (not W). If R <= gap, no value is within reach of
any query, and the query region holds only keys and filler, never values: a window-only
model of that stack cannot tell the values apart and is at chance (1 / num_values) by
construction, so anything above chance comes from memory (a recurrent state, neural
memory, full attention). E.g. 4 window-16 layers + two width-4 convs: R = 4 x 15 + 2 x 3
= 66, so gap >= 66 (configs/data/mqar_longrange.yaml: gap 72). ``gap=0`` is the plain
layout, item for item (the same random draws).

Passkey retrieval (Mohtashami & Jaggi, 2305.16300), byte level: a 5-digit pass key hidden
at a random depth in repeated filler sentences; the sequence ends with the question and the
loss is taken on the key's digits only.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 0x9E3779B1 + index) % (2 ** 63))


def _check_curriculum(curriculum, n: int) -> list[tuple[int, int]]:
    """[[until, pairs], ...] -> checked tuples (until increasing, 1 <= pairs <= n)."""
    if curriculum is None:
        return []
    want = ("a list of [until, pairs] pairs with increasing until >= 1 and 1 <= pairs <= "
            f"data.dataset.num_kv_pairs ({n})")
    try:
        out = [(u, p) for u, p in curriculum]
    except (TypeError, ValueError):
        raise ValueError(f"MQAR: data.dataset.curriculum must be {want}, got "
                         f"{curriculum!r}") from None
    last = 0
    for u, p in out:
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (u, p))
        if not ok or u <= last or not 1 <= p <= n:
            raise ValueError(f"MQAR: data.dataset.curriculum must be {want}, got "
                             f"{curriculum!r}")
        last = u
    return out


class MQAR(Dataset):
    """Args: seq_len T, num_kv_pairs N (T >= 4N + gap), num_keys K >= N, num_values V >= N,
    power_a (zoology's gap power law; 1.0 = uniform), gap (filler tokens between the
    key-value block and the query region; 0 = zoology's layout), seed, size (virtual
    length), curriculum: a curriculum over the number of pairs for the training split,
    ``[[until, pairs], ...]`` with increasing ``until``: training sequence i (the i-th the
    training sees: step * batch_size + row) holds ``pairs`` pairs while i < ``until``, then
    the next entry's, then N (e.g. ``[[6400, 4], [12800, 8]]`` with batch 32: 4 pairs for
    200 steps, 8 for the next 200, then N). The held-out split always has N. Each sequence
    keeps T tokens; fewer pairs leave more query slots."""

    def __init__(self, *, seq_len: int = 64, num_kv_pairs: int = 8, num_keys: int = 32,
                 num_values: int = 32, power_a: float = 0.01, gap: int = 0, seed: int = 0,
                 split: str = "train", size: int = 2 ** 40, curriculum: list | None = None):
        if num_kv_pairs < 1:
            raise ValueError(f"MQAR: data.dataset.num_kv_pairs must be >= 1, got {num_kv_pairs}")
        if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
            raise ValueError(f"MQAR: data.dataset.gap must be an int >= 0, got {gap!r}")
        if seq_len < 4 * num_kv_pairs + gap:
            need = (f"4 * data.dataset.num_kv_pairs = {4 * num_kv_pairs}" if gap == 0 else
                    f"4 * data.dataset.num_kv_pairs + data.dataset.gap = 4 * {num_kv_pairs} + "
                    f"{gap} = {4 * num_kv_pairs + gap}")
            raise ValueError(f"MQAR: data.dataset.seq_len must be >= {need}, got {seq_len}")
        if num_keys < num_kv_pairs or num_values < num_kv_pairs:
            raise ValueError(f"MQAR: data.dataset.num_keys ({num_keys}) and "
                             f"data.dataset.num_values ({num_values}) must be >= "
                             f"data.dataset.num_kv_pairs ({num_kv_pairs})")
        self.seq_len, self.n = seq_len, num_kv_pairs
        self.num_keys, self.num_values = num_keys, num_values
        self.seed, self.size, self.gap, self.power_a = seed, size, gap, power_a
        self.curriculum = _check_curriculum(curriculum, num_kv_pairs) if split == "train" else []
        self.gap_p = self._gap_p(num_kv_pairs)
        self.vocab_size = 1 + num_keys + num_values
        self.chance = 1.0 / num_values                     # accuracy of a uniform guess

    def __len__(self) -> int:
        return self.size

    def _gap_p(self, n: int) -> torch.Tensor:
        space = (self.seq_len - 2 * n - self.gap) // 2                  # query slots (>= n)
        x = torch.arange(1, space + 1, dtype=torch.float64)
        return self.power_a * x.pow(self.power_a - 1)                  # zoology's power law

    def pairs_at(self, i: int) -> int:
        """The number of pairs of sequence i (the curriculum's, else num_kv_pairs)."""
        for until, pairs in self.curriculum:
            if i < until:
                return pairs
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = _generator(self.seed, i)
        N, T = self.pairs_at(i), self.seq_len
        gap_p = self.gap_p if N == self.n else self._gap_p(N)
        keys = torch.randperm(self.num_keys, generator=g)[:N] + 1
        vals = torch.randperm(self.num_values, generator=g)[:N] + 1 + self.num_keys
        ids = torch.zeros(T, dtype=torch.long)
        ids[0:2 * N:2], ids[1:2 * N:2] = keys, vals
        gaps = torch.multinomial(gap_p, N, replacement=False, generator=g)  # 0-based
        qpos = 2 * N + self.gap + 2 * gaps
        ids[qpos] = keys
        labels = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        labels[qpos] = vals
        return {"input_ids": ids, "labels": labels}


# The passkey filler of Mohtashami & Jaggi (2023) (also RULER's "noise" haystack).
FILLER = ("The grass is green. The sky is blue. The sun is yellow. "
           "Here we go. There and back again. ")


class Passkey(Dataset):
    """Byte-level passkey retrieval of exactly ``seq_len`` tokens (vocabulary 256)."""

    vocab_size = 256

    chance = 0.1                                            # per digit

    def __init__(self, *, seq_len: int = 256, n_digits: int = 5, seed: int = 0,
                 split: str = "train", size: int = 2 ** 40):
        self.seq_len, self.n_digits, self.seed, self.size = seq_len, n_digits, seed, size
        q = "What is the pass key? The pass key is "
        need = len(self._needle("0" * n_digits)) + len(q) + n_digits
        if seq_len < need + 1:
            raise ValueError(f"Passkey: data.dataset.seq_len must be > {need} for "
                             f"data.dataset.n_digits={n_digits}, got {seq_len}")
        self.question = q

    @staticmethod
    def _needle(key: str) -> str:
        return f" The pass key is {key}. Remember it. {key} is the pass key. "

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        g = _generator(self.seed, i)
        key = "".join(str(int(d)) for d in torch.randint(0, 10, (self.n_digits,), generator=g))
        needle, tail = self._needle(key), self.question + key
        n_fill = self.seq_len + 1 - len(needle) - len(tail)               # +1: shifted labels
        filler = (FILLER * (n_fill // len(FILLER) + 1))[:n_fill]
        depth = int(torch.randint(0, n_fill + 1, (1,), generator=g))
        text = filler[:depth] + needle + filler[depth:] + tail
        b = torch.tensor(list(text.encode("ascii")), dtype=torch.long)    # [T + 1]
        labels = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        labels[-self.n_digits:] = b[-self.n_digits:]
        return {"input_ids": b[:-1], "labels": labels}
