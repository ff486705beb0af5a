"""Titans (2501.00663): the chunked neural memory against an independent token-loop
reference, learning at test time, the MAL stack's streaming contract, and bad input.
The per-mixer streaming contract, state validation and NaN causality of NeuralMemory, MAC
and MAG run with every other mixer (tests/helpers/mixer_cases.py)."""

from __future__ import annotations

import functools

import pytest
import torch
from titans_reference import reference_neural_memory

from memarch import mixers as mx
from memarch import state as st
from memarch.mixers import titans
from memarch.mixers.titans import memory_apply
from memarch.models import MemLM

TOL = 1e-8


def _memory(**kw):
    kw = {**dict(n_heads=2, head_dim=8, chunk_size=5, max_lr=0.3), **kw}
    torch.manual_seed(1)
    m = mx.NeuralMemory(16, **kw).double()
    with torch.no_grad():                 # data-dependent gates that vary per token
        m.gate_proj.weight.normal_(std=0.5)
    return m


VARIANTS = {
    **{f"depth{d}_mom{int(mo)}_forget{int(f)}": dict(depth=d, momentum=mo, forgetting=f)
       for d in (1, 2) for mo in (True, False) for f in (True, False)},
    "depth3_chunk_gates": dict(depth=3, expansion=2, gates="chunk"),
    "depth2_residual_norm": dict(depth=2, residual_norm=True),
    "depth2_grad_clamp": dict(depth=2, max_grad_norm=0.05, max_lr=1.0),
    "depth1_no_conv_C1": dict(depth=1, conv_size=0, chunk_size=1),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_chunked_equals_token_loop_reference(name, checks):
    """Acceptance 1: outputs, final state and every outer gradient equal the naive
    reference in fp64 to 1e-8, for a length that is not a multiple of C."""
    m = _memory(**VARIANTS[name])
    T = 23 if m.chunk_size > 1 else 9
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, T, 16, dtype=torch.float64)
    out = m(x)
    y_ref, fin = reference_neural_memory(m, x)
    checks.close(out.y, y_ref, atol=TOL, rtol=TOL, msg=f"{name} outputs")
    n = T % m.chunk_size
    s = out.state
    checks.close(s.weights, fin["weights"], atol=TOL, rtol=TOL, msg=f"{name} weights")
    if m.momentum:
        checks.close(s.momentum, fin["momentum"], atol=TOL, rtol=TOL, msg=f"{name} momentum")
    else:
        checks.true(s.momentum is None, "no momentum state without momentum")
    for f in ("pend_k", "pend_v", "pend_g"):
        checks.close(getattr(s, f)[:, :, :n], fin[f], atol=TOL, rtol=TOL, msg=f"{name} {f}")
        checks.true(bool((getattr(s, f)[:, :, n:] == 0).all()), f"{name} {f} unused slots")
    checks.close(s.conv, fin["conv"], atol=TOL, rtol=TOL, msg=f"{name} conv window")
    params = [p for p in m.parameters()]
    # a loss on outputs and on the final memory: gradients through the update
    fast = (out.y * w).sum() + sum(t.sum() for t in s.weights)
    slow = (y_ref * w).sum() + sum(t.sum() for t in fin["weights"])
    g_fast = torch.autograd.grad(fast, [x, *params], allow_unused=True)
    g_slow = torch.autograd.grad(slow, [x, *params], allow_unused=True)
    names = ["x"] + [k for k, _ in m.named_parameters()]
    for nm, a, b in zip(names, g_fast, g_slow):
        checks.true((a is None) == (b is None), f"{name}: gradient of {nm} present in both")
        if a is not None:
            checks.close(a, b, atol=TOL, rtol=TOL, msg=f"{name}: d/d {nm}")


