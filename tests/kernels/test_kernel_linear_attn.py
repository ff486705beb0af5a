"""linear_attn: every implementation against the naive fp32 token loop (outputs, final state,
gradients of q, k, v, g and the initial state), split-and-resume, the decode kernel, and the
argument checks. Triton runs under TRITON_INTERPRET=1 (set in conftest) on the same grid."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from grids import split_slow

from memarch.kernels import LinearAttnState, linear_attn

TS, KS, VS = (1, 63, 64, 65, 200), (16, 60, 153), (16, 64)
GRID = list(itertools.product(TS, KS, VS, (False, True), (False, True), (False, True)))
EPS = 1e-6

# `make test` runs a few cases of each grid (the interpreter makes the whole
# grid minutes long); `-m slow` runs the rest. FAST_GRID covers T = 1 and T = 65 (across the
# 64-token chunk edge) and 63, K = 60 and 153 (not powers of two; 153 > 128: two K tiles),
# V = 16 and 64, each of g / normalize / initial state on and off; init=True checks the
# gradient of the initial state (S and z).
FAST_GRID = [(65, 60, 16, True, True, True), (1, 16, 16, False, False, True),
             (63, 153, 64, True, False, False), (64, 16, 64, False, True, False)]





def make(B, T, H, K, V, dtype, use_g, normalize, init, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    q, k = r(B, T, H, K), r(B, T, H, K)
    if normalize:                                                      # positive feature maps
        q, k = F.elu(q) + 1, F.elu(k) + 1
    v = r(B, T, H, V)
    g = F.logsigmoid(r(B, T, H) + 3.0) if use_g else None              # log decay in (-inf, 0)
    st = None
    if init:
        S0 = r(B, H, K, V)
        st = LinearAttnState(S0, torch.rand(B, H, K, generator=gen) * T) if normalize else S0
    cast = lambda x: None if x is None else x.to(dtype)
    q, k, v = cast(q), cast(k), cast(v)
    return q, k, v, g, st


def leaves(st):
    if st is None:
        return []
    return [st] if isinstance(st, torch.Tensor) else [x for x in st if x is not None]


def run(impl, q, k, v, g, st, normalize, cot):
    """Forward + backward with fixed cotangents; returns outputs and input gradients."""
    ins = [x.detach().clone().requires_grad_() for x in [q, k, v] + ([g] if g is not None else [])]
    s_in = [x.detach().clone().requires_grad_() for x in leaves(st)]
    gi = ins[3] if g is not None else None
    st_in = None if st is None else (s_in[0] if isinstance(st, torch.Tensor)
                                      else LinearAttnState(*s_in))
    o, fs = linear_attn(*ins[:3], g=gi, normalize=normalize, eps=EPS, initial_state=st_in,
                        output_final_state=True, impl=impl)
    outs = [o, fs.S] + ([fs.z] if normalize else [])
    loss = sum((x.float() * c).sum() for x, c in zip(outs, cot))
    grads = torch.autograd.grad(loss, ins + s_in)
    return outs, list(grads)


def cotangents(outs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(x.shape, generator=gen) for x in outs]


def plain(q, k, v, g, st, normalize, scale):
    """Plain PyTorch quadratic form in the inputs' dtype (the low-precision baseline)."""
    dt = q.dtype
    T = q.shape[1]
    qs = q * scale
    b = g.to(dt).cumsum(1) if g is not None else q.new_zeros(q.shape[:3])       # [B, T, H]
    diff = b[:, :, None] - b[:, None, :]                                        # [B, t, s, H]
    tri = torch.ones(T, T, dtype=torch.bool).tril()[None, :, :, None]
    D = diff.masked_fill(~tri, float("-inf")).exp()
    A = torch.einsum("bthk,bshk->btsh", qs, k) * D
    o = torch.einsum("btsh,bshv->bthv", A, v)
    dec_end = (b[:, -1:] - b).exp()                                             # [B, T, H]
    S = torch.einsum("bthk,bthv->bhkv", k * dec_end[..., None], v)
    z = (k * dec_end[..., None]).sum(1) if normalize else None
    den = A.sum(2) if normalize else None
    if st is not None:
        S0 = st if isinstance(st, torch.Tensor) else st[0]
        qe = qs * b.exp()[..., None]
        o = o + torch.einsum("bthk,bhkv->bthv", qe, S0.to(dt))
        S = S + b[:, -1].exp()[..., None, None] * S0.to(dt)
        if normalize:
            den = den + torch.einsum("bthk,bhk->bth", qe, st[1].to(dt))
            z = z + b[:, -1].exp()[..., None] * st[1].to(dt)
    if normalize:
        o = o / (den[..., None] + EPS)
    return [o, S] + ([z] if normalize else [])


