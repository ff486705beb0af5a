"""Models: the LM backbone (``MemLM``) and wrappers around it (``HMT``)."""

from memarch.models.hmt import HMT, HMTState
from memarch.models.lm import Block, LMOutput, MemLM

__all__ = ["MemLM", "Block", "LMOutput", "HMT", "HMTState"]
