"""Small MemLM builders for tests."""

from __future__ import annotations

from functools import partial

from memarch.mixers import Attention, ShortConv
from memarch.models import MemLM


def hybrid_lm(vocab=61, d_model=32, window=8, n_sinks=3, sink_positions="cache", **kw):
    """conv -> windowed attention with sinks -> full GQA attention with a learned sink."""
    return MemLM(
        vocab_size=vocab, d_model=d_model,
        mixers={
            "conv": partial(ShortConv, kernel_size=4),
            "swa": partial(Attention, n_heads=4, window=window, n_sinks=n_sinks,
                           sink_positions=sink_positions, block_size=5),
            "attn": partial(Attention, n_heads=4, n_kv_heads=2, learned_sink=True),
        },
        layer_pattern=["conv", "swa", "attn", "swa"], **kw)


def streaming_lm(vocab=64, d_model=32, window=64, n_sinks=4):
    """Every layer constant-state: conv + window-64/4-sink attention."""
    return MemLM(
        vocab_size=vocab, d_model=d_model,
        mixers={"conv": partial(ShortConv, kernel_size=4),
                "swa": partial(Attention, n_heads=2, window=window, n_sinks=n_sinks,
                               sink_positions="cache")},
        layer_pattern=["conv", "swa", "swa"], d_hidden=64)