def compare(checks, got, ref, tol, msg):
    for i, (a, e) in enumerate(zip(got, ref)):
        m = e.abs().max().clamp(min=1.0).item()
        checks.close(a.float(), e.float(), atol=tol * m, rtol=tol, msg=f"{msg} #{i}")


def check_impl(checks, impl, T, K, V, use_g, normalize, init, B=1, H=2, tol=2e-4):
    q, k, v, g, st = make(B, T, H, K, V, torch.float32, use_g, normalize, init)
    with torch.no_grad():
        probe, fs = linear_attn(q, k, v, g=g, normalize=normalize, eps=EPS, initial_state=st,
                                output_final_state=True, impl="naive")
    cot = cotangents([probe] + leaves(fs))
    ref_out, ref_grad = run("naive", q, k, v, g, st, normalize, cot)
    out, grad = run(impl, q, k, v, g, st, normalize, cot)
    tag = f"{impl} T={T} K={K} V={V} g={use_g} norm={normalize} init={init}"
    compare(checks, out, ref_out, tol, f"{tag} out")
    compare(checks, grad, ref_grad, tol * 5, f"{tag} grad")


def test_naive_matches_plain_quadratic_form_fp64(checks):
    """The spec itself against an independent closed form, in fp64."""
    for use_g, normalize, init in itertools.product((False, True), repeat=3):
        q, k, v, g, st = make(2, 37, 3, 12, 7, torch.float64, use_g, normalize, init)
        g = None if g is None else g.double()
        st = None if st is None else (st.double() if isinstance(st, torch.Tensor)
                                      else LinearAttnState(st.S.double(), st.z.double()))
        o, fs = linear_attn(q, k, v, g=g, normalize=normalize, eps=EPS, initial_state=st,
                            output_final_state=True, impl="naive")
        ref = plain(q, k, v, g, st, normalize, 12 ** -0.5)
        compare(checks, [o, fs.S] + ([fs.z] if normalize else []), ref, 1e-10, "naive vs plain")


@pytest.mark.parametrize("T,K,V,use_g,normalize,init", split_slow(GRID, FAST_GRID))
def test_torch_vs_naive_fp32(T, K, V, use_g, normalize, init, checks):
    check_impl(checks, "torch", T, K, V, use_g, normalize, init)


@pytest.mark.parametrize("T,K,V,use_g,normalize,init", split_slow(GRID, FAST_GRID))
def test_triton_vs_naive_fp32(T, K, V, use_g, normalize, init, checks):
    """The whole grid under the interpreter with `-m slow` (minutes on 2 cores)."""
    check_impl(checks, "triton", T, K, V, use_g, normalize, init)


def low_precision_case(checks, impl, T, K, V, use_g, normalize, init, dtype=torch.float16):
    """Error vs the fp32 naive reference <= 2x plain PyTorch's error in the same dtype."""
    q, k, v, g, st = make(1, T, 2, K, V, dtype, use_g, normalize, init)
    up = lambda x: x.float()
    with torch.no_grad():
        probe, fs = linear_attn(up(q), up(k), up(v), g=g, normalize=normalize, eps=EPS,
                                initial_state=st, output_final_state=True, impl="naive")
    cot = cotangents([probe] + leaves(fs))
    ref_out, ref_grad = run("naive", up(q), up(k), up(v), g, st, normalize, cot)
    out, grad = run(impl, q, k, v, g, st, normalize, cot)
    # the plain baseline: quadratic form in `dtype`, gradients by autograd in `dtype`
    ins = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    gl = None if g is None else g.detach().to(dtype).requires_grad_()
    sl = [x.detach().to(dtype).requires_grad_() for x in leaves(st)]
    stl = None if st is None else (sl[0] if isinstance(st, torch.Tensor) else tuple(sl))
    pout = plain(*ins, gl, stl, normalize, K ** -0.5)
    loss = sum((x.float() * c).sum() for x, c in zip(pout, cot))
    pgrad = torch.autograd.grad(loss, ins + ([gl] if gl is not None else []) + sl)
    tag = f"{impl} {dtype} T={T} K={K} V={V} g={use_g} norm={normalize} init={init}"
    for kind, mine, base, ref in (("out", out, pout, ref_out), ("grad", grad, pgrad, ref_grad)):
        for i, (a, p, e) in enumerate(zip(mine, base, ref)):
            err = (a.float() - e).abs().max().item()
            base_err = (p.float() - e).abs().max().item()
            floor = 2e-3 * e.abs().max().clamp(min=1.0).item()
            checks.true(err <= 2 * base_err + floor,
                        f"{tag} {kind} #{i}: err {err:.3g} > 2 x plain {base_err:.3g} "
                        f"+ {floor:.3g}")


