"""Constant-state streaming: a window-64 + 4-sink model decodes token by token without
its state growing, and still agrees with the parallel pass at the end."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import streaming_lm

from memarch import state as st
from memarch.generation import stream


def _footprint(state):
    return [(tuple(t.shape), t.untyped_storage().nbytes()) for t in st.tensors(state)]


def _decode_and_check(n_tokens: int, checks, every: int):
    torch.manual_seed(0)
    m = streaming_lm().eval()
    prompt = torch.randint(0, 64, (2, 100))          # prefill longer than window + sinks
    g = torch.Generator().manual_seed(0)
    toks, first, last = [], None, None
    for i, step in enumerate(stream(m, prompt, max_new_tokens=n_tokens, temperature=1.0,
                                    generator=g, chunk_size=37)):
        toks.append(step.token)
        if first is None:
            first = _footprint(step.state)
        elif i % every == 0 or i == n_tokens - 1:
            checks.true(_footprint(step.state) == first, f"state grew at step {i}")
        last = step
    checks.true(m.state_size(100) == m.state_size(100 + n_tokens) == st.float_numel(last.state),
                "state_size is constant and equals the state's size")
    checks.equal(last.state[1].pos, torch.full((2,), 100 + n_tokens - 1), "positions")
    # exactness far beyond the window: decode the last token vs the parallel pass
    seq = torch.cat([prompt, torch.stack(toks, 1)], 1)
    with torch.no_grad():
        dec = m(seq[:, -1:], last.state).logits[:, -1]
        par = m(seq).logits[:, -1]
    checks.close(dec, par, atol=1e-4, rtol=1e-4, msg="decode == parallel at the end")


@pytest.mark.slow
def test_decode_2000_tokens_constant_state(checks):
    _decode_and_check(2000, checks, every=100)


@pytest.mark.slow
def test_decode_50000_tokens_constant_state(checks):
    _decode_and_check(50_000, checks, every=1000)
