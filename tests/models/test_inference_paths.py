"""The inference fast paths are the paths taken, and they compute what the plain
paths compute: exact streaming, NaN causality and functional states included.

* window decode without autograd: one SDPA call over a contiguous run of the window buffer
  (``Attention._decode_step`` / ``_window_decode``), the guarded softmax when a visible
  entry is non-finite;
* the ops' non-finite guard runs only when an input is not known finite (``known_finite``);
* ``sliding_window_attn(impl="torch")``: fused SDPA blocks, NaN for outputs that see a
  non-finite entry;
* generation checks a state once when it enters, then trusts the model's own states;
* prefill computes the last position's logits only (``logits_to_keep``).
"""

from __future__ import annotations

import functools

import pytest
import torch

import memarch.mixers.attention as attn_mod
from memarch import generation
from memarch.kernels import _common, delta_rule, linear_attn, sliding_window_attn
from memarch.mixers import Attention
from memarch.mixers.base import Mixer
from memarch.models.lm import MemLM

D = 32
WINDOWS = {
    "window": dict(n_heads=4, window=6),
    "sinks_absolute": dict(n_heads=4, window=6, n_sinks=2),
    "sinks_cache": dict(n_heads=4, window=6, n_sinks=3, sink_positions="cache"),
    "sinks_cache_gqa": dict(n_heads=4, n_kv_heads=2, window=5, n_sinks=2,
                            sink_positions="cache"),
    "window1_sinks": dict(n_heads=2, window=1, n_sinks=2),
}


class Spy:
    """Counts calls of ``owner.name`` (and keeps the results) while the test runs."""

    def __init__(self, monkeypatch, owner, name):
        self.calls, self.results = 0, []
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*a, **k):
            self.calls += 1
            out = fn(*a, **k)
            self.results.append(out)
            return out
        monkeypatch.setattr(owner, name, wrapped)


def _tokens(m, x, state=None, grad=False):
    """Token by token, returning (outputs [B, T, D], final state)."""
    ys = []
    with torch.set_grad_enabled(grad):
        for t in range(x.shape[1]):
            out = m(x[:, t:t + 1], state)
            ys.append(out.y)
            state = out.state
    return torch.cat(ys, 1), state


@pytest.mark.parametrize("cfg", list(WINDOWS))
def test_window_decode_without_grad_is_the_fast_path_and_exact(cfg, monkeypatch, checks):
    """Prefill 4 tokens, then decode token by token under no_grad: the fused step runs for
    every token once all sinks are set, and outputs and final state equal one call (with
    autograd, the banded op) in fp64."""
    torch.manual_seed(0)
    m = Attention(D, **WINDOWS[cfg]).double()
    x = torch.randn(2, 23, D, dtype=torch.float64)
    full = m(x)
    step = Spy(monkeypatch, Attention, "_decode_step")
    sdpa = Spy(monkeypatch, attn_mod.F, "scaled_dot_product_attention")
    with torch.no_grad():
        pre = m(x[:, :4])
    y, s = _tokens(m, x[:, 4:], pre.state)
    S = m.n_sinks
    checks.true(step.calls == x.shape[1] - max(4, S), f"{cfg}: fused steps {step.calls}")
    checks.true(sdpa.calls >= step.calls, f"{cfg}: SDPA in every clean step")
    checks.close(torch.cat([pre.y, y], 1), full.y, atol=1e-10, rtol=1e-10, msg=f"{cfg} outputs")
    checks.close(s, full.state, atol=1e-10, rtol=1e-10, msg=f"{cfg} state")


