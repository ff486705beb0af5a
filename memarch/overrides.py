"""Change a trained model's shape-free constructor arguments before rebuilding it.

StreamingLLM's workflow: train a model with dense attention, then evaluate it with a window
and attention sinks. The weights are the same (a window changes which keys a query sees, not
any parameter), so a checkpoint's model config can be edited and the weights loaded into the
edited model:

    cfg = apply_overrides(cfg, {"mixers.attn.window": 256, "mixers.attn.n_sinks": 4,
                                "mixers.attn.sink_positions": "cache"})
    memarch.checkpoint.load(path, overrides={...})                    # the same, on a file
    python -m memarch.eval checkpoint=... model_overrides='{mixers.attn.window: 256}'

Keys are dotted paths into the config (Hydra ``_target_`` format): ``mixers.<slot>.<kwarg>``
for a ``MemLM``, ``backbone.mixers.<slot>.<kwarg>`` for an ``HMT``. Only the kwargs in
``SHAPE_FREE_KEYS`` may be changed; they change no parameter shape, and
``memarch.checkpoint.load`` proves it by loading the weights strictly.

What an override means:

* ``window``, ``n_sinks``, ``sink_positions`` on ``Attention`` (BASED's sliding window,
  Titans MAL's attention, MAG's ``window``): exactly StreamingLLM's "evaluate a dense model
  with a window + sinks". Within the window the logits are unchanged.
* ``block_size`` (banded attention's query block) and ``impl`` (kernel implementation):
  speed and memory only; the function is the same up to floating-point rounding.
* Titans' ``chunk_size`` (``NeuralMemory``, or ``memory.chunk_size`` of MAG / MAC) and MAC's
  ``segment_len``: allowed, but they are part of the model's math (the memory's update chunk;
  MAC's attention segment, which is also its memory's default chunk), so the overridden model
  computes a different function from the one that was trained. HMT's ``segment_len`` alike.
"""

from __future__ import annotations

import copy
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from memarch.config import resolve

__all__ = ["SHAPE_FREE_KEYS", "annotation_leaves", "apply_overrides", "describe_leaves",
           "kwarg_leaves", "kwargs_owner", "parse_overrides", "value_fits"]

SHAPE_FREE_KEYS = frozenset({
    # Attention (MemoryAsGate takes window too): StreamingLLM's window and sinks; speed only
    "window", "n_sinks", "sink_positions", "block_size",
    # kernel implementation of Attention, LinearAttention, BasedLinearAttention, MoM
    "impl",
    # Titans NeuralMemory's update chunk, MemoryAsContext's and HMT's segment: change the math
    "chunk_size", "segment_len",
})

_SCALARS = (type(None), bool, int, float, str)


def parse_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A flat ``{dotted.key: value}`` dict from a YAML/flow string such as
    ``'{mixers.attn.window: 256, mixers.attn.n_sinks: 4}'``, a dict or an OmegaConf
    DictConfig; nested mappings are flattened (``{"mixers": {"attn": {"window": 256}}}``
    -> ``{"mixers.attn.window": 256}``). None or an empty string: no overrides."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        if not overrides.strip():
            return {}
        import yaml
        try:
            overrides = yaml.safe_load(overrides)
        except yaml.YAMLError as e:
            raise ValueError(f"model_overrides: cannot parse {overrides!r} as a YAML mapping "
                             f"such as '{{mixers.attn.window: 256}}': "
                             f"{str(e).splitlines()[0]}") from None
        if overrides is None:
            return {}
    if type(overrides).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not isinstance(overrides, Mapping):
        raise ValueError(f"model_overrides must be a mapping of dotted keys to values, e.g. "
                         f"'{{mixers.attn.window: 256}}', got {overrides!r}")
    flat: dict[str, Any] = {}
    _flatten(overrides, "", flat)
    return flat


def _flatten(tree: Mapping, prefix: str, out: dict) -> None:
    for k, v in tree.items():
        if not isinstance(k, str) or not k or ":" in k:
            hint = " (write 'key: value', with a space after the colon)" if ":" in str(k) else ""
            raise ValueError(f"model_overrides: bad key {prefix + str(k)!r}{hint}")
        if isinstance(v, Mapping):
            _flatten(v, f"{prefix}{k}.", out)
        else:
            out[prefix + k] = v


def apply_overrides(cfg: dict, overrides: str | Mapping[str, Any] | None) -> dict:
    """A deep copy of the model config ``cfg`` with the dotted keys of ``overrides`` set.

    Raises ValueError when a key's parent path is not in ``cfg`` (naming the keys that are),
    when its last name is not in ``SHAPE_FREE_KEYS``, when the config there neither holds it
    nor builds a class that takes it, when a value is not a plain value (None, bool,
    number, string) or names an unknown ``impl``, or when it does not fit the constructor's
    annotation strictly (``value_fits``: a bool where an int is meant, a string or an int
    where a bool is meant). The constructors check the rest when the model is rebuilt."""
    out = copy.deepcopy(cfg)
    for key, value in parse_overrides(overrides).items():
        *parents, leaf = key.split(".")
        node, up = out, None                    # up: the dict holding node
        for i, name in enumerate(parents):
            if not isinstance(node.get(name), dict):
                where = ".".join(parents[:i]) or "the top level"
                subs = sorted(k for k, v in node.items() if isinstance(v, dict))
                raise ValueError(f"model_overrides: unknown key {key!r}: the model config has "
                                 f"no {'.'.join(parents[:i + 1])!r}; sub-configs at {where}: "
                                 f"{subs}")
            node, up = node[name], node
        if leaf not in SHAPE_FREE_KEYS:
            raise ValueError(f"model_overrides: {key!r} is not allowed: {leaf!r} would change "
                             f"parameter shapes or is not a run-time setting; allowed keys: "
                             f"{sorted(SHAPE_FREE_KEYS)}")
        owner = kwargs_owner(node, up, parents[-1] if parents else None)
        if leaf not in node:
            if owner is None:
                raise ValueError(f"model_overrides: {key!r}: the config at "
                                 f"{'.'.join(parents)!r} has no {leaf!r} and names no class "
                                 f"that takes it; its keys: {sorted(node)}")
            takes = _kwargs(owner)
            if leaf not in takes:
                raise ValueError(f"model_overrides: {key!r}: {owner.__name__} takes no "
                                 f"{leaf!r} argument; it takes {sorted(takes)}")
        _check_value(key, leaf, value, owner)
        node[leaf] = value
    return out


