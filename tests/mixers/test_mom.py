"""MoM (memarch.mixers.MoM) against an independent token-by-token reference written from the
paper's equations, plus streaming, routing isolation, the M = 1 reduction, the balance loss
and training's use of it.

The reference below shares nothing with the mixer's code path but the parameters: it loops
over tokens, routes with its own softmax/top-k, convolves with an explicit sum, and updates
each memory with explicit matrices (I - beta k k^T) only when the token is routed to it."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from mixer_cases import run_chunks

from memarch.kernels import delta_rule, linear_attn
from memarch.mixers import MoM, MoMState

D = 32


def build(**kw) -> MoM:
    torch.manual_seed(0)
    m = MoM(D, **{**dict(n_heads=2, n_memories=3, topk=2), **kw}).double()
    with torch.no_grad():          # larger gates than the init, so decay and beta matter
        m.A_log.copy_(torch.linspace(-1.0, 0.3, m.n_heads))
    return m


def reference(m: MoM, x: torch.Tensor, state: MoMState | None = None):
    """Token loop in fp64 from the paper's equations; returns (y [B, T, D], MoMState).
    ``route_by="key_query"``: the token writes the memories its key's routing picks (the
    shared memory's key, or the extra routing-key channels without it) and reads those its
    query's routing picks (MoM's docstring)."""
    B, T, _ = x.shape
    H, K, V, M, cs = m.n_heads, m.head_dim, m.v_dim, m.n_memories, m.conv_size
    E = M + int(m.shared_memory)
    st = state or m.init_state(B, dtype=torch.float64)
    S = [st.S[:, i].clone() for i in range(M)] + ([st.shared.clone()] if m.shared_memory
                                                   else [])
    hist = list(st.conv.unbind(1)) if cs else []            # pre-conv projections, oldest first
    A = -m.A_log.double().exp()                              # [H]
    ys = []

    def l2(t):                                               # [B, H, K] -> [B, H K]
        return (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)).reshape(B, H * K)

    def top(logits):
        probs = torch.softmax(logits.float(), -1)
        tk = probs.topk(m.topk, -1)
        return tk.indices, tk.values / tk.values.sum(-1, keepdim=True)
    for t in range(T):
        xt = x[:, t]                                         # [B, D]
        p = xt @ m.qkv_proj.weight.T                         # [B, C]
        if cs:
            hist.append(p)
            win = hist[-cs:]
            u = sum(m.conv_weight[:, 0, i] * win[i] for i in range(cs))
        else:
            u = p
        u = F.silu(u)
        end_v = H * K + E * H * K + E * H * V
        q = u[:, :H * K].view(B, H, K)
        k = u[:, H * K:H * K + E * H * K].view(B, E, H, K)
        v = u[:, H * K + E * H * K:end_v].view(B, E, H, V)
        if getattr(m, "route_by", "token") == "token":
            ridx, rw = top(xt @ m.router.weight.T)
            widx = ridx
        else:
            key = k[:, M] if m.shared_memory else u[:, end_v:].view(B, H, K)
            widx, _ = top(l2(key) @ m.router.weight.T)
            ridx, rw = top(l2(q) @ m.router.weight.T)
        a = (xt @ m.a_proj.weight.T).view(B, E, H)
        g = A * F.softplus(a + m.dt_bias)                    # [B, E, H]
        beta = (torch.sigmoid(xt @ m.b_proj.weight.T).view(B, E, H)
                if m.cell == "gated_delta" else None)
        o = torch.zeros(B, H, V, dtype=torch.float64)
        for b in range(B):
            written = set(widx[b].tolist())
            read = dict(zip(ridx[b].tolist(), rw[b].tolist()))
            if m.shared_memory:
                written.add(M)
                read[M] = 1.0
            for e in range(E):
                for h in range(H):
                    qq, kk, vv = q[b, h], k[b, e, h], v[b, e, h]
                    if m.cell == "gated_delta":
                        qq, kk = qq / qq.norm(), kk / kk.norm()
                    if e in written:                  # else untouched: no write, no decay
                        Sm = S[e][b, h]
                        if m.cell == "gated_delta":
                            P = (torch.eye(K, dtype=torch.float64)
                                 - beta[b, e, h] * torch.outer(kk, kk))
                            Sm = g[b, e, h].exp() * P @ Sm + beta[b, e, h] * torch.outer(kk, vv)
                        else:
                            Sm = g[b, e, h].exp() * Sm + torch.outer(kk, vv)
                        S[e] = S[e].clone()
                        S[e][b, h] = Sm
                    if e in read:
                        o[b, h] += read[e] * (K ** -0.5) * (qq @ S[e][b, h])
        gate = F.silu(xt @ m.g_proj.weight.T).view(B, H, V)
        rms = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + m.o_norm.eps)
        ys.append((rms * m.o_norm.weight * gate).reshape(B, H * V) @ m.o_proj.weight.T)
    conv = torch.stack(hist[len(hist) - (cs - 1):], 1) if cs else None
    new = MoMState(torch.stack(S[:M], 1), S[M] if m.shared_memory else None, conv,
                   st.pos + T)
    return torch.stack(ys, 1), new


VARIANTS = list(itertools.product(("gated_delta", "linear"), (True, False), (1, 2)))
# `make test` runs two variants (the fast share): each cell, shared memory on and off,
# top-1 and top-2; `-m slow` runs the other six.
FAST_VARIANTS = [("gated_delta", True, 2), ("linear", False, 1)]
SPLIT_VARIANTS = [v if v in FAST_VARIANTS else pytest.param(*v, marks=pytest.mark.slow)
                  for v in VARIANTS]


@pytest.mark.parametrize("cell,shared,topk", SPLIT_VARIANTS)
def test_matches_token_loop_reference_fp64(cell, shared, topk, checks):
    m = build(cell=cell, shared_memory=shared, topk=topk)
    x = torch.randn(2, 70, D, dtype=torch.float64)
    out = m(x)
    y_ref, s_ref = reference(m, x)
    checks.close(out.y, y_ref, atol=1e-10, rtol=1e-10, msg=f"{cell} y")
    checks.close(out.state, s_ref, atol=1e-10, rtol=1e-10, msg=f"{cell} state")
    # continue from a non-trivial state: the reference from the mixer's own state
    x2 = torch.randn(2, 9, D, dtype=torch.float64)
    y2, s2 = reference(m, x2, out.state)
    out2 = m(x2, out.state)
    checks.close(out2.y, y2, atol=1e-10, rtol=1e-10, msg=f"{cell} y resumed")
    checks.close(out2.state, s2, atol=1e-10, rtol=1e-10, msg=f"{cell} state resumed")


def check_chunks(m: MoM, checks) -> torch.Tensor:
    """One call over 140 tokens == chunks straddling the conv width and the 32/64-token
    kernel chunks == token by token (fp64): outputs and final state; returns the input."""
    x = torch.randn(2, 140, D, dtype=torch.float64)
    full = m(x)
    for lengths in ([3, 1, 60, 2, 70, 4], [64, 64, 12], [1] * 140):
        y, s = run_chunks(m, x, lengths)
        checks.close(y, full.y, atol=1e-10, rtol=1e-10, msg=f"{lengths[:3]} y")
        checks.close(s, full.state, atol=1e-10, rtol=1e-10, msg=f"{lengths[:3]} state")
    return x


@pytest.mark.parametrize("cell,shared,topk", SPLIT_VARIANTS)
def test_streaming_contract(cell, shared, topk, checks):
    """One call == chunks straddling the conv width and the 32/64-token kernel chunks ==
    token by token (fp64)."""
    m = build(cell=cell, shared_memory=shared, topk=topk)
    check_chunks(m, checks)


def forced(m: MoM, avoid: int, T: int = 40, B: int = 2):
    """Inputs whose channel 0 is 1 and a router that sends every token away from memory
    ``avoid`` (a +-50 logit on channel 0), the rest of the router random."""
    x = torch.randn(B, T, D, dtype=torch.float64)
    x[..., 0] = 1.0
    with torch.no_grad():
        m.router.weight[:, 0] = 50.0
        m.router.weight[avoid, 0] = -50.0
    return x


@pytest.mark.parametrize("cell", ["gated_delta", "linear"])
def test_unrouted_memory_is_bitwise_untouched(cell, checks):
    m = build(cell=cell, n_memories=4, topk=2)
    s0 = m(torch.randn(2, 33, D, dtype=torch.float64)).state   # every memory written
    checks.true(bool((s0.S.abs().sum((2, 3, 4)) > 0).all()), "warm-up wrote every memory")
    avoid = 2
    x = forced(m, avoid)
    out = m(x, s0)
    checks.equal(out.state.S[:, avoid], s0.S[:, avoid], "memory 2 after a call that never "
                 "routes to it")
    for i in set(range(4)) - {avoid}:
        checks.true(not torch.equal(out.state.S[:, i], s0.S[:, i]), f"memory {i} was written")
    # token by token too (every token misses memory 2; the decode path)
    s = s0
    for t in range(x.shape[1]):
        s = m(x[:, t:t + 1], s).state
    checks.equal(s.S[:, avoid], s0.S[:, avoid], "token by token")
    # and the output does not depend on memory 2's state
    perturbed = s0._replace(S=s0.S.clone().index_fill_(1, torch.tensor([avoid]), 7.0))
    checks.close(m(x, perturbed).y, out.y, atol=0, rtol=0, msg="reads ignore memory 2")


@pytest.mark.parametrize("cell", ["gated_delta", "linear"])
def test_nonfinite_token_reaches_only_its_memories(cell, checks):
    """A NaN token poisons only the memories it is routed to (its router logits are NaN too,
    so which ones is top-k's choice): they are NaN, every other memory stays finite, and
    one call, any split and token by token agree (NaN where NaN, else to 1e-12)."""
    m = build(cell=cell, n_memories=4, topk=2, shared_memory=False, conv_size=0)
    bad = torch.randn(2, 12, D, dtype=torch.float64)
    bad[:, 8, 1] = float("nan")
    hit = m.route(bad[:, 8:9])[1][:, 0]                                  # [B, M] routed at t
    checks.true(bool((~hit).any()), "some memory is not routed the NaN token")
    def nan_eq(a, b):
        return torch.allclose(a, b, atol=1e-12, rtol=0, equal_nan=True)
    ref_y, ref_s = None, None
    for lengths in ([12], [8, 4], [9, 3], [1] * 12):
        y, s = run_chunks(m, bad, lengths)
        checks.true(bool(y[:, :8].isfinite().all() and y[:, 8].isnan().all()),
                    f"{lengths}: outputs before t finite, at t NaN")
        checks.equal(s.S.isnan().flatten(2).all(-1), hit, f"{lengths}: NaN exactly where routed")
        checks.true(bool(s.S[~hit].isfinite().all()), f"{lengths}: the others stay finite")
        if ref_s is None:
            ref_y, ref_s = y, s
        checks.true(nan_eq(y, ref_y) and nan_eq(s.S, ref_s.S), f"{lengths}: split invariant")


@pytest.mark.parametrize("cell", ["gated_delta", "linear"])
def test_one_memory_reduces_to_the_plain_memory(cell, checks):
    """M = 1, top-1, no shared memory: the plain gated delta / gated linear memory with the
    same weights (q, k, v -> conv -> SiLU; L2 for delta; one op call; gated RMSNorm)."""
    m = build(cell=cell, n_memories=1, topk=1, shared_memory=False)
    x = torch.randn(2, 50, D, dtype=torch.float64)
    H, K, V = m.n_heads, m.head_dim, m.v_dim
    B, T = x.shape[:2]
    p = F.conv1d(F.pad(m.qkv_proj(x).transpose(1, 2), (m.conv_size - 1, 0)),
                 m.conv_weight, groups=m.n_channels).transpose(1, 2)
    u = F.silu(p)
    q, k, v = u.split([H * K, H * K, H * V], -1)
    q, k, v = q.view(B, T, H, K), k.view(B, T, H, K), v.view(B, T, H, V)
    g = -m.A_log.exp() * F.softplus(m.a_proj(x) + m.dt_bias)
    if cell == "gated_delta":
        o, _ = delta_rule(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v,
                          torch.sigmoid(m.b_proj(x)), g=g, impl="naive")
    else:
        o, _ = linear_attn(q, k, v, g=g, impl="naive")
    y = m.o_proj((m.o_norm(o) * F.silu(m.g_proj(x)).view(B, T, H, V)).reshape(B, T, H * V))
    checks.close(m(x).y, y, atol=1e-12, rtol=1e-10, msg=cell)


def test_balance_loss(checks):
    m = build(n_memories=4, topk=2, aux_loss_coef=0.05)
    x = torch.randn(3, 20, D, dtype=torch.float64)
    out = m(x)
    probs = torch.softmax(m.router(x).float(), -1).flatten(0, 1)              # [N, M]
    sel = torch.zeros_like(probs).scatter(-1, probs.topk(2, -1).indices, 1.0)
    f = sel.mean(0) / 2
    checks.close(out.aux_loss, 0.05 * 4 * (f * probs.mean(0)).sum(), atol=1e-7, msg="formula")
    (g,) = torch.autograd.grad(out.aux_loss, m.router.weight)
    checks.true(bool(g.abs().sum() > 0), "the router gets the balance gradient")
    with torch.no_grad():
        m.router.weight.zero_()                          # uniform router: perfect balance
    checks.close(m(x).aux_loss, torch.tensor(0.05), atol=1e-7, msg="balanced")
    checks.true(build(aux_loss_coef=0).forward(x).aux_loss is None, "coef 0 -> None")
    # every token forced to memories {0, 1}: f = P = [1/2, 1/2, 0, 0] -> coef * 4 * 1/2
    xf = torch.randn(3, 20, D, dtype=torch.float64)
    xf[..., 0] = 1.0
    with torch.no_grad():
        m.router.weight[:, 0] = torch.tensor([50.0, 50.0, -50.0, -50.0], dtype=torch.float64)
        m.router.weight[:, 1:] = 0.0
    checks.close(m(xf).aux_loss, torch.tensor(0.05 * 2.0), atol=1e-7, msg="all on {0, 1}")


def test_training_adds_and_logs_the_aux_loss(checks):
    from memarch.lit.module import LitLM
    from memarch.models import MemLM
    torch.manual_seed(0)
    net = MemLM(vocab_size=11, d_model=D, layer_pattern=["mom", "mom"],
                mixers={"mom": lambda d_model, layer_idx: MoM(d_model, layer_idx=layer_idx,
                                                              n_heads=2, aux_loss_coef=0.3)})
    lit = LitLM(net=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    logged = {}
    lit.log = lambda name, value, **kw: logged.__setitem__(name, value)
    ids = torch.randint(0, 11, (2, 12))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)     # next token, aligned
    batch = {"input_ids": ids, "labels": labels}
    total = lit.training_step(batch, 0)
    out = net(ids)
    checks.true(out.aux_loss is not None and out.aux_loss.item() > 0, "model sums aux losses")
    ce = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    checks.close(total, ce + out.aux_loss, atol=1e-5, msg="total = loss + aux_loss")
    checks.close(logged["train/aux_loss"], out.aux_loss, atol=1e-6, msg="logged apart")
    checks.close(logged["train/loss"], ce, atol=1e-5, msg="train/loss is the LM loss alone")


def test_state_size_counts_the_state(checks):
    for kw in (dict(), dict(shared_memory=False, conv_size=0), dict(cell="linear", topk=1),
               dict(route_by="key_query"), dict(route_by="key_query", shared_memory=False)):
        m = build(**kw)
        s = m.init_state(1)
        n = sum(t.numel() for t in (s.S, s.shared, s.conv) if t is not None)
        checks.true(m.state_size(10) == m.state_size(10_000) == n, f"{kw}: {n}")


@pytest.mark.parametrize("kw,match", [
    (dict(cell="gdn"), r"MoM: cell must be one of \('gated_delta', 'linear'\), got 'gdn'"),
    (dict(topk=5), r"MoM: topk must be <= n_memories=4, got 5"),
    (dict(n_memories=0), r"MoM: n_memories must be a positive int, got 0"),
    (dict(n_heads=3), r"MoM: n_heads=3 must divide d_model=32"),
    (dict(conv_size=-1), r"MoM: conv_size must be an int >= 0, got -1"),
    (dict(aux_loss_coef=-0.1), r"MoM: aux_loss_coef must be a number >= 0"),
    (dict(expand_v=0.3), r"MoM: expand_v must be > 0 with head_dim \* expand_v an int"),
    (dict(route_by="key"), r"MoM: route_by must be one of \('token', 'key_query'\), got 'key'"),
    (dict(route_by=None), r"MoM: route_by must be one of"),
])
def test_constructor_errors(kw, match, checks):
    with pytest.raises(ValueError, match=match):
        MoM(D, **{**dict(n_heads=2, n_memories=4), **kw})
    checks.true(True)


@pytest.mark.parametrize("cell", [pytest.param("gated_delta", marks=pytest.mark.slow),
                                  "linear"])  # the delta kernels are in test_kernel_delta_rule
def test_triton_impl_matches_torch(cell, checks):
    """The layer on the Triton kernels (interpreter) == on the torch path: outputs, state,
    parameter gradients, and the one-token decode step."""
    torch.manual_seed(0)
    ms = {impl: MoM(D, n_heads=2, n_memories=3, topk=2, cell=cell, impl=impl)
          for impl in ("torch", "triton")}
    ms["triton"].load_state_dict(ms["torch"].state_dict())
    x = torch.randn(2, 37, D)
    res = {}
    for impl, m in ms.items():
        out = m(x)
        out.y.square().mean().backward()
        step = m(x[:, :1], out.state)                      # T = 1: the decode kernel
        res[impl] = (out, step, [p.grad.clone() for p in m.parameters()])
    (o1, s1, g1), (o2, s2, g2) = res["torch"], res["triton"]
    checks.close(o2.y, o1.y, atol=1e-5, rtol=1e-4, msg="y")
    checks.close(o2.state, o1.state, atol=1e-5, rtol=1e-4, msg="state")
    checks.close(s2.y, s1.y, atol=1e-5, rtol=1e-4, msg="decode y")
    checks.close(g2, g1, atol=1e-5, rtol=1e-4, msg="param grads")


# -- route_by ------------------------------------------------------------------------------------
def test_route_by_token_is_the_default_bit_for_bit(checks):
    """route_by="token" is the module built without the argument: the same parameters (the
    router reads x: [M, D]), outputs, state, balance loss and gradients, bit for bit."""
    for kw in (dict(), dict(cell="linear", topk=1, shared_memory=False)):
        a, b = build(**kw), build(route_by="token", **kw)
        checks.true(a.route_by == b.route_by == "token", f"{kw}: default")
        checks.true(list(a.state_dict()) == list(b.state_dict()), f"{kw}: parameter names")
        checks.close(list(b.state_dict().values()), list(a.state_dict().values()), atol=0,
                     msg=f"{kw}: parameters (same seed)")
        checks.true(tuple(b.router.weight.shape) == (3, D), f"{kw}: router [M, d_model]")
        x = torch.randn(2, 40, D, dtype=torch.float64)
        oa, ob = a(x), b(x)
        checks.equal(ob.y, oa.y, f"{kw}: y")
        checks.close(ob.state, oa.state, atol=0, msg=f"{kw}: state")
        checks.equal(ob.aux_loss, oa.aux_loss, f"{kw}: aux_loss")
        ga = torch.autograd.grad(oa.y.square().sum() + oa.aux_loss, list(a.parameters()))
        gb = torch.autograd.grad(ob.y.square().sum() + ob.aux_loss, list(b.parameters()))
        checks.close(list(gb), list(ga), atol=0, msg=f"{kw}: gradients")
        write, read = b.routings(x)
        checks.true(write is read, f"{kw}: one routing for writes and reads")
        checks.close(list(write), list(b.route(x)), atol=0, msg=f"{kw}: routings == route(x)")


KQ_VARIANTS = [("gated_delta", True, 2, 4), ("linear", False, 1, 4),
               pytest.param("gated_delta", False, 2, 0, marks=pytest.mark.slow),
               pytest.param("linear", True, 2, 4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("cell,shared,topk,conv", KQ_VARIANTS)
def test_key_query_matches_token_loop_reference_fp64(cell, shared, topk, conv, checks):
    m = build(cell=cell, shared_memory=shared, topk=topk, conv_size=conv, route_by="key_query")
    H, K = m.n_heads, m.head_dim
    checks.true(tuple(m.router.weight.shape) == (3, H * K), "router [M, H K]")
    extra = 0 if shared else H * K                     # own routing-key channels
    checks.true(m.n_channels == H * K + (3 + int(shared)) * H * (K + m.v_dim) + extra,
                "conv channels")
    x = torch.randn(2, 70, D, dtype=torch.float64)
    out = m(x)
    y_ref, s_ref = reference(m, x)
    checks.close(out.y, y_ref, atol=1e-10, rtol=1e-10, msg="y")
    checks.close(out.state, s_ref, atol=1e-10, rtol=1e-10, msg="state")
    x2 = torch.randn(2, 9, D, dtype=torch.float64)
    y2, s2 = reference(m, x2, out.state)
    out2 = m(x2, out.state)
    checks.close(out2.y, y2, atol=1e-10, rtol=1e-10, msg="y resumed")
    checks.close(out2.state, s2, atol=1e-10, rtol=1e-10, msg="state resumed")
    # the two routings differ (else this would not test the split)
    write, read = m.routings(x)
    checks.true(not torch.equal(write[1], read[1]), "write and read routings differ somewhere")


@pytest.mark.parametrize("cell,shared,topk,conv", KQ_VARIANTS)
def test_key_query_streaming_contract(cell, shared, topk, conv, checks):
    """One call == chunks straddling the conv width and the 32/64-token kernel chunks ==
    token by token (fp64); ``routings`` with the carried state == over the whole sequence."""
    m = build(cell=cell, shared_memory=shared, topk=topk, conv_size=conv, route_by="key_query")
    x = check_chunks(m, checks)
    whole = m.routings(x)
    s = m(x[:, :61]).state
    rest = m.routings(x[:, 61:], s)
    for side, a, b in zip(("write", "read"), whole, rest):
        checks.close(a[0][:, 61:], b[0], atol=1e-6, rtol=0, msg=f"{side} probs from the state")
        checks.equal(a[1][:, 61:], b[1], f"{side} routed from the state")


@pytest.mark.parametrize("cell,shared", [("gated_delta", True), ("linear", False)])
def test_key_query_unwritten_memory_keeps_its_state_and_serves_reads(cell, shared, checks):
    """A hand-made routing: every query feature is e_0 (head 0), every routing key e_1, and
    W_r sends reads to {2, 0} and writes to {0, 1}. Memory 2 is read but never written: it
    keeps its state bitwise (one call and token by token) and the outputs depend on it;
    memories 1 (written, never read) and 3 (neither) do not change the outputs."""
    m = build(cell=cell, shared_memory=shared, n_memories=4, topk=2, conv_size=0,
              route_by="key_query")
    H, K, V, M = m.n_heads, m.head_dim, m.v_dim, 4
    E = M + int(shared)
    s0 = m(torch.randn(2, 33, D, dtype=torch.float64)).state           # every memory written
    checks.true(bool((s0.S.abs().sum((2, 3, 4)) > 0).all()), "warm-up wrote every memory")
    x = torch.randn(2, 40, D, dtype=torch.float64)
    x[..., 0] = 1.0
    key = H * K + M * H * K if shared else H * K + E * H * (K + V)     # k^0 | own key rows
    with torch.no_grad():
        W = m.qkv_proj.weight
        W[:H * K] = 0.0
        W[0, 0] = 100.0                        # q: 100 e_0 in head 0, 0 in the other heads
        W[key:key + H * K] = 0.0
        W[key + 1, 0] = 100.0                  # routing key: 100 e_1 in head 0
        m.router.weight.zero_()
        m.router.weight[:, 0] = torch.tensor([10.0, 0.0, 50.0, 0.0])   # reads -> {2, 0}
        m.router.weight[:, 1] = torch.tensor([50.0, 50.0, -50.0, 0.0])  # writes -> {0, 1}
    write, read = m.routings(x, s0)
    checks.equal(write[1], torch.tensor([True, True, False, False]).expand(2, 40, 4),
                 "writes go to {0, 1}")
    checks.equal(read[1], torch.tensor([True, False, True, False]).expand(2, 40, 4),
                 "reads go to {0, 2}")
    out = m(x, s0)
    for i in (2, 3):
        checks.equal(out.state.S[:, i], s0.S[:, i], f"memory {i}: never written, bitwise kept")
    for i in (0, 1):
        checks.true(not torch.equal(out.state.S[:, i], s0.S[:, i]), f"memory {i} was written")
    s = s0
    for t in range(x.shape[1]):
        s = m(x[:, t:t + 1], s).state
    checks.equal(s.S[:, 2:], s0.S[:, 2:], "token by token: memories 2, 3 kept")

    def perturbed(i):
        return m(x, s0._replace(S=s0.S.clone().index_fill_(1, torch.tensor([i]), 7.0))).y
    checks.true(not torch.equal(perturbed(2), out.y), "reads use memory 2 (never written)")
    for i in (1, 3):
        checks.equal(perturbed(i), out.y, f"no read of memory {i}")


@pytest.mark.parametrize("shared", [True, False])
def test_key_query_router_gets_gradients_through_both_routings(shared, checks):
    """W_r [M, H K] gets gradients from the read mix (the output) and from the balance
    loss, the mean of the write routing's and the read routing's. The write routing is a hard
    selection (as with "token"): the output gives the write-side feature (the own routing key
    without the shared memory) no gradient, the balance loss does."""
    m = build(shared_memory=shared, n_memories=4, topk=2, aux_loss_coef=0.1,
              route_by="key_query")
    H, K, V, M = m.n_heads, m.head_dim, m.v_dim, 4
    x = torch.randn(2, 30, D, dtype=torch.float64)
    out = m(x)
    write, read = m.routings(x)

    def bl(r):
        f = r[1].flatten(0, 1).float().mean(0) / m.topk
        return 0.1 * M * (f * r[0].flatten(0, 1).mean(0)).sum()
    checks.close(out.aux_loss, (bl(write) + bl(read)) / 2, atol=1e-7, msg="mean of the two")
    W = m.router.weight
    (gy,) = torch.autograd.grad(out.y.square().sum(), W, retain_graph=True)
    checks.true(bool(gy.abs().sum() > 0), "the output trains W_r (read mix)")
    for side, r in (("write", write), ("read", read)):
        (g,) = torch.autograd.grad(bl(r), W, retain_graph=True)
        checks.true(bool(g.abs().sum() > 0), f"the {side} balance term trains W_r")
    (ga,) = torch.autograd.grad(out.aux_loss, W, retain_graph=True)
    g2 = torch.autograd.grad((bl(write) + bl(read)) / 2, W, retain_graph=True)[0]
    checks.close(ga, g2, atol=1e-9, rtol=1e-6, msg="aux gradient = the two routings'")
    # the gradient reaches the write-side and the read-side features through the router
    rows = m.qkv_proj.weight
    (gq,) = torch.autograd.grad(out.aux_loss, rows, retain_graph=True)
    key = H * K + M * H * K if shared else H * K + (M + int(shared)) * H * (K + V)
    checks.true(bool(gq[:H * K].abs().sum() > 0), "aux -> query rows (read routing)")
    checks.true(bool(gq[key:key + H * K].abs().sum() > 0), "aux -> key rows (write routing)")
    if not shared:
        (gy_rows,) = torch.autograd.grad(out.y.square().sum(), rows)
        checks.equal(gy_rows[key:], torch.zeros_like(gy_rows[key:]),
                     "the output alone gives the own routing key no gradient (hard writes)")


def test_key_query_balance_loss_off(checks):
    m = build(route_by="key_query", aux_loss_coef=0)
    checks.true(m(torch.randn(1, 5, D, dtype=torch.float64)).aux_loss is None, "coef 0 -> None")
