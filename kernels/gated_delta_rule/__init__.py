"""``memarch.kernels.gated_delta_rule``: the package of the op ``delta_rule``, the gated delta
rule with a recurrent state.

The equations, shapes, state and implementations are in ``delta_rule``'s own docstring
(``help(memarch.kernels.delta_rule)``). The implementations live in ``naive.py``,
``torch_chunk.py`` and ``triton_chunk.py`` beside this file.
"""

from __future__ import annotations

import warnings

import torch

from .._common import (
    MAX_SCALE,
    check,
    check_bool,
    check_float,
    check_number,
    check_qkv_g,
    check_range,
    check_triton,
    known_finite,
    pick_impl,
)
from .naive import delta_rule_naive
from .torch_chunk import chunk_delta_rule

__all__ = ["MAX_TRITON_DIM", "delta_rule"]

MAX_TRITON_DIM = 128
OP = "delta_rule"


def delta_rule(q, k, v, beta, *, g=None, scale=None, initial_state=None,
               output_final_state: bool = False, impl: str = "auto"):
    """The gated delta rule: a linear memory that overwrites what it stores under a key.

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T      S [K, V]
    o_t = (scale q_t)^T S_t

    (memarch's orientation: read q^T S, write k v^T; the paper's S_t = S_{t-1} alpha_t
    (I - beta_t k_t k_t^T) + beta_t v_t k_t^T is its transpose.) Equivalently: decay
    S' = exp(g_t) S_{t-1}, then move the value stored under k_t towards v_t by beta_t,
    S_t = S' + beta_t k_t (v_t - k_t^T S')^T.

    Stability: the write multiplies the state along k_t by 1 - beta_t ||k_t||^2, so the
    recurrence stays bounded iff beta_t ||k_t||^2 in [0, 2] for every token (non-expansive;
    in [0, 1] it interpolates towards v_t, at 2 it reflects). Outside, the state grows
    geometrically: beta = 5 or -1 with unit keys, or ||k|| = 10 with beta = 0.5, reach
    NaN / ~1e31 within a few hundred tokens. ``delta_rule`` refuses beta outside [0, 2];
    the key norm is the caller's: L2-normalise q and k (MoM's delta cell does, so its
    beta = sigmoid(.) in (0, 1) keeps beta_t ||k_t||^2 in [0, 2]).

    Args:
        q, k: [B, T, H, K]; same dtype as v.
        v: [B, T, H, V].
        beta: [B, T, H] write strength per token and head, in [0, 2] (usually
            sigmoid(.) in (0, 1)); see Stability.
        g: [B, T, H] log-space decay per token and head, must be <= 0; None = no decay
            (the plain delta rule).
        scale: multiplies q: a finite number > 0; default (None) K^-0.5.
        initial_state: S_0 [B, H, K, V] (a tensor; a ``LinearAttnState(S, None)`` is also
            taken); None = zeros.
        output_final_state: also return the state after the last token.
        impl: "naive" (token loop, the spec), "torch" (chunked WY/UT form, autograd
            backward), "triton" (chunked forward/backward kernels; a fused kernel for
            one-token decode without grad; K, V <= MAX_TRITON_DIM). "auto" = $MEMARCH_KERNEL_IMPL
            if set, else triton on CUDA (torch for heads wider than MAX_TRITON_DIM), torch
            elsewhere.

    Returns:
        ``(o, S)``: o [B, T, H, V] in v's dtype; S [B, H, K, V] fp32 (fp64 for fp64 inputs
        on the naive/torch paths), or None unless ``output_final_state``. Feeding S back as
        ``initial_state`` continues the sequence exactly (chunked streaming).

    Errors and non-finite input: ``g > 0`` and a finite beta outside [0, 2] raise
    ValueError when they are not on a CUDA device (on CUDA they are not checked: a host sync
    per call); so does a ``scale`` that is not a finite number > 0. A token t whose k, v, beta
    or g holds a non-finite value changes no output before t, and every output from t on (and
    the final state) is NaN: each later output reads the state that token wrote. Every
    implementation does this the same way: such tokens are replaced by a no-op write
    (k = v = beta = g = 0) and the outputs that follow them are set to NaN. A non-finite q_t
    only affects o_t.

    Example (CPU, tiny sizes)::

        B, T, H, K, V = 1, 8, 2, 4, 4
        q, k = (F.normalize(torch.randn(B, T, H, K), dim=-1) for _ in range(2))
        v = torch.randn(B, T, H, V)
        beta = torch.rand(B, T, H)
        g = F.logsigmoid(torch.randn(B, T, H))
        o, S = delta_rule(q, k, v, beta, g=g, output_final_state=True)
        o2, _ = delta_rule(q, k, v, beta, g=g, initial_state=S)   # continues
    """
    B, T, H, K, V = check_qkv_g(OP, q, k, v, g, beta=beta)
    check_range(OP, "beta", beta, 0.0, 2.0, why="the write is stable iff beta_t "
                "||k_t||^2 in [0, 2]; outside, the state grows without bound")
    check_bool(OP, "output_final_state", output_final_state)
    S0 = _unpack_state(initial_state, B, H, K, V)
    scale = K ** -0.5 if scale is None else check_number(
        OP, "scale", scale, minimum=0, min_open=True, maximum=MAX_SCALE,
        expected="a number > 0 or None (None: K^-0.5), at most 1e6 (larger ones overflow fp32)")
    asked = impl
    impl = pick_impl(OP, impl, q)
    if impl == "triton" and T == 0:       # nothing to launch: what the torch path returns
        impl = "torch"
    if impl == "triton" and asked == "auto" and max(K, V) > MAX_TRITON_DIM:
        warnings.warn(f"{OP}: K={K}, V={V} exceed the Triton kernels' {MAX_TRITON_DIM}; "
                      "impl='auto' runs the chunked torch path (slower on a GPU)", stacklevel=2)
        impl = "torch"
    if impl == "triton":
        check_triton(OP, q)
        check(K <= MAX_TRITON_DIM and V <= MAX_TRITON_DIM, OP,
              f"impl='triton' supports K, V <= {MAX_TRITON_DIM}, got K={K}, V={V}")

    # non-finite k/v/beta/g at token t: a no-op write there, NaN outputs from t on (doc above)
    # (known finite after one reduction each, off CUDA: the usual case skips the selects)
    poison = not known_finite(k, v, beta, g)
    if poison:
        bad = ~(k.isfinite().all(-1) & v.isfinite().all(-1) & beta.isfinite())  # [B, T, H]
        if g is not None:
            bad = bad | ~g.isfinite()
        poison = q.is_cuda or bool(bad.any())         # no host sync on CUDA: always select
    if poison:
        k = torch.where(bad[..., None], 0.0, k)
        v = torch.where(bad[..., None], 0.0, v)
        beta = torch.where(bad, 0.0, beta)
        g = None if g is None else torch.where(bad, 0.0, g)

    if impl == "naive":
        o, S = delta_rule_naive(q, k, v, beta, g, scale, S0)
    elif impl == "torch":
        o, S = chunk_delta_rule(q, k, v, beta, g, scale, S0)
    else:
        from .triton_chunk import (
            delta_rule_triton,  # lazy: importing memarch.kernels stays triton-free
        )
        o, S = delta_rule_triton(q, k, v, beta, g, scale, S0)
    if poison:
        seen = bad.cumsum(1) > 0                                        # [B, T, H]
        o = torch.where(seen[..., None], float("nan"), o)
        if T > 0:
            S = torch.where(seen[:, -1, :, None, None], float("nan"), S)
    return o, (S if output_final_state else None)


def _unpack_state(initial_state, B: int, H: int, K: int, V: int):
    if initial_state is None:
        return None
    S0 = initial_state
    if isinstance(initial_state, (tuple, list)):     # LinearAttnState(S, None) / (S, None)
        check(len(initial_state) == 2 and initial_state[1] is None, OP,
              "initial_state must be a tensor S [B, H, K, V] (or a LinearAttnState(S, None))")
        S0 = initial_state[0]
    check(isinstance(S0, torch.Tensor) and tuple(S0.shape) == (B, H, K, V), OP,
          f"initial_state must have shape [B, H, K, V] = {[B, H, K, V]}, got "
          f"{list(S0.shape) if isinstance(S0, torch.Tensor) else type(S0).__name__}")
    check_float(OP, initial_state=S0)
    return S0
