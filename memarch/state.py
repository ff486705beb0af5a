"""State containers and tree helpers.

Every mixer state is a small immutable container of tensors: a ``typing.NamedTuple``,
which ``torch.utils._pytree`` already treats as a pytree node. A model state is a plain
tuple with one entry per layer position (never a dict keyed by layer index). The
conventions every state follows, so the helpers below work on any of them:

* every tensor leaf has the batch as its first dimension (``[B, ...]``);
* every state carries per-sequence positions ``pos [B]`` (int64): the number of tokens
  the sequence has seen;
* recurrent states are fp32; caches of activations (KV cache, conv window) use the
  activation dtype.

``None`` leaves (an optional part of a state) pass through every helper unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils import _pytree as pytree

__all__ = [
    "tree_map",
    "tensors",
    "detach",
    "to",
    "select",
    "batch_size",
    "float_numel",
    "check_like",
]


def tree_map(fn: Callable[[torch.Tensor], Any], state: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of ``state``; other leaves are kept."""
    return pytree.tree_map(lambda t: fn(t) if isinstance(t, torch.Tensor) else t, state)


def tensors(state: Any) -> list[torch.Tensor]:
    """All tensor leaves of ``state`` in a fixed (flattening) order."""
    return [t for t in pytree.tree_leaves(state) if isinstance(t, torch.Tensor)]


def detach(state: Any) -> Any:
    """Detach every tensor (truncated BPTT between calls)."""
    return tree_map(torch.Tensor.detach, state)


def to(state: Any, device: torch.device | str | None = None,
       dtype: torch.dtype | None = None) -> Any:
    """Move a state to ``device``; ``dtype`` converts floating-point leaves only.

    Integer leaves (positions) keep their dtype. Recurrent fp32 states should normally
    stay fp32: pass ``dtype`` only for caches of activations.
    """
    def _to(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    return tree_map(_to, state)


def select(state: Any, index: torch.Tensor | Sequence[int] | slice) -> Any:
    """Select / reorder batch rows (beam search, dropping finished sequences)."""
    if not isinstance(index, (torch.Tensor, slice)):
        index = torch.as_tensor(list(index), dtype=torch.long)

    def _sel(t: torch.Tensor) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            return t.index_select(0, index.to(t.device))
        return t[index]

    return tree_map(_sel, state)


def batch_size(state: Any) -> int | None:
    """The batch size shared by all tensor leaves (None for a state without tensors).

    Raises ``ValueError`` if the leaves disagree.
    """
    sizes = {t.shape[0] for t in tensors(state) if t.dim() > 0}
    if not sizes:
        return None
    if len(sizes) > 1:
        raise ValueError(f"state tensors disagree on the batch size (dim 0): {sorted(sizes)}")
    return sizes.pop()


def float_numel(state: Any) -> int:
    """Number of floating-point state scalars per sequence (what ``state_size`` counts)."""
    total = 0
    for t in tensors(state):
        if t.is_floating_point():
            total += t.numel() // max(t.shape[0], 1) if t.dim() > 0 else t.numel()
    return total


def check_like(state: Any, spec: Any, *, owner: str,
               growing: dict[str, dict[int, str]] | None = None) -> None:
    """Raise unless ``state`` has the structure, types, shapes and dtypes of ``spec``.

    ``spec`` is what ``init_state`` returns for the same batch size and dtype (built on the
    ``meta`` device, so it costs no memory). ``growing`` declares the dimensions that grow
    with the tokens seen: ``{"k": {2: "L"}, "v": {2: "L"}}`` lets dim 2 of the fields ``k``
    and ``v`` take any size, the same for both (sizes sharing a name must agree). Integer
    leaves (positions) must be non-negative; that value check is skipped on CUDA to avoid a
    host sync per call. Errors name ``owner`` (the mixer and its layer), the field, and the
    expected and actual shapes.
    """
    sizes: dict[str, tuple[str, int]] = {}
    growing = growing or {}

    def fail(path: str, msg: str) -> None:
        where = f"state field {path!r}" if path else "state"
        raise ValueError(f"{owner}: {where} {msg} (build the state with this mixer's "
                         "init_state, or pass the state this mixer returned)")

    def walk(a: Any, e: Any, path: str) -> None:
        if e is None or isinstance(e, torch.Tensor):
            if e is None:
                if a is not None:
                    fail(path, f"must be None for this configuration, got "
                               f"{_describe(a)}")
                return
            if not isinstance(a, torch.Tensor):
                fail(path, f"must be a tensor of shape {tuple(e.shape)}, got {_describe(a)}")
            if a.dim() != e.dim():
                fail(path, f"has shape {tuple(a.shape)} but this configuration expects "
                           f"{_shape_text(e, growing.get(path, {}))}")
            for d, (n_a, n_e) in enumerate(zip(a.shape, e.shape)):
                sym = growing.get(path, {}).get(d)
                if sym is None:
                    if n_a != n_e:
                        fail(path, f"has shape {tuple(a.shape)} but this configuration "
                                   f"expects {_shape_text(e, growing.get(path, {}))}")
                elif sym in sizes and sizes[sym][1] != n_a:
                    fail(path, f"has size {n_a} in dim {d} but field {sizes[sym][0]!r} has "
                               f"size {sizes[sym][1]} there; they must agree")
                else:
                    sizes.setdefault(sym, (path, n_a))
            if not e.is_floating_point():
                if a.dtype != e.dtype:
                    fail(path, f"must have dtype {e.dtype}, got {a.dtype}")
                if a.device.type != "cuda" and a.numel() and bool((a < 0).any()):
                    fail(path, f"must hold non-negative positions, got {a.tolist()}")
            return
        if type(a) is not type(e):
            fail(path, f"must be a {type(e).__name__}, got {_describe(a)}")
        fields = getattr(e, "_fields", None)
        if fields is not None:                                   # NamedTuple
            for f in fields:
                walk(getattr(a, f), getattr(e, f), f"{path}.{f}" if path else f)
        elif isinstance(e, (tuple, list)):
            if len(a) != len(e):
                fail(path, f"must have {len(e)} entries, got {len(a)}")
            for i, (x, y) in enumerate(zip(a, e)):
                walk(x, y, f"{path}[{i}]")
        else:                                                    # another leaf: keep as is
            return

    walk(state, spec, "")


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _shape_text(e: torch.Tensor, grow: dict[int, str]) -> str:
    return "(" + ", ".join(grow.get(d, str(n)) for d, n in enumerate(e.shape)) + ")"
