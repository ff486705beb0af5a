"""memarch: a PyTorch zoo of memory-augmented sequence models with exact streaming.

``import memarch`` is light on purpose (no Triton, Lightning, Hydra or wandb, and none of
the subpackages): import what you need, e.g. ``from memarch.mixers import Attention``,
``from memarch.models import MemLM``, ``from memarch.generation import generate``.
"""

__version__ = "0.1.0"
