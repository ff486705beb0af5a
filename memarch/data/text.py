"""Local text (.txt, .jsonl) and Hugging Face datasets, tokenised and packed.

Documents are joined with the tokenizer's end-of-document token into one stream, cut into
chunks of ``seq_len + 1`` tokens (stride ``seq_len``); item = (chunk[:-1], chunk[1:]).
The last ``val_fraction`` of the chunks (at least one) is the validation split. Training
indices run over epochs: index i is chunk perm_e[i mod n] with e = i // n and perm_e a
permutation seeded by (seed, e), so a run is deterministic and resumable by index.

Bad data raises ``DataError`` naming the file and line (or byte offset, for text that is
not UTF-8) and, for settings, the config key as typed (``data.dataset.seq_len``).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch.utils.data import Dataset

from memarch.data.tokenizers import load_tokenizer

# The King James Bible (public domain, 4.4 MB of UTF-8, one verse a line), shipped xz-compressed
# (1 MB): the long real text of memarch's perplexity, StreamingLLM and real-model checks, which a
# fresh clone has. Every text reader here takes .xz / .gz files as they are.
KJV = Path(__file__).resolve().parent / "corpora" / "kjv.txt.xz"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, decompressed when it ends in ``.xz`` or ``.gz``."""
    p = Path(path)
    if p.suffix == ".xz":
        import lzma
        return lzma.decompress(p.read_bytes())
    if p.suffix == ".gz":
        import gzip
        return gzip.decompress(p.read_bytes())
    return p.read_bytes()


def read_text(path: str | os.PathLike) -> str:
    """``path`` (plain, ``.xz`` or ``.gz``) as UTF-8 text with universal newlines; bytes that
    are not UTF-8 raise ``DataError`` naming the file and the offset."""
    text = decode_utf8(read_bytes(path), path)
    return text.replace("\r\n", "\n").replace("\r", "\n")


class DataError(ValueError):
    """Unusable data or data settings; the message names the file (and line or byte
    offset) or the config key."""


