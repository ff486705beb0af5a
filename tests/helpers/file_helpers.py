"""Damaging files on purpose, for the tests (and probes) that a corrupted file is refused."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def flip_safetensors(path: Path, tensor: str) -> None:
    """Flip the low bit of 4 bytes in the middle of ``tensor``'s data in a safetensors file
    (its header stays valid, so only a digest can tell)."""
    data = bytearray(Path(path).read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    b, e = json.loads(data[8:8 + n])[tensor]["data_offsets"]
    mid = 8 + n + (b + e) // 2
    for i in range(mid, mid + 4):
        data[i] ^= 0x01
    Path(path).write_bytes(bytes(data))
