"""Attention against an independent StreamingLLM simulation, and its window semantics."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memarch.mixers import Attention
from mixer_cases import CASES, D_MODEL
from reference import streaming_attention_ref

ATTN_CASES = [n for n, c in CASES.items() if c.cls is Attention]


@pytest.mark.parametrize("name", ATTN_CASES)
def test_matches_streaming_llm_reference(name, checks):
    case = CASES[name]
    m = case.build().double()
    x = torch.randn(2, case.horizon, D_MODEL, dtype=torch.float64)
    ref = streaming_attention_ref(m, x)
    checks.close(m(x).y, ref, atol=1e-10, msg=f"{name} parallel vs reference")


def test_window_semantics_by_perturbation(checks):
    """Key j influences query i iff i-W < j <= i or j < S (here W=4, S=2)."""
    m = Attention(D_MODEL, n_heads=4, window=4, n_sinks=2, block_size=3).double()
    T = 16
    x = torch.randn(1, T, D_MODEL, dtype=torch.float64)
    y = m(x).y
    for j in range(T):
        xp = x.clone()
        xp[0, j] += 1.0
        changed = (m(xp).y - y).abs().amax(-1)[0] > 1e-12          # [T]
        expect = torch.tensor([(i - 4 < j <= i) or (j < 2 and j <= i) for i in range(T)])
        checks.equal(changed, expect, f"influence of key {j}")


def test_cache_positions_differ_from_absolute_only_after_the_cache_fills(checks):
    kw = dict(n_heads=4, window=5, n_sinks=2, block_size=4)
    a = Attention(D_MODEL, **kw).double()
    c = Attention(D_MODEL, sink_positions="cache", **kw).double()
    c.load_state_dict(a.state_dict())
    x = torch.randn(1, 20, D_MODEL, dtype=torch.float64)
    ya, yc = a(x).y, c(x).y
    full = 2 + 5                       # the cache holds S + W tokens from position S + W - 1
    checks.close(yc[:, :full], ya[:, :full], atol=1e-12, msg="identical while cache not full")
    checks.true(((yc[:, full:] - ya[:, full:]).abs().amax(-1) > 1e-8).all(), "differs after")


def test_window_larger_than_sequence_equals_full_attention(checks):
    w = Attention(D_MODEL, n_heads=4, window=64, block_size=7).double()
    f = Attention(D_MODEL, n_heads=4).double()
    f.load_state_dict(w.state_dict())
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    checks.close(w(x).y, f(x).y, atol=1e-12, msg="W >= T is full causal attention")


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


def test_banded_path_never_materialises_t_by_t(checks):
    T, W = 4096, 16
    m = Attention(D_MODEL, n_heads=2, window=W, n_sinks=4, block_size=128)
    x = torch.randn(1, T, D_MODEL)
    with torch.no_grad(), _MaxNumel() as mode:
        m(x)
    # O(T (W + block)): the scores of all query blocks, [H, T, block + W - 1 + sinks]
    # (the kernel's torch path uses query blocks of 64), never [T, T]
    bound = 2 * T * (64 + W + 4)
    checks.true(mode.max <= bound < T * T // 16,
                f"largest tensor has {mode.max} elements (bound {bound}, T^2 = {T * T})")


@pytest.mark.parametrize("name", ["attn_window_sinks_cache", "attn_window_sinks_cache_gqa_learned"])
def test_rows_at_different_positions(name, checks):
    """A batch whose rows sit at different positions (continuous batching) is exact."""
    m = CASES[name].build().double()
    xa, xb = torch.randn(1, 30, D_MODEL, dtype=torch.float64), torch.randn(1, 30, D_MODEL,
                                                                            dtype=torch.float64)
    sa, sb = m(xa[:, :10]).state, m(xb[:, :17]).state
    both = type(sa)(*[torch.cat([a, b]) for a, b in zip(sa, sb)])
    y = m(torch.cat([xa[:, 10:15], xb[:, 17:22]]), both).y
    checks.close(y[:1], m(xa[:, :15]).y[:, 10:], atol=1e-10, msg="row at position 10")
    checks.close(y[1:], m(xb[:, :22]).y[:, 17:], atol=1e-10, msg="row at position 17")
