"""``memarch.kernels.neural_memory``: the package of the op ``neural_memory_update``, the
Titans neural memory's test-time update (Behrouz et al., 2501.00663) over complete chunks.

The equations, shapes and implementations are in ``neural_memory_update``'s own docstring.
The implementations live in ``naive.py`` (the token loop, the spec) and ``torch_chunk.py``
(the closed form per chunk) beside this file; ``memory_apply`` (a read M(x)) is re-exported
for callers that read the memory outside a chunk update.
"""

from __future__ import annotations

import torch

from .._common import check, check_bool, check_float, check_number, check_range, pick_impl
from .naive import neural_memory_naive, read_after_write_naive
from .torch_chunk import memory_apply, neural_memory_chunk, read_after_write

__all__ = ["memory_apply", "neural_memory_update", "read_after_write", "read_after_write_naive"]

OP = "neural_memory_update"


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_layers(name: str, ts, B: int, H: int, Dh: int, like=None) -> tuple:
    check(isinstance(ts, (tuple, list)) and len(ts) >= 1, OP,
          f"{name} must be a non-empty tuple of per-layer tensors [B, H, d_in, d_out], got "
          f"{type(ts).__name__}")
    for i, w in enumerate(ts):
        check(isinstance(w, torch.Tensor) and w.dim() == 4, OP,
              f"{name}[{i}] must be a 4-d tensor [B, H, d_in, d_out], got {_shape(w)}")
        check_float(OP, **{f"{name}[{i}]": w})
    if like is None:
        widths = [Dh] + [w.shape[3] for w in ts]
        for i, w in enumerate(ts):
            want = (B, H, widths[i], widths[i + 1] if i < len(ts) - 1 else Dh)
            check(tuple(w.shape) == want, OP,
                  f"{name}[{i}] must have shape [B, H, d_in, d_out] = {list(want)} (layer "
                  f"widths Dh -> ... -> Dh, Dh = {Dh}), got {list(w.shape)}")
    else:
        check(len(ts) == len(like), OP, f"{name} must have one tensor per layer of weights "
              f"({len(like)}), got {len(ts)}")
        for i, (w, ref) in enumerate(zip(ts, like)):
            check(w.shape == ref.shape, OP, f"{name}[{i}] must have the shape of weights[{i}] "
                  f"{list(ref.shape)}, got {list(w.shape)}")
    return tuple(ts)