@pytest.mark.parametrize("cfg", ["window", "sinks_cache"])
def test_window_decode_without_grad_keeps_states_functional(cfg, checks):
    """Branching from an older state (two steps back) gives what it gave the first time,
    and continuing never changes what an older state shows."""
    torch.manual_seed(0)
    m = Attention(D, **WINDOWS[cfg]).double()
    x = torch.randn(1, 30, D, dtype=torch.float64)
    with torch.no_grad():
        s0 = m(x[:, :12]).state
        snap = [t.clone() for t in s0]
        o1 = m(x[:, 12:13], s0)
        o2 = m(x[:, 13:14], o1.state)
        m(x[:, 14:15], o2.state)
        again = m(x[:, 12:13], s0)                    # a branch from s0
        _tokens(m, x[:, 15:], o2.state)               # many more steps from o2
    checks.close(list(s0), snap, atol=0, msg=f"{cfg}: s0 unchanged")
    checks.close(again.y, o1.y, atol=0, msg=f"{cfg}: branch output")
    checks.close(again.state, o1.state, atol=0, msg=f"{cfg}: branch state")


@pytest.mark.parametrize("cfg", ["window", "sinks_absolute", "sinks_cache"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_window_decode_without_grad_is_causal_for_non_finite_input(cfg, bad, checks):
    """A non-finite token t in no-grad decoding: outputs before t unchanged, every output
    that sees t (while it is in the window; for ever when it is a sink) non-finite, and
    the outputs after it left the window equal the clean run (the fused path is back).
    For NaN the pattern equals one call with autograd (NaN where NaN)."""
    torch.manual_seed(0)
    m = Attention(D, **WINDOWS[cfg]).double()
    W, S = m.window, m.n_sinks
    x = torch.randn(1, 30, D, dtype=torch.float64)
    t = 9 if S == 0 else 1                                  # a window token, or a sink
    xb = x.clone()
    xb[0, t, 3] = bad
    with torch.no_grad():
        clean, _ = _tokens(m, x)
        y, _ = _tokens(m, xb)
    sees = torch.zeros(30, dtype=torch.bool)
    sees[t:t + W] = True
    if t < S:
        sees[t:] = True
    checks.close(y[0, :t], clean[0, :t], atol=0, msg=f"{cfg}: before t")
    checks.true(bool((~y[0, sees].isfinite()).all(-1).all()), f"{cfg}: outputs seeing t")
    checks.close(y[0, ~sees & (torch.arange(30) > t)], clean[0, ~sees & (torch.arange(30) > t)],
                 atol=1e-12, rtol=1e-12, msg=f"{cfg}: after t left the window")
    if bad != bad:
        torch.testing.assert_close(y, m(xb).y, atol=1e-10, rtol=1e-10, equal_nan=True)
        checks.n += 1


def test_window_decode_guard_sees_a_minus_inf_key(checks):
    """A key of -inf (its score -inf: a fused kernel would give it weight 0 and a finite,
    wrong output) in a state from outside: the copy is checked, the guarded softmax runs,
    and the output is NaN."""
    torch.manual_seed(0)
    m = Attention(D, n_heads=4, window=6).double()
    x = torch.randn(1, 10, D, dtype=torch.float64)
    with torch.no_grad():
        s = m(x[:, :8]).state
        q = m.q_proj(x[:, 8:9])                         # make every score with key 2 -inf
        k = s.k.clone()
        k[:, :, 2] = torch.where(q.view(1, 1, 4, 8).transpose(1, 2)[:, :, 0] > 0,
                                 float("-inf"), float("inf"))
        y = m(x[:, 8:9], s._replace(k=k)).y
    checks.true(bool(y.isnan().all()), "the output that sees the -inf key is NaN")


def test_ops_guard_runs_only_for_non_finite_input(monkeypatch, checks):
    """known_finite decides: finite input skips the guard (no isfinite pass over the
    values in linear_attn, no poison in delta_rule, no NaN marking in sliding_window_attn),
    non-finite input takes it; GUARD=False (benchmarks) gives the same finite outputs."""
    torch.manual_seed(0)
    B, T, H, K = 1, 40, 2, 8
    q, k, v = (torch.randn(B, T, H, K, dtype=torch.float64) for _ in range(3))
    beta = torch.rand(B, T, H, dtype=torch.float64)
    checks.true(_common.known_finite(q, k, None), "finite")
    vb = v.clone()
    vb[0, 7, 1, 2] = float("inf")
    checks.true(not _common.known_finite(q, vb), "inf found")
    mark = Spy(monkeypatch, _swa_torch(), "_sees_non_finite")
    o = sliding_window_attn(q, k, v, window=5, impl="torch")
    checks.true(mark.calls == 0, "clean: no NaN marking")
    ob = sliding_window_attn(q, k, vb, window=5, impl="torch")
    checks.true(mark.calls == 1, "non-finite: NaN marking")
    checks.close(ob[0, :7], o[0, :7], atol=0, msg="before the inf: bitwise the clean values")
    checks.true(bool(ob[0, 7:12, 1].isnan().all()), "the outputs that see it: NaN")
    checks.close(ob[0, :, 0], o[0, :, 0], atol=0, msg="the other head: bitwise the clean values")
    ref = [linear_attn(q, k, v, impl="torch")[0], delta_rule(q, k / k.norm(dim=-1, keepdim=True),
                                                            v, beta, impl="torch")[0], o]
    monkeypatch.setattr(_common, "GUARD", False)
    got = [linear_attn(q, k, v, impl="torch")[0], delta_rule(q, k / k.norm(dim=-1, keepdim=True),
                                                            v, beta, impl="torch")[0],
           sliding_window_attn(q, k, v, window=5, impl="torch")]
    checks.close(got, ref, atol=0, msg="GUARD=False on finite input")


def _swa_torch():
    """memarch.kernels.sliding_window.torch_chunk (the package attribute is the op function)."""
    import importlib
    return importlib.import_module("memarch.kernels.sliding_window.torch_chunk")


def _tiny_lm(**attn):
    return MemLM(vocab_size=64, d_model=D, d_hidden=64,
                 mixers={"a": functools.partial(Attention, n_heads=4, **attn)},
                 layer_pattern=["a", "a"]).double()


def test_generation_checks_the_state_once_and_prefill_keeps_the_last_logits(monkeypatch,
                                                                            checks):
    """generate: each mixer checks a state once per prefill that receives one (the first
    chunk's), never in the decode loop; the head sees the last position only in prefill;
    the tokens equal a plain loop over the model with full logits."""
    torch.manual_seed(0)
    m = _tiny_lm(window=8, n_sinks=2)
    ids = torch.randint(0, 64, (1, 30))
    state = m.init_state(1, dtype=torch.float64)
    chk = Spy(monkeypatch, Mixer, "_check_state")
    shapes = []
    m.head.register_forward_hook(lambda mod, i, o: shapes.append(tuple(i[0].shape)))
    out = generation.generate(m, ids, 12, state=state, chunk_size=7)
    checks.true(chk.calls == len(m.blocks), f"state checked {chk.calls} times")
    checks.true(shapes[:5] == [(1, 1, D)] * 5, f"prefill head inputs {shapes[:5]}")
    ref, s = [], None
    with torch.no_grad():
        logits, s, _ = m(ids, state)
        for _ in range(12):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            ref.append(tok)
            logits, s, _ = m(tok, s)
    checks.close(out.tokens, torch.cat(ref, 1), atol=0, msg="greedy tokens")
    full = m(ids).logits
    checks.close(m(ids, logits_to_keep=3).logits, full[:, -3:], atol=1e-12, msg="keep 3")
    with pytest.raises(ValueError, match="logits_to_keep"):
        m(ids, logits_to_keep=-1)


@pytest.mark.parametrize("window", [None, 4])
def test_attention_refuses_an_unknown_impl(window):
    """impl is checked at construction, also for full attention (which never calls the op)."""
    with pytest.raises(ValueError, match="impl must be one of"):
        Attention(D, n_heads=4, window=window, impl="bogus")
