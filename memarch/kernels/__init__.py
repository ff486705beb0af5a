"""memarch.kernels: sequence ops with one signature per op and several implementations.

Each op's implementations live in the repository's top-level ``kernels/<package>/``
(installed as ``memarch.kernels.<package>``: ``linear_attention``, ``sliding_window``,
``gated_delta_rule``, ``neural_memory``): ``naive.py`` (the executable spec, fp32 loops),
``torch_chunk.py`` (chunked PyTorch, the CPU path) and ``triton_*.py`` (GPU, where one pays;
imported lazily: ``import memarch.kernels`` does not import triton). This folder
(``memarch/kernels/``) holds what the ops share (argument checks, the non-finite guard,
Triton helpers, the ahead-of-time build check ``aot``). The op functions are named apart
from their packages, so ``import memarch.kernels.linear_attention as m`` gives the package
and ``linear_attn`` the function. The top-level ``kernels/`` has no ``__init__.py``: from
the repository root, ``import kernels`` finds the PyPI package of that name (transformers
imports it), not ours. This package imports nothing from the rest of ``memarch``.

Ops:
    linear_attn(q, k, v, *, g, scale, normalize, eps, initial_state, output_final_state, impl)
        -> (o, LinearAttnState | None)
    sliding_window_attn(q, k, v, *, window, q_offset, sink_k, sink_v, sink_q, scale, impl) -> o
    delta_rule(q, k, v, beta, *, g, scale, initial_state, output_final_state, impl)
        -> (o, S | None)
    neural_memory_update(q, k, v, theta, log_eta, log_keep, *, weights, momentum,
                         residual_norm, max_grad_norm, impl) -> (reads, weights, momentum)
        (Titans' memory over complete update chunks; naive and torch only)

``known_finite(*tensors)``: the non-finite guard's fast path (one reduction per tensor), for
callers that guard their own math the same way.

``impl="auto"`` picks $MEMARCH_KERNEL_IMPL when set (naive | torch | triton), else "triton"
for CUDA tensors and "torch" elsewhere.
"""

from ._common import known_finite
from .gated_delta_rule import delta_rule
from .linear_attention import LinearAttnState, linear_attn
from .neural_memory import neural_memory_update
from .sliding_window import sliding_window_attn

__all__ = ["LinearAttnState", "delta_rule", "known_finite", "linear_attn",
           "neural_memory_update", "sliding_window_attn"]
