"""Result files and progress bars shared by the evaluation suites.

Every suite writes into its output folder ``<task>.json`` (the summary: scores, settings,
versions) and ``<task>.jsonl`` (one line per example), plus its plots (PNG).
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memarch.checkpoint import atomic_write
from memarch.data.text import iter_jsonl

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["JsonlWriter", "environment", "mean", "progress", "read_jsonl", "write_json"]


def read_jsonl(path: str | Path, *, required: Iterable[str] = (), what: str = "data",
               line_numbers: bool = False) -> list[dict] | list[tuple[int, dict]]:
    """Read a JSONL file; a malformed line or a missing field raises naming the line.
    ``line_numbers``: ``(line number, object)`` pairs (blank lines are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: file not found: {p}")
    required = list(required)
    rows = []
    for n, obj in iter_jsonl(p):
        missing = [k for k in required if k not in obj]
        if missing:
            raise ValueError(f"{p}: line {n}: missing field(s) {missing} (expected "
                             f"{sorted(required)})")
        rows.append((n, obj) if line_numbers else obj)
    return rows


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf become None, tensors become numbers or lists, tuples become lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, torch.Tensor):
        return _clean(x.tolist())
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (a crash leaves the old file or none)."""
    text = json.dumps(_clean(obj), indent=2, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"),
                        what="results")


class JsonlWriter:
    """``with JsonlWriter(path) as w: w.write({...})``: one JSON object per line, flushed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None

    def __enter__(self) -> Self:
        self._f = self.path.open("w", encoding="utf-8")
        return self

    def write(self, obj: dict) -> None:
        self._f.write(json.dumps(_clean(obj), ensure_ascii=False) + "\n")
        self._f.flush()

    def __exit__(self, *exc) -> None:
        self._f.close()


def progress(it: Iterable, *, desc: str, total: int | None = None,
             enabled: bool | None = None) -> Iterator:
    """A tqdm bar on stderr (off when stderr is not a terminal, unless ``enabled``)."""
    from tqdm.auto import tqdm
    if enabled is None:
        enabled = sys.stderr.isatty()
    return iter(tqdm(it, desc=desc, total=total, disable=not enabled, leave=False,
                     dynamic_ncols=True))


def environment(device: str | torch.device = "cpu") -> dict:
    """Device and versions, recorded in every summary."""
    dev = torch.device(device)
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            platform.processor() or platform.machine())
    return {"device": f"{dev.type}: {name}", "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None
