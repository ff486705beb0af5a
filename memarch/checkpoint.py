"""Load a trained network from a training checkpoint without Lightning or Hydra.

Training checkpoints (Lightning's) carry the resolved model config under
``"memarch_model_config"`` and the training data's tokenizer under ``"memarch_tokenizer"``; ``load`` rebuilds the network from it with
``memarch.config.instantiate`` and loads the weights (the LightningModule stores the network
as ``net``, so its keys start with ``"net."``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from memarch.config import instantiate

CONFIG_KEY = "memarch_model_config"
TOKENIZER_KEY = "memarch_tokenizer"   # the training data's tokenizer name/path (None: token task)


class Loaded(NamedTuple):
    model: torch.nn.Module
    config: dict
    checkpoint: dict


def read(path: str | Path, *, map_location: Any = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    # weights_only=False: Lightning checkpoints hold optimizer/loop states; only load
    # checkpoints you trust.
    return torch.load(path, map_location=map_location, weights_only=False)


def load(path: str | Path, *, map_location: Any = "cpu", strict: bool = True) -> Loaded:
    """Rebuild the network in ``path`` (eval mode). Returns (model, config, raw checkpoint)."""
    ckpt = read(path, map_location=map_location)
    if CONFIG_KEY not in ckpt:
        raise ValueError(f"checkpoint {path}: no {CONFIG_KEY!r} entry; it was not written by "
                         "memarch's training (memarch.lit.LitLM)")
    cfg = ckpt[CONFIG_KEY]
    try:
        model = instantiate(cfg)
    except Exception as e:  # noqa: BLE001 - re-raised with the config for context
        raise ValueError(f"checkpoint {path}: cannot rebuild the model from its config "
                         f"{cfg!r}: {type(e).__name__}: {e}") from e
    sd = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    model.load_state_dict(sd, strict=strict)
    return Loaded(model.eval(), cfg, ckpt)
