"""A minimal ``_target_`` instantiation (Hydra's format) with no Hydra dependency, so a
checkpoint's resolved model config rebuilds the network anywhere.

Supports ``_target_`` (dotted path), ``_partial_: true`` (returns functools.partial) and
nested dicts/lists; other ``_..._`` keys are not supported and raise.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any


def locate(path: str) -> Any:
    mod, _, name = path.rpartition(".")
    if not mod:
        raise ValueError(f"_target_ must be a dotted path, got {path!r}")
    try:
        obj = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:                   # a real missing dependency inside the module
            raise
        obj = locate(mod)                   # a nested attribute: a.b.Class.method
    try:
        return getattr(obj, name)
    except AttributeError:
        raise ImportError(f"_target_ {path!r}: {mod!r} has no attribute {name!r}") from None


def instantiate(cfg: Any) -> Any:
    if isinstance(cfg, list):
        return [instantiate(c) for c in cfg]
    if not isinstance(cfg, dict):
        return cfg
    kwargs = {k: instantiate(v) for k, v in cfg.items()
              if k not in ("_target_", "_partial_", "_recursive_", "_convert_")}
    bad = [k for k in kwargs if k.startswith("_") and k.endswith("_")]
    if bad:
        raise ValueError(f"instantiate: unsupported special keys {bad}")
    if "_target_" not in cfg:
        return kwargs
    target = locate(cfg["_target_"])
    if cfg.get("_partial_", False):
        return functools.partial(target, **kwargs)
    return target(**kwargs)
