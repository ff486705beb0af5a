"""Building blocks shared by mixers and models (no Lightning, Hydra or Triton; nothing from
``memarch.mixers``): RMSNorm, SwiGLU, rotary embeddings, the short causal convolution."""

from memarch.modules.conv import causal_conv, causal_conv_step
from memarch.modules.mlp import SwiGLU
from memarch.modules.norm import RMSNorm
from memarch.modules.rotary import Rotary, apply_rotary

__all__ = ["RMSNorm", "Rotary", "SwiGLU", "apply_rotary", "causal_conv", "causal_conv_step"]
