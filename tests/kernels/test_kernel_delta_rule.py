"""delta_rule: the naive spec against an independent fp64 closed form, every implementation
against the naive fp32 token loop (outputs, final state, gradients of q, k, v, beta, g and the
initial state), low precision, split-and-resume, the decode kernel, non-finite causality and
the argument checks. Triton runs under TRITON_INTERPRET=1 (set in conftest)."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from grids import split_slow

from memarch.kernels import LinearAttnState, delta_rule

TS = (1, 63, 64, 65, 150)             # chunks of 32 (triton; torch at K, V <= 32), 64 (torch)
DIMS = ((16, 24, 2), (40, 16, 3))                     # K, V, H: K != V, H = 3 once
GRID = [(T, K, V, H, use_g, init) for T, (K, V, H), use_g, init
        in itertools.product(TS, DIMS, (False, True), (False, True))]

# `make test` runs a few cases of each grid (the interpreter makes the whole
# grid minutes long); `-m slow` runs the rest. FAST_GRID: T = 65 (across the 32- and 64-token
# chunk edges) with g and the initial state (so its gradient) on; T = 1 with everything off
# and the other dims (K > V, H = 3).
FAST_GRID = [(65, 16, 24, 2, True, True), (1, 40, 16, 3, False, False)]




def make(B, T, H, K, V, dtype, use_g, init, seed=0):
    """Inputs as real callers build them: L2-normalised q and k, beta = sigmoid(.), g =
    logsigmoid(.) (a log decay in (-inf, 0))."""
    gen = torch.Generator().manual_seed(seed)
    def r(*shape):
        return torch.randn(*shape, generator=gen)
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v = r(B, T, H, V)
    beta = torch.sigmoid(r(B, T, H))
    g = F.logsigmoid(r(B, T, H) + 3.0) if use_g else None
    S0 = r(B, H, K, V) if init else None
    return q.to(dtype), k.to(dtype), v.to(dtype), beta, g, S0


def run(impl, q, k, v, beta, g, S0, cot):
    """Forward + backward with fixed cotangents on o and the final state; returns [o, S] and
    the gradients of (q, k, v, beta[, g][, S0])."""
    ins = [None if x is None else x.detach().clone().requires_grad_()
           for x in (q, k, v, beta, g, S0)]
    o, S = delta_rule(*ins[:4], g=ins[4], initial_state=ins[5], output_final_state=True,
                      impl=impl)
    loss = (o.float() * cot[0]).sum() + (S.float() * cot[1]).sum()
    grads = torch.autograd.grad(loss, [x for x in ins if x is not None])
    return [o, S], list(grads)


def cotangents(B, T, H, K, V, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)]


def compare(checks, got, ref, tol, msg):
    for i, (a, e) in enumerate(zip(got, ref)):
        m = e.abs().max().clamp(min=1.0).item()
        checks.close(a.float(), e.float(), atol=tol * m, rtol=tol, msg=f"{msg} #{i}")


def check_impl(checks, impl, T, K, V, H, use_g, init, B=1, tol=2e-4):
    args = make(B, T, H, K, V, torch.float32, use_g, init)
    cot = cotangents(B, T, H, K, V)
    ref_out, ref_grad = run("naive", *args, cot)
    out, grad = run(impl, *args, cot)
    checks.true(len(grad) == 4 + use_g + init, "a gradient for every input")
    tag = f"{impl} T={T} K={K} V={V} H={H} g={use_g} init={init}"
    compare(checks, out, ref_out, tol, f"{tag} out")
    compare(checks, grad, ref_grad, tol * 5, f"{tag} grad (q, k, v, beta[, g][, S0])")


def closed_form(q, k, v, beta, g, S0, scale):
    """fp64, per batch row and head, the update written as the explicit matrix product
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = scale q_t^T S_t."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    o = torch.zeros(B, T, H, V, dtype=torch.float64)
    S_end = torch.zeros(B, H, K, V, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    for b, h in itertools.product(range(B), range(H)):
        S = S0[b, h].double() if S0 is not None else torch.zeros(K, V, dtype=torch.float64)
        for t in range(T):
            kt, vt = k[b, t, h].double(), v[b, t, h].double()
            bt = beta[b, t, h].double()
            a = g[b, t, h].double().exp() if g is not None else 1.0
            S = a * (eye - bt * torch.outer(kt, kt)) @ S + bt * torch.outer(kt, vt)
            o[b, t, h] = scale * q[b, t, h].double() @ S
        S_end[b, h] = S
    return o, S_end


def test_naive_matches_explicit_matrix_product_fp64(checks):
    """The spec itself against an independent closed form, in fp64."""
    for use_g, init in itertools.product((False, True), repeat=2):
        q, k, v, beta, g, S0 = make(2, 37, 3, 12, 7, torch.float64, use_g, init)
        beta = beta.double()
        g = None if g is None else g.double()
        S0 = None if S0 is None else S0.double()
        o, S = delta_rule(q, k, v, beta, g=g, initial_state=S0, output_final_state=True,
                          impl="naive")
        ref = closed_form(q, k, v, beta, g, S0, 12 ** -0.5)
        compare(checks, [o, S], ref, 1e-10, f"naive vs explicit product g={use_g} init={init}")


@pytest.mark.parametrize("T,K,V,H,use_g,init", split_slow(GRID, FAST_GRID))
def test_torch_vs_naive_fp32(T, K, V, H, use_g, init, checks):
    check_impl(checks, "torch", T, K, V, H, use_g, init)


@pytest.mark.parametrize("T,K,V,H,use_g,init", split_slow(GRID, FAST_GRID))
def test_triton_vs_naive_fp32(T, K, V, H, use_g, init, checks):
    """The whole grid under the interpreter with `-m slow` (minutes on 2 cores)."""
    check_impl(checks, "triton", T, K, V, H, use_g, init)


@pytest.mark.slow                     # B = 2 is in make test's non-finite cases (forward only)
def test_triton_batch_rows_and_full_tiles(checks):
    """B = 2 and K = V = 128 (the largest tiles: the whole K in one state tile)."""
    check_impl(checks, "triton", 40, 128, 128, 1, True, True, B=2)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_strong_decay_stays_finite(impl, checks):
    """g down to about -60 per token: exp(b) underflows inside a chunk; every exponent the
    kernels take is <= 0 (exp(b_t - b_s), s <= t), so nothing overflows."""
    q, k, v, beta, _, S0 = make(1, 100, 2, 16, 16, torch.float32, False, True)
    gen = torch.Generator().manual_seed(3)
    g = F.logsigmoid(torch.randn(1, 100, 2, generator=gen) * 30.0)
    cot = cotangents(1, 100, 2, 16, 16)
    ref_out, ref_grad = run("naive", q, k, v, beta, g, S0, cot)
    out, grad = run(impl, q, k, v, beta, g, S0, cot)
    checks.true(g.min().item() < -30, "strong decay present")
    checks.true(all(x.isfinite().all().item() for x in out + grad), "all finite")
    compare(checks, out, ref_out, 2e-4, f"{impl} strong decay out")
    compare(checks, grad, ref_grad, 1e-3, f"{impl} strong decay grad")


def plain_loop(q, k, v, beta, g, S0, scale):
    """The low-precision baseline: the token loop with every operation in the inputs' dtype."""
    dt = q.dtype
    B, T, H, K = q.shape
    S = S0.to(dt) if S0 is not None else q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        if g is not None:
            S = g[:, t].to(dt).exp()[..., None, None] * S
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + (beta[:, t].to(dt)[..., None] * k[:, t])[..., None] * err[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    return [torch.stack(outs, 1), S]


def low_precision_case(checks, impl, T, K, V, use_g, init, dtype=torch.float16):
    """Error vs the fp32 naive reference (on the same rounded inputs) <= 2x the error of the
    plain token loop run in `dtype`, plus a small floor."""
    q, k, v, beta, g, S0 = make(1, T, 2, K, V, dtype, use_g, init)
    cot = cotangents(1, T, 2, K, V)
    def up(x):
        return x.float()
    ref_out, ref_grad = run("naive", up(q), up(k), up(v), beta, g, S0, cot)
    out, grad = run(impl, q, k, v, beta, g, S0, cot)
    ins = [None if x is None else x.detach().to(dtype).requires_grad_()
           for x in (q, k, v, beta, g, S0)]
    pout = plain_loop(*ins, K ** -0.5)
    loss = sum((x.float() * c).sum() for x, c in zip(pout, cot))
    pgrad = torch.autograd.grad(loss, [x for x in ins if x is not None])
    tag = f"{impl} {dtype} T={T} K={K} V={V} g={use_g} init={init}"
    for kind, mine, base, ref in (("out", out, pout, ref_out), ("grad", grad, pgrad, ref_grad)):
        for i, (a, p, e) in enumerate(zip(mine, base, ref)):
            err = (a.float() - e.float()).abs().max().item()
            base_err = (p.float() - e.float()).abs().max().item()
            floor = 2e-3 * e.abs().max().clamp(min=1.0).item()
            checks.true(err <= 2 * base_err + floor,
                        f"{tag} {kind} #{i}: err {err:.3g} > 2 x plain {base_err:.3g} "
                        f"+ {floor:.3g}")


FP16_CASES = [(63, 40, 24, True, True), (65, 16, 16, False, True), (100, 64, 40, True, False)]


@pytest.mark.parametrize("case", [FP16_CASES[0], *(pytest.param(c, marks=pytest.mark.slow)
                                                  for c in FP16_CASES[1:])])  # fast: the first
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_fp16_vs_naive(impl, case, checks):
    low_precision_case(checks, impl, *case)


SPLITS = [(1,), (31, 1), (32,), (63, 70), (30, 64, 1, 40), (65, 1, 1)]


@pytest.mark.parametrize("impl", ["naive", "torch",
                                  pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("use_g", [pytest.param(False, marks=pytest.mark.slow), True])
def test_split_and_resume_equals_one_call(impl, use_g, checks):
    """Streaming: chunks with carried state (cuts on and across the 32/64-token chunk edges,
    one-token pieces through the decode kernel) == one call. Fast: naive and torch with g;
    triton's fast case is test_split_and_resume_short below."""
    split_and_resume(checks, impl, use_g, 150, SPLITS)


@pytest.mark.parametrize("impl", ["triton"])
def test_split_and_resume_short(impl, checks):
    """The same on 40 tokens (the triton case of `make test`; 150 tokens are slow there):
    one-token pieces (the decode kernel), cuts on (1 + 31) and just after (33) the 32-token
    chunk edge."""
    split_and_resume(checks, impl, True, 40, [(1, 31), (33, 1)])


def split_and_resume(checks, impl, use_g, T, splits):
    q, k, v, beta, g, S0 = make(2, T, 2, 20, 16, torch.float32, use_g, True)
    kw = dict(output_final_state=True, impl=impl)
    o_all, s_all = delta_rule(q, k, v, beta, g=g, initial_state=S0, **kw)
    for split in splits:
        cuts = list(itertools.accumulate(split)) + [T]
        state, outs, a = S0, [], 0
        for b in cuts:
            sl = slice(a, b)
            o, state = delta_rule(q[:, sl], k[:, sl], v[:, sl], beta[:, sl],
                                  g=None if g is None else g[:, sl], initial_state=state, **kw)
            outs.append(o)
            a = b
        checks.close(torch.cat(outs, 1), o_all, atol=2e-5, rtol=1e-5, msg=f"{impl} {split} o")
        checks.close(state, s_all, atol=2e-5, rtol=1e-5, msg=f"{impl} {split} state")


@pytest.mark.parametrize("K,V,use_g,init", [            # fast: (40, 24, True, True)
    pytest.param(16, 16, False, False, marks=pytest.mark.slow), (40, 24, True, True),
    pytest.param(128, 100, True, True, marks=pytest.mark.slow),
    pytest.param(20, 128, False, True, marks=pytest.mark.slow)])
def test_triton_decode_kernel_matches_naive(K, V, use_g, init, checks):
    """T == 1 without grad goes through the fused one-token decode kernel."""
    from memarch.kernels.gated_delta_rule import triton_chunk
    q, k, v, beta, g, S0 = make(2, 1, 3, K, V, torch.float32, use_g, init)
    calls = triton_chunk.DECODE_CALLS
    with torch.no_grad():
        o, S = delta_rule(q, k, v, beta, g=g, initial_state=S0, output_final_state=True,
                          impl="triton")
        ro, rs = delta_rule(q, k, v, beta, g=g, initial_state=S0, output_final_state=True,
                            impl="naive")
    checks.true(triton_chunk.DECODE_CALLS == calls + 1, "decode kernel was used")
    checks.close(o, ro, atol=1e-5, rtol=1e-5, msg="decode o")
    checks.close(S, rs, atol=1e-5, rtol=1e-5, msg="decode state")
    if S0 is not None:
        checks.true(S.data_ptr() != S0.data_ptr(), "the input state is not updated in place")
    # with grad the one-token call takes the chunked kernels (and still agrees)
    o2, _ = delta_rule(q.requires_grad_(), k, v, beta, g=g, initial_state=S0,
                       output_final_state=True, impl="triton")
    checks.true(triton_chunk.DECODE_CALLS == calls + 1, "no decode kernel under grad")
    checks.close(o2.detach(), ro, atol=1e-5, rtol=1e-5, msg="one-token chunked o")


def test_default_scale_and_no_final_state(checks):
    q, k, v, beta, g, _ = make(1, 10, 1, 9, 4, torch.float32, True, False)
    o1, fs = delta_rule(q, k, v, beta, g=g, impl="torch")
    o2, _ = delta_rule(q, k, v, beta, g=g, scale=1 / 3, impl="naive")
    checks.true(fs is None, "no final state unless asked")
    checks.close(o1, o2, atol=1e-6, msg="default scale is K^-0.5")


def test_linear_attn_state_is_accepted(checks):
    q, k, v, beta, g, S0 = make(1, 10, 2, 8, 4, torch.float32, True, True)
    o1, _ = delta_rule(q, k, v, beta, g=g, initial_state=S0, impl="torch")
    o2, _ = delta_rule(q, k, v, beta, g=g, initial_state=LinearAttnState(S0, None), impl="torch")
    checks.equal(o1, o2, "LinearAttnState(S, None) == S")


def _spy(monkeypatch, module, name, seen):
    fn = getattr(module, name)

    def wrapped(*a, **kw):
        seen.append(name)
        return fn(*a, **kw)
    monkeypatch.setattr(module, name, wrapped)


def test_auto_picks_torch_on_cpu_and_honours_env(monkeypatch, checks):
    from memarch.kernels.gated_delta_rule import triton_chunk

    from memarch.kernels import _common
    op = importlib.import_module("memarch.kernels.gated_delta_rule")   # the op's package
    seen: list = []
    _spy(monkeypatch, op, "chunk_delta_rule", seen)
    _spy(monkeypatch, op, "delta_rule_naive", seen)
    _spy(monkeypatch, triton_chunk, "delta_rule_triton", seen)
    q, k, v, beta, g, _ = make(1, 5, 1, 8, 4, torch.float32, True, False)
    monkeypatch.delenv(_common.ENV_VAR, raising=False)
    delta_rule(q, k, v, beta, g=g)
    checks.true(seen == ["chunk_delta_rule"], f"CPU auto -> torch, got {seen}")
    for forced, name in (("naive", "delta_rule_naive"), ("triton", "delta_rule_triton"),
                         ("torch", "chunk_delta_rule")):
        seen.clear()
        monkeypatch.setenv(_common.ENV_VAR, forced)
        delta_rule(q, k, v, beta, g=g)
        checks.true(seen == [name], f"${_common.ENV_VAR}={forced} -> {name}, got {seen}")
    seen.clear()                      # heads wider than the kernels take: auto -> torch
    wide = make(1, 5, 1, op.MAX_TRITON_DIM + 8, 4, torch.float32, True, False)[:5]
    monkeypatch.setenv(_common.ENV_VAR, "triton")
    with pytest.warns(UserWarning, match=r"exceed the Triton kernels' 128; impl='auto' runs"):
        delta_rule(*wide[:4], g=wide[4])
    checks.true(seen == ["chunk_delta_rule"], f"auto (env triton), K > max -> torch, got {seen}")
    with pytest.raises(ValueError, match=r"impl='triton' supports K, V <= 128"):
        delta_rule(*wide[:4], g=wide[4], impl="triton")
    seen.clear()
    monkeypatch.setenv(_common.ENV_VAR, "naive")
    delta_rule(q, k, v, beta, g=g, impl="torch")
    checks.true(seen == ["chunk_delta_rule"], "an explicit impl wins over the env var")
    monkeypatch.setenv(_common.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="MEMARCH_KERNEL_IMPL"):
        delta_rule(q, k, v, beta, g=g)
    checks.true(True, "raised")


@pytest.mark.parametrize("bad,match", [
    (dict(q=torch.zeros(1, 5, 2)), r"q must be a 4-d tensor"),
    (dict(k=torch.zeros(1, 5, 2, 7)), "k must have q's shape"),
    (dict(v=torch.zeros(1, 4, 2, 3)), r"v must have shape \[B, T, H, V\]"),
    (dict(beta=torch.zeros(1, 5, 3)), r"beta must have shape \[B, T, H\]"),
    (dict(beta=[0.5]), r"beta must be a tensor"),
    (dict(g=torch.zeros(1, 5, 2, 1)), r"g must have shape \[B, T, H\]"),
    (dict(v=torch.zeros(1, 5, 2, 3, dtype=torch.float64)), "share a dtype"),
    (dict(q=torch.zeros(1, 5, 2, 8, dtype=torch.long)), "floating-point"),
    (dict(g=torch.full((1, 5, 2), 0.25)), r"g must be <= 0.*max\(g\) = 0\.25"),
    (dict(impl="cuda"), "impl must be one of"),
    (dict(initial_state=torch.zeros(1, 2, 8, 4)), r"initial_state must have shape"),
    (dict(initial_state=(torch.zeros(1, 2, 8, 3), torch.zeros(1, 2, 8))),
     r"initial_state must be a tensor S"),
    (dict(q=torch.zeros(1, 5, 2, 130), k=torch.zeros(1, 5, 2, 130), impl="triton"),
     "K, V <= 128"),
])
def test_argument_errors(bad, match, checks):
    args = dict(q=torch.zeros(1, 5, 2, 8), k=torch.zeros(1, 5, 2, 8), v=torch.zeros(1, 5, 2, 3),
                beta=torch.zeros(1, 5, 2))
    args.update(bad)
    q, k, v, beta = (args.pop(n) for n in ("q", "k", "v", "beta"))
    with pytest.raises((ValueError, TypeError), match=match):
        delta_rule(q, k, v, beta, **args)
    checks.true(True, "raised")


@pytest.mark.parametrize("impl", ["naive", "torch", "triton"])
def test_empty_sequence_returns_the_initial_state(impl, checks):
    q = torch.randn(2, 0, 3, 16)
    v = torch.randn(2, 0, 3, 8)
    S0 = torch.randn(2, 3, 16, 8)
    o, S = delta_rule(q, q, v, torch.zeros(2, 0, 3), g=torch.zeros(2, 0, 3), initial_state=S0,
                      output_final_state=True, impl=impl)
    checks.true(o.shape == (2, 0, 3, 8), "empty output")
    checks.close(S, S0, atol=0, msg="initial state back")


NONFINITE_T = 70                      # chunk edges at 32 and 64: bad tokens at and after them
_CLEAN: dict = {}


def _nonfinite_call(impl, q, k, v, beta, g, S0):
    with torch.no_grad():
        return delta_rule(q, k, v, beta, g=g, initial_state=S0, output_final_state=True,
                          impl=impl)


def _nonfinite_grid():
    """impl x bad x name x t, ids as the stacked parametrisation gave them. Fast: NaN in each
    of q, k, v, beta, g and +inf in g (the ValueError) at t = 64 (a chunk edge), for each
    impl; every other (bad, t) is slow."""
    cases = []
    for impl in ["naive", "torch", "triton"]:
        for (bad, bid), name, t in itertools.product(
                [(float("nan"), "nan"), (float("inf"), "inf")], ["q", "k", "v", "beta", "g"],
                [0, 5, 64, 69]):
            fast = t == 64 and (bid == "nan" or name == "g")
            cases.append(pytest.param(impl, bad, name, t, id=f"{impl}-{bid}-{name}-{t}",
                                      marks=() if fast else pytest.mark.slow))
    return cases


@pytest.mark.filterwarnings("ignore::RuntimeWarning")       # numpy in the interpreter on NaN
@pytest.mark.parametrize("impl,bad,name,t", _nonfinite_grid())
def test_nonfinite_input_is_causal(impl, bad, name, t, checks):
    """A NaN/+inf in q, k, v, beta or g at token t of batch row 0, head 0: every output
    before t, all of row 1 and all of head 1 (and their final states) are bitwise the clean
    call's; every output that sees token t (q: only o_t, NaN or +-inf; else t..T-1) is NaN;
    the final state of (row 0, head 0) is NaN unless the bad value is in q. g = +inf raises."""
    q, k, v, beta, g, S0 = make(2, NONFINITE_T, 2, 16, 16, torch.float32, True, True)
    x = dict(q=q, k=k, v=v, beta=beta, g=g)
    if name == "g" and bad > 0:
        x["g"] = g.clone()
        x["g"][0, t, 0] = bad
        with pytest.raises(ValueError, match=r"g must be <= 0"):
            delta_rule(**x, initial_state=S0, impl=impl)
        checks.true(True, "g = +inf raised")
        return
    if impl not in _CLEAN:
        _CLEAN[impl] = _nonfinite_call(impl, q, k, v, beta, g, S0)
    oc, sc = _CLEAN[impl]
    x[name] = x[name].clone()
    if name in ("beta", "g"):
        x[name][0, t, 0] = bad
    else:
        x[name][0, t, 0, 3] = bad                      # one element of one head's vector
    o, s = _nonfinite_call(impl, *x.values(), S0)
    tag = f"{impl} {name}[{t}]={bad}"
    checks.equal(o[0, :t], oc[0, :t], f"{tag}: o[0, :t]")
    checks.equal(o[1], oc[1], f"{tag}: batch row 1")
    checks.equal(o[0, :, 1], oc[0, :, 1], f"{tag}: head 1")
    checks.equal(s[1], sc[1], f"{tag}: state of row 1")
    checks.equal(s[0, 1], sc[0, 1], f"{tag}: state of head 1")
    if name == "q":                                   # q_t is seen by o_t alone
        checks.true((~o[0, t, 0].isfinite()).all().item(), f"{tag}: o_t is non-finite")
        if math.isnan(bad):
            checks.true(o[0, t, 0].isnan().all().item(), f"{tag}: o_t is NaN")
        checks.equal(o[0, t + 1:], oc[0, t + 1:], f"{tag}: o after t")
        checks.equal(s, sc, f"{tag}: final state")
    else:
        checks.true(o[0, t:, 0].isnan().all().item(), f"{tag}: every output from t on is NaN")
        checks.true(s[0, 0].isnan().all().item(), f"{tag}: final state is NaN")
