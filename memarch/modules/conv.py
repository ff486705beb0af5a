"""The short causal depthwise convolution shared by mixers (``ShortConv``, Titans' and MoM's
q/k/v convolutions): per channel, y_t = sum_{i=0}^{K-1} w_i x_{t-K+1+i}, continued across
calls by carrying the last K-1 inputs (the window)."""

from __future__ import annotations

import torch

__all__ = ["causal_conv", "causal_conv_step"]


def causal_conv(uu: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv: uu [B, K-1+T, C] (window then new inputs), w [C, 1, K] ->
    [B, T, C] with out_t = sum_i w[:, 0, i] uu_{t+i}. K shifted multiply-adds: on CPU much
    faster than conv1d's depthwise backward, and the same sum as ``F.conv1d``. Used by
    Titans' and MoM's q/k/v convolutions."""
    K, T = w.shape[-1], uu.shape[1] - w.shape[-1] + 1
    out = uu[:, :T] * w[:, 0, 0]
    for i in range(1, K):
        out = out + uu[:, i:i + T] * w[:, 0, i]
    return out


def causal_conv_step(u: torch.Tensor, window: torch.Tensor, w: torch.Tensor):
    """The conv over a call's inputs u [B, T, C] continued from ``window`` [B, K-1, C] (the
    last K-1 inputs before them): (out [B, T, C], the new window [B, K-1, C])."""
    uu = torch.cat([window, u], 1)                                         # [B, K-1+T, C]
    return causal_conv(uu, w), uu[:, uu.shape[1] - (w.shape[-1] - 1):]
