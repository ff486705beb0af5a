"""Models: the LM backbone (``MemLM``), wrappers around it (``HMT``) and pretrained
Hugging Face checkpoints and GGUF files as MemLMs (``from_hf``, ``from_gguf``)."""

from memarch.models.gguf import from_gguf
from memarch.models.hf import from_hf
from memarch.models.hmt import HMT, HMTState
from memarch.models.lm import Block, LMOutput, MemLM

__all__ = ["MemLM", "Block", "LMOutput", "HMT", "HMTState", "from_hf", "from_gguf"]