FP16_CASES = [(63, 60, 64, True, False, True), (65, 16, 16, False, True, True),
              (200, 153, 16, True, True, False)]


@pytest.mark.parametrize("case", [FP16_CASES[0], *(pytest.param(c, marks=pytest.mark.slow)
                                                  for c in FP16_CASES[1:])])  # fast: the first
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_fp16_vs_naive(impl, case, checks):
    low_precision_case(checks, impl, *case)


SPLITS = [(1,), (63, 1), (64,), (65, 70), (30, 64, 1, 40)]


@pytest.mark.parametrize("impl", ["naive", "torch", "triton"])
@pytest.mark.parametrize("use_g,normalize", [pytest.param(False, False, marks=pytest.mark.slow),
                                             (True, True),         # fast: g and normalize on
                                             pytest.param(True, False, marks=pytest.mark.slow)])
def test_split_and_resume_equals_one_call(impl, use_g, normalize, checks):
    T = 150
    q, k, v, g, st = make(1, T, 2, 20, 16, torch.float32, use_g, normalize, True)
    kw = dict(normalize=normalize, eps=EPS, output_final_state=True, impl=impl)
    o_all, s_all = linear_attn(q, k, v, g=g, initial_state=st, **kw)
    for split in SPLITS:
        cuts = list(itertools.accumulate(split)) + [T]
        state, outs, a = st, [], 0
        for b in cuts:
            sl = slice(a, b)
            o, state = linear_attn(q[:, sl], k[:, sl], v[:, sl], g=None if g is None else g[:, sl],
                                   initial_state=state, **kw)
            outs.append(o)
            a = b
        checks.close(torch.cat(outs, 1), o_all, atol=2e-4, rtol=1e-4, msg=f"{impl} {split} o")
        checks.close(state, s_all, atol=2e-4, rtol=1e-4, msg=f"{impl} {split} state")


@pytest.mark.parametrize("K,V,use_g,normalize", [(16, 16, False, False), (153, 64, True, True),
                                                 (60, 16, True, False)])
def test_triton_decode_kernel_matches_naive(K, V, use_g, normalize, checks):
    """T == 1 without grad goes through the fused one-token decode kernel."""
    from memarch.kernels.linear_attention import triton_chunk
    q, k, v, g, st = make(2, 1, 3, K, V, torch.float32, use_g, normalize, True)
    calls = triton_chunk.DECODE_CALLS
    with torch.no_grad():
        o, fs = linear_attn(q, k, v, g=g, normalize=normalize, eps=EPS, initial_state=st,
                            output_final_state=True, impl="triton")
        ro, rs = linear_attn(q, k, v, g=g, normalize=normalize, eps=EPS, initial_state=st,
                             output_final_state=True, impl="naive")
    checks.true(triton_chunk.DECODE_CALLS == calls + 1, "decode kernel was used")
    checks.close(o, ro, atol=1e-5, rtol=1e-5, msg="decode o")
    checks.close(fs, rs, atol=1e-5, rtol=1e-5, msg="decode state")
    S_in = st if isinstance(st, torch.Tensor) else st.S
    checks.true(fs.S.data_ptr() != S_in.data_ptr(), "the input state is not updated in place")


def test_default_scale_and_no_final_state(checks):
    q, k, v, _, _ = make(1, 10, 1, 9, 4, torch.float32, False, False, False)
    o1, fs = linear_attn(q, k, v, impl="torch")
    o2, _ = linear_attn(q, k, v, scale=1 / 3, impl="naive")
    checks.true(fs is None, "no final state unless asked")
    checks.close(o1, o2, atol=1e-5, msg="default scale is K^-0.5")


