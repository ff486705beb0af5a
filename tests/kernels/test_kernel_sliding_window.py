"""sliding_window_attn: the naive spec against a literal per-query loop, every implementation
against naive (outputs and gradients of q, k, v, sink_k, sink_v, sink_q), chunked prefill over
a cached window == one call, GQA, and the argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch
from grids import split_slow

from memarch.kernels import sliding_window_attn


def make(B, Tq, Tk, H, Hkv, D, S, dtype, sink_q=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen).to(dtype)
    t = dict(q=r(B, Tq, H, D), k=r(B, Tk, Hkv, D), v=r(B, Tk, Hkv, D))
    if S:
        t.update(sink_k=r(B, S, Hkv, D), sink_v=r(B, S, Hkv, D))
        if sink_q:
            t["sink_q"] = r(B, Tq, H, D)
    return t


def loop_reference(q, k, v, window, q_offset, sink_k=None, sink_v=None, sink_q=None):
    """Literal transcription of the definition, one query at a time, fp64."""
    B, Tq, H, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G = H // Hkv
    sink_q = q if sink_q is None else sink_q
    o = torch.zeros(B, Tq, H, D, dtype=torch.float64)
    for i in range(Tq):
        pi = q_offset + i
        for h in range(H):
            scores, vals = [], []
            for s in range(0 if sink_k is None else sink_k.shape[1]):
                if s <= pi - window:
                    sk = sink_k[:, s, h // G].double()
                    scores.append((sink_q[:, i, h].double() * sk).sum(-1))
                    vals.append(sink_v[:, s, h // G].double())
            for j in range(Tk):
                pj = q_offset + Tq - Tk + j
                if pi - window < pj <= pi:
                    scores.append((q[:, i, h].double() * k[:, j, h // G].double()).sum(-1))
                    vals.append(v[:, j, h // G].double())
            p = (torch.stack(scores, -1) * D ** -0.5).softmax(-1)                 # [B, n]
            o[:, i, h] = (p[..., None] * torch.stack(vals, 1)).sum(1)
    return o


@pytest.mark.parametrize("W,S,Tq,Tk,off", [(1, 0, 9, 9, 0), (3, 2, 9, 9, 0), (4, 3, 6, 9, 10),
                                           (5, 1, 4, 8, 4), (2, 4, 7, 7, 0)])
def test_naive_matches_literal_loop(W, S, Tq, Tk, off, checks):
    t = make(2, Tq, Tk, 4, 2, 8, S, torch.float64)
    o = sliding_window_attn(**t, window=W, q_offset=off, impl="naive")
    checks.close(o, loop_reference(**t, window=W, q_offset=off), atol=1e-12, msg="naive vs loop")


def grads(impl, t, window, q_offset, cot):
    ins = {n: x.detach().clone().requires_grad_() for n, x in t.items()}
    o = sliding_window_attn(**ins, window=window, q_offset=q_offset, impl=impl)
    gr = torch.autograd.grad((o.float() * cot).sum(), list(ins.values()))
    return o, dict(zip(ins, gr))


# (W, S, Tq, Tk, q_offset): T up to 4W, with and without sinks, chunked prefill over a cache
def cases(W):
    return [(W, 0, 4 * W, 4 * W, 0), (W, 3, 4 * W, 4 * W, 0),
            (W, 2, W + 1, 2 * W, 3 * W - 1), (W, 0, 1, W, 2 * W)]


GRID = [c for W in (1, 16, 64) for c in cases(W)]
# `make test` runs these (the fast share), `-m slow` the rest of GRID: sinks with T = 4W,
# chunked prefill over a cache (Tq < Tk, q_offset > 0) at W = 16 and across the 64-key
# block at W = 64, and a one-token query at W = 1.
FAST_GRID = [(16, 3, 64, 64, 0), (16, 2, 17, 32, 47), (64, 2, 65, 128, 191), (1, 0, 1, 1, 2)]




def check_impl(checks, impl, W, S, Tq, Tk, off, H=4, Hkv=2, D=16, tol=1e-4):
    t = make(1, Tq, Tk, H, Hkv, D, S, torch.float32)
    cot = torch.randn(1, Tq, H, D)
    ro, rg = grads("naive", t, W, off, cot)
    o, g = grads(impl, t, W, off, cot)
    tag = f"{impl} W={W} S={S} Tq={Tq} Tk={Tk} off={off}"
    checks.close(o, ro, atol=tol, rtol=tol, msg=f"{tag} o")
    for n in rg:
        checks.close(g[n], rg[n], atol=tol * 5, rtol=tol * 5, msg=f"{tag} d{n}")


@pytest.mark.parametrize("W,S,Tq,Tk,off", split_slow(GRID, FAST_GRID))
def test_torch_vs_naive_fp32(W, S, Tq, Tk, off, checks):
    check_impl(checks, "torch", W, S, Tq, Tk, off)


@pytest.mark.parametrize("W,S,Tq,Tk,off", split_slow(GRID, FAST_GRID))
def test_triton_vs_naive_fp32(W, S, Tq, Tk, off, checks):
    check_impl(checks, "triton", W, S, Tq, Tk, off)


@pytest.mark.parametrize("D", [100, pytest.param(160, marks=pytest.mark.slow)])  # fast: BD = 128
def test_triton_wide_heads(D, checks):
    """Head dims that select the other block configurations (BD = 128, 256), S > BS sinks."""
    t = make(1, 40, 40, 2, 1, D, 20, torch.float32)
    cot = torch.randn(1, 40, 2, D)
    ro, rg = grads("naive", t, 7, 0, cot)
    o, g = grads("triton", t, 7, 0, cot)
    checks.close(o, ro, atol=1e-4, rtol=1e-4, msg=f"D={D} o")
    for n in rg:
        checks.close(g[n], rg[n], atol=5e-4, rtol=5e-4, msg=f"D={D} d{n}")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("W,S,Tq,Tk,off", [(16, 3, 64, 64, 0),             # fast: the first
                                           pytest.param(64, 2, 65, 128, 191,
                                                        marks=pytest.mark.slow)])
def test_fp16_vs_naive(impl, W, S, Tq, Tk, off, checks):
    """Error vs the fp32 naive reference <= 2x plain PyTorch's fp16 error (masked SDPA)."""
    t = make(1, Tq, Tk, 4, 2, 32, S, torch.float16)
    cot = torch.randn(1, Tq, 4, 32)
    ro, rg = grads("naive", {n: x.float() for n, x in t.items()}, W, off, cot)
    o, g = grads(impl, t, W, off, cot)
    # plain PyTorch in fp16: the naive masked form evaluated in fp16 arithmetic
    ins = {n: x.detach().clone().requires_grad_() for n, x in t.items()}
    po = plain_fp16(**ins, window=W, q_offset=off)
    pg = dict(zip(ins, torch.autograd.grad((po.float() * cot).sum(), list(ins.values()))))
    for n, mine, base, ref in [("o", o, po, ro)] + [(f"d{n}", g[n], pg[n], rg[n]) for n in rg]:
        err = (mine.float() - ref).abs().max().item()
        base_err = (base.float() - ref).abs().max().item()
        floor = 2e-3 * ref.abs().max().clamp(min=1.0).item()
        checks.true(err <= 2 * base_err + floor,
                    f"{impl} {n}: err {err:.3g} > 2 x plain {base_err:.3g} + {floor:.3g}")


