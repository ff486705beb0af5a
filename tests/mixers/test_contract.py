"""The mixer contract: one call == chunks with carried state == token by token."""

from __future__ import annotations

import inspect
import random
import zlib

import pytest
import torch
from mixer_cases import CASES, D_MODEL, run_chunks

from memarch import mixers as mx
from memarch import state as st

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _splits(T: int, boundaries: list[int], seed: int) -> dict[str, list[int]]:
    """Chunk lengths: random cuts, cuts around every boundary, straddling chunks."""
    rng = random.Random(seed)
    rand = sorted(rng.sample(range(1, T), k=min(6, T - 1)))
    around = sorted({c for b in boundaries for m in (1, 2, 3) for c in (b * m - 1, b * m,
                                                                         b * m + 1) if 0 < c < T})
    step = max(boundaries) + 2            # chunks longer than the window, not aligned to it
    straddle = list(range(step - 1, T, step))

    def lengths(cuts):
        edges = [0, *cuts, T]
        return [b - a for a, b in zip(edges, edges[1:]) if b > a]
    return {"random": lengths(rand), "around_boundaries": lengths(around),
            "straddle": lengths(straddle), "token_by_token": [1] * T}


def test_every_exported_mixer_has_a_case(checks):
    exported = {obj for name in mx.__all__ if inspect.isclass(obj := getattr(mx, name))
                and issubclass(obj, mx.Mixer) and obj is not mx.Mixer}
    covered = {c.cls for c in CASES.values()}
    checks.true(exported <= covered, f"mixers without a contract case: {exported - covered}")


@pytest.mark.parametrize("dtype", [torch.float32,         # every mixer in `make test` in fp32;
                                   pytest.param(torch.float64, marks=pytest.mark.slow)],
                         ids=["fp32", "fp64"])          # fp64 (the same splits) with -m slow
@pytest.mark.parametrize("name", list(CASES))
def test_streaming_contract(name, dtype, checks):
    case = CASES[name]
    m = case.build().to(dtype)
    T = case.horizon
    x = torch.randn(2, T, D_MODEL, dtype=dtype)
    full = m(x)
    tol = TOL[dtype]
    checks.true(full.y.shape == x.shape and full.y.dtype == dtype, "output shape/dtype")
    for kind, lengths in _splits(T, case.boundaries, seed=zlib.crc32(name.encode())).items():
        y, s = run_chunks(m, x, lengths)
        checks.close(y, full.y, atol=tol, rtol=tol, msg=f"{name} {kind} outputs")
        checks.close(s, full.state, atol=tol, rtol=tol, msg=f"{name} {kind} final state")


@pytest.mark.parametrize("name", list(CASES))
def test_state_size_and_immutability(name, checks):
    case = CASES[name]
    m = case.build()
    x = torch.randn(3, case.horizon, D_MODEL)
    s0 = m.init_state(3)
    checks.true(st.float_numel(s0) == m.state_size(0), "state_size(0) == empty state")
    out = m(x[:, :7], s0)
    checks.true(st.float_numel(out.state) == m.state_size(7), "state_size(7) == state numel")
    before = st.tree_map(torch.clone, out.state)
    out2 = m(x[:, 7:], out.state)
    checks.close(out.state, before, atol=0, msg="input state mutated in place")
    checks.true(st.float_numel(out2.state) == m.state_size(case.horizon), "state_size(T)")
    checks.equal(out2.state.pos, torch.full((3,), case.horizon), "positions")


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_flow_through_the_state(name, checks):
    """Chunked forward with the state carried gives the same parameter gradients."""
    case = CASES[name]
    m = case.build().double()
    x = torch.randn(2, case.horizon, D_MODEL, dtype=torch.float64)
    m(x).y.square().sum().backward()
    g_full = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y, _ = run_chunks(m, x, [5, 1, case.horizon - 6])
    y.square().sum().backward()
    checks.close([p.grad for p in m.parameters()], g_full, atol=1e-10, msg="param grads")


def test_batch_rows_are_independent_and_selectable(checks):
    m = CASES["attn_window_sinks_cache"].build().double()
    x = torch.randn(4, 30, D_MODEL, dtype=torch.float64)
    out = m(x[:, :17])
    sub = st.select(out.state, [2, 0])
    y = m(x[[2, 0], 17:], sub).y
    checks.close(y, m(x)[0][[2, 0], 17:], atol=1e-10, msg="selected rows continue exactly")
    det = st.detach(st.to(out.state, "cpu"))
    checks.true(all(not t.requires_grad for t in st.tensors(det)), "detach")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", list(CASES))
def test_non_finite_input_is_causal(name, bad, checks):
    """The NaN rule: a non-finite value at token t changes no output before t (masks
    select, never multiply by zero), and leaves the other batch rows untouched. For NaN,
    one call and token-by-token streaming also agree after t (NaN where NaN)."""
    case = CASES[name]
    m = case.build().double()
    T = case.horizon
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    clean = m(x).y
    for t in sorted({0, 1, T // 2, T - 1} | {b for b in case.boundaries if b < T}):
        xb = x.clone()
        xb[0, t, 3] = bad
        y = m(xb).y
        checks.true(bool(y[0, :t].isfinite().all()), f"{name}: outputs before t={t} finite")
        checks.close(y[0, :t], clean[0, :t], atol=0, msg=f"{name}: outputs before t={t}")
        checks.close(y[1], clean[1], atol=0, msg=f"{name}: other rows")
        if bad != bad and t == T // 2:                                   # NaN: streaming
            ys, _ = run_chunks(m, xb, [1] * T)
            torch.testing.assert_close(ys, y, atol=1e-10, rtol=1e-10, equal_nan=True)
            checks.n += 1
