"""Independent references for the tests: slow, literal transcriptions of the papers.

``streaming_attention_ref`` simulates StreamingLLM's cache token by token: a list of
un-rotated keys, eviction of everything but the S sinks and the W most recent tokens,
and RoPE applied at use time by absolute position or by cache slot. It shares no code
with ``memarch.mixers.attention`` beyond the module's projection weights.
"""

from __future__ import annotations

import math

import torch


def _rope(x: torch.Tensor, p: int, base: float) -> torch.Tensor:
    """x [..., D] rotated to position p (rotate-half layout), in float64 arithmetic."""
    D = x.shape[-1]
    half = D // 2
    ang = [p * base ** (-2.0 * i / D) for i in range(half)]
    c = torch.tensor([math.cos(a) for a in ang], dtype=x.dtype)
    s = torch.tensor([math.sin(a) for a in ang], dtype=x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


@torch.no_grad()
def streaming_attention_ref(m, x: torch.Tensor) -> torch.Tensor:
    """y [B, T, D] of an ``Attention`` module ``m`` computed one token at a time."""
    B, T, _ = x.shape
    H, Hkv, Dh = m.n_heads, m.n_kv_heads, m.head_dim
    G = H // Hkv
    W = m.window if m.window is not None else T + 1
    S = m.n_sinks
    q = m.q_proj(x).view(B, T, H, Dh).double()
    k, v = m.kv_proj(x).view(B, T, 2, Hkv, Dh).double().unbind(2)
    base = m.rotary.base
    cache: list[int] = []          # absolute positions currently cached
    out = torch.zeros(B, T, H, Dh, dtype=torch.float64)
    for i in range(T):
        cache.append(i)
        cache = [j for j in cache if j < S or j > i - W]   # evict
        for h in range(H):
            hk = h // G
            scores, vals = [], []
            for slot, j in enumerate(cache):
                if m.sink_positions == "cache":
                    pq, pk = len(cache) - 1, slot
                else:
                    pq, pk = i, j
                qi = _rope(q[:, i, h], pq, base)
                kj = _rope(k[:, j, hk], pk, base)
                scores.append((qi * kj).sum(-1) / math.sqrt(Dh))
                vals.append(v[:, j, hk])
            if m.persistent_kv is not None:           # position-free: un-rotated query
                pk, pv = m.persistent_kv.double()       # [Hkv, Np, Dh] each
                for n in range(m.n_persistent):
                    scores.append((q[:, i, h] * pk[hk, n]).sum(-1) / math.sqrt(Dh))
                    vals.append(pv[hk, n].expand(B, Dh))
            p = torch.softmax(torch.stack(scores, -1), -1)                 # [B, n]
            out[:, i, h] = torch.einsum("bn,nbd->bd", p, torch.stack(vals, 0))
    return m.o_proj(out.reshape(B, T, H * Dh).to(x.dtype))


def short_conv_ref(m, x: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv as an explicit sum over taps."""
    B, T, D = x.shape
    K = m.kernel_size
    w = m.weight[:, 0]                     # [D, K]
    y = torch.zeros_like(x)
    for t in range(T):
        for i in range(K):
            src = t - K + 1 + i
            if src >= 0:
                y[:, t] += w[:, i] * x[:, src]
    if m.bias is not None:
        y = y + m.bias
    return torch.nn.functional.silu(y) if m.activation == "silu" else y
