"""Attention against an independent StreamingLLM simulation, and its window semantics."""

from __future__ import annotations

import math

import pytest
import torch
from mixer_cases import CASES, D_MODEL, run_chunks
from reference import _rope, streaming_attention_ref
from torch.utils._python_dispatch import TorchDispatchMode

from memarch.mixers import Attention

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


# -- persistent memory (Titans 2501.00663 section 3.3): n_persistent learned KV pairs -------

PERSISTENT_CONFIGS = {
    "full_gqa": dict(n_heads=4, n_kv_heads=2),
    "window": dict(n_heads=4, window=5, block_size=3),
    "window_sinks_absolute": dict(n_heads=4, n_kv_heads=2, window=6, n_sinks=2, block_size=4),
    "window_sinks_cache": dict(n_heads=4, n_kv_heads=2, window=6, n_sinks=2,
                               sink_positions="cache", block_size=4),
}


def _persistent_attention_ref(m, x: torch.Tensor, pkv: torch.Tensor) -> torch.Tensor:
    """Plain masked-softmax attention in fp64 over [persistent pairs; visible keys].

    ``pkv [2, Hkv, Np, Dh]`` is passed explicitly (not read from ``m``). Key j is visible
    to query i iff i - W < j <= i or j < S (j <= i); RoPE at absolute positions, or for
    ``sink_positions="cache"`` a sink j is scored by the query at slot min(i, S + W - 1).
    The persistent pairs are scored with the un-rotated query."""
    B, T, _ = x.shape
    H, Hkv, Dh = m.n_heads, m.n_kv_heads, m.head_dim
    G = H // Hkv
    W = m.window if m.window is not None else T + 1
    S, base = m.n_sinks, m.rotary.base
    with torch.no_grad():
        q = m.q_proj(x).view(B, T, H, Dh).double()
        k, v = m.kv_proj(x).view(B, T, 2, Hkv, Dh).double().unbind(2)
        k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)   # [B, T, H, Dh]
        pk, pv = pkv.double().repeat_interleave(G, dim=1)                     # [H, Np, Dh]
        scores = torch.full((B, H, T, T), float("-inf"), dtype=torch.float64)
        for i in range(T):
            for j in range(i + 1):
                if not (j > i - W or j < S):
                    continue
                sink_slot = j < S and j <= i - W and m.sink_positions == "cache"
                pq = min(i, S + W - 1) if sink_slot else i
                scores[:, :, i, j] = (_rope(q[:, i], pq, base) * _rope(k[:, j], j, base)).sum(-1)
        s_p = torch.einsum("bthd,hnd->bhtn", q, pk)                           # [B, H, T, Np]
        p = torch.softmax(torch.cat([s_p, scores], -1) / math.sqrt(Dh), -1)
        Np = pk.shape[1]
        o = (torch.einsum("bhtn,hnd->bthd", p[..., :Np], pv)
             + torch.einsum("bhtj,bjhd->bthd", p[..., Np:], v))
        return m.o_proj(o.reshape(B, T, H * Dh).to(x.dtype))


def _big_persistent(m):
    """Persistent pairs of unit scale, so that they carry a large share of the softmax."""
    with torch.no_grad():
        m.persistent_kv.normal_()
    return m


@pytest.mark.parametrize("cfg", list(PERSISTENT_CONFIGS))
def test_persistent_memory_matches_masked_softmax_reference(cfg, checks):
    kw = PERSISTENT_CONFIGS[cfg]
    m = _big_persistent(Attention(D_MODEL, n_persistent=3, **kw).double())
    checks.true(tuple(m.persistent_kv.shape) == (2, m.n_kv_heads, 3, m.head_dim),
                f"persistent_kv shape {tuple(m.persistent_kv.shape)}")
    x = torch.randn(2, 23, D_MODEL, dtype=torch.float64)
    y = m(x).y
    checks.close(y, _persistent_attention_ref(m, x, m.persistent_kv), atol=1e-10,
                 msg=f"{cfg}: n_persistent=3 vs reference")
    # the reference is not blind to the pairs: without them the output differs
    plain = Attention(D_MODEL, **kw).double()
    plain.load_state_dict({k: t for k, t in m.state_dict().items() if k != "persistent_kv"})
    checks.true((plain(x).y - y).abs().amax() > 1e-3, f"{cfg}: persistent pairs matter")
    # ... and rows at different positions (the general blocked path with a ragged batch)
    s = m(x[:1, :4]).state
    s2 = m(x[1:, :9]).state
    both = type(s)(*[torch.cat([a, b]) for a, b in zip(s, s2)]) if m.window else None
    if both is not None:
        yb = m(torch.cat([x[:1, 4:9], x[1:, 9:14]]), both).y
        checks.close(yb, torch.cat([y[:1, 4:9], y[1:, 9:14]]), atol=1e-10,
                     msg=f"{cfg}: rows at positions 4 and 9")


