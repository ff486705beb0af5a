"""Bad input raises a clear error that names the parameter and what was expected."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import hybrid_lm
from mixer_cases import CASES, D_MODEL

from memarch.mixers import Attention, ShortConv
from memarch.models import MemLM


@pytest.mark.parametrize("name", list(CASES))
def test_mixer_input_validation(name, checks):
    m = CASES[name].build()
    x = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match=r"x must have rank 3 \[B, T, D\].*got rank 2"):
        m(x[0])
    with pytest.raises(ValueError, match=rf"last dimension must equal d_model={D_MODEL}, got 7"):
        m(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="T >= 1"):
        m(x[:, :0])
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m(x.numpy())
    with pytest.raises(ValueError, match="batch size mismatch: x has batch size 2 but the "
                                         "state has batch size 3"):
        m(x, m.init_state(3))
    with pytest.raises(TypeError, match=r"dtype mismatch: x has dtype torch.float32.*must have "
                                        r"dtype torch.float32, got torch.float64"):
        m(x, m.init_state(2, dtype=torch.float64))
    checks.true(m(x, m.init_state(2)).y.shape == x.shape, "valid input still works")


def test_constructor_validation(checks):
    for kwargs, pat in [
        (dict(n_heads=5), "n_heads=5 must divide d_model=32"),
        (dict(n_heads=4, n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
        (dict(window=0), "window must be a positive int or None, got 0"),
        (dict(n_sinks=2), "n_sinks > 0 needs a window"),
        (dict(window=4, sink_positions="slot"), "sink_positions must be 'absolute' or 'cache'"),
    ]:
        with pytest.raises(ValueError, match=pat):
            Attention(D_MODEL, **kwargs)
        checks.n += 1
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        ShortConv(D_MODEL, kernel_size=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        ShortConv(D_MODEL, activation="gelu")


def test_model_input_validation(checks):
    m = hybrid_lm()
    ids = torch.randint(0, 61, (2, 6))
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[B, T\]"):
        m(ids[0])
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \[B, T\]"):
        m(ids.float())
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=61\), got values in"):
        m(ids + 60)
    with pytest.raises(ValueError, match=r"state must be a tuple with one entry per layer \(4\)"):
        m(ids, m.init_state(2)[:2])
    with pytest.raises(ValueError, match="batch size mismatch"):
        m(ids, m.init_state(3))
    checks.true(isinstance(m(ids).state, tuple), "valid input works")
    with pytest.raises(ValueError, match="mixers must be a non-empty mapping"):
        MemLM(vocab_size=4, d_model=8, mixers={}, layer_pattern=["a"])


def test_constructor_probes_of_issue_10(checks):
    """Constructor probes: ``n_heads=0`` and ``feature_dim=0`` silently became the default;
    ``n_kv_heads`` < 1, ``MemLM(vocab_size=0 / d_model < 1)`` and batch size 0 for
    windowed attention had no clear error."""
    from memarch.mixers import BaseConv, LinearAttention
    for cls, kwargs, pat in [
        (Attention, dict(n_heads=0), "Attention: n_heads must be a positive int, got 0"),
        (Attention, dict(n_heads=-2), "Attention: n_heads must be a positive int, got -2"),
        (Attention, dict(n_heads=4, n_kv_heads=0), "n_kv_heads must be a positive int, got 0"),
        (Attention, dict(n_heads="4"), "n_heads must be a positive int, got '4'"),
        (Attention, dict(n_sinks=-1, window=4), "n_sinks must be an int >= 0, got -1"),
        (LinearAttention, dict(n_heads=0), "LinearAttention: n_heads must be a positive int"),
        (LinearAttention, dict(feature_dim=0), "LinearAttention: feature_dim must be a "
                                               "positive int, got 0"),
        (Attention, dict(window=True), "window must be a positive int or None, got True"),
        (Attention, dict(rope_base=0.0), "rope_base must be a number > 1, got 0.0"),
        (ShortConv, dict(kernel_size=1.5), "kernel_size must be an int >= 1, got 1.5"),
        (BaseConv, dict(expand_proj=1.5), "expand_proj \\* d_model must be even"),
    ]:
        with pytest.raises(ValueError, match=pat):
            cls(D_MODEL, **kwargs)
        checks.n += 1
    conv = {"c": ShortConv}
    for kwargs, pat in [(dict(vocab_size=0, d_model=8), "vocab_size must be a positive int"),
                        (dict(vocab_size=5, d_model=0), "d_model must be a positive int"),
                        (dict(vocab_size=5, d_model=8, d_hidden=-1), "d_hidden must be"),
                        (dict(vocab_size=5, d_model=8, norm_eps=-1.0), "norm_eps must be a "
                                                                        "number > 0")]:
        with pytest.raises(ValueError, match=pat):
            MemLM(mixers=conv, layer_pattern=["c"], **kwargs)
        checks.n += 1
    m = Attention(D_MODEL, n_heads=4, window=4, n_sinks=1)
    with pytest.raises(ValueError, match=r"Attention: x must hold at least one sequence "
                                         r"\(B >= 1\), got B=0"):
        m(torch.randn(0, 3, D_MODEL))
    checks.n += 1
