"""MemLM: a language-model backbone over a heterogeneous stack of mixers.

    h_0 = E[ids]
    h_l = h_{l-1} + mixer_l(norm(h_{l-1}))      # mixer_l built from mixers[layer_pattern[l]]
    h_l = h_l + mlp_l(norm(h_l))                 # SwiGLU (skipped when d_hidden == 0)
    logits = head(norm(h_L))                     # head tied to E by default

Heterogeneous stacks are data: ``mixers`` maps slot names to factories called as
``factory(d_model=..., layer_idx=...)`` (a class, a ``functools.partial`` or a Hydra
``_partial_: true`` object) and ``layer_pattern`` lists one slot name per layer.
The state is a tuple with one mixer state per layer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from memarch.hub import HubMixin
from memarch.mixers.base import (
    Mixer,
    check_bool,
    check_int,
    check_number,
    check_positive_int,
    check_scalars,
)
from memarch.modules.mlp import SwiGLU
from memarch.modules.norm import RMSNorm

__all__ = ["MemLM", "Block", "LMOutput", "check_ids"]


class LMOutput(NamedTuple):
    """What ``MemLM.forward`` returns.

    Fields:
        logits: ``[B, T, vocab_size]`` (``[B, n, vocab_size]`` with ``logits_to_keep=n``).
        state: the model state after the last token: a tuple with one entry per layer (each
            mixer's own state); pass it to the next call to continue the sequences.
        aux_loss: the sum of the mixers' auxiliary losses (MoM's router balance), a scalar
            tensor, or None when no mixer has one.
    """

    logits: torch.Tensor               # [B, T, vocab]
    state: tuple                       # one entry per layer
    aux_loss: torch.Tensor | None      # sum of the mixers' aux losses, or None

    def __repr__(self) -> str:          # shapes and a state summary, not every tensor
        from memarch.state import fields_repr
        return fields_repr(self)


class Block(nn.Module):
    """Pre-norm residual block: mixer then (optional) SwiGLU MLP."""

    def __init__(self, mixer: Mixer, d_model: int, *, d_hidden: int | None, norm_eps: float,
                 mlp_bias: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(d_model, eps=norm_eps)
        self.mixer = mixer
        if d_hidden == 0:
            self.norm2, self.mlp = None, None
        else:
            self.norm2 = RMSNorm(d_model, eps=norm_eps)
            self.mlp = SwiGLU(d_model, d_hidden=d_hidden, bias=mlp_bias)

    def forward(self, h: torch.Tensor, state: Any):  # h [B, T, D]
        out = self.mixer(self.norm1(h), state)
        h = h + out.y
        if self.mlp is not None:
            h = h + self.mlp(self.norm2(h))
        return h, out.state, out.aux_loss


class MemLM(HubMixin, nn.Module):
    """Args:
        vocab_size: vocabulary size (256 for the byte-level tokenizer).
        d_model: width.
        mixers: slot name -> factory(d_model=..., layer_idx=...) returning a ``Mixer``.
        layer_pattern: one slot name per layer, e.g. ``["conv", "attn", "conv", "attn"]``.
        d_hidden: SwiGLU hidden width (None: 8/3 d_model rounded; 0: no MLP).
        tie_embeddings: share the input embedding and the output head.
        norm_eps: RMSNorm epsilon.
        init_std: std of the normal init of linear and embedding weights, in [0, 1].
        mlp_bias: biases in the SwiGLU's three projections (Llama's ``mlp_bias``).

    ``init_kwargs`` keeps the constructor's arguments (``memarch.hub`` writes them as
    ``config.json``).
    """

    def __init__(self, *, vocab_size: int, d_model: int,
                 mixers: Mapping[str, Callable[..., Mixer]], layer_pattern: Sequence[str],
                 d_hidden: int | None = None, tie_embeddings: bool = True,
                 norm_eps: float = 1e-6, init_std: float = 0.02, mlp_bias: bool = False):
        super().__init__()
        check_positive_int("MemLM", "vocab_size", vocab_size)
        check_positive_int("MemLM", "d_model", d_model)
        check_number("MemLM", "norm_eps", norm_eps, minimum=0, min_open=True)
        check_number("MemLM", "init_std", init_std, minimum=0, maximum=1.0)   # a weight std
        check_int("MemLM", "d_hidden", d_hidden, minimum=0, none_ok=True)
        check_bool("MemLM", "mlp_bias", mlp_bias)
        check_bool("MemLM", "tie_embeddings", tie_embeddings)
        check_scalars("MemLM", "embedding parameters", vocab_size * d_model,
                      {"vocab_size": vocab_size, "d_model": d_model})
        if d_hidden:
            check_scalars("MemLM", "parameters per MLP", 3 * d_model * d_hidden,
                          {"d_model": d_model, "d_hidden": d_hidden})
        if not isinstance(mixers, Mapping) or not mixers:
            raise ValueError("MemLM: mixers must be a non-empty mapping of slot name -> factory, "
                             f"got {mixers!r}")
        if (isinstance(layer_pattern, (str, bytes)) or not isinstance(layer_pattern, Sequence)
                or not layer_pattern):
            raise ValueError(
                "MemLM: layer_pattern must be a non-empty list of slot names from "
                f"mixers={sorted(map(str, mixers))}, got {layer_pattern!r}")
        unknown = [n for n in layer_pattern if not isinstance(n, str) or n not in mixers]
        if unknown:
            raise ValueError(
                f"MemLM: layer_pattern names unknown mixer slots {unknown}; "
                f"known slots (keys of mixers): {sorted(map(str, mixers))}")
        self.init_kwargs = dict(vocab_size=vocab_size, d_model=d_model, mixers=dict(mixers),
                                layer_pattern=list(layer_pattern), d_hidden=d_hidden,
                                tie_embeddings=tie_embeddings, norm_eps=norm_eps,
                                init_std=init_std, mlp_bias=mlp_bias)
        self.vocab_size, self.d_model = vocab_size, d_model
        self.layer_pattern = list(layer_pattern)
        self.embed = nn.Embedding(vocab_size, d_model)
        blocks = []
        for i, name in enumerate(self.layer_pattern):
            mixer = mixers[name](d_model=d_model, layer_idx=i)
            if not isinstance(mixer, Mixer):
                raise TypeError(
                    f"MemLM: mixers[{name!r}] must build a memarch Mixer, "
                    f"got {type(mixer).__name__}")
            blocks.append(Block(mixer, d_model, d_hidden=d_hidden, norm_eps=norm_eps,
                                mlp_bias=mlp_bias))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, eps=norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(lambda m: _init(m, init_std))
        for b in self.blocks:          # gate biases, memory step sizes: the mixer's own init
            b.mixer.init_own_parameters()
        if tie_embeddings:
            self.head.weight = self.embed.weight

    # -- state -------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device=None, dtype=None) -> tuple:
        """The empty state of ``batch_size`` sequences: one entry per layer, each mixer's
        ``init_state`` (positions 0). ``dtype``: the activations' dtype (default: the
        embedding's); recurrent mixers keep their states in fp32 whatever it is.
        ``forward(ids)`` with ``state=None`` starts from this state."""
        dtype = dtype or self.embed.weight.dtype
        return tuple(b.mixer.init_state(batch_size, device=device,
                                        dtype=b.mixer.state_dtype(dtype)) for b in self.blocks)

    def state_size(self, seq_len: int) -> int:
        return sum(b.mixer.state_size(seq_len) for b in self.blocks)

    # -- forward -----------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, state: tuple | None = None, *,
                logits_to_keep: int = 0) -> LMOutput:
        """Run the model over ``ids`` from ``state``.

        Args:
            ids: token ids ``[B, T]`` (int64, int32, int16, int8 or uint8), in
                ``[0, vocab_size)``.
            state: the state returned by the previous call (the sequences continue), or
                None (a fresh start, ``init_state``). Splitting a sequence into calls does
                not change the result: one call over T tokens equals any split with the
                state carried, token by token included.
            logits_to_keep: ``n > 0`` computes the logits of the last n positions only
                (``[B, min(n, T), V]``): a prefill needs the last one, and a 4k-token
                chunk's full logits at V = 49,152 are 800 MB of fp32. 0: every position.

        Returns:
            ``LMOutput(logits [B, T, V], state, aux_loss)``. The input state is never
            modified.
        """
        check_ids("MemLM", ids, self.vocab_size)
        if (not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool)
                or logits_to_keep < 0):
            raise ValueError(f"MemLM: logits_to_keep must be an int >= 0 (0: every position), "
                             f"got {logits_to_keep!r}")
        h = self.embed(ids if ids.dtype in (torch.long, torch.int32) else ids.long())  # [B, T, D]
        h, new_state, aux = self.forward_embeds(h, state)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return LMOutput(self._logits(h), new_state, aux)               # logits [B, T, V]

    HEAD_T_MIN = 1 << 20     # head weights (V x D elements) from which decode reads a copy

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """``head(h)``. For one position per sequence without autograd (a decode step, a
        prefill's last position) and a large head, ``h @ W^T`` through a contiguous copy of
        W^T: a matrix-vector product that streams the weights in the layout the CPU reads
        fastest (SmolLM2's 49,152 x 576 head: 1.8x faster on this machine). The copy (one more
        head, 113 MB in fp32 for SmolLM2) is made at the first such call and remade when the
        weight changes (its version counter); ``MemLM.HEAD_T_MIN = 0`` turns it off."""
        w = self.head.weight
        if (h.shape[-2] != 1 or torch.is_grad_enabled() or self.head.bias is not None
                or not self.HEAD_T_MIN or w.numel() < self.HEAD_T_MIN or w.is_cuda):
            return self.head(h)
        key = (w.data_ptr(), w._version, w.dtype, w.device, torch.is_inference_mode_enabled())
        cached = self.__dict__.get("_head_t")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_head_t"] = (key, w.detach().t().contiguous())
        return h @ cached[1] if h.dtype == cached[1].dtype else self.head(h)

    def forward_embeds(self, h: torch.Tensor, state: tuple | None = None):
        """The stack on input embeddings ``h [B, T, D]`` (what wrappers such as HMT feed:
        token embeddings mixed with memory embeddings). Returns ``(norm(h_L) [B, T, D],
        state, aux_loss)``; ``head`` of the first gives ``forward``'s logits."""
        if state is None:
            state = (None,) * len(self.blocks)
        elif not isinstance(state, tuple) or len(state) != len(self.blocks):
            n = len(state) if hasattr(state, "__len__") else "?"
            raise ValueError(
                f"MemLM: state must be a tuple with one entry per layer ({len(self.blocks)}), "
                f"got {type(state).__name__} of length {n}")
        new_states, aux = [], None
        for block, s in zip(self.blocks, state):
            h, s, a = block(h, s)
            new_states.append(s)
            if a is not None:
                aux = a if aux is None else aux + a
        return self.norm(h), tuple(new_states), aux


_ID_DTYPES = (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_ids(owner: str, ids, vocab_size: int) -> None:
    """Raise ``ValueError`` unless ``ids`` is an integer tensor [B, T] (int64, int32, int16,
    int8 or uint8) with values in [0, vocab_size), on a device with values (not meta)."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in _ID_DTYPES:
        got = (f"dtype {ids.dtype} with shape {tuple(ids.shape)}"
               if isinstance(ids, torch.Tensor) else type(ids).__name__)
        raise ValueError(
            f"{owner}: ids must be an integer tensor [B, T] of token ids (dtype torch.long, "
            f"int32, int16, int8 or uint8), got {got}")
    if ids.device.type == "meta":
        raise ValueError(f"{owner}: ids are on the meta device (shapes only, no values): "
                         "pass token ids on cpu or cuda")
    if ids.numel() and not ids.is_cuda and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{owner}: ids must lie in [0, vocab_size={vocab_size}), got values in "
            f"[{int(ids.min())}, {int(ids.max())}]")


def _init(m: nn.Module, std: float) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=std)
