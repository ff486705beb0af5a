"""Models: the LM backbone (and, in later issues, Titans MAC/MAG/MAL and HMT)."""

from memarch.models.lm import Block, LMOutput, MemLM

__all__ = ["MemLM", "Block", "LMOutput"]