def plain_fp16(q, k, v, window, q_offset, sink_k=None, sink_v=None, sink_q=None):
    B, Tq, H, D = q.shape
    Tk, G = k.shape[1], H // k.shape[2]
    rep = lambda x: x.repeat_interleave(G, 2).transpose(1, 2)
    pq = torch.arange(Tq) + q_offset
    pk = torch.arange(Tk) + q_offset + Tq - Tk
    mask = (pk[None] <= pq[:, None]) & (pk[None] > pq[:, None] - window)
    s = (q.transpose(1, 2) @ rep(k).transpose(-1, -2)) * D ** -0.5
    s = s.masked_fill(~mask, float("-inf"))
    vals = rep(v)
    if sink_k is not None:
        sq = q if sink_q is None else sink_q
        ss = (sq.transpose(1, 2) @ rep(sink_k).transpose(-1, -2)) * D ** -0.5
        ss = ss.masked_fill(~(torch.arange(sink_k.shape[1])[None] <= pq[:, None] - window),
                            float("-inf"))
        s, vals = torch.cat([ss, s], -1), torch.cat([rep(sink_v), vals], 2)
    return (s.softmax(-1) @ vals).transpose(1, 2)


@pytest.mark.parametrize("impl,W,S", [         # fast: every impl at W = 16; naive/torch at all W
    pytest.param(impl, W, S, id=f"{W}-{S}-{impl}",
                 marks=pytest.mark.slow if impl == "triton" and W != 16 else ())
    for W, S in [(1, 0), (16, 2), (5, 3)] for impl in ["naive", "torch", "triton"]])
