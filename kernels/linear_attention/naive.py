"""Linear attention, the executable spec: a token loop in fp32 (slow on purpose).

For every token t (per batch row and head), with optional log-space decay g_t:

    S_t = exp(g_t) S_{t-1} + k_t v_t^T          S [K, V]
    z_t = exp(g_t) z_{t-1} + k_t                z [K]      (only when normalize)
    o_t = (scale q_t) S_t                       [V]
    o_t = o_t / ((scale q_t) . z_t + eps)                  (only when normalize)

Shapes: q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H]; state S [B, H, K, V], z [B, H, K].
Arithmetic in fp32 (fp64 when the inputs are fp64).
"""

from __future__ import annotations

import torch


def linear_attn_naive(q, k, v, g, scale: float, normalize: bool, eps: float, S0, z0):
    """Token loop. Returns o [B, T, H, V] (dtype of v), S [B, H, K, V] and z [B, H, K] | None."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(ct) * scale, k.to(ct), v.to(ct)
    S = S0.to(ct) if S0 is not None else q.new_zeros(B, H, K, V, dtype=ct)
    z = None
    if normalize:
        z = z0.to(ct) if z0 is not None else q.new_zeros(B, H, K, dtype=ct)
    outs = []
    for t in range(T):
        kt, vt, qt = kf[:, t], vf[:, t], qf[:, t]                      # [B, H, K|V]
        if g is not None:
            a = g[:, t].to(ct).exp()                                   # [B, H]
            S = a[..., None, None] * S
            if normalize:
                z = a[..., None] * z
        S = S + kt[..., :, None] * vt[..., None, :]
        o = torch.einsum("bhk,bhkv->bhv", qt, S)
        if normalize:
            z = z + kt
            o = o / ((qt * z).sum(-1, keepdim=True) + eps)
        outs.append(o)
    o = torch.stack(outs, 1) if outs else vf.new_zeros(B, 0, H, V)      # [B, T, H, V]
    return o.to(v.dtype), S, z