def neural_memory_update(q, k, v, theta, log_eta=None, log_keep=None, *, weights,
                         momentum=None, residual_norm: bool = False,
                         max_grad_norm: float | None = None, impl: str = "auto"):
    """The Titans neural memory over n complete update chunks of C tokens: reads of each
    chunk's queries with the chunk's starting weights, then the chunk's writes.

    Per head, for the tokens t of chunk j (weights M_0 at the chunk's start):

        grad_t = d/dM || M(k_t) - v_t ||^2 at M_0      (every gradient at the chunk's start)
        grad_t *= min(1, max_grad_norm / ||grad_t||)     (optional; norm over all layers)
        S_t    = eta_t S_{t-1} - theta_t grad_t          (momentum, the "surprise")
        M_t    = (1 - alpha_t) M_{t-1} + S_t             (forgetting)
        y      = M_0(q)                                  (reads: no update)

    M(x) is an MLP per head: x @ W_1, SiLU, ..., @ W_L (depth 1: a linear matrix memory);
    ``residual_norm`` wraps it as x + RMSNorm(MLP(x)) (parameter-free RMS norm, eps 1e-6).

    The caller owns the chunking: it groups tokens in chunks of C and keeps the tokens of an
    incomplete chunk (and their reads, ``memory_apply`` with the returned weights) itself.
    Call it once for all complete chunks of a call, or once per chunk (n = 1): the results
    are the same. Queries are per chunk, any number M of them (the tokens whose reads use
    the chunk's starting weights; M = 0 or q = None for writes only).

    Args:
        q: [B, H, n, M, Dh] queries read with each chunk's starting weights, or None.
        k, v: [B, H, n, C, Dh] keys and values of the n complete chunks.
        theta: [B, H, n, C] step sizes theta_t >= 0 (a probability times max_lr in Titans).
        log_eta: [B, H, n, C] log eta_t <= 0 (log-space momentum gate: logsigmoid of the
            gate logit), or None: no momentum (S_t = -theta_t grad_t, no momentum state).
        log_keep: [B, H, n, C] log(1 - alpha_t) <= 0 (log-space forgetting gate:
            logsigmoid(-logit)), or None: no forgetting (alpha = 0).
        weights: per-layer tuple of the memory weights at the first chunk's start,
            [B, H, d_in, d_out] with widths Dh -> ... -> Dh.
        momentum: per-layer tuple of the momentum S (shapes of ``weights``); None gives zeros
            when ``log_eta`` is given; must be None when ``log_eta`` is None.
        residual_norm: M(x) = x + RMSNorm(MLP(x)).
        max_grad_norm: clip each token's gradient (all layers together) to this norm > 0,
            or None.
        impl: "naive" (token loop with autograd gradients, the spec), "torch" (closed form
            per chunk, explicit gradients). "auto" = $MEMARCH_KERNEL_IMPL if set to one of
            those, else "torch" (there is no Triton implementation: "auto" on CUDA and
            MEMARCH_KERNEL_IMPL=triton give "torch"; impl="triton" is refused).

    Returns:
        ``(reads, weights, momentum)``: reads [B, H, n, M, Dh] (None if q is None), the
        weights and momentum (per-layer tuples; momentum None without ``log_eta``) after the
        last chunk, in the compute dtype: fp32, fp64 for fp64 k. Autograd differentiates
        through everything (the second-order path through the update, as in the paper).

    The gates are range-checked (theta >= 0, logs <= 0) off CUDA only (no host sync).
    """
    for name, t in (("k", k), ("v", v)):
        check(isinstance(t, torch.Tensor) and t.dim() == 5, OP,
              f"{name} must be a 5-d tensor [B, H, n, C, Dh], got {_shape(t)}")
    check_float(OP, q=q, k=k, v=v, theta=theta, log_eta=log_eta, log_keep=log_keep)
    B, H, n, C, Dh = k.shape
    check(C >= 1 and Dh >= 1, OP, f"k must have C >= 1 and Dh >= 1, got {list(k.shape)}")
    check(v.shape == k.shape, OP, f"v must have k's shape {list(k.shape)}, got {list(v.shape)}")
    if q is not None:
        check(q.dim() == 5 and tuple(q.shape[:3]) == (B, H, n) and q.shape[4] == Dh, OP,
              f"q must have shape [B, H, n, M, Dh] with [B, H, n] = {[B, H, n]}, Dh = {Dh}, "
              f"got {list(q.shape)}")
    check(isinstance(theta, torch.Tensor), OP,
          f"theta must be a tensor [B, H, n, C], got {_shape(theta)}")
    for name, t in (("theta", theta), ("log_eta", log_eta), ("log_keep", log_keep)):
        if t is not None:
            check(tuple(t.shape) == (B, H, n, C), OP, f"{name} must have shape [B, H, n, C] "
                  f"= {[B, H, n, C]}, got {list(t.shape)}")
    check_range(OP, "theta", theta, 0.0, float("inf"), why="step sizes")
    for name, t in (("log_eta", log_eta), ("log_keep", log_keep)):
        if t is not None:
            check_range(OP, name, t, float("-inf"), 0.0, why="log of a gate in (0, 1]")
    ws = _check_layers("weights", weights, B, H, Dh)
    mom = None
    if momentum is not None:
        check(log_eta is not None, OP, "momentum must be None when log_eta is None (no "
              "momentum gate)")
        mom = _check_layers("momentum", momentum, B, H, Dh, like=ws)
    residual_norm = check_bool(OP, "residual_norm", residual_norm)
    max_grad_norm = check_number(OP, "max_grad_norm", max_grad_norm, minimum=0, min_open=True,
                                 none_ok=True)
    for name, t in (("q", q), ("v", v), ("theta", theta), ("log_eta", log_eta),
                    ("log_keep", log_keep), *((f"weights[{i}]", w) for i, w in enumerate(ws)),
                    *((f"momentum[{i}]", m) for i, m in enumerate(mom or ()))):
        check(t is None or t.device == k.device, OP, f"{name} must be on k's device {k.device}")
    requested = impl
    impl = pick_impl(OP, impl, k)
    if impl == "triton":
        check(requested != "triton", OP, "impl='triton' is not implemented for this op; use "
              "'torch' or 'naive'")
        impl = "torch"
    if impl == "naive":
        return neural_memory_naive(q, k, v, theta, log_eta, log_keep, ws, mom, residual_norm,
                                   max_grad_norm)
    ct = torch.float64 if k.dtype == torch.float64 else torch.float32

    def c(t):
        return None if t is None else t.to(ct)
    ws = tuple(w.to(ct) for w in ws)
    if log_eta is not None:
        mom = (tuple(m.to(ct) for m in mom) if mom is not None
               else tuple(torch.zeros_like(w) for w in ws))
    return neural_memory_chunk(c(q), k.to(ct), v.to(ct), theta.to(ct), c(log_eta),
                               c(log_keep), ws, mom, residual_norm, max_grad_norm)
