"""A minimal ``_target_`` instantiation (Hydra's format) with no Hydra dependency, so a
checkpoint's resolved model config rebuilds the network anywhere.

Supports ``_target_`` (dotted path), ``_partial_: true`` (returns functools.partial) and
nested dicts/lists; other ``_..._`` keys are not supported and raise.

Safety: a config may come from an untrusted checkpoint, and ``_target_`` names code to run.
Only allow-listed targets are built: names under ``memarch.`` plus ``functools.partial``;
``allow("mypkg.")`` (a prefix ending in ".") or ``allow("mypkg.build")`` (an exact dotted
name) trusts more. Two checks, both against the list:

* the ``_target_`` string, BEFORE anything is imported (importing a module runs its code);
* the resolved object's own dotted name (``__module__`` + ``__qualname__``), so an allowed
  path cannot reach foreign code through a re-export (``memarch.config.importlib...``).

Under the default ``memarch.`` entry only ``torch.nn.Module`` classes are built (no memarch
function, such as ``allow`` itself or a file writer, is reachable from a config); names
allowed explicitly may be any callable. Anything else raises ``TargetNotAllowedError`` (a
ValueError) naming the target.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path
from typing import Any

from torch import nn

_ALLOWED: set[str] = {"memarch.", "functools.partial"}


class TargetNotAllowedError(ValueError):
    pass


def allow(target: str) -> None:
    """Trust ``_target_`` names: a prefix ending in "." (``"mypkg."``) or an exact dotted
    name (``"mypkg.models.Net"``). Only call it for code you trust: it runs on load."""
    if not isinstance(target, str) or not target.strip(".") or " " in target:
        raise ValueError(f"allow: expected a dotted name or a prefix ending in '.', "
                         f"got {target!r}")
    _ALLOWED.add(target)


def is_allowed(name: str) -> bool:
    return any(name.startswith(a) if a.endswith(".") else name == a for a in _ALLOWED)


def _refuse(target: str, real: str | None = None) -> TargetNotAllowedError:
    name = real or target
    why = f" (it is {real})" if real else ""
    return TargetNotAllowedError(
        f"_target_ {target!r} is not allowed{why}: checkpoint configs may only build memarch.* "
        f"(and functools.partial) unless allowed explicitly; call memarch.config.allow("
        f"{name.split('.')[0] + '.'!r}) or allow({name!r}) to trust it")


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


def resolve(target: Any) -> Any:
    """The object named by ``target``, if allow-listed (checked before any import)."""
    if not isinstance(target, str):
        raise TypeError(f"_target_ must be a dotted path string, got {target!r}")
    if not is_allowed(target):
        raise _refuse(target)
    obj = locate(target)
    real = f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', None)}"
    if not is_allowed(real):
        raise _refuse(target, real)
    if not _explicit(real) and not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        # the default "memarch." entry builds modules only: no memarch function (allow(),
        # file writers, ...) is reachable from an untrusted config
        raise TargetNotAllowedError(
            f"_target_ {target!r} is not allowed: by default only torch.nn.Module classes "
            f"under memarch. (and functools.partial) are built; call "
            f"memarch.config.allow({real!r}) to trust it")
    return obj


def _explicit(name: str) -> bool:
    """Allowed by an entry other than the default "memarch." prefix."""
    return any(name.startswith(a) if a.endswith(".") else name == a
               for a in _ALLOWED if a != "memarch.")


def check_targets(cfg: Any) -> None:
    """Raise ``TargetNotAllowedError`` unless every ``_target_`` in ``cfg`` (nested dicts
    and lists) is allowed (``resolve``: checked before anything is imported). For configs
    handed to a builder other than ``instantiate`` (Hydra's, in train.py)."""
    if isinstance(cfg, list):
        for c in cfg:
            check_targets(c)
    elif isinstance(cfg, dict):
        if "_target_" in cfg:
            resolve(cfg["_target_"])
        for v in cfg.values():
            check_targets(v)


def instantiate(cfg: Any) -> Any:
    if isinstance(cfg, list):
        return [instantiate(c) for c in cfg]
    if not isinstance(cfg, dict):
        return cfg
    if "_target_" in cfg:
        target = resolve(cfg["_target_"])   # refuse before building any nested value
    kwargs = {k: instantiate(v) for k, v in cfg.items()
              if k not in ("_target_", "_partial_", "_recursive_", "_convert_")}
    bad = [k for k in kwargs if k.startswith("_") and k.endswith("_")]
    if bad:
        raise ValueError(f"instantiate: unsupported special keys {bad}")
    if "_target_" not in cfg:
        return kwargs
    if cfg.get("_partial_", False):
        return functools.partial(target, **kwargs)
    return target(**kwargs)


def read_json_object(path: Path, *, owner: str, error: type[Exception] = ValueError) -> dict:
    """The JSON object in ``path`` (``config.json`` files); ``error`` names ``path`` when it
    is not valid JSON or not an object. The caller checks that the file exists."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{owner}: {path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise error(f"{owner}: {path} must hold a JSON object, got a JSON "
                    f"{type(obj).__name__}")
    return obj