def test_gradients_reach_every_parameter(checks):
    """The outer model trains through the memory update: every parameter gets a gradient,
    the gate projections (theta, eta, alpha) and the initial memory included."""
    m = _memory(depth=2)
    out = m(torch.randn(2, 23, 16, dtype=torch.float64))
    out.y.square().sum().backward()
    for name, p in m.named_parameters():
        checks.true(p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient: {name}")


def _stream(m, k, v, logits, state=None):
    """Write (k, v) [B, H, T, Dh] with gate logits (theta, eta, alpha) through the memory's
    update: the module with its projections bypassed (identity)."""
    B, H, T, _ = k.shape
    g = torch.tensor(logits, dtype=k.dtype).expand(B, H, T, 3)
    state = m.init_state(B, dtype=k.dtype) if state is None else state
    _, (ws, mom, pk, pv, pg) = m.scan(state, None, k, v, g)
    return ws


@torch.no_grad()
def _recall_error(m, ws, k, v):
    return float((memory_apply(ws, k, m.residual_norm) - v).square().sum(-1).mean())


@pytest.mark.parametrize("depth", [1, 2])
def test_learning_at_test_time(depth, checks):
    """Acceptance 3: with theta > 0 the memory learns the streamed pairs (retrieval error
    far below its value before the stream); theta = 0 changes nothing; alpha = 1 forgets."""
    torch.manual_seed(0)
    m = mx.NeuralMemory(64, n_heads=1, head_dim=32, depth=depth, chunk_size=4,
                        max_lr=1.0).double()
    n = 12
    k = torch.nn.functional.normalize(torch.randn(1, 1, n, 32, dtype=torch.float64), dim=-1)
    v = torch.randn(1, 1, n, 32, dtype=torch.float64) / 32 ** 0.5 * 2
    kk, vv = k.repeat(1, 1, 20, 1), v.repeat(1, 1, 20, 1)        # 20 passes over the pairs
    w0 = m.init_state(1, dtype=torch.float64).weights
    before = _recall_error(m, w0, k, v)
    learn = (-2.0, 0.0, -30.0)          # theta = sigmoid(-2) = 0.12, eta = 0.5, alpha ~ 0
    after = _recall_error(m, _stream(m, kk, vv, learn), k, v)
    checks.true(after < 0.01 * before, f"depth {depth}: error {before:.4f} -> {after:.4f}")
    frozen = _stream(m, kk, vv, (-1e4, 0.0, -1e4))                  # theta = 0, alpha = 0
    checks.close(frozen, w0, atol=1e-12, msg="theta = 0 leaves the memory unchanged")
    # alpha = 1 (and eta = 0): each token wipes the memory before its own write, so
    # what was streamed long ago leaves no trace; with alpha ~ 0 it does.
    other_k = torch.nn.functional.normalize(torch.randn_like(kk[:, :, :200]), dim=-1)
    kk2 = torch.cat([other_k, kk[:, :, 200:]], 2)
    vv2 = torch.cat([torch.randn_like(vv[:, :, :200]), vv[:, :, 200:]], 2)
    forget = (-2.0, -1e4, 1e4)
    checks.close(_stream(m, kk, vv, forget), _stream(m, kk2, vv2, forget), atol=1e-12,
                 msg="alpha = 1: the memory forgets the first 200 tokens")
    keep = (-2.0, -1e4, -30.0)
    diff = max((a - b).abs().max().item() for a, b in zip(_stream(m, kk, vv, keep),
                                                           _stream(m, kk2, vv2, keep)))
    checks.true(diff > 1e-3, f"alpha ~ 0: the memory keeps them (difference {diff:.2e})")
    err_gone = _recall_error(m, _stream(m, kk, vv, forget), k[:, :, :n - 4], v[:, :, :n - 4])
    checks.true(err_gone > 0.5 * _recall_error(m, [torch.zeros_like(w) for w in w0],
                                                k[:, :, :n - 4], v[:, :, :n - 4]),
                f"alpha = 1: the pairs before the last chunk are forgotten ({err_gone:.3f})")


def _mal_lm(d=32):
    return MemLM(vocab_size=50, d_model=d, d_hidden=0, layer_pattern=["mem", "swa", "mem", "swa"],
                 mixers=dict(
                     mem=functools.partial(mx.NeuralMemory, n_heads=2, chunk_size=5,
                                           max_lr=0.3),
                     swa=functools.partial(mx.Attention, n_heads=2, window=6,
                                           n_persistent=2)))


def test_mal_stack_streams_exactly(checks):
    """Acceptance 2 for MAL: one call == chunks straddling the update chunk (5) and the
    window (6) == token by token, for logits and final state, in fp64; state constant."""
    torch.manual_seed(0)
    m = _mal_lm().double()
    ids = torch.randint(0, 50, (2, 31))
    full = m(ids)
    for lengths in ([1] * 31, [4, 7, 2, 11, 7], [5, 6, 5, 6, 9]):
        s, outs, a = None, [], 0
        for n in lengths:
            o = m(ids[:, a:a + n], s)
            outs.append(o.logits)
            s, a = o.state, a + n
        checks.close(torch.cat(outs, 1), full.logits, atol=1e-10, rtol=1e-10,
                     msg=f"MAL logits {lengths[:3]}...")
        checks.close(s, full.state, atol=1e-10, rtol=1e-10, msg="MAL final state")
    checks.true(m.state_size(1) == m.state_size(10_000) == st.float_numel(full.state),
                "state_size constant in T")


def test_memlm_keeps_the_memory_init(checks):
    """MemLM re-initialises every Linear, then lets each mixer re-apply its own init: the
    memory's gates start at theta_init, eta_init, alpha_init."""
    m = _mal_lm()
    mem = m.blocks[0].mixer
    g = torch.sigmoid(mem.gate_proj.bias.detach()).view(3, 2)
    checks.close(g, torch.tensor([[1e-3 / 0.3] * 2, [0.5] * 2, [1e-3] * 2]), atol=1e-6,
                 msg="gates after MemLM init")
    checks.true(float(mem.gate_proj.weight.detach().std()) < 0.05, "small gate weights")


@pytest.mark.parametrize("cls,kw,name", [
    (mx.NeuralMemory, dict(chunk_size=0), "chunk_size"),
    (mx.NeuralMemory, dict(depth=0), "depth"),
    (mx.NeuralMemory, dict(depth=1.5), "depth"),
    (mx.NeuralMemory, dict(expansion=0), "expansion"),
    (mx.NeuralMemory, dict(n_heads=0), "n_heads"),
    (mx.NeuralMemory, dict(conv_size=-1), "conv_size"),
    (mx.NeuralMemory, dict(max_lr=-0.1), "max_lr"),
    (mx.NeuralMemory, dict(gates="head"), "gates"),
    (mx.NeuralMemory, dict(max_grad_norm=0), "max_grad_norm"),
    (mx.NeuralMemory, dict(theta_init=0.2), "theta_init"),
    (mx.NeuralMemory, dict(eta_init=1.0), "eta_init"),
    (mx.NeuralMemory, dict(alpha_init=0), "alpha_init"),
    (mx.MemoryAsContext, dict(segment_len=0), "segment_len"),
    (mx.MemoryAsContext, dict(memory=dict(chunk_size=0)), "chunk_size"),
    (mx.MemoryAsContext, dict(memory=dict(depht=2)), "depht"),
    (mx.MemoryAsGate, dict(window=0), "window"),
    (mx.MemoryAsGate, dict(memory=dict(depth=0)), "depth"),
    (mx.MemoryAsGate, dict(memory=[2]), "memory"),
])
def test_bad_arguments_name_the_parameter(cls, kw, name, checks):
    with pytest.raises(ValueError, match=name):
        cls(32, **kw)
    checks.n += 1


def test_state_from_another_configuration_is_refused(checks):
    a = mx.NeuralMemory(32, n_heads=2, chunk_size=8)
    b = mx.NeuralMemory(32, n_heads=2, chunk_size=5)
    x = torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match=r"NeuralMemory.*pend_k.*\(1, 2, 4, 16\)"):
        b(x, a(x).state)
    c = mx.NeuralMemory(32, n_heads=2, chunk_size=8, depth=1)
    with pytest.raises(ValueError, match=r"weights.*entries|weights\[0\]"):
        a(x, c(x).state)
    d = mx.NeuralMemory(32, n_heads=2, chunk_size=8, momentum=False)
    with pytest.raises(ValueError, match="momentum.*None"):
        d(x, a(x).state)
    checks.n += 3


