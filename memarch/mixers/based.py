"""BASED (Arora et al., "Simple linear attention language models balance the
recall-throughput tradeoff", 2402.18668): Taylor linear attention + gated short convolutions
+ sliding-window attention, stacked by a layer pattern (see configs/experiment/based_*.yaml).

``BasedLinearAttention``: q, k projected to ``feature_dim`` (16) per head, lifted by the
second-order Taylor map phi (phi(q) . phi(k) = 1 + s + s^2/2, s = q . k / sqrt(16)); v keeps
the head dim; normalised causal linear attention

    y_t = phi(q_t) S_t / (phi(q_t) . z_t + eps),
    S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t)

with eps = 1e-12 (BASED's value; the denominator is >= t/2 since 1 + s + s^2/2 >= 1/2).
Defaults follow BASED's reference configs: 16 heads, feature_dim 16. We use the
unique-pair Taylor form by default (153 instead of 273 features for d = 16): identical
inner products, so identical outputs, with 44% less state; ``taylor_form="full"`` gives
BASED's layout.

``BaseConv`` (BASED's gated short convolution, as in its reference code):
    [u1, u2] = W_in x   (expand_proj * d_model, split in halves of d_inner)
    y = W_out( silu(conv_k(u1)) * u2 )       conv_k: depthwise causal, kernel_size 3
State: the conv window (kernel_size - 1 inputs of width d_inner). BASED's configs can add
an implicit long convolution; we implement the short gated form the paper describes, so
decode stays O(1) per token.

Sliding-window layers are ``memarch.mixers.Attention(window=64)``: key j is visible to query
i iff i - 64 < j <= i. BASED's code passes window_size to FlashAttention as (w/2, 0), i.e.
it halves its window argument; we do not.
"""

from __future__ import annotations

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
from memarch.mixers.linear_attention import LinearAttention
from memarch.mixers.short_conv import ShortConv, ShortConvState

__all__ = ["BasedLinearAttention", "BaseConv"]


class BasedLinearAttention(LinearAttention):
    """``LinearAttention`` with BASED's defaults (Taylor map, feature_dim 16, 16 heads)."""

    def __init__(self, d_model: int, *, layer_idx: int | None = None, n_heads: int = 16,
                 feature_dim: int = 16, eps: float = 1e-12, taylor_form: str = "unique",
                 impl: str = "auto"):
        check_int("BasedLinearAttention", "n_heads", n_heads, minimum=1)   # None is not 16
        check_int("BasedLinearAttention", "feature_dim", feature_dim, minimum=1)
        super().__init__(d_model, layer_idx=layer_idx, n_heads=n_heads, feature_dim=feature_dim,
                         feature_map="taylor", normalize=True, gated=False, eps=eps,
                         taylor_form=taylor_form, impl=impl)


class BaseConv(Mixer):
    def __init__(self, d_model: int, *, layer_idx: int | None = None, kernel_size: int = 3,
                 expand_proj: int = 4, bias: bool = True, conv_bias: bool = True):
        super().__init__(d_model, layer_idx=layer_idx)
        if (not isinstance(expand_proj, int) or isinstance(expand_proj, bool) or expand_proj < 1
                or (expand_proj * d_model) % 2):
            raise ValueError(f"BaseConv: expand_proj * d_model must be even and >= 2, got "
                             f"expand_proj={expand_proj!r}, d_model={d_model}")
        check_int("BaseConv", "kernel_size", kernel_size, minimum=1, expected="an int >= 1")
        check_bool("BaseConv", "bias", bias)
        check_bool("BaseConv", "conv_bias", conv_bias)
        d_inner = expand_proj * d_model // 2
        args = {"d_model": d_model, "expand_proj": expand_proj, "kernel_size": kernel_size}
        check_scalars("BaseConv", "parameters", 3 * d_model * d_inner + kernel_size * d_inner,
                      args)
        check_scalars("BaseConv", "state scalars per sequence", (kernel_size - 1) * d_inner,
                      args)
        self.d_inner = expand_proj * d_model // 2
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.conv = ShortConv(self.d_inner, kernel_size=kernel_size, activation=None,
                              bias=conv_bias)

    def init_state(self, batch_size, *, device=None, dtype=None) -> ShortConvState:
        return self.conv.init_state(batch_size, device=device, dtype=dtype)

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size(seq_len)

    def _forward(self, x: torch.Tensor, state: ShortConvState) -> MixerOutput:
        u1, u2 = self.in_proj(x).chunk(2, dim=-1)                        # [B, T, d_inner] x2
        c = self.conv(u1, state)
        y = self.out_proj(F.silu(c.y) * u2)                              # [B, T, D]
        return MixerOutput(y, c.state, None)
