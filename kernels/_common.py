"""Helpers shared by the ops: implementation choice and argument checks (no triton import)."""

from __future__ import annotations

import math
import os

import torch

IMPLS = ("auto", "naive", "torch", "triton")
ENV_VAR = "MEMARCH_KERNEL_IMPL"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

GUARD = True
"""The ops' non-finite guard (DESIGN.md, Kernels: a NaN/inf at token t changes no earlier
output). ``False`` is for benchmarks only (``python -m benchmarks inference`` measures the
guard's share of a forward with it): the ops then skip the guard, and non-finite input
breaks causality. Never set it elsewhere."""


def known_finite(*tensors) -> bool:
    """True when every tensor given (None skipped) is finite, found by one fused reduction
    per tensor: the guard's fast path. A sum is finite iff no entry is NaN or inf, unless
    finite entries overflow it, which only sends the caller down its guarded path (exact,
    slower). On CUDA False without looking (a host sync per call would cost more than the
    guarded path, which needs none). With ``GUARD`` off (benchmarks), True."""
    if not GUARD:
        return True
    for t in tensors:
        if t is None:
            continue
        if t.is_cuda or t.device.type == "meta":
            return False
        acc = torch.float64 if t.dtype == torch.float64 else torch.float32
        if not math.isfinite(t.sum(dtype=acc).item()):
            return False
    return True


def pick_impl(op: str, impl: str, x: torch.Tensor) -> str:
    """Resolve ``impl``. "auto" -> $MEMARCH_KERNEL_IMPL if set, else "triton" for CUDA
    tensors of a dtype the kernels take (fp16/bf16/fp32), else "torch"."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        forced = os.environ.get(ENV_VAR, "").strip()
        if forced:
            if forced not in IMPLS[1:]:
                raise ValueError(f"{op}: ${ENV_VAR} must be one of {IMPLS[1:]}, got {forced!r}")
            return forced
        return "triton" if x.is_cuda and x.dtype in TRITON_DTYPES else "torch"
    return impl


def check(cond: bool, op: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{op}: {msg}")


def check_float(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_triton(op: str, x: torch.Tensor) -> None:
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"{op}: impl='triton' takes fp16/bf16/fp32 inputs, got {x.dtype}")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                           f"set before the kernels are imported), got device {x.device}")


def check_qkv_g(op: str, q, k, v, g, **extra) -> tuple[int, int, int, int, int]:
    """The checks every recurrent op shares: q, k [B, T, H, K] and v [B, T, H, V] floating
    point of one dtype, g [B, T, H] <= 0 (checked off CUDA only: no host sync) or None, and
    any ``extra`` per-token tensor [B, T, H] (e.g. beta); all on q's device. Returns
    (B, T, H, K, V)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check(isinstance(t, torch.Tensor) and t.dim() == 4, op,
              f"{name} must be a 4-d tensor [B, T, H, D], got "
              f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    for name, t in extra.items():
        check(isinstance(t, torch.Tensor), op, f"{name} must be a tensor [B, T, H], got "
              f"{type(t).__name__}")
    check_float(op, q=q, k=k, v=v, g=g, **extra)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check(tuple(k.shape) == (B, T, H, K), op, f"k must have q's shape {list(q.shape)}, got "
          f"{list(k.shape)}")
    check(tuple(v.shape[:3]) == (B, T, H), op, f"v must have shape [B, T, H, V] with [B, T, H] "
          f"= {[B, T, H]}, got {list(v.shape)}")
    check(q.dtype == k.dtype == v.dtype, op, f"q, k, v must share a dtype, got {q.dtype}, "
          f"{k.dtype}, {v.dtype}")
    check(K >= 1 and V >= 1, op, f"K and V must be >= 1, got K={K}, V={V}")
    for name, t in extra.items():
        check(tuple(t.shape) == (B, T, H), op, f"{name} must have shape [B, T, H] = "
              f"{[B, T, H]}, got {list(t.shape)}")
    if g is not None:
        check(tuple(g.shape) == (B, T, H), op, f"g must have shape [B, T, H] = {[B, T, H]}, got "
              f"{list(g.shape)}")
        if not g.is_cuda and bool((g > 0).any()):        # no host sync on CUDA
            raise ValueError(f"{op}: g must be <= 0 (log-space decay; exp(g) > 1 grows the "
                             f"state until it overflows), got max(g) = "
                             f"{g.detach()[g > 0].max().item():.4g}")
    for name, t in (("k", k), ("v", v), ("g", g), *extra.items()):
        check(t is None or t.device == q.device, op, f"{name} must be on q's device {q.device}")
    return B, T, H, K, V
