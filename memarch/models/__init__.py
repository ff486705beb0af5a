"""Models: the LM backbone (``MemLM``), wrappers around it (``HMT``) and pretrained
Hugging Face checkpoints as MemLMs (``from_hf``)."""

from memarch.models.hf import from_hf
from memarch.models.hmt import HMT, HMTState
from memarch.models.lm import Block, LMOutput, MemLM

__all__ = ["MemLM", "Block", "LMOutput", "HMT", "HMTState", "from_hf"]
