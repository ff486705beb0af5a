"""Rotary position embedding (RoPE; Su et al., 2021), GPT-NeoX "rotate-half" layout.

For a head vector split as x = [x1, x2] (halves of size D/2) at position p:
    rope(x, p) = [x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w)],  w_i = base^(-2i/D)
so rope(q, i) . rope(k, j) depends on i - j only.

Angles are computed in float64 and only then cast, so positions in the millions keep
their precision (a long stream decoded token by token must match the parallel pass).
"""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    def __init__(self, head_dim: int, *, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"Rotary: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: integer positions of any shape [...]; returns cos, sin of shape [..., D/2].
        The frequencies are made here in fp64 (not a buffer: ``model.to(bf16)`` would round
        them and move every position)."""
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64,
                                               device=pos.device) / self.head_dim)  # [D/2]
        ang = pos.to(torch.float64)[..., None] * inv_freq
        return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D]; cos/sin broadcastable to [..., D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