def test_auto_and_env_override(monkeypatch, checks):
    from memarch.kernels import _common
    q = torch.zeros(1, 2, 1, 4)
    monkeypatch.delenv(_common.ENV_VAR, raising=False)
    checks.true(_common.pick_impl("op", "auto", q) == "torch", "CPU auto -> torch")
    monkeypatch.setenv(_common.ENV_VAR, "naive")
    checks.true(_common.pick_impl("op", "auto", q) == "naive", "env var forces naive")
    checks.true(_common.pick_impl("op", "torch", q) == "torch", "explicit impl wins")
    monkeypatch.setenv(_common.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="MEMARCH_KERNEL_IMPL"):
        _common.pick_impl("op", "auto", q)
    checks.true(True, "raised")


@pytest.mark.parametrize("bad,match", [
    (dict(k=torch.zeros(1, 5, 2, 7)), "k must have q's shape"),
    (dict(v=torch.zeros(1, 4, 2, 3)), r"v must have shape \[B, T, H, V\]"),
    (dict(g=torch.zeros(1, 5, 3)), r"g must have shape \[B, T, H\]"),
    (dict(v=torch.zeros(1, 5, 2, 3, dtype=torch.float64)), "share a dtype"),
    (dict(q=torch.zeros(1, 5, 2, 8, dtype=torch.long)), "floating-point"),
    (dict(initial_state=torch.zeros(1, 2, 8, 4)), r"initial_state.S must have shape"),
    (dict(initial_state=torch.zeros(1, 2, 8, 3), normalize=True), "initial_state.z"),
    (dict(initial_state=(torch.zeros(1, 2, 8, 3), torch.zeros(1, 2, 7)), normalize=True),
     r"initial_state.z must have shape \[B, H, K\]"),
    (dict(impl="cuda"), "impl must be one of"),
    (dict(q=torch.zeros(1, 5, 2, 300), k=torch.zeros(1, 5, 2, 300), impl="triton"),
     "K, V <= 256"),
])
def test_argument_errors(bad, match, checks):
    args = dict(q=torch.zeros(1, 5, 2, 8), k=torch.zeros(1, 5, 2, 8), v=torch.zeros(1, 5, 2, 3))
    args.update(bad)
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises((ValueError, TypeError), match=match):
        linear_attn(q, k, v, **args)
    checks.true(True, "raised")


NONFINITE_T = 70                      # two chunks of 64: bad tokens mid-chunk and at the edge
_CLEAN: dict = {}


def _nonfinite_call(impl, q, k, v, g, st, normalize):
    with torch.no_grad():
        o, fs = linear_attn(q, k, v, g=g, normalize=normalize, eps=EPS, initial_state=st,
                            output_final_state=True, impl=impl)
    return [o.float()] + [x.float() for x in leaves(fs)]


def _nonfinite_grid():
    """impl x normalize x bad x name x t, ids as the stacked parametrisation gave them. Fast:
    NaN in each of q, k, v, g and +inf in g (the ValueError) at t = 64 (the first token of
    the second chunk), for each impl and normalize; every other (bad, t) is slow."""
    cases = []
    for impl, normalize in itertools.product(["naive", "torch", "triton"], [False, True]):
        for (bad, bid), name, t in itertools.product(
                [(float("nan"), "nan"), (float("inf"), "inf")], ["q", "k", "v", "g"],
                [0, 5, 64, 69]):
            fast = t == 64 and (bid == "nan" or name == "g")
            cases.append(pytest.param(impl, normalize, bad, name, t,
                                      id=f"{impl}-{normalize}-{bid}-{name}-{t}",
                                      marks=() if fast else pytest.mark.slow))
    return cases


