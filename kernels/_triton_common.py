"""Host-side helpers shared by the Triton ops (imports triton: only the ``triton_*`` modules
import this, never ``memarch.kernels`` itself)."""

from __future__ import annotations

import torch
import triton


def tile(d: int) -> int:
    """A block size for a dimension of size d: the next power of two, clamped to [16, 64]."""
    return min(64, max(16, triton.next_power_of_2(d)))


def dot_precision(x: torch.Tensor) -> str:
    """tl.dot precision: "ieee" fp32 for fp32 inputs, tf32 (no less precise than fp16/bf16)
    otherwise."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def chunked(x: torch.Tensor, N: int, BT: int) -> torch.Tensor:
    """[B, T, H] -> [B, H, N*BT] fp32, zero-padded to N chunks of BT."""
    B, T, H = x.shape
    out = torch.zeros(B, H, N * BT, device=x.device, dtype=torch.float32)
    out[:, :, :T] = x.float().transpose(1, 2)
    return out


def chunk_cumsum(g: torch.Tensor, N: int, BT: int) -> torch.Tensor:
    """g [B, T, H] -> chunk-local cumsum [B, H, N*BT] fp32 (zero padding: no decay)."""
    B, _, H = g.shape
    return chunked(g, N, BT).view(B, H, N, BT).cumsum(-1).view(B, H, N * BT).contiguous()
