"""Token mixers under one contract (see ``memarch.mixers.base``).

Import a layer into your own model without Hydra, Lightning or Triton::

    from memarch.mixers import Attention
    attn = Attention(d_model=256, n_heads=4, window=64, n_sinks=4)
    out = attn(x)                      # x [B, T, 256]; out.y, out.state
    out2 = attn(x_next, out.state)     # continue the stream exactly
"""

from memarch.mixers.attention import Attention, KVCacheState, SinkWindowState
from memarch.mixers.base import Mixer, MixerOutput
from memarch.mixers.based import BaseConv, BasedLinearAttention
from memarch.mixers.feature_maps import TaylorFeatureMap, make_feature_map
from memarch.mixers.linear_attention import LinearAttention, LinearAttentionState
from memarch.mixers.mom import MoM, MoMState
from memarch.mixers.short_conv import ShortConv, ShortConvState
from memarch.mixers.titans import (
    MemoryAsContext,
    MemoryAsContextState,
    MemoryAsGate,
    MemoryAsGateState,
    NeuralMemory,
    NeuralMemoryState,
)

__all__ = [
    "Mixer", "MixerOutput",
    "Attention", "KVCacheState", "SinkWindowState",
    "ShortConv", "ShortConvState",
    "LinearAttention", "LinearAttentionState", "BasedLinearAttention", "BaseConv",
    "TaylorFeatureMap", "make_feature_map",
    "NeuralMemory", "NeuralMemoryState", "MemoryAsContext", "MemoryAsContextState",
    "MemoryAsGate", "MemoryAsGateState",
    "MoM", "MoMState",
]
