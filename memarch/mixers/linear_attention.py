"""Causal linear attention with a feature map, optional normalisation and decay gate.

Katharopoulos et al., "Transformers are RNNs" (2006.16236); gated variant as in GLA
(Yang et al., 2312.06635). Per head, with phi the feature map and g_t <= 0 a log decay:

    S_t = e^{g_t} S_{t-1} + phi(k_t) v_t^T            S [F, Dv]
    z_t = e^{g_t} z_{t-1} + phi(k_t)                  z [F]   (normalize=True)
    y_t = scale phi(q_t) S_t / (scale phi(q_t) . z_t + eps)

``gated=True`` uses g_t = logsigmoid(w_h . x_t + b_h) / 16 (GLA's normaliser); without it
g = 0. ``scale`` is 1 for the Taylor map (its features already carry 1/sqrt(d)) and
F^-1/2 otherwise (it cancels when normalising, up to eps). The recurrence runs through
``memarch.kernels.linear_attn`` (chunked PyTorch on CPU, Triton on CUDA).
State: ``LinearAttentionState(S [B, H, F, Dv], z [B, H, F] | None, pos [B])``, fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch.kernels import linear_attn
from memarch.mixers.base import (
    IMPLS,
    Mixer,
    MixerOutput,
    check_bool,
    check_choice,
    check_number,
    check_positive_int,
    check_scalars,
)
from memarch.mixers.feature_maps import FEATURE_MAPS, make_feature_map

__all__ = ["LinearAttention", "LinearAttentionState"]


class LinearAttentionState(NamedTuple):
    S: torch.Tensor              # [B, H, F, Dv] fp32
    z: torch.Tensor | None       # [B, H, F] fp32 (None unless normalize)
    pos: torch.Tensor            # [B] int64


class LinearAttention(Mixer):
    """Args:
        n_heads: heads (default d_model // 64, at least 1); head_dim = d_model // n_heads.
        feature_dim: q/k projection width per head before the feature map (default head_dim).
        feature_map: one of identity, elu, relu, taylor.
        normalize: divide by phi(q) . z (needs a non-negative map: elu, relu, taylor).
        gated: data-dependent per-head decay.
        eps: added to the normaliser.
        taylor_form: "unique" (default; same inner products, fewer features) or "full".
        impl: kernel implementation ("auto", "torch", "naive", "triton").
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None, n_heads: int | None = None,
                 feature_dim: int | None = None, feature_map: str = "elu", normalize: bool = True,
                 gated: bool = False, eps: float = 1e-6, taylor_form: str = "unique",
                 impl: str = "auto"):
        super().__init__(d_model, layer_idx=layer_idx)
        name = type(self).__name__
        n_heads = max(1, d_model // 64) if n_heads is None else n_heads
        check_positive_int(name, "n_heads", n_heads)
        if feature_dim is not None:
            check_positive_int(name, "feature_dim", feature_dim)
        check_number(name, "eps", eps, minimum=0)
        if d_model % n_heads:
            raise ValueError(f"{type(self).__name__}: n_heads={n_heads} must divide "
                             f"d_model={d_model}")
        if not isinstance(feature_map, str) or feature_map not in FEATURE_MAPS:
            raise ValueError(f"{type(self).__name__}: feature_map must be one of {FEATURE_MAPS}, "
                             f"got {feature_map!r}")
        check_bool(name, "normalize", normalize)
        check_bool(name, "gated", gated)
        check_choice(name, "taylor_form", taylor_form, ("unique", "full"))
        check_choice(name, "impl", impl, IMPLS)
        if normalize and feature_map == "identity":
            raise ValueError(f"{type(self).__name__}: normalize=True needs a non-negative "
                             "feature map (elu, relu, taylor), got 'identity'")
        Fq = d_model // n_heads if feature_dim is None else feature_dim
        Fd = (1 + Fq + (Fq * Fq if taylor_form == "full" else Fq * (Fq + 1) // 2)
              if feature_map == "taylor" else Fq)
        args = {"d_model": d_model, "n_heads": n_heads, "feature_dim": feature_dim,
                "feature_map": feature_map}
        check_scalars(name, "parameters", 2 * d_model * n_heads * Fq + 2 * d_model * d_model,
                      args)
        check_scalars(name, "state scalars per sequence", n_heads * Fd * (d_model // n_heads + 1),
                      args)
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.feature_dim = self.head_dim if feature_dim is None else feature_dim
        self.normalize, self.gated, self.eps, self.impl = normalize, gated, float(eps), impl
        self.phi = make_feature_map(feature_map, self.feature_dim, taylor_form=taylor_form)
        self.n_features = self.phi.out_dim
        self.scale = 1.0 if feature_map == "taylor" else self.n_features ** -0.5
        H = n_heads
        self.q_proj = nn.Linear(d_model, H * self.feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, H * self.feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, H * self.head_dim, bias=False)
        self.o_proj = nn.Linear(H * self.head_dim, d_model, bias=False)
        self.g_proj = nn.Linear(d_model, H, bias=True) if gated else None

    def state_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if x_dtype == torch.float64 else torch.float32

    def init_state(self, batch_size, *, device=None, dtype=None) -> LinearAttentionState:
        dtype = dtype or torch.float32
        H, Fd, Dv = self.n_heads, self.n_features, self.head_dim
        S = torch.zeros(batch_size, H, Fd, Dv, device=device, dtype=dtype)
        z = torch.zeros(batch_size, H, Fd, device=device, dtype=dtype) if self.normalize else None
        return LinearAttentionState(S, z, torch.zeros(batch_size, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        n = self.n_heads * self.n_features
        return n * self.head_dim + (n if self.normalize else 0)

    def _forward(self, x: torch.Tensor, state: LinearAttentionState) -> MixerOutput:
        B, T, _ = x.shape
        H = self.n_heads
        q = self.phi(self.q_proj(x).view(B, T, H, self.feature_dim))    # [B, T, H, F]
        k = self.phi(self.k_proj(x).view(B, T, H, self.feature_dim))    # [B, T, H, F]
        v = self.v_proj(x).view(B, T, H, self.head_dim)                 # [B, T, H, Dv]
        g = (F.logsigmoid(self.g_proj(x).to(self.state_dtype(x.dtype))) / 16.0
             if self.gated else None)                                     # [B, T, H]
        init = (state.S, state.z) if self.normalize else state.S
        o, (S, z) = linear_attn(q, k, v, g=g, scale=self.scale, normalize=self.normalize,
                                eps=self.eps, initial_state=init, output_final_state=True,
                                impl=self.impl)
        y = self.o_proj(o.reshape(B, T, H * self.head_dim).to(x.dtype))
        return MixerOutput(y, LinearAttentionState(S, z, state.pos + T), None)
