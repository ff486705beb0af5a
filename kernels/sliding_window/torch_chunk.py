"""Sliding-window attention in query blocks of fused SDPA calls (PyTorch; the CPU path).

Queries are cut in blocks of Bq; block [a, a+Bq) can see only the Bq + W - 1 keys ending at
its last query (and the sinks), so each block is one ``scaled_dot_product_attention`` call
over those keys with a boolean mask: the band j in (i - W, i], and sink s visible iff
s <= p_i - W. Work is O(T (W + Bq)), never a T x T mask. With autograd recording each block
is recomputed in the backward (activation checkpointing per block), so nothing of size [T, W]
is kept between forward and backward: training memory is O(T), as full attention's.

Scores that need a second query (``sink_q`` other than q: StreamingLLM's cache positions)
share the softmax by concatenating heads: [q, sink_q] . [k, 0] = q . k for band keys and
[q, sink_q] . [0, sink_k] = sink_q . sink_k for sinks.

Non-finite input (docs/design.md#the-nan-rule; as naive.py). A masked entry inside
SDPA meets its value with weight 0, and 0 * NaN = NaN, so the guard is: when an input is not
known finite (``known_finite``: one reduction per input; the usual case skips the rest),
the calls see finite copies (non-finite entries zeroed, identical elsewhere, so every
output that does not see a non-finite entry is bitwise what it would have been), and every
output that sees one (a visible key or value row, a visible sink, its own query) is set to
NaN, not finite-but-wrong. A score that overflows finite inputs is left to the softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._common import known_finite


def sliding_window_torch(q, k, v, window: int, q_offset: int, sink_k, sink_v, sink_q, scale,
                         block: int = 128):
    Tq, Tk = q.shape[1], k.shape[1]
    W, e = window, Tk - Tq                          # query i's own key is key i + e
    S = 0 if sink_k is None else sink_k.shape[1]
    two = bool(S) and sink_q is not None and sink_q is not q
    clean = known_finite(q, k, v, sink_q if two else None, sink_k, sink_v)
    if not clean:                                   # finite copies for the fused calls
        fin = lambda x: None if x is None else torch.where(x.isfinite(), x, 0.0)
        q0, k0, v0, sq0, sk0, sv0 = map(fin, (q, k, v, sink_q if two else None, sink_k,
                                              sink_v))
    else:
        q0, k0, v0, sq0, sk0, sv0 = q, k, v, sink_q if two else None, sink_k, sink_v
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    t = lambda x: x.to(ct).transpose(1, 2)          # [B, T, H, D] -> [B, H, T, D]
    qh, kh, vh = t(q0), t(k0), t(v0)
    sqh = t(sq0) if two else None
    sk, sv = (t(sk0), t(sv0)) if S else (None, None)
    # with autograd recording each block is recomputed in the backward (activation
    # checkpointing): it saves views of q, k, v, never its gathered keys and sinks
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad
                                           for x in (qh, sqh, kh, vh, sk, sv))
    outs = []
    for a in range(0, Tq, block):
        args = (qh, sqh, kh, vh, sk, sv, a, min(block, Tq - a), e, W, q_offset, scale, grad)
        outs.append(checkpoint(_block, *args, use_reentrant=False) if grad else _block(*args))
    o = (torch.cat(outs, 2) if len(outs) > 1 else outs[0]).transpose(1, 2)   # [B, Tq, H, D]
    if not clean:
        o = o.masked_fill(_sees_non_finite(q, k, v, sink_q if two else None, sink_k, sink_v,
                                           W, q_offset)[..., None], float("nan"))
    return o.to(q.dtype)


def _block(qh, sqh, kh, vh, sk, sv, a: int, n: int, e: int, W: int, q_offset: int,
           scale: float, all_sinks: bool = False):
    """Queries a .. a+n-1 of ``qh [B, H, Tq, D]`` over the keys their band can see (of
    ``kh, vh [B, Hkv, Tk, D]``) and the sinks (``sk, sv [B, Hkv, S, D]`` or None, scored by
    ``sqh`` when it is given, else by ``qh``): one fused SDPA call with a boolean mask.
    ``all_sinks``: the sinks join (masked) even where no query sees them, so that their
    gradient is zeros, not None."""
    dev = qh.device
    j0 = max(0, a + e - W + 1)                      # the first key the block's band can see
    qb, kb, vb = qh[:, :, a:a + n], kh[:, :, j0:a + e + n], vh[:, :, j0:a + e + n]
    i = torch.arange(a + e, a + e + n, device=dev)[:, None]            # own-key index
    j = torch.arange(j0, a + e + n, device=dev)[None, :]
    mask = (j <= i) & (j > i - W)                                       # [n, L]
    if sk is not None and (all_sinks or q_offset + a + n - 1 - W >= 0):   # a sink is seen
        p = q_offset + torch.arange(a, a + n, device=dev)[:, None]      # absolute positions
        mask = torch.cat([torch.arange(sk.shape[2], device=dev)[None, :] <= p - W, mask], 1)
        if sqh is not None:                         # [q, sink_q] . [k, 0] and . [0, sink_k]
            D = qb.shape[-1]
            qb = torch.cat([qb, sqh[:, :, a:a + n]], -1)
            kb = torch.cat([F.pad(sk, (D, 0)), F.pad(kb, (0, D))], 2)
        else:
            kb = torch.cat([sk, kb], 2)
        vb = torch.cat([sv, vb], 2)
    return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=scale,
                                          enable_gqa=qb.shape[1] != kb.shape[1])


def _sees_non_finite(q, k, v, sink_q, sink_k, sink_v, W: int, q_offset: int) -> torch.Tensor:
    """[B, Tq, H] bool: the output sees a non-finite entry (its query, a visible key or
    value row, a visible sink or the sink query that scores it)."""
    Tq, H = q.shape[1], q.shape[2]
    Tk, Hkv = k.shape[1], k.shape[2]
    own = torch.arange(Tq, device=q.device) + (Tk - Tq)                 # own-key index
    bad = ~(k.isfinite().all(-1) & v.isfinite().all(-1))                # [B, Tk, Hkv]
    c = F.pad(bad.cumsum(1), (0, 0, 1, 0))                              # bad keys before j
    seen = (c[:, own + 1] - c[:, (own - W + 1).clamp(min=0)]) > 0       # [B, Tq, Hkv]
    if sink_k is not None:
        S = sink_k.shape[1]
        sbad = ~(sink_k.isfinite().all(-1) & sink_v.isfinite().all(-1))   # [B, S, Hkv]
        cs = F.pad(sbad.cumsum(1), (0, 0, 1, 0))
        n_vis = (q_offset + torch.arange(Tq, device=q.device) - W + 1).clamp(0, S)
        seen = seen | (cs[:, n_vis] > 0)
    seen = seen.repeat_interleave(H // Hkv, dim=2) | ~q.isfinite().all(-1)   # [B, Tq, H]
    if sink_q is not None and sink_k is not None:   # a sink query matters where sinks show
        n_vis = (q_offset + torch.arange(Tq, device=q.device) - W + 1).clamp(0, S)
        seen = seen | (~sink_q.isfinite().all(-1) & (n_vis > 0)[None, :, None])
    return seen
