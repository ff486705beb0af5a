"""Tokenizers: byte level by default, or any local ``tokenizer.json`` / HF tokenizer folder."""

from __future__ import annotations

import os
from pathlib import Path


class ByteTokenizer:
    """UTF-8 bytes 0..255, plus an end-of-document token 256 (vocab_size 257)."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class _HFTokenizer:
    def __init__(self, tok, eos_id: int | None, vocab_size: int):
        self._tok, self.eos_id, self.vocab_size = tok, eos_id, vocab_size

    def encode(self, text: str) -> list[int]:
        out = self._tok.encode(text)
        return list(out.ids if hasattr(out, "ids") else out)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


def tokenizer_spec(path: str | os.PathLike, *, eos_id: int | None = None) -> dict:
    """A tokenizer that travels inside a checkpoint: ``{"tokenizer.json": <its text>,
    "eos_id": ..., "source": path}`` from a ``tokenizer.json`` file or a folder holding one
    (``load_tokenizer`` reads it back; the ``tokenizers`` library parses JSON only, no code).
    ``eos_id`` None: the usual end-of-text tokens are looked up."""
    p = Path(os.path.expanduser(str(path)))
    file = p if p.is_file() else p / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer: no tokenizer.json at {p}")
    return {"tokenizer.json": file.read_text(encoding="utf-8"), "eos_id": eos_id,
            "source": str(p)}


def _from_tokenizers(tok, eos_id: int | None = None) -> _HFTokenizer:
    if eos_id is None:
        eos_id = next((tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]",
                                                    "<|end_of_text|>")
                       if tok.token_to_id(t) is not None), None)
    return _HFTokenizer(tok, eos_id, tok.get_vocab_size())


def load_tokenizer(name: str | dict | None = "byte"):
    """``"byte"``/None: ByteTokenizer; a ``tokenizer.json`` file or a folder holding one:
    the ``tokenizers`` library; a dict from ``tokenizer_spec`` (a checkpoint's embedded
    tokenizer); any other folder or hub name: ``transformers.AutoTokenizer`` (offline it
    must be a local folder)."""
    if name in (None, "byte"):
        return ByteTokenizer()
    if isinstance(name, dict):
        if not isinstance(name.get("tokenizer.json"), str):
            raise ValueError(f"tokenizer: a tokenizer spec must hold the text of a "
                             f"tokenizer.json under 'tokenizer.json', got keys {sorted(name)}")
        from tokenizers import Tokenizer
        return _from_tokenizers(Tokenizer.from_str(name["tokenizer.json"]), name.get("eos_id"))
    p = Path(os.path.expanduser(str(name)))
    file = p if p.is_file() else p / "tokenizer.json"
    if file.is_file() and file.suffix == ".json":
        from tokenizers import Tokenizer
        return _from_tokenizers(Tokenizer.from_file(str(file)))
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"tokenizer: {name!r} is neither a local tokenizer.json nor a folder, and the hub is "
            "offline (HF_HUB_OFFLINE=1); pass data.dataset.tokenizer=byte or a local path")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(name))
    return _HFTokenizer(tok, tok.eos_token_id, len(tok))
