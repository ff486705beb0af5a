"""RMSNorm (Zhang & Sennrich, 2019): y = x / sqrt(mean(x^2) + eps) * w, computed in at
least fp32 (fp64 inputs stay fp64)."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim] -> [..., dim]
        ct = torch.promote_types(x.dtype, torch.float32)
        xf = x.to(ct)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(ct)).to(x.dtype)
