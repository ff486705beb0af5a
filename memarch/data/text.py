"""Local text (.txt, .jsonl) and Hugging Face datasets, tokenised and packed.

Documents are joined with the tokenizer's end-of-document token into one stream, cut into
chunks of ``seq_len + 1`` tokens (stride ``seq_len``); item = (chunk[:-1], chunk[1:]).
The last ``val_fraction`` of the chunks (at least one) is the validation split. Training
indices run over epochs: index i is chunk perm_e[i mod n] with e = i // n and perm_e a
permutation seeded by (seed, e), so a run is deterministic and resumable by index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from memarch.data.tokenizers import load_tokenizer


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a malformed line or
    one that is not a JSON object raises naming the file and the line."""
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n}: malformed JSON ({e.msg} at column "
                                 f"{e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {n}: expected a JSON object, got "
                                 f"{type(obj).__name__}")
            yield n, obj


def read_documents(paths: Sequence[str], field: str = "text") -> list[str]:
    """Read .txt files (one document each) and .jsonl files (one document per line)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("data.paths: no data files given (expected a list of .txt/.jsonl paths)")
    docs = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"data.paths: data file not found: {p}")
        start = len(docs)
        if p.suffix == ".jsonl":
            for n, obj in iter_jsonl(p):
                if field not in obj:
                    raise ValueError(f"{p}: line {n}: no field {field!r} (set data.field to "
                                     f"the name of the text field)")
                docs.append(str(obj[field]))
        else:
            docs.append(p.read_text(encoding="utf-8"))
        if not any(d.strip() for d in docs[start:]):
            raise ValueError(f"data.paths: data file is empty (no text): {p}")
    return docs


class PackedTokens(Dataset):
    """Chunks of a token stream; see the module docstring."""

    def __init__(self, tokens: torch.Tensor, *, seq_len: int, split: str = "train",
                 val_fraction: float = 0.01, seed: int = 0, size: int | None = None,
                 vocab_size: int | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        n = (len(tokens) - 1) // seq_len
        if n < 2:
            raise ValueError(f"data: {len(tokens)} tokens make fewer than 2 chunks of "
                             f"seq_len={seq_len} + 1; use more text or a smaller seq_len")
        n_val = max(1, int(n * val_fraction))
        lo, hi = (0, n - n_val) if split == "train" else (n - n_val, n)
        self.tokens, self.seq_len, self.split, self.seed = tokens, seq_len, split, seed
        self.lo, self.n = lo, hi - lo
        self.size = size if (size is not None and split == "train") else self.n
        self.vocab_size = vocab_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.size

    def _chunk(self, i: int) -> int:
        if self.split == "val":
            return self.lo + i
        e, r = divmod(i, self.n)
        if self._perm is None or self._perm[0] != e:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._perm = (e, torch.randperm(self.n, generator=g))
        return self.lo + int(self._perm[1][r])

    def __getitem__(self, i: int) -> dict:
        c = self._chunk(i)
        x = self.tokens[c * self.seq_len: c * self.seq_len + self.seq_len + 1].long()
        return {"input_ids": x[:-1], "labels": x[1:]}


def _tokenize(docs: list[str], tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer.encode(d))
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.int32)


def TextFiles(*, paths: Sequence[str], seq_len: int = 512, field: str = "text",
              tokenizer: str = "byte", split: str = "train", val_fraction: float = 0.01,
              seed: int = 0, size: int | None = None) -> PackedTokens:
    """Local .txt / .jsonl files (``field`` names the JSONL text field)."""
    tok = load_tokenizer(tokenizer)
    return PackedTokens(_tokenize(read_documents(paths, field), tok), seq_len=seq_len,
                        split=split, val_fraction=val_fraction, seed=seed, size=size,
                        vocab_size=tok.vocab_size)


def HFText(*, name: str, config: str | None = None, hf_split: str = "train",
           field: str = "text", seq_len: int = 512, tokenizer: str = "byte",
           split: str = "train", val_fraction: float = 0.01, seed: int = 0,
           size: int | None = None, max_documents: int | None = None) -> PackedTokens:
    """A Hugging Face dataset by name (online only)."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"data=hf: cannot load the Hugging Face dataset {name!r}: offline "
            "(HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1). Train on local files instead: "
            "data=text data.dataset.paths=[/path/to/file.txt,/path/to/file.jsonl] "
            "(data.dataset.field=text names the JSONL field)")
    import datasets
    ds = datasets.load_dataset(name, config, split=hf_split)
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    tok = load_tokenizer(tokenizer)
    return PackedTokens(_tokenize([str(r[field]) for r in ds], tok), seq_len=seq_len,
                        split=split, val_fraction=val_fraction, seed=seed, size=size,
                        vocab_size=tok.vocab_size)
