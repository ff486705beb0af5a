"""Sliding-window attention with sinks, the executable spec: full masked softmax in fp32.

Queries are absolute positions p_i = q_offset + i (i < Tq); keys/values are the Tk most
recent positions ending at the last query, p_j = q_offset + Tq - Tk + j. For query i:

    band:  key j visible iff p_i - W < p_j <= p_i           score scale q_i . k_j
    sinks: sink s (absolute position s < S) visible iff s <= p_i - W (outside the band,
           so no key counts twice)                           score scale sq_i . sink_k_s
    o_i  = softmax over [visible sinks, visible band keys] of the scores, applied to
           [sink_v, v]

Shapes: q, sq [B, Tq, H, D]; k, v [B, Tk, Hkv, D]; sink_k, sink_v [B, S, Hkv, D]; H % Hkv == 0.

Non-finite input (causality holds for any input): a query's output depends only on what it
sees. Masks select (masked scores are -inf), never multiply. A visible key whose score is
non-finite (non-finite q, k or overflow) or whose value row is non-finite gets the score NaN,
so that output is NaN (not finite-but-wrong); values enter the weighted sum with non-finite
entries set to 0, so a zero weight never meets a NaN (0 * NaN = NaN).
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
    vals = rep(v)
    s = select_scores(s, mask, vals)
    if sink_k is not None:
        S = sink_k.shape[1]
        ss = torch.einsum("bihd,bjhd->bhij", sink_q.to(ct), rep(sink_k)) * scale  # [B,H,Tq,S]
        smask = torch.arange(S, device=q.device)[None, :] <= pq[:, None] - window
        svals = rep(sink_v)
        s = torch.cat([select_scores(ss, smask, svals), s], -1)
        vals = torch.cat([svals, vals], 1)
    p = s.softmax(-1)
    o = torch.einsum("bhij,bjhd->bihd", p, torch.where(vals.isfinite(), vals, 0.0))
    return o.to(q.dtype)


def select_scores(s, mask, vals):
    """s [B, H, Tq, Tk] scores, mask [Tq, Tk] visible, vals [B, Tk, H, D] -> masked scores:
    -inf where hidden, NaN where visible but the score or the value row is non-finite."""
    ok = s.isfinite() & vals.isfinite().all(-1).transpose(1, 2)[:, :, None, :]
    return torch.where(mask, torch.where(ok, s, float("nan")), float("-inf"))
