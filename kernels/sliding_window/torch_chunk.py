"""Sliding-window attention in blocked banded form (PyTorch; the CPU path, autograd backward).

Queries are cut in blocks of Bq; block [i0, i0+Bq) needs only the L = Bq + W - 1 keys ending
at its last query, so the keys are padded in front by W - 1 and unfolded into overlapping
windows: scores are [.., n_blocks, Bq, S + L] and memory is O(T (W + Bq)) instead of O(T^2).
Sink scores join the same softmax, masked to s <= p_i - W. Same semantics as naive.py,
including non-finite input: masks select, values are sanitised before the weighted sum, and a
visible key with a non-finite score or value row gets a NaN score. That guard runs only when
an input is not known finite (``known_finite``: one reduction per input; the usual case skips
it; a score that overflows finite inputs is then left to the softmax).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import known_finite


def sliding_window_torch(q, k, v, window: int, q_offset: int, sink_k, sink_v, sink_q, scale,
                         block: int = 64):
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G, W = H // Hkv, window
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    Bq = min(block, Tq)
    n = -(-Tq // Bq)
    L = Bq + W - 1
    e = Tk - Tq                                     # key index of query i's own key is i + e
    # padded key u = t + W - 1; block m uses u in [m Bq + e, m Bq + e + L)
    need = (n - 1) * Bq + e + L
    def win(x):
        x = F.pad(x.to(ct), (0, 0, 0, 0, W - 1, max(0, need - (Tk + W - 1))))
        return x[:, e:e + (n - 1) * Bq + L].unfold(1, L, Bq).permute(0, 1, 4, 2, 3)
    clean = known_finite(q, k, v, sink_q, sink_k, sink_v)   # the guard's fast path
    if clean:
        kw, vw, vbad = win(k), win(v), None
    else:
        vfin = v.isfinite()
        kw, vw = win(k), win(torch.where(vfin, v, 0.0))
        vbad = win((~vfin.all(-1, keepdim=True)).to(ct))[..., 0]         # [B, n, L, Hkv] 0/1
        vbad = (vbad > 0).permute(0, 1, 3, 2)[:, :, :, None, None, :]    # [B, n, Hkv, 1, 1, L]
    qb = F.pad(q.to(ct), (0, 0, 0, 0, 0, n * Bq - Tq)).unflatten(1, (n, Bq))   # [B, n, Bq, H, D]
    qb = qb.unflatten(3, (Hkv, G))                                      # [B, n, Bq, Hkv, G, D]
    s = torch.einsum("bnrhgd,bnlhd->bnhgrl", qb, kw) * scale            # [B, n, Hkv, G, Bq, L]
    r = torch.arange(Bq, device=q.device)
    c = torch.arange(L, device=q.device)
    m0 = torch.arange(n, device=q.device) * Bq
    band = (c[None, :] >= r[:, None]) & (c[None, :] <= r[:, None] + W - 1)       # [Bq, L]
    t = m0[:, None] + e + c[None, :] - (W - 1)                                  # key index [n, L]
    mask = band[None] & (t >= 0)[:, None, :]                                    # [n, Bq, L]
    s = _select(s, mask[None, :, None, None], vbad)
    if sink_k is not None:
        S = sink_k.shape[1]
        sq = F.pad(sink_q.to(ct), (0, 0, 0, 0, 0, n * Bq - Tq)).unflatten(1, (n, Bq))
        sq = sq.unflatten(3, (Hkv, G))
        ss = torch.einsum("bnrhgd,bshd->bnhgrs", sq, sink_k.to(ct)) * scale  # [B,n,Hkv,G,Bq,S]
        pq = (m0[:, None] + r[None, :] + q_offset)                              # [n, Bq]
        smask = torch.arange(S, device=q.device) <= pq[..., None] - W           # [n, Bq, S]
        if clean:
            sbad, sv = None, sink_v
        else:
            sfin = sink_v.isfinite()
            sbad = ~sfin.all(-1).transpose(1, 2)[:, None, :, None, None, :]  # [B,1,Hkv,1,1,S]
            sv = torch.where(sfin, sink_v, 0.0)
        ss = _select(ss, smask[None, :, None, None], sbad)
        p = torch.cat([ss, s], -1).softmax(-1)
        o = torch.einsum("bnhgrs,bshd->bnrhgd", p[..., :S], sv.to(ct))
        o = o + torch.einsum("bnhgrl,bnlhd->bnrhgd", p[..., S:], vw)
    else:
        o = torch.einsum("bnhgrl,bnlhd->bnrhgd", s.softmax(-1), vw)
    o = o.flatten(3, 4).flatten(1, 2)[:, :Tq]                                   # [B, Tq, H, D]
    return o.to(q.dtype)


def _select(s, visible, vbad):
    """Masked scores by selection: -inf where hidden, NaN where visible but the score or the
    key's value row is non-finite (the output that sees it is NaN, not finite-but-wrong).
    ``vbad=None``: the inputs are known finite, so only the mask is applied."""
    if vbad is None:
        return s.masked_fill(~visible, float("-inf"))
    return torch.where(visible, torch.where(s.isfinite() & ~vbad, s, float("nan")), float("-inf"))
