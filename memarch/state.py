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
