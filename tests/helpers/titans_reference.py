"""Naive reference of Titans' neural memory (2501.00663, section 3), written independently
of ``memarch.mixers.titans``: one token at a time, the inner gradient by ``torch.func.grad``
(no closed form), momentum and forgetting as the paper's per-token recurrences, and the
depthwise conv as an explicit sum. It shares only the parameters of the module it checks.

For token t in update chunk c (chunks of C tokens from position 0):
    g_t = grad_M ||M(k_t) - v_t||^2 at M = M_{start of c}
    S_t = eta_t S_{t-1} - theta_t g_t         (S_t = -theta_t g_t without momentum)
    M_t = (1 - alpha_t) M_{t-1} + S_t         (alpha = 0 without forgetting)
    y_t = M_{start of c}(q_t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _mlp(ws, x, residual_norm):
    h = x
    for i, w in enumerate(ws):
        h = torch.einsum("bhnd,bhde->bhne", h, w)
        if i < len(ws) - 1:
            h = h * torch.sigmoid(h)
    if residual_norm:
        h = x + h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-6)
    return h


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _conv(u, hist, w):
    """Causal depthwise conv: out_t = sum_i w[:, i] * [hist, u]_{t + i}; u [B, T, C]."""
    K = w.shape[-1]
    full = torch.cat([hist, u], 1)
    T = u.shape[1]
    return sum(w[:, 0, i] * full[:, i:i + T] for i in range(K)), full[:, full.shape[1] - (K - 1):]


def reference_neural_memory(m, x: torch.Tensor):
    """Run NeuralMemory ``m`` on x [B, T, D] from its empty state, token by token.

    Returns (y [B, T, D], final) with ``final`` the fields of the state after T tokens:
    dict(weights, momentum, pend_k, pend_v, pend_g, conv) (pending fields hold the
    T mod C tokens of the incomplete chunk)."""
    B, T, D = x.shape
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    H, Dh, C, K = m.n_heads, m.head_dim, m.chunk_size, m.conv_size
    u = F.silu(x @ m.qkv_proj.weight.T).to(dt)                    # [B, T, 3 H Dh]
    if K:
        u, conv = _conv(u, torch.zeros(B, K - 1, 3 * H * Dh, dtype=dt), m.conv_weight.to(dt))
    else:
        conv = torch.zeros(B, 0, 3 * H * Dh, dtype=dt)
    q, k, v = u.view(B, T, 3, H, Dh).unbind(2)                    # [B, T, H, Dh]
    q, k = _unit(q), _unit(k)
    z = (x @ m.gate_proj.weight.T + m.gate_proj.bias).to(dt).view(B, T, 3, H)
    if m.gates == "chunk":              # each complete chunk uses its mean logits
        z = z.clone()
        for a in range(0, T - T % C, C):
            z[:, a:a + C] = z[:, a:a + C].mean(1, keepdim=True)
    theta = m.max_lr * torch.sigmoid(z[:, :, 0])                   # [B, T, H]
    eta, alpha = torch.sigmoid(z[:, :, 1]), torch.sigmoid(z[:, :, 2])

    W = [w.to(dt).unsqueeze(0).expand(B, *w.shape) for w in m.memory_init]
    S = [torch.zeros_like(w) for w in W]
    W0, done_W, done_S = W, W, S

    def loss(ws, kt, vt):                                          # summed over batch, heads
        return ((_mlp(ws, kt, m.residual_norm) - vt) ** 2).sum()

    ys = []
    for t in range(T):
        if t % C == 0:
            W0 = W
        kt, vt = k[:, t, :, None], v[:, t, :, None]                # [B, H, 1, Dh]
        ys.append(_mlp(W0, q[:, t, :, None], m.residual_norm)[:, :, 0])
        g = torch.func.grad(loss)(list(W0), kt, vt)
        if m.max_grad_norm is not None:
            norm = torch.sqrt(sum((gi ** 2).sum((-1, -2)) for gi in g))  # [B, H]
            f = (m.max_grad_norm / norm).clamp(max=1.0)[..., None, None]
            g = [gi * f for gi in g]
        th = theta[:, t, :, None, None]
        if m.momentum:
            S = [eta[:, t, :, None, None] * s - th * gi for s, gi in zip(S, g)]
        else:
            S = [-th * gi for gi in g]
        keep = (1 - alpha[:, t, :, None, None]) if m.forgetting else 1.0
        W = [keep * w + s for w, s in zip(W, S)]
        if (t + 1) % C == 0:
            done_W, done_S = W, S
    y = torch.stack(ys, 2)                                         # [B, H, T, Dh]
    y = m.out_norm(y.transpose(1, 2)).reshape(B, T, H * Dh).to(x.dtype)
    y = m.o_proj(y * F.silu(x @ m.out_gate.weight.T))
    r = T % C
    final = dict(weights=tuple(done_W), momentum=tuple(done_S) if m.momentum else None,
                 pend_k=k[:, T - r:].transpose(1, 2), pend_v=v[:, T - r:].transpose(1, 2),
                 pend_g=z[:, T - r:].permute(0, 3, 1, 2), conv=conv)
    return y, final