def test_chunked_prefill_equals_one_call(impl, W, S, checks):
    """Prefill in chunks, each over [last W-1 cached keys, new keys] with q_offset, == one call;
    sinks are the keys of positions 0..S-1 (the sink_q default, q)."""
    T = 70
    t = make(1, T, T, 4, 2, 16, 0, torch.float32)
    sinks = {} if not S else dict(sink_k=t["k"][:, :S], sink_v=t["v"][:, :S])
    full = sliding_window_attn(t["q"], t["k"], t["v"], window=W, impl=impl, **sinks)
    for cuts in [(1, 17, 64, 65), (33,), tuple(range(1, T))]:
        outs, a = [], 0
        for b in list(cuts) + [T]:
            lo = max(0, a - (W - 1))
            outs.append(sliding_window_attn(t["q"][:, a:b], t["k"][:, lo:b], t["v"][:, lo:b],
                                            window=W, q_offset=a, impl=impl, **sinks))
            a = b
        checks.close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5, msg=f"{impl} {cuts[:4]}")
        if impl == "triton":
            break                                     # the token-by-token split is slow there


def test_gqa_equals_repeated_heads(checks):
    t = make(1, 20, 20, 6, 2, 8, 2, torch.float32)
    o = sliding_window_attn(**t, window=5, impl="torch")
    rep = {n: (x.repeat_interleave(3, 2) if n in ("k", "v", "sink_k", "sink_v") else x)
           for n, x in t.items()}
    checks.close(o, sliding_window_attn(**rep, window=5, impl="torch"), atol=1e-6, msg="GQA")


def test_window_covering_everything_is_causal_attention(checks):
    t = make(2, 30, 30, 2, 2, 8, 0, torch.float32)
    o = sliding_window_attn(**t, window=100, impl="torch")
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t[n].transpose(1, 2) for n in "qkv"), is_causal=True).transpose(1, 2)
    checks.close(o, ref, atol=1e-5, msg="W >= T")


@pytest.mark.parametrize("bad,match", [
    (dict(window=0), "window must be an int >= 1"),
    (dict(window=2.0), "window must be an int >= 1"),
    (dict(q_offset=-1), "q_offset must be an int >= 0"),
    (dict(k=torch.zeros(1, 3, 2, 8), v=torch.zeros(1, 3, 2, 8)), "Tq <= Tk"),
    (dict(k=torch.zeros(1, 9, 2, 8), v=torch.zeros(1, 9, 2, 8)), "Tq <= Tk <= q_offset"),
    (dict(k=torch.zeros(1, 5, 3, 8), v=torch.zeros(1, 5, 3, 8)), "multiple of k/v heads"),
    (dict(v=torch.zeros(1, 5, 2, 7)), "v must have k's shape"),
    (dict(sink_k=torch.zeros(1, 2, 2, 8)), "given together"),
    (dict(sink_k=torch.zeros(1, 2, 4, 8), sink_v=torch.zeros(1, 2, 4, 8)), "sink_k must have"),
    (dict(sink_k=torch.zeros(1, 2, 2, 8), sink_v=torch.zeros(1, 2, 2, 8),
          sink_q=torch.zeros(1, 4, 4, 8)), "sink_q must have q's shape"),
    (dict(k=torch.zeros(1, 5, 2, 8, dtype=torch.float16)), "share a dtype"),
    (dict(q=torch.zeros(1, 5, 4, 300), k=torch.zeros(1, 5, 2, 300), v=torch.zeros(1, 5, 2, 300),
          impl="triton"), "D <= 256"),
])
def test_argument_errors(bad, match, checks):
    args = dict(q=torch.zeros(1, 5, 4, 8), k=torch.zeros(1, 5, 2, 8), v=torch.zeros(1, 5, 2, 8),
                window=3)
    args.update(bad)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises((ValueError, TypeError), match=match):
        sliding_window_attn(q, k, v, **args)
    checks.true(True, "raised")


_CLEAN: dict = {}


