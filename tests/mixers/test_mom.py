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
    """Token loop in fp64 from the paper's equations; returns (y [B, T, D], MoMState)."""
    B, T, _ = x.shape
    H, K, V, M, cs = m.n_heads, m.head_dim, m.v_dim, m.n_memories, m.conv_size
    E = M + int(m.shared_memory)
    st = state or m.init_state(B, dtype=torch.float64)
    S = [st.S[:, i].clone() for i in range(M)] + ([st.shared.clone()] if m.shared_memory
                                                   else [])
    hist = list(st.conv.unbind(1)) if cs else []            # pre-conv projections, oldest first
    A = -m.A_log.double().exp()                              # [H]
    ys = []
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
        q = u[:, :H * K].view(B, H, K)
        k = u[:, H * K:H * K + E * H * K].view(B, E, H, K)
        v = u[:, H * K + E * H * K:].view(B, E, H, V)
        probs = torch.softmax((xt @ m.router.weight.T).float(), -1)
        top = probs.topk(m.topk, -1)
        wts = top.values / top.values.sum(-1, keepdim=True)
        a = (xt @ m.a_proj.weight.T).view(B, E, H)
        g = A * F.softplus(a + m.dt_bias)                    # [B, E, H]
        beta = (torch.sigmoid(xt @ m.b_proj.weight.T).view(B, E, H)
                if m.cell == "gated_delta" else None)
        o = torch.zeros(B, H, V, dtype=torch.float64)
        for b in range(B):
            chosen = dict(zip(top.indices[b].tolist(), wts[b].tolist()))
            if m.shared_memory:
                chosen[M] = 1.0
            for e in range(E):
                if e not in chosen:
                    continue                                  # untouched: no write, no decay
                for h in range(H):
                    qq, kk, vv = q[b, h], k[b, e, h], v[b, e, h]
                    Sm = S[e][b, h]
                    if m.cell == "gated_delta":
                        qq, kk = qq / qq.norm(), kk / kk.norm()
                        P = torch.eye(K, dtype=torch.float64) - beta[b, e, h] * torch.outer(kk, kk)
                        Sm = g[b, e, h].exp() * P @ Sm + beta[b, e, h] * torch.outer(kk, vv)
                    else:
                        Sm = g[b, e, h].exp() * Sm + torch.outer(kk, vv)
                    S[e] = S[e].clone()
                    S[e][b, h] = Sm
                    o[b, h] += chosen[e] * (K ** -0.5) * (qq @ Sm)
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


@pytest.mark.parametrize("cell,shared,topk", SPLIT_VARIANTS)
def test_streaming_contract(cell, shared, topk, checks):
    """One call == chunks straddling the conv width and the 32/64-token kernel chunks ==
    token by token (fp64)."""
    m = build(cell=cell, shared_memory=shared, topk=topk)
    x = torch.randn(2, 140, D, dtype=torch.float64)
    full = m(x)
    for lengths in ([3, 1, 60, 2, 70, 4], [64, 64, 12], [1] * 140):
        y, s = run_chunks(m, x, lengths)
        checks.close(y, full.y, atol=1e-10, rtol=1e-10, msg=f"{lengths[:3]} y")
        checks.close(s, full.state, atol=1e-10, rtol=1e-10, msg=f"{lengths[:3]} state")


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
    for kw in (dict(), dict(shared_memory=False, conv_size=0), dict(cell="linear", topk=1)):
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
