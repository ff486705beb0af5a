"""Helpers shared by the ops: implementation choice and argument checks (no triton import)."""

from __future__ import annotations

import os

import torch

IMPLS = ("auto", "naive", "torch", "triton")
ENV_VAR = "MEMARCH_KERNEL_IMPL"
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
