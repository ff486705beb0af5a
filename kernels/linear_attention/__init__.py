"""``memarch.kernels.linear_attention``: the package of the op ``linear_attn``, (gated,
optionally normalised) linear attention with a recurrent state.

The equations, shapes, state and implementations are in ``linear_attn``'s own docstring
(``help(memarch.kernels.linear_attn)``). The implementations live in ``naive.py``,
``torch_chunk.py`` and ``triton_chunk.py`` beside this file.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._common import (
    MAX_SCALE,
    check,
    check_bool,
    check_float,
    check_number,
    check_qkv_g,
    check_triton,
    pick_impl,
)
from .naive import linear_attn_naive
from .torch_chunk import chunk_linear_attn

__all__ = ["MAX_TRITON_DIM", "LinearAttnState", "linear_attn"]

MAX_TRITON_DIM = 256
OP = "linear_attn"


class LinearAttnState(NamedTuple):
    S: torch.Tensor                    # [B, H, K, V] fp32
    z: torch.Tensor | None = None   # [B, H, K] fp32, only when normalize


def _unpack_state(initial_state, normalize: bool, B: int, H: int, K: int, V: int):
    if initial_state is None:
        return None, None
    if isinstance(initial_state, torch.Tensor):
        S0, z0 = initial_state, None
    else:
        check(isinstance(initial_state, (tuple, list)) and len(initial_state) == 2, OP,
              "initial_state must be a LinearAttnState, a tuple (S, z) or a tensor S")
        S0, z0 = initial_state
    check(isinstance(S0, torch.Tensor) and tuple(S0.shape) == (B, H, K, V), OP,
          f"initial_state.S must have shape [B, H, K, V] = {[B, H, K, V]}, got "
          f"{list(S0.shape) if isinstance(S0, torch.Tensor) else type(S0).__name__}")
    check_float(OP, **{"initial_state.S": S0})
    if normalize:
        check(z0 is not None, OP, "initial_state.z [B, H, K] is required when normalize=True")
        check(isinstance(z0, torch.Tensor) and tuple(z0.shape) == (B, H, K), OP,
              f"initial_state.z must have shape [B, H, K] = {[B, H, K]}, got "
              f"{list(z0.shape) if isinstance(z0, torch.Tensor) else type(z0).__name__}")
        check_float(OP, **{"initial_state.z": z0})
    else:
        check(z0 is None, OP, "initial_state.z must be None when normalize=False")
    return S0, z0


def linear_attn(q, k, v, *, g=None, scale=None, normalize: bool = False, eps: float = 1e-6,
                initial_state=None, output_final_state: bool = False, impl: str = "auto"):
    """(Gated, optionally normalised) linear attention with a recurrent state.

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,   z_t = exp(g_t) z_{t-1} + k_t
    o_t = (scale q_t) S_t  [ / ((scale q_t) . z_t + eps)  when normalize ]

    Args:
        q, k: [B, T, H, K], already feature-mapped (e.g. elu+1, Taylor); same dtype as v.
        v: [B, T, H, V].
        g: [B, T, H] log-space decay per token and head, must be <= 0; None = no decay.
        scale: multiplies q; default K^-0.5.
        normalize: divide by (scale q_t) . z_t + eps (and carry z in the state).
        eps: added to that denominator (default 1e-6); with non-negative feature maps the
            denominator is >= 0 and eps only guards the all-zero case.
        initial_state: S_0 (and z_0), as a LinearAttnState, a tuple (S, z), or a bare S
            tensor when not normalising; None = zeros.
        output_final_state: also return the state after the last token.
        impl: "naive" (token loop, the spec), "torch" (chunked matmul, autograd backward),
            "triton" (chunked forward/backward kernels; a fused kernel for one-token decode
            without grad; K, V <= 256). "auto" = $MEMARCH_KERNEL_IMPL if set, else triton on
            CUDA, torch elsewhere.

    Returns:
        ``(o, state)``: o [B, T, H, V] in v's dtype; state ``LinearAttnState(S, z)`` with
        S [B, H, K, V] and z [B, H, K] (None unless ``normalize``), fp32 (fp64 for fp64
        inputs on the naive/torch paths), or None unless ``output_final_state``. Feeding the
        state back as ``initial_state`` continues the sequence exactly (chunked streaming).

    Errors and non-finite input: ``g > 0`` (exp(g) > 1 grows the state until it overflows)
    raises ValueError when g is not on a CUDA device; on CUDA it is not checked, because the
    check would cost a host sync per call (a positive gate then overflows to inf/NaN). A NaN
    gate is not rejected: like any non-finite q, k, v or g at token t, it changes no output
    before t and makes the outputs from t on (and the final state) non-finite; every
    implementation keeps this causality (docs/design.md#the-nan-rule).

    Example (CPU, tiny sizes)::

        B, T, H, K, V = 1, 8, 2, 4, 4
        q, k = torch.rand(B, T, H, K), torch.rand(B, T, H, K)   # non-negative features
        v = torch.randn(B, T, H, V)
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H))  # decay, <= 0
        o, st = linear_attn(q, k, v, g=g, normalize=True, output_final_state=True)
        o2, _ = linear_attn(q, k, v, g=g, normalize=True, initial_state=st)  # continues
    """
    B, T, H, K, V = check_qkv_g(OP, q, k, v, g)
    normalize = check_bool(OP, "normalize", normalize)
    check_bool(OP, "output_final_state", output_final_state)
    eps = check_number(OP, "eps", eps, minimum=0)
    S0, z0 = _unpack_state(initial_state, normalize, B, H, K, V)
    scale = K ** -0.5 if scale is None else check_number(
        OP, "scale", scale, minimum=0, min_open=True, maximum=MAX_SCALE,
        expected="a number > 0 or None (None: K^-0.5), at most 1e6 (larger ones overflow fp32)")
    impl = pick_impl(OP, impl, q)

    if impl == "triton" and T == 0:       # nothing to launch: what the torch path returns
        impl = "torch"
    if impl == "naive":
        o, S, z = linear_attn_naive(q, k, v, g, scale, normalize, eps, S0, z0)
    elif impl == "torch":
        o, S, z = _torch_path(q, k, v, g, scale, normalize, eps, S0, z0)
    else:
        check_triton(OP, q)
        check(K <= MAX_TRITON_DIM and V <= MAX_TRITON_DIM, OP,
              f"impl='triton' supports K, V <= {MAX_TRITON_DIM}, got K={K}, V={V}")
        from .triton_chunk import (
            linear_attn_triton,  # lazy: importing memarch.kernels stays triton-free
        )
        o, S, z = linear_attn_triton(q, k, v, g, scale, normalize, eps, S0, z0)
    return o, (LinearAttnState(S, z) if output_final_state else None)


def _torch_path(q, k, v, g, scale, normalize, eps, S0, z0):
    if q.shape[1] == 1:                                  # decode: the recurrence, one step
        return _step(q, k, v, g, scale, normalize, eps, S0, z0)
    if normalize:  # z is the state of a column of ones appended to v
        v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1)
        if S0 is not None:
            S0 = torch.cat([S0, z0[..., None].to(S0.dtype)], -1)
    o, S = chunk_linear_attn(q, k, v, g, scale, S0)
    z = None
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + eps)
        S, z = S[..., :-1], S[..., -1]
    return o.to(v.dtype), S, z


def _step(q, k, v, g, scale, normalize, eps, S0, z0):
    """One token of the recurrence (the decode step; no chunk machinery, a few ops):
    S = exp(g) S0 + k v^T, z = exp(g) z0 + k, o = (scale q) S [/ ((scale q) . z + eps)]."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs, k1, v1 = (q[:, 0].to(ct) * scale), k[:, 0].to(ct), v[:, 0].to(ct)   # [B, H, *]
    S = k1[..., :, None] * v1[..., None, :]                             # [B, H, K, V]
    z = k1 if normalize else None
    if S0 is None and g is not None:     # zeros, so that g stays in the graph (zero grad)
        S0 = S.new_zeros(S.shape)
        z0 = k1.new_zeros(k1.shape) if normalize else None
    if S0 is not None:
        decay = None if g is None else g[:, 0].to(ct).exp()[..., None]  # [B, H, 1]
        Sp = S0.to(ct) if decay is None else S0.to(ct) * decay[..., None]
        S = Sp + S
        if normalize:
            z = (z0.to(ct) if decay is None else z0.to(ct) * decay) + k1
    o = (qs[..., None, :] @ S)[..., 0, :]                                # [B, H, V]
    if normalize:
        o = o / ((qs * z).sum(-1, keepdim=True) + eps)
    return o[:, None].to(v.dtype), S, z
