"""Linear attention in chunked matmul form (PyTorch; the CPU path, autograd gives the
backward).

Tokens are grouped in chunks of C. Inside chunk n, with b_t = sum_{s<=t in chunk} g_s and
H_n the state before the chunk (fp32 throughout):

    o_t     = scale q_t [ exp(b_t) H_n + sum_{s<=t} exp(b_t - b_s) k_s v_s^T ]
    H_{n+1} = exp(b_C) H_n + sum_s exp(b_C - b_s) k_s v_s^T

The intra-chunk terms of all chunks are one batched matmul; only the [K, V] chunk states
are a loop over chunks. Normalisation appends a column of ones to v: that column of the
state is z and that column of the output is the denominator (scale q_t) . z_t.

Causality for any input (docs/design.md#the-nan-rule): masks select (``torch.where``), never
multiply, so a non-finite q/k/v/g at token s changes no output before s. The intra-chunk
matmul A @ v runs on sanitised values v0 = where(isfinite(v), v, 0) (a zero weight times a NaN
value is NaN), and the visible coefficients A[t, s] of a token s whose value row is non-finite
are set to NaN, so every output that sees s is NaN rather than finite-but-wrong. That guard
runs only when v is not known finite (``known_finite``: one reduction; the usual case skips
it). The chunk states take the raw values: they only reach later chunks, and the final state
after a NaN may be NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import known_finite


def _causal_decay(b: torch.Tensor) -> torch.Tensor:
    """b [..., C] chunk-local cumsum of log decay -> [..., C, C]: exp(b_t-b_s) if s <= t else 0
    (selected: a NaN in b at s never reaches a row t < s)."""
    C = b.shape[-1]
    tri = torch.ones(C, C, dtype=torch.bool, device=b.device).tril()
    diff = (b[..., :, None] - b[..., None, :]).masked_fill(~tri, float("-inf"))
    return diff.exp()


def chunk_linear_attn(q, k, v, g, scale: float, S0, chunk_size: int = 64):
    """Un-normalised chunked linear attention. q, k [B,T,H,K]; v [B,T,H,V]; g [B,T,H] | None;
    S0 [B,H,K,V] | None. Returns o [B,T,H,V] and the final state [B,H,K,V], both fp32
    (fp64 for fp64 inputs)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = max(1, min(chunk_size, T))  # a short call (decode: T = 1) pads to T, not to a chunk
    N = max(1, -(-T // C))
    pad = N * C - T
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    # [B, H, N, C, D] fp32; zero padding adds nothing to the state (g = 0: no decay)
    def prep(x):
        x = x.to(ct).transpose(1, 2)
        return F.pad(x, (0, 0, 0, pad)).unflatten(2, (N, C))
    qc, kc, vc = prep(q) * scale, prep(k), prep(v)
    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = torch.einsum("bhntk,bhnsk->bhnts", qc, kc)
    if g is not None:
        gc = F.pad(g.to(ct).transpose(1, 2), (0, pad)).unflatten(2, (N, C))   # [B, H, N, C]
        b = gc.cumsum(-1)
        A = A * _causal_decay(b)
        q_in = qc * b.exp()[..., None]                                   # exp(b_t) q_t
        k_out = kc * (b[..., -1:] - b).exp()[..., None]                  # exp(b_C - b_s) k_s
        chunk_decay = b[..., -1].exp()                                   # [B, H, N]
    else:
        q_in, k_out, chunk_decay = qc, kc, None
    # select, never multiply by a mask: masked pairs are 0 even when q.k or the decay is NaN;
    # visible pairs with a non-finite value row are NaN (honest propagation)
    if known_finite(v):                                                  # the fast path
        o = torch.where(tri, A, 0.0) @ vc                                # [B, H, N, C, V]
    else:
        vfin = vc.isfinite()
        vbad = ~vfin.all(-1)                                             # [B, H, N, C]
        A = torch.where(tri, A.masked_fill(vbad[..., None, :], float("nan")), 0.0)
        o = A @ torch.where(vfin, vc, 0.0)                               # [B, H, N, C, V]
    dS = k_out.transpose(-1, -2) @ vc                                    # [B, H, N, K, V]
    Hs = []
    h = S0.to(ct) if S0 is not None else q.new_zeros(B, H, K, V, dtype=ct)
    # unbind once: indexing [:, :, n] in the loop would make autograd add a full-size zero
    # gradient per chunk (quadratic in T)
    decays = chunk_decay[..., None, None].unbind(2) if chunk_decay is not None else [None] * N
    for dS_n, d_n in zip(dS.unbind(2), decays):
        Hs.append(h)
        h = (h * d_n if d_n is not None else h) + dS_n
    o = o + q_in @ torch.stack(Hs, 2)                                    # inter-chunk term
    o = o.flatten(2, 3)[:, :, :T].transpose(1, 2)                        # [B, T, H, V]
    return o, h
