"""memarch.kernels: sequence ops with one signature per op and several implementations.

Each op lives in ``kernels/<op>/`` (installed as ``memarch.kernels.<op>``): ``naive.py`` (the
executable spec, fp32 loops), ``torch_chunk.py`` (chunked PyTorch, the CPU path) and
``triton_*.py`` (GPU, imported lazily: ``import memarch.kernels`` does not import triton).
This package imports nothing from the rest of ``memarch``.

Ops:
    linear_attn(q, k, v, *, g, scale, normalize, eps, initial_state, output_final_state, impl)
        -> (o, LinearAttnState | None)
    sliding_window_attn(q, k, v, *, window, q_offset, sink_k, sink_v, sink_q, scale, impl) -> o
    delta_rule(q, k, v, beta, *, g, scale, initial_state, output_final_state, impl)
        -> (o, S | None)

``known_finite(*tensors)``: the non-finite guard's fast path (one reduction per tensor), for
callers that guard their own math the same way.

``impl="auto"`` picks $MEMARCH_KERNEL_IMPL when set (naive | torch | triton), else "triton"
for CUDA tensors and "torch" elsewhere.
"""

from ._common import known_finite
from .delta_rule import delta_rule
from .linear_attn import LinearAttnState, linear_attn
from .sliding_window import sliding_window_attn

__all__ = ["LinearAttnState", "delta_rule", "known_finite", "linear_attn",
           "sliding_window_attn"]
