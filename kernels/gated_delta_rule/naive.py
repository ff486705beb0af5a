"""Gated delta rule, the executable spec: a token loop in fp32 (slow on purpose).

For every token t (per batch row and head), with memarch's state orientation S [K, V]
(read as q^T S, written as k v^T), log-space decay g_t <= 0 and write strength beta_t:

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
        = S' + beta_t k_t (v_t - k_t^T S')^T          with S' = exp(g_t) S_{t-1}
    o_t = (scale q_t)^T S_t                               [V]

This is the gated delta rule of Yang et al. (Gated Delta Networks, 2412.06464) transposed:
flash-linear-attention keeps S as [K, V] too and writes S_t = S_{t-1} alpha_t (I - beta_t
k_t k_t^T) + beta_t v_t k_t^T in the paper's [V, K] orientation; both are the same map.
Without g it is the delta rule (DeltaNet, Schlag et al. 2021; Yang et al. 2406.06484).

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; beta, g [B, T, H]; state S [B, H, K, V].
Arithmetic in fp32 (fp64 when the inputs are fp64).
"""

from __future__ import annotations

import torch


def delta_rule_naive(q, k, v, beta, g, scale: float, S0):
    """Token loop. Returns o [B, T, H, V] (dtype of v) and S [B, H, K, V] (fp32 | fp64)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf, bf = q.to(ct) * scale, k.to(ct), v.to(ct), beta.to(ct)
    S = S0.to(ct).clone() if S0 is not None else q.new_zeros(B, H, K, V, dtype=ct)
    outs = []
    for t in range(T):
        kt, vt, qt = kf[:, t], vf[:, t], qf[:, t]                      # [B, H, K|V]
        if g is not None:
            S = g[:, t].to(ct).exp()[..., None, None] * S               # S' = exp(g_t) S
        err = vt - torch.einsum("bhk,bhkv->bhv", kt, S)                 # v_t - k_t^T S'
        S = S + (bf[:, t, :, None] * kt)[..., :, None] * err[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S))
    o = torch.stack(outs, 1) if outs else vf.new_zeros(B, 0, H, V)      # [B, T, H, V]
    return o.to(v.dtype), S