@pytest.mark.parametrize("cfg", ["full_gqa", "window_sinks_cache"])
def test_learned_sink_is_n_persistent_1(cfg, checks):
    kw = PERSISTENT_CONFIGS[cfg]
    torch.manual_seed(1)
    a = Attention(D_MODEL, learned_sink=True, **kw).double()
    torch.manual_seed(1)
    b = Attention(D_MODEL, n_persistent=1, **kw).double()
    checks.true(a.n_persistent == 1 and a.learned_sink and b.learned_sink,
                "learned_sink=True gives n_persistent=1")
    checks.close(list(a.state_dict().values()), list(b.state_dict().values()), atol=0,
                 msg="same parameters (and initialisation) as n_persistent=1")
    checks.true(list(a.state_dict()) == list(b.state_dict()), "same parameter names")
    _big_persistent(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 19, D_MODEL, dtype=torch.float64)
    checks.close(a(x).y, b(x).y, atol=0, msg="learned_sink=True == n_persistent=1")
    checks.close(a.sink_kv, a.persistent_kv[:, :, 0], atol=0, msg="sink_kv alias")
    none = Attention(D_MODEL, **kw)
    checks.true(none.n_persistent == 0 and not none.learned_sink and none.persistent_kv is None
                and none.sink_kv is None, "no persistent pairs by default")


@pytest.mark.parametrize("cfg", ["full_gqa", "window_sinks_absolute"])
def test_old_sink_kv_checkpoint_loads(cfg, checks):
    """A state_dict from before n_persistent (``sink_kv [2, Hkv, Dh]``) loads into
    ``persistent_kv [2, Hkv, 1, Dh]``, also under a prefix, and gives the same outputs."""
    kw = PERSISTENT_CONFIGS[cfg]
    src = Attention(D_MODEL, **kw).double()                         # projections only
    Hkv, Dh = src.n_kv_heads, src.head_dim
    sink = torch.randn(2, Hkv, Dh, dtype=torch.float64)
    old = {**src.state_dict(), "sink_kv": sink}                     # the old format, by hand
    m = Attention(D_MODEL, learned_sink=True, **kw).double()
    m.load_state_dict(old)                                          # strict
    checks.close(m.persistent_kv, sink[:, :, None], atol=0, msg="sink_kv -> persistent_kv")
    x = torch.randn(2, 17, D_MODEL, dtype=torch.float64)
    y = m(x).y
    checks.close(y, _persistent_attention_ref(src, x, sink[:, :, None]), atol=1e-10,
                 msg="old checkpoint: outputs vs reference")
    new = Attention(D_MODEL, n_persistent=1, **kw).double()
    new.load_state_dict(m.state_dict())
    checks.close(new(x).y, y, atol=0, msg="old checkpoint == re-saved new format")
    nested = torch.nn.ModuleList([torch.nn.Identity(), Attention(D_MODEL, n_persistent=1, **kw)])
    nested.double().load_state_dict({f"1.{k}": t for k, t in old.items()})
    checks.close(nested[1](x).y, y, atol=0, msg="old format under a prefix")
    with pytest.raises(RuntimeError) as e:        # a model without pairs still refuses it
        Attention(D_MODEL, **kw).load_state_dict(old)
    checks.true("persistent_kv" in str(e.value), str(e.value))


@pytest.mark.parametrize("bad", [dict(n_persistent=-1), dict(n_persistent=1.5),
                                 dict(n_persistent=True),
                                 dict(learned_sink=True, n_persistent=2)],
                         ids=["negative", "float", "bool", "learned_sink_and_2"])
def test_bad_n_persistent_is_refused(bad, checks):
    with pytest.raises(ValueError) as e:
        Attention(D_MODEL, n_heads=4, **bad)
    msg = str(e.value)
    checks.true("n_persistent" in msg, msg)
    if "learned_sink" in bad:
        checks.true("learned_sink" in msg, msg)


def test_persistent_pairs_are_not_state(checks):
    for kw in PERSISTENT_CONFIGS.values():
        a, b = Attention(D_MODEL, **kw), Attention(D_MODEL, n_persistent=3, **kw)
        checks.true(a.state_size(11) == b.state_size(11), "state_size unchanged")
        checks.close(b.init_state(2), a.init_state(2), atol=0, msg="same empty state")


@pytest.mark.parametrize("cfg", ["full_gqa", "window_sinks_cache"])
def test_persistent_memory_streams_exactly(cfg, checks):
    """n_persistent=2: one call == token by token == chunks (straddling the window 6,
    the 2 sinks, S + W = 8 and the query block 4), fp64."""
    m = _big_persistent(Attention(D_MODEL, n_persistent=2, **PERSISTENT_CONFIGS[cfg]).double())
    T = 29
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    full = m(x)
    for kind, lengths in {"token_by_token": [1] * T, "around": [1, 1, 3, 1, 2, 1, 5, 4, 11],
                          "straddle": [7, 9, 9, 4], "prefill_then_decode": [20] + [1] * 9}.items():
        y, s = run_chunks(m, x, lengths)
        checks.close(y, full.y, atol=1e-10, rtol=1e-10, msg=f"{cfg} {kind} outputs")
        checks.close(s, full.state, atol=1e-10, rtol=1e-10, msg=f"{cfg} {kind} state")


@pytest.mark.parametrize("cfg", ["full_gqa", "window_sinks_cache"])
def test_persistent_memory_non_finite_input_is_causal(cfg, checks):
    m = Attention(D_MODEL, n_persistent=2, **PERSISTENT_CONFIGS[cfg]).double()
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    clean = m(x).y
    for t in (0, 7, 19):
        xb = x.clone()
        xb[0, t, 3] = float("nan")
        y = m(xb).y
        checks.close(y[0, :t], clean[0, :t], atol=0, msg=f"{cfg}: outputs before t={t}")
        checks.true(bool(y[0, t].isnan().any()), f"{cfg}: the NaN token's output is NaN")
        checks.close(y[1], clean[1], atol=0, msg=f"{cfg}: other row")
