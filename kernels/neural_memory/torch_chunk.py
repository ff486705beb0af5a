"""The Titans memory update in closed form per chunk (PyTorch; the CPU path, autograd gives
the backward, the second-order path through the update included).

Per head, for the tokens u = 1..C of a chunk with starting weights M_0 and momentum S_0,
every gradient taken at M_0 (the paper's parallel training, section 3.2): for a linear
layer of the memory the per-token gradient is an outer product x_u^T delta_u (its input
times its back-propagated error), so with A_t = prod_{s<=t} (1 - alpha_s) and
E_t = prod_{s<=t} eta_s (inside the chunk) the recurrences

    S_t = eta_t S_{t-1} - theta_t grad_t,    M_t = (1 - alpha_t) M_{t-1} + S_t

close to

    S_C = E_C S_0 - X^T diag(theta_u E_C / E_u) Delta
    M_C = A_C M_0 + (sum_t (A_C / A_t) E_t) S_0 - X^T diag(c) Delta,
          c_u = theta_u sum_{t >= u} (A_C / A_t) (E_t / E_u)

computed from log-space segment sums (no division, no cumulative product underflow): a few
matmuls per chunk, never per-token weight copies. The per-layer gradients are explicit
(closed-form back-propagation through the MLP, its SiLU and the optional norm).
Shapes as in ``neural_memory_update`` (``help(memarch.kernels.neural_memory)``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6          # the parameter-free RMS norm of residual_norm


def _rms(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Parameter-free RMS norm: (u / r, r) with r = sqrt(mean(u^2) + eps)."""
    r = torch.sqrt(u.pow(2).mean(-1, keepdim=True) + NORM_EPS)
    return u / r, r


