"""MemLM: layer patterns, model-level streaming, cached vs uncached decoding."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lm_helpers import hybrid_lm

from memarch import state as st
from memarch.generation import generate, sample_next, stream
from memarch.mixers import Attention
from memarch.models import MemLM


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)],
                         ids=["fp32", "fp64"])
def test_teacher_forced_decode_equals_parallel(dtype, tol, checks):
    m = hybrid_lm().to(dtype).eval()
    ids = torch.randint(0, 61, (2, 40))
    par = m(ids)
    s, logits = None, []
    for t in range(ids.shape[1]):
        out = m(ids[:, t:t + 1], s)
        logits.append(out.logits)
        s = out.state
    checks.close(torch.cat(logits, 1), par.logits, atol=tol, msg="logits at every position")
    checks.close(s, par.state, atol=tol, msg="final state")
    # chunks straddling the window (8), sinks (3) and the attention block (5)
    s, logits = None, []
    for a, b in [(0, 2), (2, 11), (11, 12), (12, 29), (29, 40)]:
        out = m(ids[:, a:b], s)
        logits.append(out.logits)
        s = out.state
    checks.close(torch.cat(logits, 1), par.logits, atol=tol, msg="chunked logits")
    checks.true(len(s) == 4 and isinstance(s, tuple), "one state entry per layer")


def test_cached_greedy_equals_uncached_greedy(checks):
    """litgpt's test_kv_cache: decoding with the state == re-running the whole prefix."""
    m = hybrid_lm().eval()
    prompt = torch.randint(0, 61, (3, 13))
    n = 30
    cached = generate(m, prompt, n, chunk_size=5).tokens                 # chunked prefill
    ids = prompt
    with torch.no_grad():
        for _ in range(n):
            nxt = m(ids).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
    checks.equal(cached, ids[:, prompt.shape[1]:], "greedy tokens")


def test_stop_tokens_and_padding(checks):
    m = hybrid_lm().eval()
    prompt = torch.randint(0, 61, (2, 5))
    free = generate(m, prompt, 12).tokens
    stop = int(free[0, 3])
    out = generate(m, prompt, 12, stop_tokens=[stop], pad_id=60)
    row = out.tokens[0]
    first = int((row == stop).nonzero()[0])
    checks.equal(row[:first + 1], free[0, :first + 1], "identical up to the stop token")
    checks.true(bool((row[first + 1:] == 60).all()), "padded after the stop token")
    checks.true(bool(out.finished[0]), "row 0 finished")


def test_sampling_filters(checks):
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    k2 = sample_next(logits, temperature=1.0, top_k=2, generator=g)
    checks.true(set(k2.tolist()) == {0, 1}, "top-k keeps the two best")
    p = torch.softmax(logits[0], -1)            # [0.636, 0.234, 0.086, ...]
    tp = sample_next(logits, temperature=1.0, top_p=0.8, generator=g)
    checks.true(set(tp.tolist()) == {0, 1}, f"top-p 0.8 keeps {{0, 1}} (p={p.tolist()})")
    tp = sample_next(logits, temperature=1.0, top_p=0.5, generator=g)
    checks.true(set(tp.tolist()) == {0}, "top-p below the best token's mass keeps it alone")
    freq = torch.bincount(sample_next(logits, temperature=1.0, generator=g), minlength=5) / 2000
    checks.close(freq, p, atol=0.04, msg="temperature-1 sampling follows softmax")
    checks.equal(sample_next(logits[:3]), torch.zeros(3, dtype=torch.long), "greedy")


def test_layer_pattern_validation(checks):
    mk = {"attn": partial(Attention, n_heads=2)}
    with pytest.raises(ValueError, match=r"unknown mixer slots \['conv'\].*known slots.*attn"):
        MemLM(vocab_size=10, d_model=16, mixers=mk, layer_pattern=["attn", "conv"])
    with pytest.raises(ValueError, match="layer_pattern must be a non-empty list"):
        MemLM(vocab_size=10, d_model=16, mixers=mk, layer_pattern=[])
    with pytest.raises(ValueError, match="layer_pattern must be a non-empty list"):
        MemLM(vocab_size=10, d_model=16, mixers=mk, layer_pattern="attn")
    with pytest.raises(TypeError, match=r"mixers\['mlp'\] must build a memarch Mixer"):
        MemLM(vocab_size=10, d_model=16, mixers={"mlp": lambda **kw: torch.nn.Identity()},
              layer_pattern=["mlp"])
    m = MemLM(vocab_size=10, d_model=16, mixers=mk, layer_pattern=["attn", "attn"])
    checks.true([b.mixer.layer_idx for b in m.blocks] == [0, 1], "layer_idx injected")
    checks.true(m.head.weight is m.embed.weight, "tied embeddings by default")


def test_state_tree_helpers_on_model_state(checks):
    m = hybrid_lm().double()
    ids = torch.randint(0, 61, (3, 20))
    out = m(ids[:, :12])
    moved = st.to(st.detach(out.state), dtype=torch.float64)
    rows = st.select(moved, torch.tensor([1]))
    checks.close(m(ids[1:2, 12:], rows).logits, m(ids).logits[1:2, 12:], atol=1e-10,
                 msg="selected row continues exactly")
    checks.true(st.batch_size(rows) == 1, "batch size of the selected state")


def test_stream_is_unbounded_generator(checks):
    m = hybrid_lm().eval()
    it = stream(m, torch.randint(0, 61, (1, 4)))
    toks = [next(it).token for _ in range(5)]
    checks.true(len(toks) == 5, "stream yields without max_new_tokens")


def test_public_methods_document_themselves():
    """``help(MemLM.forward)`` / ``help(Mixer.forward)`` showed torch's generic text, and
    ``MemLM.init_state``'s docstring was a stray comment: each names its arguments now."""
    import pydoc

    from memarch.mixers.base import Mixer, MixerOutput
    from memarch.models.lm import LMOutput
    for fn, words in [(MemLM.forward, ("ids", "state", "logits_to_keep", "LMOutput")),
                      (Mixer.forward, ("x [B, T, D]", "state", "MixerOutput")),
                      (MemLM.init_state, ("batch_size", "dtype")),
                      (LMOutput, ("logits", "state", "aux_loss")),
                      (MixerOutput, ("y [B, T, D]", "state", "aux_loss"))]:
        text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
        assert "Define the computation performed at every call" not in text, fn
        assert all(w in (fn.__doc__ or "") for w in words), (fn, fn.__doc__)
