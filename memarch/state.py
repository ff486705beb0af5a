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
    "summary",
    "fields_repr",
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
            if a.device.type == "meta":
                fail(path, "is on the meta device (shapes only, no values); a state must "
                           "hold values: build it with init_state(..., device=x.device)")
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


# -- short text summaries (the ``__repr__`` of the result NamedTuples) ----------------------

_MAX_VALUES = 8     # a tensor with at most this many elements shows its values


def _values(t: torch.Tensor) -> str:
    v = t.detach().cpu().tolist()
    if not (t.is_floating_point() or t.is_complex()):
        return str(v)

    def fmt(x: Any) -> str:
        return "[" + ", ".join(map(fmt, x)) + "]" if isinstance(x, list) else format(x, ".4g")

    return fmt(v)


def _tensor_summary(t: torch.Tensor) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    text = (f"[{', '.join(map(str, t.shape))}] {dtype}" if t.dim() else f"scalar {dtype}")
    if t.device.type != "cpu":
        text += f" {t.device}"
    if 0 < t.numel() <= _MAX_VALUES and t.device.type != "meta":
        text += f": {_values(t)}"
    return text


def _pos_text(pos: torch.Tensor) -> str:
    if pos.device.type == "meta":
        return f"pos={_tensor_summary(pos)}"
    if pos.numel() <= _MAX_VALUES:
        return f"pos={_values(pos)}"
    lo, hi = int(pos.min()), int(pos.max())
    rows = pos.numel()
    return f"pos={lo} ({rows} rows)" if lo == hi else f"pos={lo}..{hi} ({rows} rows)"


def _find_pos(state: Any) -> torch.Tensor | None:
    """The ``pos`` field of a state NamedTuple (the first one found, depth first)."""
    if getattr(state, "_fields", None) is not None:
        pos = getattr(state, "pos", None)
        if isinstance(pos, torch.Tensor):
            return pos
    if isinstance(state, (tuple, list)):
        for s in state:
            pos = _find_pos(s)
            if pos is not None:
                return pos
    return None


def _counts(state: Any) -> str:
    ts = tensors(state)
    n = len(ts)
    return f"{n} tensor{'s' if n != 1 else ''}, {sum(t.numel() for t in ts):,} scalars"


def summary(x: Any) -> str:
    """A one-line description of a tensor, a state or another value, never its full data.

    Tensors show shape and dtype (and device when not cpu), plus their values when they have
    at most 8 elements; a state shows its type, the number of tensors and scalars, and its
    positions ``pos`` when it has them. A model state (a plain tuple of layer states) shows
    the positions once when all layers agree.
    """
    try:
        if x is None:
            return "None"
        if isinstance(x, torch.Tensor):
            return _tensor_summary(x)
        if getattr(x, "_fields", None) is not None:                    # a state NamedTuple
            parts = [type(x).__name__ + ": " + _counts(x)]
            pos = _find_pos(x)
            if pos is not None:
                parts.append(_pos_text(pos))
            return "<" + ", ".join(parts) + ">"
        if isinstance(x, (tuple, list)):                               # one state per layer
            n = len(x)
            parts = [f"{type(x).__name__} of {n} layer state{'s' if n != 1 else ''}: "
                     + _counts(x)]
            found = [_find_pos(s) for s in x]
            found = [p for p in found if p is not None]
            if found:
                same = all(p.shape == found[0].shape and p.device == found[0].device
                           and (p.device.type == "meta" or bool(torch.equal(p, found[0])))
                           for p in found[1:])
                parts.append(_pos_text(found[0]) if same else "pos differ by layer")
            return "<" + ", ".join(parts) + ">"
        text = repr(x)
        return text if len(text) <= 60 else text[:57] + "..."
    except Exception:  # noqa: BLE001 (a repr must never raise)
        return f"<{type(x).__name__}>"


def fields_repr(record: Any) -> str:
    """``Name(field=summary, ...)`` for a NamedTuple of tensors and states."""
    body = ", ".join(f"{f}={summary(getattr(record, f))}" for f in record._fields)
    return f"{type(record).__name__}({body})"
