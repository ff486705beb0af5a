"""Building blocks shared by mixers and models (no Lightning, Hydra or Triton)."""

from memarch.modules.mlp import SwiGLU
from memarch.modules.norm import RMSNorm
from memarch.modules.rotary import Rotary, apply_rotary
from memarch.mixers.short_conv import ShortConv, ShortConvState  # a mixer; re-exported

__all__ = ["RMSNorm", "SwiGLU", "Rotary", "apply_rotary", "ShortConv", "ShortConvState"]
