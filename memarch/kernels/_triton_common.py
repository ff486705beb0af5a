"""Helpers shared by the Triton ops: host side (tiles, precision, chunked layouts) and
``@triton.jit`` device helpers (masked tile loads and stores). Imports triton: only the
``triton_*`` modules import this, never ``memarch.kernels`` itself."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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


# -- device helpers shared by the kernels ------------------------------------------------
# Tiles of a [rows, cols] slab with a row stride (a [B, T, H, D] tensor's rows for one (b, h):
# base = (b * T * H + h) * D, row stride H * D), masked to the valid rows and columns.

@triton.jit
def load_tile(ptr, rows, cols, row_stride, n_rows, n_cols):
    """fp32 tile ``ptr[rows[:, None] * row_stride + cols[None, :]]`` [R, C]; 0 where
    ``rows >= n_rows`` or ``cols >= n_cols``."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=mask,
                   other=0.0).to(tl.float32)


@triton.jit
def store_tile(ptr, x, rows, cols, row_stride, n_rows, n_cols):
    """Store tile ``x`` [R, C] (cast to ``ptr``'s dtype) where rows/cols are valid."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :],
             x.to(ptr.dtype.element_ty), mask=mask)
