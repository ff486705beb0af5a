"""The mixer contract: one interface for every token mixer in memarch.

```
mixer = SomeMixer(d_model=..., layer_idx=..., **kwargs)   # keyword-only after d_model
state = mixer.init_state(batch_size, device=..., dtype=...)
out   = mixer(x, state)          # x [B, T, D]; state may be None (== init_state)
out.y         [B, T, D]
out.state     state after the last token (a new object; the input state is never mutated)
out.aux_loss  scalar tensor or None
mixer.state_size(seq_len) -> int  # floating-point state scalars per sequence
```

The property every mixer satisfies (and is tested for): splitting a sequence into calls
with the state carried does not change outputs or the final state.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from typing import Any, Iterator, NamedTuple

import torch
from torch import nn

from memarch import state as st

__all__ = ["Mixer", "MixerOutput", "check_positive_int", "trusted_states"]

_TRUST = threading.local()


@contextlib.contextmanager
def trusted_states() -> Iterator[None]:
    """Inside this block (this thread), ``Mixer.forward`` skips its state check.

    For loops that pass a model the states it returned itself (``memarch.generation``:
    every prefill chunk after the first, every decode step): a state is checked once when
    it enters, then trusted. The input ``x`` is still checked. Re-entrant."""
    before = getattr(_TRUST, "on", False)
    _TRUST.on = True
    try:
        yield
    finally:
        _TRUST.on = before


def check_positive_int(owner: str, name: str, value) -> None:
    """Raise ``ValueError("<owner>: <name> must be a positive int, got ...")`` unless
    ``value`` is an int >= 1 (bools are refused). Shared by every constructor."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


class MixerOutput(NamedTuple):
    y: torch.Tensor                      # [B, T, D]
    state: Any                           # the state after the last token
    aux_loss: torch.Tensor | None = None  # scalar or None

    def __repr__(self) -> str:          # shapes and a state summary, not every tensor
        return st.fields_repr(self)


class Mixer(nn.Module, abc.ABC):
    """Base class. Subclasses implement ``init_state``, ``_forward`` and ``state_size``.

    ``forward`` validates its input before calling ``_forward`` so that every mixer
    rejects bad input with the same clear messages.
    """

    d_model: int
    layer_idx: int | None

    def __init__(self, d_model: int, *, layer_idx: int | None = None):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.layer_idx = layer_idx

    # -- the contract --------------------------------------------------------------
    @abc.abstractmethod
    def init_state(self, batch_size: int, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any:
        """The empty state for ``batch_size`` sequences (positions 0)."""

    @abc.abstractmethod
    def state_size(self, seq_len: int) -> int:
        """Floating-point state scalars per sequence after ``seq_len`` tokens."""

    @abc.abstractmethod
    def _forward(self, x: torch.Tensor, state: Any) -> MixerOutput:
        """The mixer's math on validated input; must not mutate ``state``."""

    def init_own_parameters(self) -> None:
        """Re-apply this mixer's own initialisation of the parameters that a model's generic
        init must not overwrite (gate biases, memory step sizes, initial memory weights).
        ``MemLM`` calls it on every mixer after its generic init of every Linear and
        Embedding; a mixer's constructor calls it too. Default: nothing."""

    def state_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        """dtype of the state's floating-point tensors for inputs of ``x_dtype``.

        Caches of activations (KV cache, conv window) use the activation dtype (the
        default); recurrent mixers override this to return ``torch.float32``.
        """
        return x_dtype

    def forward(self, x: torch.Tensor, state: Any = None) -> MixerOutput:
        self._check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device,
                                    dtype=self.state_dtype(x.dtype))
        elif not getattr(_TRUST, "on", False):
            self._check_state(x, state)
        return self._forward(x, state)

    # -- validation ----------------------------------------------------------------
    def _check_input(self, x: Any) -> None:
        name = self._owner()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: x must be a torch.Tensor [B, T, D], got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(
                f"{name}: x must have rank 3 [B, T, D] (batch, time, d_model), "
                f"got rank {x.dim()} with shape {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"{name}: x's last dimension must equal d_model={self.d_model}, "
                f"got {x.shape[-1]} (shape {tuple(x.shape)})")
        if x.shape[1] < 1:
            raise ValueError(f"{name}: x must hold at least one token (T >= 1), got T=0")
        if x.shape[0] < 1:
            raise ValueError(f"{name}: x must hold at least one sequence (B >= 1), got B=0")
        if not x.is_floating_point():
            raise TypeError(f"{name}: x must be floating point, got dtype {x.dtype}")

    def state_growing_dims(self) -> dict[str, dict[int, str]]:
        """The state dimensions that grow with the tokens seen, e.g. a KV cache's length:
        ``{"k": {2: "L"}, "v": {2: "L"}}`` (field -> {dim: size name}; sizes with the same
        name must agree). Every other dimension must equal what ``init_state`` gives."""
        return {}

    def _owner(self) -> str:
        layer = "" if self.layer_idx is None else f" (layer {self.layer_idx})"
        return f"{type(self).__name__}{layer}"

    def _check_state(self, x: torch.Tensor, state: Any) -> None:
        """One generic check: the state must be what ``init_state`` would have made for
        this mixer's configuration (type, fields, shapes but declared growing dims, dtypes),
        on x's device, with non-negative integer positions."""
        name = self._owner()
        try:
            b = st.batch_size(state)
        except ValueError as e:
            raise ValueError(f"{name}: malformed state: {e}") from None
        if b is not None and b != x.shape[0]:
            raise ValueError(
                f"{name}: batch size mismatch: x has batch size {x.shape[0]} but the state "
                f"has batch size {b}")
        key = (x.shape[0], x.dtype)            # the spec depends on the configuration only
        cache = self.__dict__.setdefault("_state_specs", {})
        if key not in cache:
            cache[key] = self.init_state(x.shape[0], device="meta",
                                         dtype=self.state_dtype(x.dtype))
        spec = cache[key]
        st.check_like(state, spec, owner=name, growing=self.state_growing_dims())
        for t, e in zip(st.tensors(state), st.tensors(spec)):
            if t.dtype != e.dtype:
                raise TypeError(
                    f"{name}: dtype mismatch: x has dtype {x.dtype}, so the state's tensors "
                    f"must have dtype {e.dtype}, got {t.dtype} (build the state with "
                    f"init_state(..., dtype={e.dtype}) or convert x)")
            if t.device != x.device:
                raise ValueError(
                    f"{name}: device mismatch: x is on {x.device} but the state is on {t.device}")