@pytest.mark.filterwarnings("ignore::RuntimeWarning")       # numpy in the interpreter on NaN
@pytest.mark.parametrize("impl,normalize,bad,name,t", _nonfinite_grid())
def test_nonfinite_input_is_causal(impl, normalize, bad, name, t, checks):
    """The NaN rule (docs/design.md#the-nan-rule): NaN at t poisons no output < t. A NaN/+inf
    in q, k, v or g at token t of batch row 0, head 0 leaves every output before t (and all of
    row 1 and head 1, and their final states) equal to the clean call's; outputs that see token
    t (q: only t; k, v, g: all of t..T-1) are non-finite, not silently finite. g = +inf is a
    positive gate: ValueError."""
    q, k, v, g, st = make(2, NONFINITE_T, 2, 16, 16, torch.float32, True, normalize, True)
    x = {"q": q, "k": k, "v": v, "g": g}
    if name == "g" and bad > 0:
        x["g"] = g.clone()
        x["g"][0, t, 0] = bad
        with pytest.raises(ValueError, match=r"g must be <= 0"):
            linear_attn(**x, normalize=normalize, initial_state=st, impl=impl)
        checks.true(True, "g = +inf raised")
        return
    key = (impl, normalize)
    if key not in _CLEAN:
        _CLEAN[key] = _nonfinite_call(impl, q, k, v, g, st, normalize)
    clean = _CLEAN[key]
    x[name] = x[name].clone()
    if name == "g":
        x["g"][0, t, 0] = bad
    else:
        x[name][0, t, 0, 3] = bad                      # one element of one head's vector
    got = _nonfinite_call(impl, *x.values(), st, normalize)
    o, oc = got[0], clean[0]
    tag = f"{impl} norm={normalize} {name}[{t}]={bad}"
    # unaffected: everything before t in (row 0, head 0), and all of row 1 and of head 1
    checks.true(o[0, :t].isfinite().all().item(), f"{tag}: outputs before t are finite")
    checks.close(o[0, :t], oc[0, :t], atol=1e-6, rtol=1e-6, msg=f"{tag}: o[0, :t]")
    checks.close(o[1], oc[1], atol=1e-6, rtol=1e-6, msg=f"{tag}: batch row 1")
    checks.close(o[0, :, 1], oc[0, :, 1], atol=1e-6, rtol=1e-6, msg=f"{tag}: head 1")
    for i, (s, sc) in enumerate(zip(got[1:], clean[1:])):
        checks.close(s[1], sc[1], atol=1e-6, rtol=1e-6, msg=f"{tag}: state #{i} row 1")
        checks.close(s[0, 1], sc[0, 1], atol=1e-6, rtol=1e-6, msg=f"{tag}: state #{i} head 1")
    # honest propagation: every output that sees token t is non-finite
    seen = o[0, t:t + 1, 0] if name == "q" else o[0, t:, 0]            # [n, V]
    checks.true((~seen.isfinite()).any(-1).all().item(),
                f"{tag}: outputs that see token t are non-finite")
    if name == "q":                                   # q_t is seen by o_t alone, not the state
        checks.close(o[0, t + 1:], oc[0, t + 1:], atol=1e-6, rtol=1e-6, msg=f"{tag}: o after t")
        checks.close(got[1:], clean[1:], atol=1e-6, rtol=1e-6, msg=f"{tag}: final state")


@pytest.mark.parametrize("impl", ["naive", "torch", "triton"])
def test_positive_gate_raises(impl, checks):
    """A gate g > 0 (exp(g) > 1) is not a decay; the op says so, naming g."""
    q, k, v, g, _ = make(1, 5, 1, 8, 4, torch.float32, True, False, False)
    g = g.clone()
    g[0, 2, 0] = 0.5
    with pytest.raises(ValueError, match=r"g must be <= 0.*max\(g\) = 0\.5"):
        linear_attn(q, k, v, g=g, impl=impl)
    checks.true(True, "raised")
    g[0, 2, 0] = 0.0                                  # 0 (no decay) is allowed
    o, _ = linear_attn(q, k, v, g=g, impl=impl)
    checks.true(o.isfinite().all().item(), "g = 0 is accepted")


@pytest.mark.parametrize("impl", ["naive", "torch", "triton"])
def test_empty_sequence_returns_the_initial_state(impl, checks):
    """Probe: T=0 gave an empty output under naive/torch but an error under triton."""
    q = torch.randn(2, 0, 3, 16)
    S0 = torch.randn(2, 3, 16, 16)
    z0 = torch.rand(2, 3, 16)
    o, st = linear_attn(q, q, q, normalize=True, initial_state=(S0, z0),
                        output_final_state=True, impl=impl)
    checks.true(o.shape == (2, 0, 3, 16), "empty output")
    checks.close((st.S, st.z), (S0, z0), atol=0, msg="initial state back")