def test_rows_at_different_positions(checks):
    """Sequences of a batch at different positions (their update chunks differ) give
    the same results as each row alone."""
    m = _memory(depth=2)
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    s0 = m(x[:1, :3]).state
    s1 = m(x[1:, :7]).state
    s = torch.utils._pytree.tree_map(
        lambda a, b: torch.cat([a, b]) if isinstance(a, torch.Tensor) else a, s0, s1)
    out = m(torch.cat([x[:1, 3:8], x[1:, 7:12]]), s)
    checks.close(out.y[:1], m(x[:1, 3:8], s0).y, atol=1e-12, msg="row 0")
    checks.close(out.y[1:], m(x[1:, 7:12], s1).y, atol=1e-12, msg="row 1")


@pytest.mark.parametrize("chunk", [6, 4])
def test_mac_rows_at_different_positions(chunk, checks):
    """MAC with a batch whose rows sit at different positions (segment offsets differ)
    equals each row alone, with and without the segment-start snapshot."""
    torch.manual_seed(0)
    m = mx.MemoryAsContext(32, n_heads=2, segment_len=6, n_persistent=2,
                           memory=dict(n_heads=2, chunk_size=chunk)).double()
    x = torch.randn(2, 14, 32, dtype=torch.float64)
    s0, s1 = m(x[:1, :3]).state, m(x[1:, :8]).state
    s = torch.utils._pytree.tree_map(
        lambda a, b: torch.cat([a, b]) if isinstance(a, torch.Tensor) else a, s0, s1)
    out = m(torch.cat([x[:1, 3:9], x[1:, 8:14]]), s)
    checks.close(out.y[:1], m(x[:1, 3:9], s0).y, atol=1e-12, msg="row 0")
    checks.close(out.y[1:], m(x[1:, 8:14], s1).y, atol=1e-12, msg="row 1")


