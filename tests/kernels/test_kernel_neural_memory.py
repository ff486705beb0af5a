"""neural_memory_update: the closed form per chunk (impl="torch") against the naive token
loop (the paper's recurrences with autograd gradients): reads, final weights and momentum,
and the gradients of q, k, v, the gates and the initial weights/momentum by autograd through
both; one call over n chunks equals n calls of one chunk; the argument checks."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from memarch.kernels.neural_memory import memory_apply, neural_memory_update

# (B, H, n, C, M, Dh, depth, residual_norm, momentum, forgetting, max_grad_norm)
# awkward sizes: C = 3 or 5 (odd), M != C queries per chunk, Dh = 5, expansion 3 (depth 2)
FAST = [
    (1, 2, 3, 5, 2, 5, 1, False, True, True, None),
    (2, 1, 2, 3, 3, 4, 2, True, True, True, 0.5),
    (1, 1, 3, 4, 1, 3, 2, False, False, True, 0.2),
    (2, 2, 2, 3, 4, 4, 1, True, True, False, 0.3),
    (1, 2, 2, 5, 0, 4, 3, True, False, False, None),
]
SLOW = [c for c in itertools.product((1,), (2,), (2,), (4,), (3,), (5,), (1, 2), (False, True),
                                     (False, True), (False, True), (None, 0.1))
        if c not in FAST]


def make(B, H, n, C, M, Dh, depth, rn, mom, fg, mgn, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=gen) * scale).to(dtype)
    q = F.normalize(r(B, H, n, M, Dh), dim=-1) if M else r(B, H, n, 0, Dh)
    k = F.normalize(r(B, H, n, C, Dh), dim=-1)
    v = r(B, H, n, C, Dh)
    theta = 0.3 * torch.sigmoid(r(B, H, n, C))
    log_eta = F.logsigmoid(r(B, H, n, C) + 1.0) if mom else None
    log_keep = F.logsigmoid(-(r(B, H, n, C) + 2.0)) if fg else None
    widths = [Dh] + [3 * Dh] * (depth - 1) + [Dh]
    ws = tuple(r(B, H, a, b, scale=a ** -0.5) for a, b in zip(widths, widths[1:]))
    ms = tuple(r(*w.shape, scale=0.1) for w in ws) if mom else None
    return q, k, v, theta, log_eta, log_keep, ws, ms, dict(residual_norm=rn, max_grad_norm=mgn)


def leaves(t):
    return [x for x in torch.utils._pytree.tree_leaves(t) if isinstance(x, torch.Tensor)]


def run_case(case, dtype, checks, atol):
    q, k, v, theta, le, lk, ws, ms, kw = make(*case, dtype)
    inputs = [t.requires_grad_() for t in leaves((q, k, v, theta, le, lk, ws, ms))]
    res = {}
    for impl in ("naive", "torch"):
        y, w, m = neural_memory_update(q, k, v, theta, le, lk, weights=ws, momentum=ms,
                                       impl=impl, **kw)
        outs = leaves((y, w, m))
        gen = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                   for o in outs)
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        res[impl] = (y, w, m, [torch.zeros_like(x) if g is None else g
                               for g, x in zip(grads, inputs)])
    (yn, wn, mn, gn), (yt, wt, mt, gt) = res["naive"], res["torch"]
    checks.true((mn is None) == (mt is None) == (le is None), "momentum returned iff log_eta")
    checks.close(yt, yn, atol=atol, rtol=atol, msg="reads")
    checks.close(wt, wn, atol=atol, rtol=atol, msg="weights")
    if mn is not None:
        checks.close(mt, mn, atol=atol, rtol=atol, msg="momentum")
    checks.close(gt, gn, atol=atol, rtol=atol, msg="grads (q, k, v, gates, weights, momentum)")
    checks.true(yt.dtype == wt[0].dtype == (torch.float64 if dtype == torch.float64
                                            else torch.float32), "compute dtype")


@pytest.mark.parametrize("case", FAST)
def test_torch_matches_naive_fp64(case, checks):
    run_case(case, torch.float64, checks, atol=1e-10)


@pytest.mark.parametrize("case", FAST[:3])
def test_torch_matches_naive_fp32(case, checks):
    run_case(case, torch.float32, checks, atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW)
def test_torch_matches_naive_grid(case, checks):
    run_case(case, torch.float64, checks, atol=1e-10)


@pytest.mark.parametrize("impl", ["naive", "torch"])
def test_chunks_one_call_equals_per_chunk(impl, checks):
    q, k, v, theta, le, lk, ws, ms, kw = make(2, 2, 3, 4, 2, 4, 2, True, True, True, 0.5,
                                              torch.float64)
    y, w, m = neural_memory_update(q, k, v, theta, le, lk, weights=ws, momentum=ms,
                                   impl=impl, **kw)
    ys, w1, m1 = [], ws, ms
    for j in range(3):
        cut = [t[:, :, j:j + 1] for t in (q, k, v, theta, le, lk)]
        yj, w1, m1 = neural_memory_update(*cut, weights=w1, momentum=m1, impl=impl, **kw)
        ys.append(yj)
    checks.close((torch.cat(ys, 2), w1, m1), (y, w, m), atol=1e-12, msg="split")
    # the reads are the chunk's starting weights applied to q
    checks.close(y[:, :, 0], memory_apply(ws, q[:, :, 0], True), atol=1e-12, msg="read")


def test_no_chunks_and_no_queries(checks):
    q, k, v, theta, le, lk, ws, ms, kw = make(1, 2, 0, 3, 2, 4, 2, False, True, True, None,
                                              torch.float32)
    for impl in ("naive", "torch"):
        y, w, m = neural_memory_update(q, k, v, theta, le, lk, weights=ws, momentum=ms,
                                       impl=impl, **kw)
        checks.close((w, m), (ws, ms), atol=0, msg=f"{impl}: n = 0 leaves the state")
        checks.true(tuple(y.shape) == (1, 2, 0, 2, 4), f"{impl}: empty reads")
        y, _, m = neural_memory_update(None, k, v, theta, weights=ws, impl=impl)
        checks.true(y is None and m is None, f"{impl}: q=None, log_eta=None")


def _args():
    q, k, v, theta, le, lk, ws, ms, _ = make(1, 2, 2, 3, 2, 4, 2, False, True, True, None,
                                             torch.float32)
    return dict(q=q, k=k, v=v, theta=theta, log_eta=le, log_keep=lk, weights=ws, momentum=ms)


@pytest.mark.parametrize("over, name", [
    (lambda a: {"k": a["k"][0]}, "k must be a 5-d"),
    (lambda a: {"v": a["v"][..., :3]}, "v must have k's shape"),
    (lambda a: {"q": a["q"][..., :3]}, "q must have shape"),
    (lambda a: {"k": a["k"].long()}, "k must be a floating-point"),
    (lambda a: {"theta": a["theta"][..., :2]}, "theta must have shape"),
    (lambda a: {"theta": -a["theta"]}, "theta must lie in"),
    (lambda a: {"log_eta": -a["log_eta"]}, "log_eta must lie in"),
    (lambda a: {"log_keep": a["log_keep"][None]}, "log_keep must have shape"),
    (lambda a: {"weights": ()}, "weights must be a non-empty tuple"),
    (lambda a: {"weights": (a["weights"][0],)}, "weights[0] must have shape"),
    (lambda a: {"weights": (a["weights"][0], a["weights"][1][..., :2])}, "weights[1] must"),
    (lambda a: {"momentum": a["momentum"][:1]}, "momentum must have one tensor per layer"),
    (lambda a: {"momentum": (a["momentum"][0][:, :1], a["momentum"][1])}, "momentum[0] must"),
    (lambda a: {"log_eta": None}, "momentum must be None when log_eta is None"),
    (lambda a: {"residual_norm": "yes"}, "residual_norm must be a bool"),
    (lambda a: {"max_grad_norm": 0.0}, "max_grad_norm must be"),
    (lambda a: {"impl": "triton"}, "impl='triton' is not implemented"),
    (lambda a: {"impl": "fast"}, "impl must be one of"),
])
def test_argument_errors(over, name, checks):
    a = _args()
    a.update(over(a))
    with pytest.raises((ValueError, TypeError)) as e:
        neural_memory_update(a.pop("q"), a.pop("k"), a.pop("v"), a.pop("theta"),
                             a.pop("log_eta"), a.pop("log_keep"), **a)
    checks.true(name in str(e.value) and "neural_memory_update" in str(e.value), str(e.value))


# read_after_write: one chunk (or its last L' tokens) of a linear memory, token t reading M_t
# (B, H, L, L', Dh, residual_norm, momentum, forgetting, max_grad_norm)
RAW = [(2, 2, 5, 5, 4, False, True, True, None), (1, 3, 7, 3, 5, True, True, True, 0.3),
       (2, 1, 4, 4, 3, False, False, True, 0.2), (1, 2, 6, 1, 4, True, True, False, None),
       (1, 1, 3, 2, 5, False, False, False, None)]


@pytest.mark.parametrize("case", RAW)
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_read_after_write_matches_naive(case, dtype, atol, checks):
    """The closed form against the token loop (weights after each token's own write), reads
    and the gradients of every input; and it differs from the read with the chunk's starting
    weights (so the test can fail)."""
    from memarch.kernels.neural_memory import read_after_write, read_after_write_naive
    B, H, L, Lq, Dh, rn, mom, fg, mgn = case
    _, k, v, theta, le, lk, ws, ms, kw = make(B, H, 1, L, 0, Dh, 1, rn, mom, fg, mgn, dtype)
    one = lambda t: None if t is None else t[:, :, 0]
    k, v, theta, le, lk = map(one, (k, v, theta, le, lk))
    q = F.normalize(torch.randn(B, H, Lq, Dh, generator=torch.Generator().manual_seed(3))
                    .to(dtype), dim=-1)
    inputs = [t.requires_grad_() for t in leaves((q, k, v, theta, le, lk, ws, ms))]
    res = []
    for fn in (read_after_write_naive, read_after_write):
        y = fn(q, k, v, theta, le, lk, ws, ms, **kw)
        loss = (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(1),
                                dtype=y.dtype)).sum()
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        res.append((y, [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]))
    (yn, gn), (yt, gt) = res
    checks.close(yt, yn, atol=atol, rtol=atol, msg="reads after write")
    checks.close(gt, gn, atol=atol, rtol=atol, msg="grads (q, k, v, gates, weights, momentum)")
    before = memory_apply(ws, q, rn)
    checks.true((yt - before).abs().max() > 1e-3, "differs from the chunk-start read")


def test_read_after_write_refuses_deep_memory():
    from memarch.kernels.neural_memory import read_after_write
    _, k, v, theta, le, lk, ws, ms, kw = make(1, 1, 1, 3, 0, 4, 2, False, True, True, None,
                                              torch.float64)
    with pytest.raises(ValueError, match="depth 1"):
        read_after_write(k[:, :, 0], k[:, :, 0], v[:, :, 0], theta[:, :, 0], le[:, :, 0],
                         lk[:, :, 0], ws, ms, **kw)
