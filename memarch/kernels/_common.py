"""Helpers shared by the ops: implementation choice and argument checks (no triton import)."""

from __future__ import annotations

import math
import numbers
import os

import torch

IMPLS = ("auto", "naive", "torch", "triton")
ENV_VAR = "MEMARCH_KERNEL_IMPL"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

GUARD = True
"""The ops' non-finite guard (docs/design.md#the-nan-rule: a NaN/inf at token t changes no earlier
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
    """Each tensor given must be a floating-point tensor or None (``TypeError`` naming it)."""
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a floating-point tensor or None, got "
                            f"{_got(t)}")
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


# -- strict parsing of scalar arguments (constructors, configs, op arguments) ----------------
# One parser for bools, ints and finite numbers, shared by memarch's constructors (re-exported
# by ``memarch.mixers.base``) and the ops here: no truthy strings, no bools where a number is
# meant, no NaN/inf. Every error names the owner, the argument, the value and what is expected.

def _got(value) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})" if isinstance(value, str) or not isinstance(
        value, (int, float)) else text


# the largest ``scale`` an op takes: a scale is about D^-0.5 (1 for BASED); 1e6 leaves room
# for any real use while keeping q k^T (or q S) far from fp32's overflow at ~3e38
MAX_SCALE = 1e6


def check_bool(owner: str, name: str, value) -> bool:
    """``value`` if it is a bool, else ``ValueError``: strings such as ``'false'`` or ``'no'``
    (truthy in Python) and numbers are refused."""
    if not isinstance(value, bool):     # a ValueError, as every argument check here
        hint = "; a string is not read as a boolean" if isinstance(value, str) else ""
        raise ValueError(  # noqa: TRY004
            f"{owner}: {name} must be a bool (True or False), got {_got(value)}{hint}")
    return value


def check_int(owner: str, name: str, value, *, minimum: int | None = None,
              maximum: int | None = None, none_ok: bool = False,
              expected: str | None = None) -> int | None:
    """``int(value)`` if ``value`` is an integer (not a bool, not a float such as 4.0, not a
    string) in [minimum, maximum]; None when ``none_ok``. Else ``ValueError`` naming
    ``owner``, ``name``, the value and ``expected`` (default: built from the bounds)."""
    if value is None and none_ok:
        return None
    if expected is None:
        if minimum is not None and maximum is not None:
            expected = f"an int in [{minimum}, {maximum}]"
        elif minimum == 1:
            expected = "a positive int"
        elif minimum is not None:
            expected = f"an int >= {minimum}"
        elif maximum is not None:
            expected = f"an int <= {maximum}"
        else:
            expected = "an int"
        if none_ok:
            expected += " or None"
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        raise ValueError(f"{owner}: {name} must be {expected}, got {_got(value)}")
    return int(value)


def check_number(owner: str, name: str, value, *, minimum: float | None = None,
                 maximum: float | None = None, min_open: bool = False, max_open: bool = False,
                 none_ok: bool = False, expected: str | None = None) -> float | None:
    """``float(value)`` if ``value`` is a finite real number (not a bool, not a string) in the
    interval given by ``minimum``/``maximum`` (open ends with ``min_open``/``max_open``);
    None when ``none_ok``. Else ``ValueError`` naming the owner, the argument and the value.
    ``minimum=0, min_open=True`` is "> 0" (a positive number)."""
    if value is None and none_ok:
        return None
    if expected is None:
        lo = None if minimum is None else (">" if min_open else ">=")
        hi = None if maximum is None else ("<" if max_open else "<=")
        if lo and hi:
            expected = (f"a number in {'(' if min_open else '['}{minimum!r}, {maximum!r}"
                        f"{')' if max_open else ']'}")
        elif lo:
            expected = f"a number {lo} {minimum!r}"
        elif hi:
            expected = f"a number {hi} {maximum!r}"
        else:
            expected = "a finite number"
        if none_ok:
            expected += " or None"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    finite = ok and math.isfinite(value)
    if ok and finite:
        ok = not ((minimum is not None and (value <= minimum if min_open else value < minimum))
                  or (maximum is not None and (value >= maximum if max_open else value > maximum)))
    if not ok or not finite:
        why = "; it must be finite" if ok and not finite else ""
        raise ValueError(f"{owner}: {name} must be {expected}, got {_got(value)}{why}")
    return float(value)


def check_choice(owner: str, name: str, value, choices) -> str:
    """``value`` if it is one of ``choices`` (strings), else ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {_got(value)}")
    return value


def check_range(op: str, name: str, t: torch.Tensor, lo: float, hi: float, *,
                why: str = "") -> None:
    """Raise ``ValueError`` if a finite entry of tensor ``t`` lies outside [lo, hi] (NaN/inf
    entries are left to the op's non-finite guard). Checked off CUDA only, as g <= 0 in
    ``check_qkv_g``: on CUDA the check would cost a host sync per call."""
    if t.is_cuda or t.device.type == "meta" or t.numel() == 0:
        return
    t = t.detach()
    if not bool(((t < lo) | (t > hi)).any()):    # the common case: one pass (NaN compares
        return                                   # False; an inf goes on to the exact test)
    out = t.isfinite() & ((t < lo) | (t > hi))
    if bool(out.any()):
        bad = t[out]
        raise ValueError(f"{op}: {name} must lie in [{lo:g}, {hi:g}]"
                         + (f" ({why})" if why else "")
                         + f", got values from {bad.min().item():.4g} to "
                           f"{bad.max().item():.4g} outside it")