def _nonfinite_grid():
    """impl x bad x name x t, ids as the stacked parametrisation gave them. Fast: NaN in each
    of q, k, v, sink_q, sink_k, sink_v at t = 64 (the first token of the second 64-block;
    sink 64 % 3 = 1), for each impl; every other (bad, t) is slow."""
    cases = []
    for impl in ["naive", "torch", "triton"]:
        for (bad, bid), name, t in itertools.product(
                [(float("nan"), "nan"), (float("inf"), "inf")],
                ["q", "k", "v", "sink_q", "sink_k", "sink_v"], [0, 5, 64, 69]):
            fast = t == 64 and bid == "nan"
            cases.append(pytest.param(impl, bad, name, t, id=f"{impl}-{bid}-{name}-{t}",
                                      marks=() if fast else pytest.mark.slow))
    return cases


@pytest.mark.filterwarnings("ignore::RuntimeWarning")       # numpy in the interpreter on NaN
@pytest.mark.parametrize("impl,bad,name,t", _nonfinite_grid())
def test_nonfinite_input_is_causal(impl, bad, name, t, checks):
    """The NaN rule (docs/design.md#the-nan-rule): NaN at t poisons no output < t. A NaN/+inf
    in one element of q, k, v or sink_q at token t (sink_k, sink_v: sink t % S) of batch row 0
    leaves every output that does not see it equal to the clean call's: all outputs before t,
    after the window, row 1, the other head for q. Every output that sees it is non-finite
    (never finite-but-wrong)."""
    T, W, S, H = 70, 16, 3, 1                     # two query/key blocks of 64 in torch/triton
    x = make(2, T, T, H, 1, 16, S, torch.float32)
    if impl not in _CLEAN:
        _CLEAN[impl] = sliding_window_attn(**x, window=W, impl=impl)
    clean = _CLEAN[impl]
    j = t % S if name in ("sink_k", "sink_v") else t
    x[name] = x[name].clone()
    x[name][0, j, 0, 3] = bad
    o = sliding_window_attn(**x, window=W, impl=impl)
    i = torch.arange(T)[:, None]
    hit = torch.zeros(2, T, H, dtype=torch.bool)  # (row, query, head) that see the bad value
    if name == "q":
        hit[0, t, 0] = True
    elif name == "sink_q":
        hit[0, t, 0] = t >= W                     # query t sees sinks only from position W on
    elif name in ("k", "v"):
        hit[0] = (i >= t) & (i < t + W)           # the band of key t, both heads (GQA group)
    else:
        hit[0] = i >= j + W                       # sink j lies outside the band from j + W on
    tag = f"{impl} {name}[{j}]={bad}"
    checks.true(o[0, :j].isfinite().all().item(), f"{tag}: outputs before it are finite")
    checks.close(o[0, :j], clean[0, :j], atol=1e-6, rtol=1e-6, msg=f"{tag}: o[0, :{j}]")
    checks.true(o[~hit].isfinite().all().item(), f"{tag}: unaffected outputs are finite")
    checks.close(o[~hit], clean[~hit], atol=1e-6, rtol=1e-6, msg=f"{tag}: unaffected outputs")
    checks.true((~o[hit].isfinite()).any(-1).all().item(),
                f"{tag}: every output that sees the bad value is non-finite")


@pytest.mark.parametrize("D,dtype", [              # fast: D = 16 in each dtype class
    pytest.param(D, dtype, id=f"{D}-dtype{i}", marks=() if D == 16 else pytest.mark.slow)
    for D in [16, 32, 64, 128, 256] for i, dtype in enumerate([torch.float32, torch.float16])])
def test_triton_every_tile_config(dtype, D, checks):
    """Every TILES cell of triton_swa (the four kernels at their tiles for this dtype class
    and BD, so every distinct (BM, BN) pair of the table) against naive: 150 keys span
    several blocks of every tile (<= 128), window 37 straddles block edges, 20 sinks > BS,
    GQA, and Tq < Tk (chunked prefill over a cache)."""
    Tq, Tk, W, off, S = 130, 150, 37, 170, 20
    t = make(1, Tq, Tk, 2, 1, D, S, dtype)
    cot = torch.randn(1, Tq, 2, D)
    ro, rg = grads("naive", {n: x.float() for n, x in t.items()}, W, off, cot)
    o, g = grads("triton", t, W, off, cot)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    checks.close(o.float(), ro, atol=tol, rtol=tol, msg=f"{dtype} D={D} o")
    for n in rg:
        checks.close(g[n].float(), rg[n], atol=5 * tol, rtol=5 * tol, msg=f"{dtype} D={D} d{n}")
