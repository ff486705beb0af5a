"""The Titans memory update, the executable spec: the paper's recurrences token by token, in
fp32 (fp64 for fp64 inputs), slow on purpose.

Per batch row and head, for chunk j with starting weights M_0 (the weights after chunk
j - 1) and each token t of the chunk, in order:

    grad_t = d/dM || M(k_t) - v_t ||^2  at M = M_0       (torch.autograd.grad, per token)
    grad_t = grad_t * min(1, max_grad_norm / ||grad_t||)  (optional; the norm over all layers)
    S_t    = eta_t S_{t-1} - theta_t grad_t               (eta = exp(log_eta); 0 when None)
    M_t    = (1 - alpha_t) M_{t-1} + S_t                  (1 - alpha = exp(log_keep); 1 when None)

and the chunk's queries read y = M_0(q). M(x) is the MLP of ``weights`` (SiLU between
layers), wrapped as x + RMSNorm(MLP(x)) when ``residual_norm``. The gradients are built
with ``create_graph`` when grad mode is on, so autograd differentiates through the whole
update (second order) like the closed form. Shapes as in ``neural_memory_update``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6


def _apply(ws, x: torch.Tensor, residual_norm: bool) -> torch.Tensor:
    h = x
    for i, w in enumerate(ws):
        h = h @ w
        if i < len(ws) - 1:
            h = F.silu(h)
    if residual_norm:
        h = x + h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + NORM_EPS)
    return h


def neural_memory_naive(q, k, v, theta, log_eta, log_keep, ws, mom, residual_norm: bool,
                        max_grad_norm: float | None):
    """Token loop. q [B, H, n, M, Dh] | None, k, v [B, H, n, C, Dh], theta, log_eta, log_keep
    [B, H, n, C] | None, ws / mom per layer [B, H, d_in, d_out]. Returns (reads [B, H, n, M,
    Dh] | None, weights, momentum | None), fp32 (fp64 for fp64 inputs)."""
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32
    graph = torch.is_grad_enabled()
    B, H, n, C, _ = k.shape
    k, v, theta = k.to(ct), v.to(ct), theta.to(ct)
    M = [w.to(ct) for w in ws]
    S = None
    if log_eta is not None:
        S = [m.to(ct) for m in mom] if mom is not None else [torch.zeros_like(w) for w in M]
    reads = []
    with torch.enable_grad():
        for j in range(n):
            M0 = [w if w.requires_grad else w.detach().requires_grad_() for w in M]
            if q is not None:
                reads.append(_apply(M0, q[:, :, j].to(ct), residual_norm))
            for t in range(C):
                kt, vt = k[:, :, j, t:t + 1], v[:, :, j, t:t + 1]             # [B, H, 1, Dh]
                loss = (_apply(M0, kt, residual_norm) - vt).pow(2).sum()
                grads = torch.autograd.grad(loss, M0, create_graph=graph)
                if max_grad_norm is not None:
                    norm = sum(g.pow(2).sum((-1, -2)) for g in grads).sqrt()    # [B, H]
                    f = (max_grad_norm / norm.clamp_min(1e-30)).clamp(max=1.0)
                    grads = [g * f[..., None, None] for g in grads]
                th = theta[:, :, j, t, None, None]
                if S is None:
                    S_t = [-th * g for g in grads]
                else:
                    eta = log_eta[:, :, j, t, None, None].to(ct).exp()
                    S = S_t = [eta * s - th * g for s, g in zip(S, grads)]
                keep = (1.0 if log_keep is None
                        else log_keep[:, :, j, t, None, None].to(ct).exp())
                M = [keep * m + s for m, s in zip(M, S_t)]
    if not graph:
        M = [m.detach() for m in M]
        S = None if S is None else [s.detach() for s in S]
        reads = [r.detach() for r in reads]
    y = None
    if q is not None:
        y = torch.stack(reads, 2) if reads else q.new_zeros(q.shape, dtype=ct)
    return y, tuple(M), (None if S is None else tuple(S))


def read_after_write_naive(q, k, v, theta, log_eta, log_keep, ws, mom, residual_norm: bool,
                           max_grad_norm: float | None):
    """The spec of ``torch_chunk.read_after_write``: one chunk token by token; token t reads
    with M_t, the weights after its own write (every gradient at the chunk's starting
    weights). Shapes as there; any depth."""
    L, Lq = k.shape[2], q.shape[2]
    reads = []
    for t in range(L - Lq, L):        # the first t + 1 tokens as one chunk: M_t
        one = lambda z: None if z is None else z[:, :, None, :t + 1]
        _, M, _ = neural_memory_naive(None, one(k), one(v), one(theta), one(log_eta),
                                      one(log_keep), ws, mom, residual_norm, max_grad_norm)
        reads.append(_apply(M, q[:, :, t - (L - Lq)][:, :, None], residual_norm))
    return torch.cat(reads, 2)
