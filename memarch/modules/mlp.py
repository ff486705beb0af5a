"""SwiGLU MLP (Shazeer, 2020): y = W2 (SiLU(W1 x) * W3 x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """``d_hidden`` defaults to 8/3 * d_model rounded up to a multiple of ``multiple_of``
    (LLaMA's choice: the same parameter count as a 4x GELU MLP)."""

    def __init__(self, d_model: int, *, d_hidden: int | None = None, multiple_of: int = 64,
                 bias: bool = False):
        super().__init__()
        if d_hidden is None:
            d_hidden = -(-int(8 * d_model / 3) // multiple_of) * multiple_of
        self.w1 = nn.Linear(d_model, d_hidden, bias=bias)  # gate
        self.w3 = nn.Linear(d_model, d_hidden, bias=bias)  # up
        self.w2 = nn.Linear(d_hidden, d_model, bias=bias)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        if torch.is_grad_enabled():
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        h = F.silu(self.w1(x), inplace=True)             # no autograd: in place, one buffer
        return self.w2(h.mul_(self.w3(x)))
