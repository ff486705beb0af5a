"""A state knows which mixer and which configuration made it.

``Mixer._check_state`` compares the given state with what ``init_state`` would make for the
mixer's configuration: type, fields, every shape (but declared growing dims), dtypes,
device and non-negative positions. Errors name the mixer, the layer, the field and the
expected and actual shapes."""

from __future__ import annotations

import itertools

import pytest
import torch
from lm_helpers import hybrid_lm
from mixer_cases import CASES, D_MODEL

from memarch import mixers as mx
from memarch import state as st

N = 11  # tokens before the state is handed over (past windows of 8 and conv widths)


def _state_after(m, n=N, B=2):
    return m(torch.randn(B, n, D_MODEL)).state


def _same_layout(a, b) -> bool:
    ta, tb = st.tensors(a), st.tensors(b)
    return (type(a) is type(b) and len(ta) == len(tb)
            and all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(ta, tb))
            and [f is None for f in a] == [f is None for f in b])


@pytest.mark.parametrize("a,b", [(a, b) for a, b in itertools.permutations(CASES, 2)])
def test_state_from_another_mixer_is_refused_unless_identical_layout(a, b, checks):
    """Probe: a state from another mixer type or configuration (67 raw AttributeErrors /
    size mismatches, 8 silent wrong results before)."""
    ma, mb = CASES[a].build(), CASES[b].build()
    sa, sb = _state_after(ma), _state_after(mb)
    x = torch.randn(2, 3, D_MODEL)
    if _same_layout(sa, sb):                 # e.g. sinks "absolute" vs "cache": same content
        checks.true(mb(x, sa).y.shape == x.shape, f"{a} -> {b}: compatible state runs")
        return
    with pytest.raises((ValueError, TypeError)) as e:
        mb(x, sa)
    msg = str(e.value)
    checks.true(msg.startswith(f"{type(mb).__name__} (layer 0): "), f"names the mixer: {msg}")
    checks.true("state" in msg and "init_state" in msg, f"says what is expected: {msg}")


@pytest.mark.parametrize("given,layer,pattern", [
    # window-8 state in a window-16 layer (was 0.49 off)
    (dict(window=8), dict(window=16), r"Attention \(layer 0\): state field 'k' has shape "
                                      r"\(2, 4, 7, 8\) but this configuration expects "
                                      r"\(2, 4, 15, 8\)"),
    # windowed state in full attention (was 0.19 off)
    (dict(window=8), dict(), r"Attention \(layer 0\): state must be a KVCacheState, "
                             r"got a SinkWindowState"),
    (dict(), dict(window=8), r"state must be a SinkWindowState, got a KVCacheState"),
    (dict(window=8, n_sinks=2), dict(window=8, n_sinks=3),
     r"state field 'sink_k' has shape \(2, 4, 2, 8\) but this configuration expects "
     r"\(2, 4, 3, 8\)"),
    (dict(n_kv_heads=2), dict(n_kv_heads=4), r"state field 'k' has shape \(2, 2, 11, 8\) "
                                             r"but this configuration expects \(2, 4, L, 8\)"),
])
def test_attention_configuration_changes(given, layer, pattern, checks):
    """Probe: same mixer type, another configuration."""
    s = _state_after(mx.Attention(D_MODEL, layer_idx=0, n_heads=4, **given))
    m = mx.Attention(D_MODEL, layer_idx=0, n_heads=4, **layer)
    with pytest.raises(ValueError, match=pattern):
        m(torch.randn(2, 1, D_MODEL), s)
    checks.n += 1


def test_short_conv_kernel_size_change(checks):
    """Probe: ShortConv(K=3) with a K=4 state returned T+1 outputs."""
    s = _state_after(mx.ShortConv(D_MODEL, kernel_size=4))
    m = mx.ShortConv(D_MODEL, layer_idx=3, kernel_size=3)
    with pytest.raises(ValueError, match=r"ShortConv \(layer 3\): state field 'conv' has shape "
                                         r"\(2, 3, 32\) but this configuration expects "
                                         r"\(2, 2, 32\)"):
        m(torch.randn(2, 5, D_MODEL), s)
    checks.n += 1


def test_normalize_false_refuses_a_normalizer(checks):
    """Probe: ``normalize=False`` silently dropped ``z``."""
    kw = dict(n_heads=4, feature_map="relu")
    s = _state_after(mx.LinearAttention(D_MODEL, normalize=True, **kw))
    m = mx.LinearAttention(D_MODEL, layer_idx=0, normalize=False, **kw)
    with pytest.raises(ValueError, match=r"state field 'z' must be None for this "
                                         r"configuration, got a tensor of shape \(2, 4, 8\)"):
        m(torch.randn(2, 5, D_MODEL), s)
    s2 = _state_after(m)
    m2 = mx.LinearAttention(D_MODEL, layer_idx=0, normalize=True, **kw)
    with pytest.raises(ValueError, match=r"state field 'z' must be a tensor of shape "
                                         r"\(2, 4, 8\), got a NoneType"):
        m2(torch.randn(2, 5, D_MODEL), s2)
    checks.n += 2


def test_growing_dims_must_agree_and_positions_must_be_valid(checks):
    m = mx.Attention(D_MODEL, layer_idx=1, n_heads=4)
    s = _state_after(m)
    x = torch.randn(2, 1, D_MODEL)
    with pytest.raises(ValueError, match=r"state field 'v' has size 10 in dim 2 but field 'k' "
                                         r"has size 11 there; they must agree"):
        m(x, s._replace(v=s.v[:, :, 1:]))
    with pytest.raises(ValueError, match=r"state field 'pos' must hold non-negative positions, "
                                         r"got \[-1, 11\]"):
        m(x, s._replace(pos=torch.tensor([-1, 11])))
    with pytest.raises(ValueError, match=r"state field 'pos' must have dtype torch.int64, "
                                         r"got torch.float32"):
        m(x, s._replace(pos=s.pos.float()))
    with pytest.raises(ValueError, match=r"malformed state: state tensors disagree on the batch "
                                         r"size \(dim 0\): \[2, 3\]"):
        m(x, s._replace(pos=torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"state must be a KVCacheState, got a tuple"):
        m(x, tuple(s))
    checks.n += 5


def test_memlm_names_the_layer(checks):
    """Probe: MemLM with its layer states swapped or taken from another model."""
    lm = hybrid_lm()
    ids = torch.randint(0, 61, (2, 6))
    s = lm(ids).state
    swapped = (s[1], s[0], *s[2:])
    with pytest.raises(ValueError, match=r"\(layer 0\): state must be a "):
        lm(ids, swapped)
    with pytest.raises(ValueError, match=r"state must be a tuple with one entry per layer"):
        lm(ids, list(s))
    checks.true(lm(ids, s).logits.shape[:2] == (2, 6), "a valid state still works")
