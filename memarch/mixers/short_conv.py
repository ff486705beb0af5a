"""Short causal depthwise convolution, a mixer with its own conv-window state.

    y_t = act( sum_{i=0}^{K-1} w_i * x_{t-K+1+i} + b ),  per channel (depthwise)

BASED's BaseConv uses this mixer. Titans' and MoM's q/k/v convolutions use the same
convolution as a building block (``memarch.modules.conv``). The state is the last K-1 inputs
``conv [B, K-1, D]`` (zeros before the first token), so one call over T tokens equals any
split into calls: the window is simply prepended to the next chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch.mixers.base import (
    Mixer,
    MixerOutput,
    check_bool,
    check_int,
    check_scalars,
)

__all__ = ["ShortConv", "ShortConvState"]

_ACTS = {None: lambda x: x, "identity": lambda x: x, "silu": F.silu}


class ShortConvState(NamedTuple):
    conv: torch.Tensor  # [B, K-1, D] the last K-1 inputs, oldest first (activation dtype)
    pos: torch.Tensor   # [B] int64 tokens seen


class ShortConv(Mixer):
    weights_follow_input = True          # the conv runs in x's dtype (F.conv1d on w.to(x))

    def __init__(self, d_model: int, *, layer_idx: int | None = None, kernel_size: int = 4,
                 activation: str | None = "silu", bias: bool = True):
        super().__init__(d_model, layer_idx=layer_idx)
        check_int("ShortConv", "kernel_size", kernel_size, minimum=1, expected="an int >= 1")
        check_bool("ShortConv", "bias", bias)
        args = {"d_model": d_model, "kernel_size": kernel_size}
        check_scalars("ShortConv", "parameters", d_model * (kernel_size + 1), args)
        if not isinstance(activation, (str, type(None))) or activation not in _ACTS:
            raise ValueError(
                f"ShortConv: activation must be one of {sorted(map(str, _ACTS))}, "
                f"got {activation!r}")
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(d_model, 1, kernel_size))  # depthwise
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        nn.init.uniform_(self.weight, -kernel_size ** -0.5, kernel_size ** -0.5)

    def init_state(self, batch_size, *, device=None, dtype=None) -> ShortConvState:
        dtype = dtype or torch.get_default_dtype()
        return ShortConvState(
            conv=torch.zeros(batch_size, self.kernel_size - 1, self.d_model, device=device,
                             dtype=dtype),
            pos=torch.zeros(batch_size, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        return (self.kernel_size - 1) * self.d_model

    def _forward(self, x: torch.Tensor, state: ShortConvState) -> MixerOutput:
        B, T, D = x.shape
        K = self.kernel_size
        xx = torch.cat([state.conv, x], dim=1)                    # [B, K-1+T, D]
        y = F.conv1d(xx.transpose(1, 2), self.weight.to(x.dtype),
                     None if self.bias is None else self.bias.to(x.dtype),
                     groups=D).transpose(1, 2)                     # [B, T, D]
        y = _ACTS[self.activation](y)
        new = ShortConvState(conv=xx[:, xx.shape[1] - (K - 1):].clone(), pos=state.pos + T)
        return MixerOutput(y, new, None)
