"""Full-attention KV cache: amortised O(1) appends that keep states functional.

Under ``torch.no_grad`` a state whose cache length equals its buffer's fill mark appends in
place into spare capacity; an older state (a branch) copies. Cached and uncached greedy
decoding agree exactly (litgpt's test_kv_cache)."""

from __future__ import annotations

import torch
from lm_helpers import hybrid_lm
from mixer_cases import D_MODEL

from memarch import mixers as mx
from memarch.generation import generate


@torch.no_grad()
def test_appends_in_place_and_branches_copy(checks):
    m = mx.Attention(D_MODEL, n_heads=4).double()
    x = torch.randn(2, 40, D_MODEL, dtype=torch.float64)
    ref = m(x).y
    s = m(x[:, :10]).state
    ptr = s.k.data_ptr()
    for t in range(10, 20):                                  # decode: same buffer
        s = m(x[:, t:t + 1], s).state
    checks.true(s.k.data_ptr() == ptr, "appends went into the same buffer")
    snap = (s.k.clone(), s.v.clone())
    # branch twice from the same state: independent, correct continuations
    a = m(x[:, 20:30], s)
    alt = torch.randn(2, 10, D_MODEL, dtype=torch.float64)
    b = m(alt, s)
    checks.close(a.y, ref[:, 20:30], atol=1e-12, msg="branch 1")
    checks.close(b.y, m(torch.cat([x[:, :20], alt], 1)).y[:, 20:], atol=1e-12, msg="branch 2")
    checks.close((s.k, s.v), snap, atol=0, msg="the shared state is unchanged")
    a2 = m(x[:, 30:40], a.state)                             # continue the first branch
    checks.close(a2.y, ref[:, 30:], atol=1e-12, msg="branch 1 continues after branch 2")
    checks.close(m(x[:, 30:40], b.state).y, m(torch.cat([x[:, :20], alt, x[:, 30:]], 1)).y[:, 30:],
                 atol=1e-12, msg="branch 2 continues")


@torch.no_grad()
def test_capacity_grows_geometrically(checks):
    m = mx.Attention(D_MODEL, n_heads=4)
    s, grows, nbytes = m.init_state(1), 0, 0
    for t in range(600):
        s = m(torch.randn(1, 1, D_MODEL), s).state
        now = s.k.untyped_storage().nbytes()
        grows += now != nbytes
        nbytes = now
    checks.true(grows <= 8, f"{grows} reallocations over 600 tokens")
    checks.true(s.k.shape[2] == 600 and nbytes < 2 * 600 * s.k[0, :, 0].numel() * 4 * 1.5 + 1,
                "length, and capacity within x1.5 of it")


@torch.no_grad()
def test_saved_state_holds_its_entries_only(tmp_path, checks):
    """A decode state pickles as plain tensors (the buffer link is not on them), loads with
    weights_only=True, and continues exactly."""
    m = mx.Attention(D_MODEL, n_heads=4).double()
    x = torch.randn(2, 12, D_MODEL, dtype=torch.float64)
    s = m(x[:, :10]).state
    torch.save(tuple(s), tmp_path / "s.pt")                    # NamedTuple -> plain tuple
    s2 = torch.load(tmp_path / "s.pt", weights_only=True)
    checks.true(type(s2[0]) is torch.Tensor and not vars(s2[0]), "plain tensors")
    checks.close(m(x[:, 10:], mx.KVCacheState(*s2)).y, m(x).y[:, 10:], atol=1e-12,
                 msg="continues after a round trip")


def test_inference_mode_state_continues_under_no_grad(checks):
    """A state made under torch.inference_mode continues under no_grad (copies, since an
    inference tensor cannot be written outside inference mode)."""
    m = mx.Attention(D_MODEL, n_heads=4).double()
    x = torch.randn(1, 8, D_MODEL, dtype=torch.float64)
    with torch.inference_mode():
        s = m(x[:, :5]).state
    with torch.no_grad():
        y = m(x[:, 5:], s).y
        checks.close(y, m(x).y[:, 5:], atol=1e-12, msg="outputs")


@torch.no_grad()
def test_non_finite_chunk_after_a_cache_is_causal(checks):
    """The non-finite rule on the in-place path: a NaN inside a multi-token chunk appended to
    a cache changes no earlier output; the state keeps the raw NaN, so later tokens see it."""
    m = mx.Attention(D_MODEL, n_heads=4).double()
    x = torch.randn(2, 20, D_MODEL, dtype=torch.float64)
    xb = x.clone()
    xb[0, 13, 5] = float("nan")
    s = m(x[:, :10]).state
    clean, bad = m(x[:, 10:18], s), m(xb[:, 10:18], s)
    checks.close(bad.y[0, :3], clean.y[0, :3], atol=0, msg="before the NaN")
    checks.close(bad.y[1], clean.y[1], atol=0, msg="other row")
    checks.true(bool(bad.y[0, 3:].isnan().all()), "from the NaN on: NaN")
    checks.true(bool(bad.state.k[0, :, 13].isnan().all()), "the state holds the raw NaN")
    with torch.enable_grad():
        ref = m(xb[:, 10:18], m(x[:, :10]).state)            # the concatenating path
    torch.testing.assert_close(bad.y, ref.y, equal_nan=True, atol=1e-12, rtol=0)
    torch.testing.assert_close(bad.state.k, ref.state.k, equal_nan=True, atol=1e-12, rtol=0)
    checks.n += 2


def test_cached_and_uncached_greedy_decoding_agree(checks):
    """litgpt test_kv_cache: generate with the cache == argmax of a full pass per step."""
    lm = hybrid_lm().double().eval()
    prompt = torch.randint(0, 61, (2, 13))
    out = generate(lm, prompt, max_new_tokens=20, chunk_size=5)
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            nxt = lm(seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    checks.equal(out.tokens, seq[:, 13:], "tokens")


def test_training_mode_still_differentiable(checks):
    """With autograd recording, appends concatenate (no in-place write into saved tensors)."""
    m = mx.Attention(D_MODEL, n_heads=4).double()
    x = torch.randn(2, 12, D_MODEL, dtype=torch.float64, requires_grad=True)
    s = m(x[:, :5]).state
    y = torch.cat([m(x[:, 5:6], s).y, m(x[:, 6:], m(x[:, 5:6], s).state).y], 1)
    y.sum().backward()
    g = x.grad.clone()
    x.grad = None
    m(x).y[:, 5:].sum().backward()
    checks.close(g, x.grad, atol=1e-10, msg="grads through the cache")