def test_mac_reads_the_memory_from_before_the_segment(checks):
    """h for every token of segment s comes from the memory as it was before s: changing
    the tokens of segment s (after position t) changes no output of s before t, and the
    memory written by segment s-1 does reach segment s (outputs differ when s-1 differs)."""
    torch.manual_seed(0)
    m = mx.MemoryAsContext(32, n_heads=2, segment_len=6, n_persistent=2,
                           memory=dict(n_heads=2, theta_init=0.05)).double()
    x = torch.randn(1, 18, 32, dtype=torch.float64)
    y = m(x).y
    x2 = x.clone()
    x2[:, 9:12] = torch.randn(1, 3, 32, dtype=torch.float64)      # inside segment 1
    y2 = m(x2).y
    checks.close(y2[:, :9], y[:, :9], atol=0, msg="no output before the change moves")
    checks.true(bool((y2[:, 12:] - y[:, 12:]).abs().amax() > 1e-6), "later outputs move")
    x3 = x.clone()
    x3[:, 2] = torch.randn(32, dtype=torch.float64)                # segment 0 only
    y3 = m(x3).y
    # segment 1 sees segment 0 only through the memory (attention is segment-local)
    checks.true(bool((y3[:, 6:12] - y[:, 6:12]).abs().amax() > 1e-6),
                "segment 0 reaches segment 1 through the memory")
    m.memory.max_lr = 1e-30                                         # no writes: no path
    with torch.no_grad():
        m.memory.gate_proj.bias[:2] = -80.0
    y4, y5 = m(x).y, m(x3).y
    checks.close(y5[:, 6:12], y4[:, 6:12], atol=1e-12,
                 msg="without memory writes segment 1 does not see segment 0")


