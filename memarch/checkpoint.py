"""Load a trained network from a training checkpoint without Lightning or Hydra.

Training checkpoints (Lightning's) carry the resolved model config under
``"memarch_model_config"`` and the training data's tokenizer under ``"memarch_tokenizer"``;
``load`` rebuilds the network from it with ``memarch.config.instantiate`` and loads the
weights (the LightningModule stores the network as ``net``, so its keys start with
``"net."``).

Loading never runs code from the file: ``read`` unpickles with ``torch.load(weights_only=True)``
(tensors, numbers, strings, containers: all a memarch training checkpoint holds, RNG and
optimizer states included, so no extra safe globals are needed), and the
config builds only allow-listed ``_target_``s (see ``memarch.config``). A file that is not a
checkpoint, is truncated, or holds other Python objects raises ``CheckpointError`` (a
ValueError) naming the path.

``load(path, overrides={"mixers.attn.window": 256, "mixers.attn.n_sinks": 4})`` rebuilds the
model with shape-free constructor arguments changed (``memarch.overrides``: StreamingLLM's
dense-trained model evaluated with a window and sinks); the weights then load strictly, the
proof that no parameter shape changed, and ``Loaded.config`` is the changed config.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from memarch.config import TargetNotAllowedError, instantiate
from memarch.overrides import apply_overrides, parse_overrides

CONFIG_KEY = "memarch_model_config"
TOKENIZER_KEY = "memarch_tokenizer"   # the training data's tokenizer name/path (None: token task)


class CheckpointError(ValueError):
    """The file cannot be read as a memarch checkpoint (corrupt, truncated or unsafe)."""


class Loaded(NamedTuple):
    model: torch.nn.Module
    config: dict
    checkpoint: dict


def read(path: str | Path, *, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """The checkpoint dict in ``path``, unpickled with ``weights_only=True``; ``mmap=True``
    maps the tensors instead of reading them (to look at the config of a large file)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, not a checkpoint file "
                              "(pass e.g. .../checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    with open(path, "rb") as f:                 # a permission error is reported as such
        try:
            ckpt = torch.load(str(path) if mmap else f, map_location=map_location,
                              weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            # torch's weights-only unpickler names a refused class/function as
            # "GLOBAL mod.name"; any other unpickling error means bytes that are not a pickle
            why = next((ln.strip() for ln in str(e).splitlines()
                        if any(w in ln for w in ("GLOBAL", "unrecognized function",
                                                 "Unsupported global"))),
                       None)
            if why is None:
                raise _corrupt(path, e) from None
            raise CheckpointError(
                f"checkpoint {path}: refused: it holds Python objects other than tensors and "
                f"plain data, which could run code when loaded ({why}); memarch loads "
                "checkpoints with torch.load(weights_only=True) only") from None
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
                AttributeError) as e:           # what torch's zip/pickle readers raise
            raise _corrupt(path, e) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: not a memarch checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    return ckpt


def _corrupt(path: Path, e: Exception) -> CheckpointError:
    """One short line: torch's messages run on with advice that does not apply here."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Unsupported operand" in ln), lines[0] if lines else "")
    detail = detail.split(". ")[0][:160]
    if path.stat().st_size == 0:
        detail = "the file is empty"
    return CheckpointError(f"checkpoint {path}: not a memarch checkpoint or truncated "
                           f"({type(e).__name__}: {detail})")


def load(path: str | Path, *, map_location: Any = "cpu", strict: bool = True,
         overrides: str | Mapping[str, Any] | None = None) -> Loaded:
    """Rebuild the network in ``path`` (eval mode). Returns (model, config, raw checkpoint).

    ``overrides``: shape-free constructor arguments to change before the model is built,
    as dotted keys (``{"mixers.attn.window": 256}``), a nested dict or a YAML string (see
    ``memarch.overrides.apply_overrides``); with any, the weights load strictly whatever
    ``strict`` says, and the returned config is the changed one (the raw checkpoint keeps
    the stored one)."""
    overrides = parse_overrides(overrides)      # a malformed value fails before reading
    ckpt = read(path, map_location=map_location)
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"checkpoint {path}: no {CONFIG_KEY!r} entry; it was not written by "
                         "memarch's training (memarch.lit.LitLM)")
    cfg = ckpt[CONFIG_KEY]
    if not isinstance(cfg, dict) or "_target_" not in cfg:
        raise CheckpointError(f"checkpoint {path}: its {CONFIG_KEY!r} entry must be a model "
                              f"config (a dict with a _target_), got {cfg!r:.200}")
    sd = ckpt.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"checkpoint {path}: no 'state_dict' entry with the weights "
                              f"(got {type(sd).__name__})")
    if overrides:
        try:
            cfg = apply_overrides(cfg, overrides)
        except ValueError as e:
            raise type(e)(f"checkpoint {path}: {e}") from None
        strict = True                           # the proof that no parameter shape changed
    try:
        model = instantiate(cfg)
    except TargetNotAllowedError as e:
        raise TargetNotAllowedError(f"checkpoint {path}: {e}") from None
    except Exception as e:
        if overrides:                           # the constructor refuses an override's value
            raise ValueError(f"checkpoint {path}: model_overrides {overrides}: the model "
                             f"cannot be built with them: {type(e).__name__}: {e}") from e
        # re-raised with the config for context
        raise ValueError(f"checkpoint {path}: cannot rebuild the model from its config "
                         f"{cfg!r}: {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise CheckpointError(f"checkpoint {path}: its config builds a "
                              f"{type(model).__name__}, not a torch.nn.Module")
    sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    try:
        model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        changed = (f" with model_overrides {overrides} (which load the weights strictly)"
                   if overrides else "")
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the model its config "
                              f"builds{changed}: {e}") from None
    return Loaded(model.eval(), cfg, ckpt)
