"""Sliding-window attention with sinks, the executable spec: full masked softmax in fp32.

Queries are absolute positions p_i = q_offset + i (i < Tq); keys/values are the Tk most
recent positions ending at the last query, p_j = q_offset + Tq - Tk + j. For query i:

    band:  key j visible iff p_i - W < p_j <= p_i           score scale q_i . k_j
    sinks: sink s (absolute position s < S) visible iff s <= p_i - W (outside the band,
           so no key counts twice)                           score scale sq_i . sink_k_s
    o_i  = softmax over [visible sinks, visible band keys] of the scores, applied to
           [sink_v, v]

Shapes: q, sq [B, Tq, H, D]; k, v [B, Tk, Hkv, D]; sink_k, sink_v [B, S, Hkv, D]; H % Hkv == 0.
"""

from __future__ import annotations

import torch


def positions(Tq: int, Tk: int, q_offset: int, device=None):
    """Absolute positions of queries [Tq] and keys [Tk]."""
    pq = torch.arange(Tq, device=device) + q_offset
    pk = torch.arange(Tk, device=device) + (q_offset + Tq - Tk)
    return pq, pk


def sliding_window_naive(q, k, v, window: int, q_offset: int, sink_k, sink_v, sink_q, scale):
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    rep = lambda x: x.to(ct).repeat_interleave(G, dim=2)
    pq, pk = positions(Tq, Tk, q_offset, q.device)
    s = torch.einsum("bihd,bjhd->bhij", q.to(ct), rep(k)) * scale   # [B, H, Tq, Tk]
    mask = (pk[None, :] <= pq[:, None]) & (pk[None, :] > pq[:, None] - window)
    s = s.masked_fill(~mask, float("-inf"))
    vals = rep(v)
    if sink_k is not None:
        S = sink_k.shape[1]
        ss = torch.einsum("bihd,bjhd->bhij", sink_q.to(ct), rep(sink_k)) * scale  # [B,H,Tq,S]
        smask = torch.arange(S, device=q.device)[None, :] <= pq[:, None] - window
        s = torch.cat([ss.masked_fill(~smask, float("-inf")), s], -1)
        vals = torch.cat([rep(sink_v), vals], 1)
    p = s.softmax(-1)
    o = torch.einsum("bhij,bjhd->bihd", p, vals)
    return o.to(q.dtype)