def test_neural_memory_read_after_write_reference(checks):
    """NeuralMemory(read_after_write=True) against a reference built from the naive ops:
    chunk by chunk, each token reads the weights after its own write (read_after_write_naive),
    then the chunk's update (neural_memory_naive); T = 13 over chunks of 5 (a partial last
    chunk), fp64."""
    from memarch.kernels.neural_memory import neural_memory_update, read_after_write_naive
    torch.manual_seed(0)
    m = mx.NeuralMemory(24, n_heads=2, depth=1, chunk_size=5, max_lr=0.3,
                        read_after_write=True).double()
    x = torch.randn(2, 13, 24, dtype=torch.float64)
    st = m.init_state(2, dtype=torch.float64)
    q, k, v, _ = m.qkv(x, st.conv, torch.float64)
    g = m.gate_proj(x).view(2, 13, 3, 2).permute(0, 3, 1, 2)
    ws, mom, reads = st.weights, st.momentum, []
    for c0 in range(0, 13, 5):
        sl = slice(c0, min(c0 + 5, 13))
        theta, le, lk = m._gates(g[:, :, sl])
        reads.append(read_after_write_naive(q[:, :, sl], k[:, :, sl], v[:, :, sl], theta, le,
                                            lk, ws, mom, False, None))
        if sl.stop - sl.start == 5:
            _, ws, mom = neural_memory_update(
                None, k[:, :, None, sl], v[:, :, None, sl], theta[:, :, None], le[:, :, None],
                lk[:, :, None], weights=ws, momentum=mom, impl="naive")
    want = m.output(torch.cat(reads, 2), x)
    out = m(x)
    checks.close(out.y, want, atol=1e-10, rtol=1e-10, msg="reads after write")
    checks.close(out.state.weights, ws, atol=1e-10, rtol=1e-10, msg="final weights")
    m.read_after_write = False
    checks.true((m(x).y - out.y).abs().max() > 1e-3, "differs from the chunk-start reads")


def test_mac_h_gate_off_reads_without_the_gate(checks):
    """h_gate=False: h = W_o RMSNorm(M*(q)), no SiLU(x W_g); the default keeps the gate."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    outs = {}
    for gate in (True, False):
        torch.manual_seed(1)
        m = mx.MemoryAsContext(32, n_heads=2, segment_len=6, n_persistent=2, h_gate=gate,
                               memory=dict(depth=1))
        st = m.init_state(2)
        mem = m.memory
        with torch.no_grad():
            mem.memory_init[0].normal_()            # a memory that returns something
            st = st._replace(memory=st.memory._replace(
                weights=(mem.memory_init[0].expand(2, -1, -1, -1).clone(),)))
        h, _ = m._h(x, st.hconv, st.memory.weights, torch.float32)
        u, _ = titans._silu_conv(m.h_proj(x), st.hconv, m.h_conv_weight, torch.float32)
        qh = titans._l2(u.view(2, 6, mem.n_heads, mem.head_dim).transpose(1, 2))
        r = mem.read(st.memory.weights, qh)
        want = mem.output(r, x) if gate else mem.o_proj(
            mem.out_norm(r.transpose(1, 2)).reshape(2, 6, 32))
        checks.close(h, want, atol=1e-6, rtol=1e-6, msg=f"h, h_gate={gate}")
        outs[gate] = h
    checks.true((outs[True] - outs[False]).abs().max() > 1e-3, "the gate changes h")


@pytest.mark.parametrize("kw, name", [
    (dict(read_after_write=True, depth=2), "read_after_write"),
    (dict(read_after_write=True, depth=1, gates="chunk"), "read_after_write"),
    (dict(read_after_write="yes", depth=1), "read_after_write"),
])
def test_read_after_write_refused(kw, name):
    with pytest.raises((ValueError, TypeError), match=name):
        mx.NeuralMemory(32, n_heads=2, **kw)


def test_mac_h_gate_refused():
    with pytest.raises((ValueError, TypeError), match="h_gate"):
        mx.MemoryAsContext(32, n_heads=2, segment_len=6, h_gate="no")