def kwargs_owner(node: dict, up: dict | None, name: str | None) -> Any:
    """The class whose constructor takes the kwargs in ``node`` (None: unknown): its
    ``_target_`` (allow-listed before anything is imported), or for Titans MAG / MAC's
    ``memory`` dict, ``NeuralMemory``."""
    if "_target_" in node:
        return resolve(node["_target_"])
    if name == "memory" and up is not None and "_target_" in up:
        from memarch.mixers.titans import MemoryAsContext, MemoryAsGate, NeuralMemory
        cls = resolve(up["_target_"])
        if isinstance(cls, type) and issubclass(cls, (MemoryAsGate, MemoryAsContext)):
            return NeuralMemory
    return None


def _kwargs(owner: Any) -> set[str]:
    """The keyword arguments a config may give ``owner`` (the model injects d_model and
    layer_idx into mixers)."""
    params = inspect.signature(owner).parameters
    return {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD} - {
        "d_model", "layer_idx"}


def _check_value(key: str, leaf: str, value: Any, owner: Any = None) -> None:
    if not isinstance(value, _SCALARS):
        raise ValueError(f"model_overrides: {key!r} must be a plain value (null, a number, a "
                         f"string or a bool), got {value!r}")
    if owner is not None:
        leaves, default = kwarg_leaves(owner, leaf)
        if not value_fits(value, leaves, default=default):
            raise ValueError(f"model_overrides: {key!r} must be {describe_leaves(leaves)}, "
                             f"got {value!r}")
    if leaf == "impl":
        from memarch.kernels._common import IMPLS
        if value not in IMPLS:
            raise ValueError(f"model_overrides: {key!r} must be one of {IMPLS}, got {value!r}")


# -- the strict check of a value against a constructor's annotation ----------------------------
# Shared by ``apply_overrides`` and train.py's config check (memarch.lit.train.check_config):
# no truthy strings or ints where a bool is meant, no bools where a number is meant.
def annotation_leaves(tp: Any) -> list | None:
    """An annotation as a list of scalar types and ``Literal`` values (``("literal", v)``),
    or None when it admits anything else (then the value is not checked)."""
    if tp is inspect.Parameter.empty or isinstance(tp, str):
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        out = []
        for a in typing.get_args(tp):
            sub = annotation_leaves(a)
            if sub is None:
                return None
            out += sub
        return out
    if origin is typing.Literal:
        return [("literal", v) for v in typing.get_args(tp)]
    if tp in (int, float, bool, str, type(None)):
        return [tp]
    import torch
    if tp is torch.Tensor:
        return [tp]
    return None


def describe_leaves(leaves: list) -> str:
    """``"an int or null"``, ``"a bool (true/false)"``, ... for an error message."""
    kinds = {t for t in leaves if isinstance(t, type)}
    words = []
    if int in kinds and float in kinds:
        words.append("a number")
    elif int in kinds:
        words.append("an int")
    elif float in kinds:
        words.append("a float")
    if bool in kinds:
        words.append("a bool (true/false)")
    if str in kinds:
        words.append("a string")
    words += [repr(v) for t, v in (x for x in leaves if isinstance(x, tuple))]
    if type(None) in kinds:
        words.append("null")
    return " or ".join(words) or "a tensor"


def value_fits(value: Any, leaves: list | None, *, default: Any = ...) -> bool:
    """Whether ``value`` (a parsed config value) fits the annotation ``leaves``, strictly:
    a bool only where a bool is meant (not where an int or float is), no int or string
    where a bool is meant, None where None is allowed or is the default."""
    if not leaves:
        return True
    kinds = {t for t in leaves if isinstance(t, type)}
    literals = [v for t, v in (x for x in leaves if isinstance(x, tuple))]
    if value is None:
        return type(None) in kinds or default is None
    if isinstance(value, bool):
        return bool in kinds or any(v is value for v in literals)
    plain = [v for v in literals if not isinstance(v, bool)]
    if isinstance(value, int):
        return int in kinds or float in kinds or value in plain
    if isinstance(value, float):
        return float in kinds or value in plain
    if isinstance(value, str):
        return str in kinds or value in plain
    return False                                    # a list or dict for a scalar


def kwarg_leaves(owner: Any, name: str) -> tuple[list | None, Any]:
    """(the annotation leaves, the default) of ``owner``'s keyword argument ``name``; an
    unannotated argument whose default is a bool is taken as a bool."""
    try:
        p = inspect.signature(owner).parameters.get(name)
    except (TypeError, ValueError):
        return None, ...
    if p is None or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
        return None, ...
    try:
        hints = typing.get_type_hints(owner.__init__ if isinstance(owner, type) else owner)
    except Exception:  # noqa: BLE001 - unresolvable annotations: use the raw ones
        hints = {}
    default = p.default if p.default is not p.empty else ...
    leaves = annotation_leaves(hints.get(name, p.annotation))
    if leaves is None and p.annotation is p.empty and isinstance(default, bool):
        leaves = [bool]
    return leaves, default
