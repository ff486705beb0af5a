"""Tiny random Hugging Face models (built by ``transformers`` from a config in the test) and
their saved directories, for exactness tests against ``memarch.models.from_hf``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def import_transformers():
    """``transformers``, or skip. transformers >= 5 imports the PyPI package ``kernels``,
    and the repository's own ``kernels/`` folder (installed as ``memarch.kernels``) would
    shadow it from the repository root: import with the root off ``sys.path``."""
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT)]
    try:
        tf = pytest.importorskip("transformers")
        # the lazy modules resolve now, while the root is off the path
        for name in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                     "LlamaConfig", "MistralConfig", "Qwen2Config", "GenerationConfig"):
            getattr(tf, name)
        import transformers.generation.utils  # noqa: F401
    finally:
        sys.path[:] = saved
    return tf


FAMILY = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
          "mistral": ("MistralConfig", "MistralForCausalLM"),
          "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}


def hf_model(family: str, *, seed: int = 0, **kw):
    """A random ``transformers`` model: width 64, 8 query heads over 2 KV heads (GQA, 4 per
    KV head), 2 layers, vocabulary 97; weights at std 0.1 so that logits depend visibly on
    every detail (RoPE scaling, windows, biases)."""
    import torch
    tf = import_transformers()
    conf_cls, model_cls = FAMILY[family]
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=8, num_key_value_heads=2, initializer_range=0.1,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base.update(kw)
    torch.manual_seed(seed)
    model = getattr(tf, model_cls)(getattr(tf, conf_cls)(**base)).eval()
    with torch.no_grad():     # norms and biases start at 1 / 0: make them matter too
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0, 0.1)
    return model