def decode_utf8(data: bytes, path, *, offset: int = 0, line: int | None = None) -> str:
    """``data`` as UTF-8 text; otherwise ``DataError`` naming the file, the line and the
    byte offset (in the file: ``offset`` is where ``data`` starts) of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"line {line}, " if line is not None else ""
        raise DataError(f"{path}: {where}byte offset {offset + e.start}: not UTF-8 text "
                        f"(byte 0x{data[e.start]:02x}: {e.reason}); convert the file to UTF-8, "
                        "e.g. iconv -f latin1 -t utf-8") from None


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a malformed line,
    one that is not a JSON object or not UTF-8 raises naming the file and the line."""
    with Path(path).open("rb") as f:
        offset = 0
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, offset=offset, line=n)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: malformed JSON ({e.msg} at column "
                                f"{e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            yield n, obj


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    return {list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def document_text(value, where: str, field: str) -> str:
    """The text of a document's ``field``; anything but a string raises (never ``"None"``)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {_kind(value)}, expected a string (the "
                        "document's text); fix the data or set data.dataset.field to the "
                        "text field")
    return value


def read_documents(paths: Sequence[str], field: str = "text") -> list[str]:
    """Read .txt files (one document each) and .jsonl files (one document per line)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("data.dataset.paths: no data files given (expected a list of "
                        ".txt/.jsonl paths)")
    docs = []
    for p in map(Path, paths):
        if p.is_dir():
            raise DataError(f"data.dataset.paths: {p} is a directory; list the data files in "
                            f"it (.txt, .jsonl, optionally .xz/.gz), e.g. {p}/train.jsonl")
        if not p.is_file():
            raise FileNotFoundError(f"data.dataset.paths: data file not found: {p}")
        start = len(docs)
        if p.suffix == ".jsonl":
            for n, obj in iter_jsonl(p):
                if field not in obj:
                    raise DataError(f"{p}: line {n}: no field {field!r} (it has "
                                    f"{sorted(obj)[:10]}); set data.dataset.field to the "
                                    "name of the text field")
                docs.append(document_text(obj[field], f"{p}: line {n}", field))
        else:
            docs.append(read_text(p))
        if not any(d.strip() for d in docs[start:]):
            raise DataError(f"data.dataset.paths: data file is empty (no text): {p}")
    return docs


def check_packing(seq_len, val_fraction) -> None:
    """``data.dataset.seq_len`` >= 1 and ``data.dataset.val_fraction`` in (0, 1)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise DataError(f"data.dataset.seq_len must be an int >= 1 (tokens per training "
                        f"sequence), got {seq_len!r}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0 < val_fraction < 1):
        raise DataError(f"data.dataset.val_fraction must lie in (0, 1) (the share of the "
                        f"chunks held out for validation, e.g. 0.01), got {val_fraction!r}")


class PackedTokens(Dataset):
    """Chunks of a token stream; see the module docstring."""

    def __init__(self, tokens: torch.Tensor, *, seq_len: int, split: str = "train",
                 val_fraction: float = 0.01, seed: int = 0, size: int | None = None,
                 vocab_size: int | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        check_packing(seq_len, val_fraction)
        n = (len(tokens) - 1) // seq_len
        if n < 2:
            raise DataError(f"data: {len(tokens)} tokens make fewer than 2 chunks of "
                            f"data.dataset.seq_len={seq_len} + 1 tokens; use more text or a "
                            "smaller data.dataset.seq_len")
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
    check_packing(seq_len, val_fraction)
    tok = load_tokenizer(tokenizer)
    return PackedTokens(_tokenize(read_documents(paths, field), tok), seq_len=seq_len,
                        split=split, val_fraction=val_fraction, seed=seed, size=size,
                        vocab_size=tok.vocab_size)


class HubUnavailable(DataError, RuntimeError):
    """The Hugging Face Hub cannot be reached (offline mode, no network); the message points
    to ``data=text``."""


def _local_files_hint(name: str, why: str) -> str:
    return (f"data=hf: cannot load the Hugging Face dataset {name!r}: {why}. Train on local "
            "files instead: data=text data.dataset.paths=[/path/to/file.txt,/path/to/file.jsonl] "
            "(data.dataset.field=text names the JSONL field)")


def _connection_error(e: BaseException) -> BaseException | None:
    """The network failure behind ``e`` (itself or a cause), if any."""
    kinds: list[type] = [ConnectionError, TimeoutError, socket.gaierror]
    for mod, names in (("requests.exceptions", ("ConnectionError", "Timeout")),
                       ("httpx", ("TransportError",)), ("httpx2", ("TransportError",)),
                       ("urllib3.exceptions", ("HTTPError",)),
                       ("huggingface_hub.errors", ("OfflineModeIsEnabled",))):
        try:
            m = importlib.import_module(mod)
        except ImportError:                              # not installed
            m = None
        if m is None:
            continue
        kinds += [getattr(m, n) for n in names if isinstance(getattr(m, n, None), type)]
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, tuple(kinds)):
            return e
        e = e.__cause__ or e.__context__
    return None


def _hub_reachable() -> bool:
    """False when the Hub's host name does not resolve (no network: fail at once instead of
    after ~30 s of retries). True when it resolves or a proxy is configured (then the
    proxy resolves names, and the download itself tells)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                                         "http_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def load_hf_dataset(name: str, config: str | None, split: str):
    """``datasets.load_dataset`` that turns a failure to reach the Hub (offline mode, no
    network, DNS, timeouts) into ``HubUnavailable`` and any other I/O failure into a
    ``DataError``, both pointing to ``data=text``; a dataset that does not exist keeps
    its own message."""
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        raise HubUnavailable(_local_files_hint(
            name, "offline (HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1)"))
    if not _hub_reachable():
        raise HubUnavailable(_local_files_hint(
            name, "the Hugging Face Hub cannot be reached (its host name does not resolve: "
                  "no network?)"))
    import datasets
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as e:                               # classified below
        net = _connection_error(e)
        if net is not None:
            raise HubUnavailable(_local_files_hint(
                name, f"the Hugging Face Hub cannot be reached ({type(net).__name__}: "
                      f"{net})")) from None
        if isinstance(e, FileNotFoundError):
            raise DataError(f"data.dataset.name: no Hugging Face dataset {name!r} (or no "
                            f"config {config!r} / split {split!r}): {e}") from None
        if isinstance(e, OSError):
            raise DataError(_local_files_hint(name, f"{type(e).__name__}: {e}")) from None
        raise


def HFText(*, name: str, config: str | None = None, hf_split: str = "train",
           field: str = "text", seq_len: int = 512, tokenizer: str = "byte",
           split: str = "train", val_fraction: float = 0.01, seed: int = 0,
           size: int | None = None, max_documents: int | None = None) -> PackedTokens:
    """A Hugging Face dataset by name (online only; offline, or when the Hub cannot be
    reached, ``HubUnavailable`` points to ``data=text``)."""
    check_packing(seq_len, val_fraction)
    ds = load_hf_dataset(name, config, hf_split)
    if max_documents is not None:
        ds = ds.select(range(min(max_documents, len(ds))))
    if field not in ds.column_names:
        raise DataError(f"data.dataset.field: the dataset {name!r} has no field {field!r} "
                        f"(it has {ds.column_names})")
    tok = load_tokenizer(tokenizer)
    docs = [document_text(r[field], f"dataset {name!r} ({hf_split}): row {i}", field)
            for i, r in enumerate(ds)]
    return PackedTokens(_tokenize(docs, tok), seq_len=seq_len,
                        split=split, val_fraction=val_fraction, seed=seed, size=size,
                        vocab_size=tok.vocab_size)
