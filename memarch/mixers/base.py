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
from memarch.kernels._common import IMPLS, check_bool, check_choice, check_int, check_number

__all__ = ["IMPLS", "MAX_SCALARS", "Mixer", "MixerOutput", "check_bool", "check_choice",
           "check_input_like_params", "check_int", "check_number", "check_positive_int",
           "check_scalars", "trusted_states"]

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


def check_positive_int(owner: str, name: str, value) -> int:
    """Raise ``ValueError("<owner>: <name> must be a positive int, got ...")`` unless
    ``value`` is an int >= 1 (bools, floats and strings are refused); returns it. Shared by
    every constructor, with ``check_int``, ``check_bool``, ``check_number`` and
    ``check_choice`` (the one strict parser: ``memarch.kernels._common``)."""
    return check_int(owner, name, value, minimum=1)


MAX_SCALARS = 2 ** 32
"""The most parameters, or state scalars per sequence, one mixer (or HMT's own part) may
have: past it a constructor refuses, naming the arguments, instead of an allocation failure
("tried to allocate 128 GB") at construction or at the first call."""


def check_scalars(owner: str, what: str, n: int, args: dict) -> None:
    """Raise ``ValueError`` if ``n`` (the size of ``what``: "parameters", "state scalars per
    sequence") exceeds ``MAX_SCALARS``, naming the arguments ``args`` that set it."""
    if n > MAX_SCALARS:
        given = ", ".join(f"{k}={v!r}" for k, v in args.items())
        raise ValueError(f"{owner}: {given} would make {n:.3g} {what} (more than "
                         f"{MAX_SCALARS:.3g}, {4 * n / 2 ** 30:.3g} GiB in fp32): lower "
                         f"{' or '.join(args)}")


def check_input_like_params(owner: str, x: torch.Tensor, module: nn.Module, *,
                            dtype: bool = True) -> None:
    """Clear errors for input the module cannot run on, before torch's own: x on the meta
    device (no values to read), on another device than the parameters, or of another
    floating dtype than the parameters outside autocast (torch says "m1 and m2"; skipped
    with ``dtype=False``, for a module that casts its weights to x's dtype)."""
    if x.device.type == "meta":
        raise ValueError(f"{owner}: x is on the meta device (shapes only, no values), but this "
                         "mixer reads values (positions, the non-finite guard): run it on cpu "
                         "or cuda tensors (module.to(device), x.to(device))")
    p = next(module.parameters(), None)
    if p is None:
        return
    if p.device != x.device:
        raise ValueError(f"{owner}: x is on {x.device} but the module's parameters are on "
                         f"{p.device}: move one of them (module.to({str(x.device)!r}) or "
                         f"x.to({str(p.device)!r}))")
    if (dtype and p.is_floating_point() and x.dtype != p.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise TypeError(f"{owner}: x has dtype {x.dtype} but the module's parameters have dtype "
                        f"{p.dtype}: convert the input (x.to({p.dtype})) or the module "
                        f"(module.to({x.dtype})), or run under torch.autocast")


class MixerOutput(NamedTuple):
    """What a mixer's ``forward`` returns: ``y [B, T, D]``, the ``state`` after the last
    token, and ``aux_loss`` (a scalar tensor, e.g. MoM's router balance, or None)."""

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
    # True for a mixer that casts its weights to x's dtype (ShortConv): x's dtype may then
    # differ from the parameters'
    weights_follow_input: bool = False

    def __init__(self, d_model: int, *, layer_idx: int | None = None):
        super().__init__()
        owner = type(self).__name__
        self.d_model = check_positive_int(owner, "d_model", d_model)
        self.layer_idx = check_int(owner, "layer_idx", layer_idx, minimum=0, none_ok=True)

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
        """Mix the tokens of ``x [B, T, D]`` (``D = d_model``) from ``state``.

        ``state``: what the previous call returned (the sequences continue), or None (a
        fresh start, ``init_state``). A state this mixer would not have made (another kind,
        shapes, dtype, device, positions) is refused with a ``ValueError``/``TypeError``
        naming the field. One call over T tokens equals any split into calls with the state
        carried, token by token included.

        Returns ``MixerOutput(y [B, T, D], state, aux_loss)``: the outputs, the state after
        the last token (a new object; the input state is never modified) and the mixer's
        auxiliary loss (a scalar tensor, or None)."""
        self._check_input(x)
        if state is None:
            state = self.init_state(x.shape[0], device=x.device,
                                    dtype=self.state_dtype(x.dtype))
        elif getattr(_TRUST, "on", False):       # generation's own steps: checked once
            return self._forward(x, state)
        else:
            self._check_state(x, state)
        check_input_like_params(self._owner(), x, self, dtype=not self.weights_follow_input)
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