def _silu_grad(z: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def memory_apply(ws, x: torch.Tensor, residual_norm: bool) -> torch.Tensor:
    """M(x) for weights ``ws`` (per layer [B, H, d_in, d_out]) and x [B, H, N, d]: the MLP
    with SiLU between layers, wrapped as x + RMSNorm(MLP(x)) when ``residual_norm``."""
    h = x
    for i, w in enumerate(ws):
        h = h @ w
        if i < len(ws) - 1:
            h = F.silu(h)
    return x + _rms(h)[0] if residual_norm else h


def memory_grads(ws, k: torch.Tensor, v: torch.Tensor, residual_norm: bool,
                 q: torch.Tensor | None = None):
    """Per-token gradients of ||M(k_t) - v_t||^2 w.r.t. every layer, in factored form:
    the gradient of layer i for token t is ``xs[i][..., t, :]^T deltas[i][..., t, :]``.
    k, v: [B, H, N, d]; q [B, H, M, d] (optional) rides along the forward pass, giving the
    reads M(q) from the same weights. Returns (xs, deltas, reads), xs/deltas lists of
    [B, H, N, d_in_i] / [B, H, N, d_out_i], reads [B, H, M, d] or None."""
    L, N = len(ws), k.shape[2]
    x0 = k if q is None else torch.cat([k, q], 2)                 # one pass for both
    xs, zs, h = [k], [], x0
    for i, w in enumerate(ws):
        z = h @ w
        zs.append(z[:, :, :N])
        if i < L - 1:
            h = F.silu(z)
            xs.append(h[:, :, :N])
        else:
            h = z
    reads = None
    if q is not None:
        hq = h[:, :, N:]
        reads = q + _rms(hq)[0] if residual_norm else hq
    h = h[:, :, :N]
    if residual_norm:
        n, r = _rms(h)
        g = 2 * (k + n - v)                                     # d loss / d pred
        d = (g - n * (g * n).mean(-1, keepdim=True)) / r        # through the RMS norm
    else:
        d = 2 * (h - v)
    deltas = [None] * L
    for i in reversed(range(L)):
        deltas[i] = d
        if i:
            d = (d @ ws[i].transpose(-1, -2)) * _silu_grad(zs[i - 1])
    return xs, deltas, reads


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x [..., C] -> [..., C, C] with out[t, u] = sum_{u < s <= t} x_s for t >= u, else -inf.
    Built by masking then cumsum (no subtraction, so no inf - inf)."""
    C = x.shape[-1]
    xx = x[..., :, None].expand(*x.shape, C)                    # [..., s, u] = x_s
    strict = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(-1)
    ss = torch.where(strict, xx, 0).cumsum(-2)                  # sum over u < s <= t
    return torch.where(strict | torch.eye(C, dtype=torch.bool, device=x.device), ss,
                       float("-inf"))


def _suffix(x: torch.Tensor) -> torch.Tensor:
    """x [..., C] -> [..., C]: out[t] = sum_{s > t} x_s."""
    rev = x.flip(-1).cumsum(-1).flip(-1)
    return torch.cat([rev[..., 1:], torch.zeros_like(x[..., :1])], -1)


class Coefs(NamedTuple):
    """The closed-form coefficients of the update (see the module docstring), for n
    complete chunks (shapes below) or, split along dim 2, for one chunk."""
    c: torch.Tensor       # [B, H, n, C] weight of each token's gradient in M_C
    d: torch.Tensor       # [B, H, n, C] weight of each token's gradient in S_C (or None)
    a_end: torch.Tensor   # [B, H, n] A_C
    b: torch.Tensor       # [B, H, n] sum_t (A_C / A_t) E_t (or None)
    e_end: torch.Tensor   # [B, H, n] E_C (or None)


def coefs(theta: torch.Tensor, log_eta: torch.Tensor | None,
          log_keep: torch.Tensor | None) -> Coefs:
    """theta, log_eta, log_keep [B, H, n, C] (step size, log eta, log(1 - alpha); the logs
    None when off) of n complete chunks -> update coefficients."""
    la = torch.zeros_like(theta) if log_keep is None else log_keep        # log(1 - alpha)
    LA = _suffix(la)                                                   # log A_C / A_t
    a_end = la.sum(-1).exp()
    if log_eta is None:
        return Coefs(theta * LA.exp(), None, a_end, None, None)
    le = log_eta
    seg = _segsum(le)                                                  # [.., t, u]
    c = theta * torch.exp(LA[..., :, None] + seg).sum(-2)
    b = torch.exp(LA + le.cumsum(-1)).sum(-1)
    return Coefs(c, theta * _suffix(le).exp(), a_end, b, le.sum(-1).exp())


def update(ws, mom, k, v, cf: Coefs, residual_norm: bool, max_grad_norm: float | None,
           q=None):
    """Weights and momentum after one complete chunk (keys/values k, v [B, H, C, Dh], its
    coefficients ``cf``: c, d [B, H, C], a_end, b, e_end [B, H]), and the reads of
    q [B, H, M, Dh] (or None) with the chunk's starting weights."""
    xs, deltas, reads = memory_grads(ws, k, v, residual_norm, q)
    c, d = cf.c, cf.d
    if max_grad_norm is not None:           # per-token gradient norm, all layers
        sq = sum(x.pow(2).sum(-1) * e.pow(2).sum(-1) for x, e in zip(xs, deltas))
        f = (max_grad_norm / sq.sqrt().clamp_min(1e-30)).clamp(max=1.0)
        c = c * f
        d = None if d is None else d * f
    a = cf.a_end[:, :, None, None]
    new_w, new_m = [], []
    for i, (w, x, e) in enumerate(zip(ws, xs, deltas)):
        gw = x.transpose(-1, -2) @ (e * c[..., None])                  # [B, H, din, dout]
        if mom is None:
            new_w.append(a * w - gw)
        else:
            new_w.append(a * w + cf.b[:, :, None, None] * mom[i] - gw)
            new_m.append(cf.e_end[:, :, None, None] * mom[i]
                         - x.transpose(-1, -2) @ (e * d[..., None]))
    return tuple(new_w), (None if mom is None else tuple(new_m)), reads


def neural_memory_chunk(q, k, v, theta, log_eta, log_keep, ws, mom, residual_norm: bool,
                        max_grad_norm: float | None):
    """n complete chunks: q [B, H, n, M, Dh] | None, k, v [B, H, n, C, Dh], theta, log_eta,
    log_keep [B, H, n, C] (logs None when off), ws / mom tuples per layer [B, H, d_in, d_out]
    (mom None without momentum), all in the compute dtype. Returns (reads [B, H, n, M, Dh]
    | None, weights, momentum)."""
    n = k.shape[2]
    # Split once (unbind has one cheap backward; slicing inside the loop would make each
    # chunk's backward fill a full-size zero gradient: O(T^2 / C) work).
    cfs = [Coefs(*parts) for parts in zip(*[
        [None] * n if t is None else t.unbind(2) for t in coefs(theta, log_eta, log_keep)])]
    ks, vs = k.unbind(2), v.unbind(2)
    qs = [None] * n if q is None else q.unbind(2)
    reads = []
    for j in range(n):
        ws, mom, r = update(ws, mom, ks[j], vs[j], cfs[j], residual_norm, max_grad_norm, qs[j])
        reads.append(r)
    y = None if q is None else torch.stack(reads, 2) if reads else q.new_zeros(q.shape)
    return y, ws, mom


def read_after_write(q, k, v, theta, log_eta, log_keep, ws, mom, residual_norm: bool,
                     max_grad_norm: float | None):
    """Reads after each token's own write, for ONE chunk (complete or not) of a linear
    (depth-1) memory: token t reads M_t(q_t), M_t the weights after tokens 1..t of the chunk
    (gradients at the chunk's starting weights M_0, as the update), i.e. the paper's
    M*_t(y_t) made causal per token. With A, E, c as in the module docstring, inside the
    chunk (t, u, s <= L):

        q_t M_t = A_t q_t M_0 + b_t q_t S_0 - sum_{u <= t} c_{t,u} (q_t . k_u) delta_u
        b_t     = sum_{s <= t} (A_t / A_s) E_s,
        c_{t,u} = theta_u sum_{u <= s <= t} (A_t / A_s)(E_s / E_u)   (momentum; without it
                  c_{t,u} = theta_u A_t / A_u and b = 0)

    (a causal [L, L] attention-like form; at t = L it is the update's M_C). q [B, H, L', Dh]
    the queries of the chunk's last L' tokens, k, v [B, H, L, Dh], theta, log_eta, log_keep
    [B, H, L] (logs None when off), ws (one layer [B, H, Dh, Dh]), mom (or None). Returns the
    reads [B, H, L', Dh]."""
    if len(ws) != 1:
        raise ValueError("read_after_write: a linear memory (depth 1) only, got "
                         f"{len(ws)} layers")
    L, Lq = k.shape[2], q.shape[2]
    # the NaN rule: a non-finite token poisons its own and later reads, never earlier ones
    # (0 * nan in the causal matmuls would): compute on zeroed tokens, then mark
    bad = ~(k.isfinite().all(-1) & v.isfinite().all(-1) & theta.isfinite())   # [B, H, L]
    for t in (log_eta, log_keep):
        if t is not None:
            bad = bad | ~t.isfinite()
    if bool(bad.any()):
        z = lambda t: None if t is None else torch.where(bad if t.dim() == 3 else bad[..., None],
                                                         0.0, t)
        y = read_after_write(q, z(k), z(v), z(theta), z(log_eta), z(log_keep), ws, mom,
                             residual_norm, max_grad_norm)
        seen = bad.cummax(-1).values[..., L - Lq:, None]                    # [B, H, L', 1]
        return torch.where(seen, float("nan"), y)
    xs, deltas, _ = memory_grads(ws, k, v, residual_norm)
    x, dlt = xs[0], deltas[0]                                          # [B, H, L, Dh]
    la = torch.zeros_like(theta) if log_keep is None else log_keep
    segA = _segsum(la)                                                 # [B, H, t, s]
    if log_eta is None:
        c = theta[..., None, :] * segA.exp()                           # [B, H, t, u]
        b = None
    else:
        segE = _segsum(log_eta)                                        # [B, H, s, u]
        # both factors are products of gates in (0, 1]: exp of sums <= 0, no overflow
        c = theta[..., None, :] * (segA.exp() @ segE.exp())            # [B, H, t, u]
        b = torch.exp(segA + log_eta.cumsum(-1)[..., None, :]).sum(-1)  # [B, H, t]
    if max_grad_norm is not None:                       # per-token gradient norm, as update
        f = (max_grad_norm / (x.pow(2).sum(-1) * dlt.pow(2).sum(-1)).sqrt()
             .clamp_min(1e-30)).clamp(max=1.0)
        c = c * f[..., None, :]
    c, a = c[..., L - Lq:, :], la.cumsum(-1).exp()[..., L - Lq:, None]  # the queried tokens
    pre = a * (q @ ws[0]) - (c * (q @ x.transpose(-1, -2))) @ dlt       # [B, H, L', Dh]
    if b is not None and mom is not None:
        pre = pre + b[..., L - Lq:, None] * (q @ mom[0])
    return q + _rms(pre)[0] if residual_norm else pre
