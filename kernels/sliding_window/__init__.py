"""``sliding_window_attn``: causal banded softmax attention with optional attention sinks.

The semantics (visibility rule, sinks, positions, shapes, implementations, non-finite
input) are in ``sliding_window_attn``'s own docstring (``help(memarch.kernels.
sliding_window_attn)`` shows it: the function shadows this module's name in
``memarch.kernels``). The implementations live in ``naive.py``, ``torch_chunk.py`` and
``triton_swa.py`` beside this file.
"""

from __future__ import annotations

import torch

from .._common import (
    MAX_SCALE,
    check,
    check_float,
    check_int,
    check_number,
    check_triton,
    pick_impl,
)
from .naive import sliding_window_naive
from .torch_chunk import sliding_window_torch

__all__ = ["MAX_TRITON_DIM", "sliding_window_attn"]

MAX_TRITON_DIM = 256
OP = "sliding_window_attn"


def sliding_window_attn(q, k, v, *, window: int, q_offset: int = 0, sink_k=None, sink_v=None,
                        sink_q=None, scale=None, impl: str = "auto"):
    """Causal banded (sliding-window) softmax attention with optional attention sinks.

    Key j is visible to query i iff i - W < j <= i (W = ``window``); sink keys are scored in
    the same softmax only where they lie outside the band:

        o_i = sum_{j in band(i)} p_ij v_j + sum_{s < S, s <= i - W} p_is sink_v_s,
        p = softmax over those keys of scale * q_i . k_j  (sinks: scale * sink_q_i . sink_k_s)

    Positions are absolute: queries are q_offset .. q_offset+Tq-1; keys/values are the Tk
    most recent positions ending at the last query (bottom-right aligned, so chunked prefill
    over a cached window works: pass the cached W-1 keys followed by the new ones). Sink
    keys/values are absolute positions 0..S-1.

    Args:
        q: [B, Tq, H, D].
        k, v: [B, Tk, Hkv, D] with Tq <= Tk <= q_offset + Tq and H % Hkv == 0 (GQA).
        window: W >= 1.
        q_offset: absolute position of q's first token (default 0).
        sink_k, sink_v: [B, S, Hkv, D] or None (given together).
        sink_q: [B, Tq, H, D], the queries that score the sinks; default q.
        scale: default D^-0.5.
        impl: "naive" (masked, fp32), "torch" (query blocks of fused SDPA, memory O(T W)), "triton"
            (flash-style forward and backward, D <= 256). "auto" = $MEMARCH_KERNEL_IMPL if
            set, else triton on CUDA, torch elsewhere.

    Returns:
        o [B, Tq, H, D] in q's dtype. The op is stateless: the caller keeps the last W-1
        keys/values (and the sinks) as its cache.

    Non-finite input: every implementation keeps causality for any input
    (docs/design.md#the-nan-rule). A NaN/inf in q, k, v or the sinks changes no output that
    does not see it (in particular none before its position), and every output that sees it
    (a visible key with a non-finite score or value row) is NaN, not finite-but-wrong. Forward
    only: gradients make no such promise.

    Example (CPU, tiny sizes)::

        B, T, H, D, S = 1, 16, 2, 8, 2
        q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
        sk, sv = torch.randn(B, S, H, D), torch.randn(B, S, H, D)
        o = sliding_window_attn(q, k, v, window=4, sink_k=sk, sink_v=sv)   # [B, T, H, D]
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(isinstance(t, torch.Tensor) and t.dim() == 4, OP,
              f"{name} must be a 4-d tensor [B, T, H, D], got "
              f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    check_float(OP, q=q, k=k, v=v, sink_k=sink_k, sink_v=sink_v, sink_q=sink_q)
    check(isinstance(window, int) and not isinstance(window, bool) and window >= 1, OP,
          f"window must be an int >= 1, got {window!r}")
    check_int(OP, "q_offset", q_offset, minimum=0)
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    check(tuple(k.shape) == (B, Tk, Hkv, D), OP, f"k must have shape [B, Tk, Hkv, D] with B={B}, "
          f"D={D} (from q's shape {list(q.shape)}), got {list(k.shape)}")
    check(tuple(v.shape) == tuple(k.shape), OP, f"v must have k's shape {list(k.shape)}, got "
          f"{list(v.shape)}")
    check(Hkv >= 1 and H % Hkv == 0, OP, f"q heads ({H}) must be a multiple of k/v heads ({Hkv})")
    check(Tq >= 1, OP, f"q must have at least one token (Tq >= 1), got shape {list(q.shape)}")
    check(Tq <= Tk <= q_offset + Tq, OP, f"need Tq <= Tk <= q_offset + Tq (keys end at the last "
          f"query and start at position >= 0), got q's Tq={Tq}, k's Tk={Tk}, "
          f"q_offset={q_offset}")
    check((sink_k is None) == (sink_v is None), OP, "sink_k and sink_v must be given together")
    check(sink_q is None or sink_k is not None, OP, "sink_q given without sink_k / sink_v")
    given = {n: t.dtype for n, t in (("q", q), ("k", k), ("v", v), ("sink_k", sink_k),
                                      ("sink_v", sink_v), ("sink_q", sink_q)) if t is not None}
    check(len(set(given.values())) == 1, OP, "all inputs must share a dtype, got "
          + ", ".join(f"{n}: {d}" for n, d in given.items()))
    if sink_k is not None:
        S = sink_k.shape[1] if sink_k.dim() == 4 else -1
        check(sink_k.dim() == 4 and tuple(sink_k.shape) == (B, S, Hkv, D) and S >= 1, OP,
              f"sink_k must have shape [B, S, Hkv, D] = [{B}, S, {Hkv}, {D}], got "
              f"{list(sink_k.shape)}")
        check(tuple(sink_v.shape) == tuple(sink_k.shape), OP, f"sink_v must have sink_k's shape "
              f"{list(sink_k.shape)}, got {list(sink_v.shape)}")
        if sink_q is None:
            sink_q = q
        check(tuple(sink_q.shape) == tuple(q.shape), OP, f"sink_q must have q's shape "
              f"{list(q.shape)}, got {list(sink_q.shape)}")
    for name, t in (("k", k), ("v", v), ("sink_k", sink_k), ("sink_v", sink_v), ("sink_q", sink_q)):
        check(t is None or t.device == q.device, OP, f"{name} must be on q's device {q.device}")
    scale = D ** -0.5 if scale is None else check_number(
        OP, "scale", scale, minimum=0, min_open=True, maximum=MAX_SCALE,
        expected="a number > 0 or None (None: D^-0.5), at most 1e6 (larger ones overflow fp32)")
    impl = pick_impl(OP, impl, q)
    args = (q, k, v, window, q_offset, sink_k, sink_v, sink_q, scale)
    if impl == "naive":
        return sliding_window_naive(*args)
    if impl == "torch":
        return sliding_window_torch(*args)
    check_triton(OP, q)
    check(D <= MAX_TRITON_DIM, OP, f"impl='triton' supports head dim D <= {MAX_TRITON_DIM}, "
          f"got {D}")
    from .triton_swa import sliding_window_triton  # lazy: memarch.kernels stays triton-free
    return sliding_window_triton(*args)
