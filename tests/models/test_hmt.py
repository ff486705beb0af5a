"""HMT (memarch.models.HMT): an independent segment-loop reference, the streaming contract
(causal: any split; paper: segment-aligned splits), the paper mode's look-ahead, recall,
backpropagation windows, state size, errors, and generation / checkpoints / training."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from memarch import state as st
from memarch.generation import generate
from memarch.mixers import Attention, BaseConv, BasedLinearAttention, ShortConv
from memarch.models import HMT, MemLM

V = 37


def attention_lm(d=16):
    return MemLM(vocab_size=V, d_model=d, layer_pattern=["attn", "attn"],
                 mixers={"attn": partial(Attention, n_heads=2)})


def based_lm(d=16):
    return MemLM(vocab_size=V, d_model=d, layer_pattern=["conv", "based", "swa"],
                 mixers={"conv": partial(BaseConv, kernel_size=3),
                         "based": partial(BasedLinearAttention, n_heads=2, feature_dim=4),
                         "swa": partial(Attention, n_heads=2, window=4, n_sinks=1)})


def sinks_lm(d=16):
    return MemLM(vocab_size=V, d_model=d, layer_pattern=["conv", "swa"],
                 mixers={"conv": partial(ShortConv, kernel_size=3),
                         "swa": partial(Attention, n_heads=2, window=5, n_sinks=2,
                                        sink_positions="cache")})


def memory_lm(d=16):
    """Titans MAG and MoM layers: HMT around a backbone that has memories of its own."""
    from memarch.mixers import MemoryAsGate, MoM
    return MemLM(vocab_size=V, d_model=d, layer_pattern=["mag", "mom"],
                 mixers={"mag": partial(MemoryAsGate, n_heads=2, window=6, n_persistent=2,
                                        memory={"chunk_size": 3}),
                         "mom": partial(MoM, n_heads=2, n_memories=3, topk=2)})


BACKBONES = {"attention": attention_lm, "based": based_lm, "sinks": sinks_lm,
             "memory": memory_lm}


def hmt(backbone="attention", dtype=torch.float64, **kw):
    kw = {"segment_len": 8, "sensory_len": 3, "n_memories": 2, **kw}
    model = HMT(BACKBONES[backbone](), **kw).to(dtype)
    with torch.no_grad():                 # bring the memories to the tokens' scale
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def reference(model: HMT, ids: torch.Tensor):
    """The paper's loop, written from the equations (no state, no streaming), with
    E = num_mem_embed memory embeddings per segment (E queries, each over all N*E cached
    ones): returns the logits [B, T, V] and the memory embeddings [B, E, D] of every
    complete segment."""
    bb, L, k, h, N, Em = (model.backbone, model.segment_len, model.sensory_len,
                          model.summary_len, model.n_memories, model.num_mem_embed)
    B, T = ids.shape
    E = bb.embed
    logits, memories = [], []
    for n, a in enumerate(range(0, T, L)):
        seg = ids[:, a:a + L]
        if n == 0 or N == 0:
            P = model.init_memory.expand(B, Em, -1)                              # [B, E, D]
        else:
            q = ids[:, a - h:a] if model.recall_query == "causal" else seg[:, :h]
            Tp = model.summary_prompt.expand(B, Em, -1)
            S = bb.forward_embeds(torch.cat([Tp, E(q), Tp], 1))[0][:, -Em:]     # [B, E, D]
            M = torch.cat(memories[-N:], 1)                                      # [B, nE, D]
            w = F.softmax((model.wq(S)[:, :, None] * model.wk(M)[:, None]).sum(-1)
                          / math.sqrt(model.recall_dim), -1)                     # [B, E, nE]
            P = (w[..., None] * M[:, None]).sum(2)
        sens = E(ids[:, a - k:a]) if n > 0 else E(ids[:, :0])
        x = torch.cat([P, sens, E(seg)] + ([P] if seg.shape[1] == L else []), 1)
        y = bb.forward_embeds(x)[0]
        pre = Em + sens.shape[1]
        logits.append(bb.head(y[:, pre:pre + seg.shape[1]]))
        if seg.shape[1] == L:
            memories.append(y[:, -Em:])
    return torch.cat(logits, 1), memories


def run_split(model, ids, sizes):
    """Calls of the given sizes (cycled; 0: an empty call) with the state carried."""
    state, out, t, i = None, [], 0, 0
    while t < ids.shape[1]:
        n = sizes[i % len(sizes)]
        o = model(ids[:, t:t + n], state)
        out.append(o.logits)
        state, t, i = o.state, t + n, i + 1
    return torch.cat(out, 1), state


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("mode", ["causal", "paper"])
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("T", [pytest.param(32, marks=pytest.mark.slow), 37])  # fast: 37
def test_matches_reference(backbone, mode, T, E, checks):
    model = hmt(backbone, recall_query=mode, n_memories=2, num_mem_embed=E)
    ids = torch.randint(0, V, (2, T))
    out = model(ids)
    ref, memories = reference(model, ids)
    checks.close(out.logits, ref, atol=1e-12, rtol=1e-12, msg="logits")
    cache = torch.cat(memories[-2:], 1)                                  # [B, 2E, D]
    checks.close(out.state.cache, cache, atol=1e-12, rtol=1e-12, msg="cache")
    checks.equal(out.state.pos, torch.full((2,), T), "pos")


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("backbone", ["attention", "based", "memory"])
@pytest.mark.parametrize("T", [pytest.param(40, marks=pytest.mark.slow), 45])  # fast: 45
def test_causal_streams_exactly(backbone, T, E, checks):
    """One call == segment by segment == odd chunks straddling every boundary == token by
    token, for the logits and the final state, at lengths that are and are not multiples
    of the segment length; with one and with E = 3 memory embeddings per segment."""
    model = hmt(backbone, n_memories=3, num_mem_embed=E)
    ids = torch.randint(0, V, (2, T))
    full = model(ids)
    for sizes in ([8], [5], [3, 7, 0, 1], [1]):
        logits, state = run_split(model, ids, sizes)
        checks.close(logits, full.logits, atol=1e-10, rtol=0, msg=f"logits {sizes}")
        checks.close(state, full.state, atol=1e-10, rtol=0, msg=f"state {sizes}")


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("backbone", ["based", "sinks"])
@pytest.mark.parametrize("T", [32, 37])
def test_paper_streams_at_segment_granularity(backbone, T, E, checks):
    model = hmt(backbone, recall_query="paper", num_mem_embed=E)
    ids = torch.randint(0, V, (2, T))
    full = model(ids)
    for sizes in ([8], [16, 8]):
        logits, state = run_split(model, ids, sizes)
        checks.close(logits, full.logits, atol=1e-10, rtol=0, msg=f"logits {sizes}")
        checks.close(state, full.state, atol=1e-10, rtol=0, msg=f"state {sizes}")


EDGES = {"no memory": dict(n_memories=0), "no sensory": dict(sensory_len=0),
         "summary = segment": dict(summary_len=8, sensory_len=8),
         "one-token segments": dict(segment_len=1, sensory_len=1, summary_len=1),
         "more memories than segments": dict(segment_len=3, sensory_len=3, n_memories=20)}


@pytest.mark.parametrize("mode", ["causal", "paper"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_edge_configurations(edge, mode, checks):
    """Against the reference, and streamed (token by token in causal mode, segment by
    segment in paper mode)."""
    model = hmt("sinks", recall_query=mode, **EDGES[edge])
    ids = torch.randint(0, V, (2, 22))
    full = model(ids)
    checks.close(full.logits, reference(model, ids)[0], atol=1e-12, msg="reference")
    logits, state = run_split(model, ids, [1] if mode == "causal" else [model.segment_len])
    checks.close(logits, full.logits, atol=1e-10, msg="streamed")
    checks.close(state, full.state, atol=1e-10, msg="state")


def test_paper_decode_recalls_once_from_the_prompt(checks):
    """A call that ends inside a segment recalls from the tokens it holds and keeps that
    memory for the rest of the segment (HMT-pytorch's generate): continuing it token by
    token equals one call over the prompt plus the one-token calls, not one long call."""
    model = hmt("attention", recall_query="paper")
    with torch.no_grad():                               # a recall that the summary moves
        model.wq.weight.mul_(4)
        model.wk.weight.mul_(4)
    ids = torch.randint(0, V, (1, 19))                  # segment 2 opens at 16 with 3 tokens
    pre = model(ids[:, :18])                            # recall of segment 2 from 2 tokens
    step = model(ids[:, 18:], pre.state)
    long = model(ids)                                   # recall from 3 tokens
    checks.close(torch.cat([pre.logits, step.logits], 1)[:, :16], long.logits[:, :16],
                 atol=1e-12, msg="complete segments agree")
    checks.true((step.logits - long.logits[:, 18:]).abs().max() > 1e-6,
                "the recall of segment 2 is not redone for the new token")
    checks.close(step.state.prompt, pre.state.prompt, atol=0, msg="P_2 kept")


@pytest.mark.parametrize("mode", ["causal", "paper"])
def test_look_ahead(mode, checks):
    """Changing a token in the first half of segment n changes the logits of the earlier
    tokens of segment n in paper mode, and never in causal mode (every position checked)."""
    model = hmt("attention", recall_query=mode, segment_len=8, summary_len=4)
    T = 32
    ids = torch.randint(0, V, (1, T))
    with torch.no_grad():
        base = model(ids).logits
        moved = 0.0
        for i in range(T):
            x = ids.clone()
            x[0, i] = (x[0, i] + 1) % V
            d = (model(x).logits - base).abs().amax(-1)[0]              # [T]
            if mode == "causal":
                checks.true(bool((d[:i] == 0).all()), f"position {i} reaches earlier logits")
            elif i % 8 in (1, 2, 3) and i >= 8:                         # first half, not first
                moved = max(moved, float(d[i - i % 8:i].max()))
    if mode == "paper":
        checks.true(moved > 1e-6, "the paper mode looks ahead inside the segment")


def test_recall_selects_the_matching_memory(checks):
    """Hand-set projections: the summary equals (a scaled) memory j, keys = queries = the
    identity, so the attention picks memory j and P_n is that memory."""
    D = 16
    model = HMT(attention_lm(D), segment_len=4, sensory_len=0, n_memories=4).double()
    with torch.no_grad():
        model.wq.weight.copy_(torch.eye(D))
        model.wk.weight.copy_(torch.eye(D))
    memories = 6.0 * torch.eye(D, dtype=torch.float64)[:4][None].repeat(2, 1, 1)
    for j in range(4):
        s = memories[:, j]
        P, w = model.recall(s, memories)
        checks.true(bool((w.argmax(-1) == j).all()) and bool((w[:, j] > 0.99).all()),
                    f"memory {j}: weights {w[0].tolist()}")
        checks.close(P, memories[:, j], atol=0.1, msg=f"P = memory {j}")


def test_recall_in_the_forward_uses_the_summary_and_the_cache(checks):
    """Inside forward, the attention of segment n is recall(summarize(q_n), cache)."""
    model = hmt("attention", n_memories=2)
    ids = torch.randint(0, V, (2, 24))
    seen = []
    real = model.recall
    model.recall = lambda s, m: seen.append((s, m)) or real(s, m)
    out = model(ids[:, :16])
    model.recall = real
    s, _ = model.summarize(ids[:, 4:8])                 # last half of segment 0
    checks.close(seen[0][0], s, atol=1e-12, msg="summary of segment 1")
    checks.true(seen[0][1].shape[1] == 1 and len(seen) == 1, "one memory at segment 1")
    checks.close(out.state.cache[:, -1:], reference(model, ids[:, :16])[1][-1], atol=1e-12,
                 msg="m_1")


def test_no_memory_is_the_segment_baseline(checks):
    """n_memories=0: a token sees its segment and the k sensory tokens, nothing older."""
    model = hmt("attention", n_memories=0)
    checks.true(model.extra_parameters()[0] is model.init_memory
                and len(model.extra_parameters()) == 1, "only m_init")
    ids = torch.randint(0, V, (1, 32))
    x = ids.clone()
    x[0, :20] = (x[0, :20] + 1) % V                     # segment 3 sees from 24 - 3 = 21 on
    checks.close(model(x).logits[:, 24:], model(ids).logits[:, 24:], atol=0, msg="unchanged")


def test_bptt_segments_cut_the_gradient(checks):
    """With bptt_segments=2 the loss of segment 2 (a window start) has no gradient on m_init
    (used by segment 0 only); without a cut, or with windows of 3, it does. Values agree."""
    ids = torch.randint(0, V, (1, 24))
    grads, values = {}, {}
    for b in (None, 2, 3):
        torch.manual_seed(1)
        model = hmt("attention", bptt_segments=b)
        out = model(ids)
        out.logits[:, 16:].sum().backward()
        g = model.init_memory.grad
        grads[b] = 0.0 if g is None else float(g.abs().max())
        values[b] = out.logits.detach()
    checks.true(grads[2] == 0.0 and grads[None] > 0 and grads[3] > 0, f"grads {grads}")
    checks.close(values[2], values[None], atol=0, msg="values")


def test_bptt_window_keeps_the_previous_segment(checks):
    """bptt_segments=2: segment 3 (inside the window [2, 3]) has gradient through m_2 (the
    summary of segment 2 reads T and W_q; m_2 then feeds P_3), none into segment 0 or 1."""
    ids = torch.randint(0, V, (1, 32))
    torch.manual_seed(1)
    model = hmt("attention", bptt_segments=2, n_memories=3)
    seen = {}
    real = model.recall

    def spy(s, m):                                       # record the memories P_3 reads
        if m.requires_grad:
            m.retain_grad()
        seen[m.shape[1]] = m
        return real(s, m)

    model.recall = spy
    model(ids).logits[:, 24:].sum().backward()
    g = seen[3].grad[0].abs().amax(-1)                   # per memory m_0, m_1, m_2
    checks.true(bool(g[2] > 0), f"m_2 gets gradient: {g.tolist()}")
    checks.true(not seen[2].requires_grad, "the cache read at segment 2 is detached")
    checks.true(model.init_memory.grad is None or float(model.init_memory.grad.abs().max()) == 0,
                "segment 0 gets none")


def test_aux_loss_is_a_length_weighted_mean(checks):
    """MoM's balance loss through HMT: the mean of the backbone passes' aux losses weighted by
    their lengths (so its scale does not grow with the number of segments)."""
    from memarch.mixers import MoM
    bb = MemLM(vocab_size=V, d_model=16, layer_pattern=["mom"],
               mixers={"mom": partial(MoM, n_heads=2, n_memories=3, topk=2)})
    model = HMT(bb, segment_len=8, sensory_len=2, n_memories=2)
    passes = []
    real = bb.forward_embeds

    def spy(x, state=None):                              # record (aux, length) of each pass
        out = real(x, state)
        passes.append((out[2], x.shape[1] * x.shape[0] // 2))
        return out

    bb.forward_embeds = spy
    ids = torch.randint(0, V, (2, 29))    # 3 summaries (one batched pass), 4 segments
    aux = model(ids).aux_loss
    want = sum(a * n for a, n in passes) / sum(n for _, n in passes)
    checks.true(len(passes) == 5, f"{len(passes)} passes")
    checks.close(aux, want, atol=1e-7, msg="length-weighted mean")
    checks.true(0 < float(aux) < 0.05, f"scale of aux_loss_coef: {float(aux)}")


def test_state_does_not_alias_parameters(checks):
    model = hmt("attention")
    state = model(torch.randint(0, V, (2, 3))).state        # inside segment 0: P_0 = m_init
    checks.true(state.prompt.data_ptr() != model.init_memory.data_ptr()
                and state.prompt.stride(0) != 0, "a copy of m_init")


@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("T", [0, 5, 8, 13, 16, 21])
def test_state_size_counts_the_state(backbone, T, E, checks):
    model = hmt(backbone, n_memories=3, num_mem_embed=E)
    state = model(torch.randint(0, V, (1, T))).state if T else model.init_state(1)
    checks.true(model.state_size(T) == st.float_numel(state),
                f"state_size({T}) = {model.state_size(T)} vs {st.float_numel(state)}")


def test_extra_parameters_and_their_share(checks):
    bb = attention_lm(32)
    model = HMT(bb, segment_len=8, sensory_len=2, n_memories=4)
    n_extra = sum(p.numel() for p in model.extra_parameters())
    checks.true(n_extra == 2 * 32 + 2 * 32 * 32, f"{n_extra}")
    n_bb = sum(p.numel() for p in bb.parameters())
    checks.true(abs(model.extra_fraction - n_extra / n_bb) < 1e-12, "fraction")


@pytest.mark.parametrize("kw, pattern", [
    ({"segment_len": 0}, "segment_len must be a positive int"),
    ({"sensory_len": 9}, r"sensory_len must be an int in \[0, segment_len=8\]"),
    ({"n_memories": -1}, "n_memories must be an int >= 0"),
    ({"summary_len": 0}, "summary_len"),
    ({"recall_query": "future"}, "recall_query must be one of"),
    ({"bptt_segments": 0}, "bptt_segments must be a positive int"),
    ({"recall_dim": 0}, "recall_dim must be a positive int"),
    ({"d_model": 7}, "d_model=7 differs from the backbone's d_model=16"),
    ({"num_mem_embed": 0}, "num_mem_embed must be a positive int"),
])
def test_bad_arguments(kw, pattern, checks):
    with pytest.raises(ValueError, match=pattern):
        HMT(attention_lm(), **{"segment_len": 8, "sensory_len": 2, "n_memories": 2, **kw})
    checks.true(True)


def test_bad_state_and_input(checks):
    model = hmt("attention")
    with pytest.raises(TypeError, match="backbone must be a memarch MemLM"):
        HMT(torch.nn.Linear(2, 2), segment_len=8, sensory_len=2, n_memories=2)
    with pytest.raises(ValueError, match="ids must be an integer tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=37\)"):
        model(torch.full((1, 3), V))
    state = model(torch.randint(0, V, (2, 5))).state
    with pytest.raises(ValueError, match=r"HMT: state field 'cache' has shape \(2, 2, 16\) but "
                                         r"this configuration expects \(3, 2, 16\)"):
        model(torch.randint(0, V, (3, 2)), state)
    with pytest.raises(ValueError, match="same position"):
        model(torch.randint(0, V, (2, 2)), state._replace(pos=torch.tensor([5, 6])))
    with pytest.raises(ValueError, match="must be an HMTState"):
        model(torch.randint(0, V, (2, 2)), (1, 2))
    with pytest.raises(ValueError, match="state field 'recent' must have dtype torch.int64"):
        model(torch.randint(0, V, (2, 2)), state._replace(recent=state.recent.double()))
    with pytest.raises(ValueError, match="state field 'cache' must be floating point"):
        model(torch.randint(0, V, (2, 2)), state._replace(cache=state.cache.long()))
    checks.true(True)


def test_generation_cached_equals_uncached(checks):
    """Greedy decoding through the state == argmax of one call over the growing sequence."""
    model = hmt("sinks", dtype=torch.float32).eval()
    prompt = torch.randint(0, V, (2, 13))
    out = generate(model, prompt, max_new_tokens=12, temperature=0)
    seq = prompt
    for _ in range(12):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    checks.equal(out.tokens, seq[:, 13:], "tokens")


def test_stateful_training_resume_and_checkpoint_load(tmp_path, checks):
    """experiment=hmt_attention_tiny trains with the state carried between steps
    (data.stateful=true, 64-token steps: segments of 24 straddle the steps), resumes
    exactly from a checkpoint that holds the carried HMT state, and
    memarch.checkpoint.load rebuilds the HMT."""
    from train_helpers import TINY, compose_cfg

    from memarch.checkpoint import load
    from memarch.lit.train import run

    common = ["experiment=hmt_attention_tiny", *TINY, "data.stateful=true",
              "data.segment_len=64", "model.segment_len=24", "checkpoint.every_n_steps=2",
              "validate_at_end=false", "+sched.total_steps=4", "trainer.max_steps=4"]
    straight = run(compose_cfg(common, tmp_path / "a"))
    carry = straight["module"]._carry
    checks.true(type(carry).__name__ == "HMTState" and int(carry.pos[0]) == 128,
                f"carried HMT state at position {carry.pos.tolist()}")
    checks.true(all(not t.requires_grad for t in st.tensors(carry)), "detached")
    run(compose_cfg([*common, "trainer.max_steps=2"], tmp_path / "b"))
    ckpt = tmp_path / "b" / "checkpoints" / "step_000002.ckpt"
    resumed = run(compose_cfg([*common, f"ckpt_path='{ckpt}'"], tmp_path / "c"))
    checks.close(resumed["module"]._carry, carry, atol=0, msg="carry after resume")
    model = load(tmp_path / "a" / "checkpoints" / "last.ckpt").model
    checks.true(isinstance(model, HMT), "load builds an HMT")
    ids = torch.randint(0, 65, (2, 40))
    with torch.no_grad():
        checks.close(model(ids).logits, straight["module"].net.eval()(ids).logits, atol=0,
                     msg="same network")


@pytest.mark.parametrize("backbone, over", [
    ("based", ["model.backbone.layer_pattern=[conv,based,swa]"]),
    ("attention", ["model.backbone.layer_pattern=[swa,attn]"]),
    ("sinks", []),
])
def test_any_backbone_config(backbone, over, tmp_path, checks):
    """model/backbone=<name> swaps the backbone under HMT; model.d_model sizes it."""
    from omegaconf import OmegaConf
    from train_helpers import compose_cfg

    from memarch.config import instantiate

    cfg = compose_cfg(["experiment=hmt_sinks_tiny", f"model/backbone={backbone}",
                       "model.d_model=32", *over], tmp_path)
    model = instantiate(OmegaConf.to_container(cfg.model, resolve=True))
    checks.true(isinstance(model, HMT) and model.backbone.d_model == 32, "HMT of width 32")
    ids = torch.randint(0, 65, (1, 40))
    with torch.no_grad():
        logits, state = run_split(model, ids, [7])
        checks.close(logits, model(ids).logits, atol=1e-5, msg=f"{backbone}: streams")


def test_evaluation_harness_takes_hmt(tmp_path, checks):
    """memarch.eval reads an HMT chunk by chunk through its state, in calls cut on segment
    boundaries (chunk_size 5 -> 32): the same predictions as one call, also in paper mode;
    the MQAR suite runs on it."""
    from memarch.eval.model import EvalModel
    from memarch.eval.synthetic import mqar as mq

    model = HMT(MemLM(vocab_size=65, d_model=16, layer_pattern=["attn"],
                      mixers={"attn": partial(Attention, n_heads=2)}),
                segment_len=32, sensory_len=8, n_memories=4, recall_query="paper").eval()
    m = EvalModel(model, None, chunk_size=5)
    checks.true(m.chunk_size == 32, f"chunk_size {m.chunk_size}")
    ids = torch.randint(0, 65, (2, 128))
    with torch.no_grad():
        checks.equal(mq.mqar_predictions(m, ids), model(ids).logits.argmax(-1), "argmax")
    out = mq.run_mqar(m, tmp_path, lengths=[128], num_kv_pairs=2, gap=72, n_per_length=4,
                      batch_size=4)
    checks.true(0 <= out["score"] <= 100, f"{out['score']}")


# -- num_mem_embed: E memory embeddings per segment ------------------------------------------
def test_num_mem_embed_1_is_the_default_and_runs_the_general_path(checks):
    """num_mem_embed=1 gives bit for bit the logits, state and gradients of a model built
    without it (same seed), and that path is the general one: m_init and T are [1, D], the
    summary pass hands recall E = 1 queries [B, 1, D] and the cache grows by E = 1 per
    segment (no special case for E = 1)."""
    ids = torch.randint(0, V, (2, 29))
    outs, grads = [], []
    for kw in ({}, {"num_mem_embed": 1}):
        torch.manual_seed(3)
        model = hmt("based", n_memories=2, **kw)
        seen = []
        real = model.recall
        model.recall = lambda s, m: seen.append((s.shape, m.shape)) or real(s, m)
        out = model(ids)
        out.logits.square().mean().backward()
        outs.append(out)
        grads.append([p.grad for p in model.parameters()])
        D = model.d_model
        checks.true(model.init_memory.shape == (1, D) and model.summary_prompt.shape == (1, D),
                    "m_init and T are [E, D]")
        checks.true([q for q, _ in seen] == [(2, 1, D)] * 3, f"E queries: {seen}")
        checks.true([m[1] for _, m in seen] == [1, 2, 2], "one cached embedding per segment")
    checks.equal(outs[1].logits, outs[0].logits, "logits")
    for a, b in zip(st.tensors(outs[1].state), st.tensors(outs[0].state)):
        checks.equal(a, b, "state")
    checks.true(outs[0].state.prompt.shape == (2, 16), "E = 1 keeps the [B, D] prompt")
    for a, b in zip(*grads):
        checks.true(a is b is None or torch.equal(a, b), "gradients")


def test_num_mem_embed_loads_checkpoints_from_before_it(checks):
    """A state dict with m_init and T of shape [D] (before num_mem_embed) loads into
    num_mem_embed=1 as [1, D] with the same values and logits."""
    model = hmt("attention")
    sd = {k: (v[0] if k in ("init_memory", "summary_prompt") else v)
          for k, v in model.state_dict().items()}
    checks.true(sd["init_memory"].shape == (16,), "old layout")
    other = hmt("attention")
    other.load_state_dict(sd)
    ids = torch.randint(0, V, (1, 20))
    checks.equal(other(ids).logits, model(ids).logits, "same model")


def test_num_mem_embed_state_shapes_and_round_trip(checks):
    """E = 3: the cache holds N*E embeddings, P_n is E vectors (flattened in the state), and
    a state carried into a second call continues the first; a state of another E is
    refused, naming the field and both shapes."""
    model = hmt("attention", n_memories=2, num_mem_embed=3)
    ids = torch.randint(0, V, (2, 21))
    s0 = model.init_state(2)
    checks.true(s0.cache.shape == (2, 6, 16) and s0.prompt.shape == (2, 48), "init_state")
    a = model(ids[:, :13])
    checks.true(a.state.cache.shape == (2, 6, 16) and a.state.prompt.shape == (2, 48),
                "the state after a call")
    b = model(ids[:, 13:], a.state)
    full = model(ids)
    checks.close(torch.cat([a.logits, b.logits], 1), full.logits, atol=1e-12, msg="continues")
    checks.close(b.state, full.state, atol=1e-12, msg="state")
    one = hmt("attention", n_memories=2).init_state(2)
    with pytest.raises(ValueError, match=r"HMT: state field 'cache' has shape \(2, 2, 16\) but "
                                         r"this configuration expects \(2, 6, 16\)"):
        model(ids[:, :2], one._replace(recent=s0.recent))
    with pytest.raises(ValueError, match=r"state field 'prompt' has shape \(2, 16\) but this "
                                         r"configuration expects \(2, 48\)"):
        model(ids[:, :2], s0._replace(prompt=one.prompt))
    with pytest.raises(ValueError, match=r"state field 'cache' has shape \(2, 6\) but"):
        model(ids[:, :2], s0._replace(cache=s0.cache[..., 0]))


@pytest.mark.parametrize("value", [0, -1, True, "x", 1.5, None])
def test_num_mem_embed_bad_values(value, checks):
    with pytest.raises(ValueError, match=r"HMT: num_mem_embed must be a positive int, got "):
        HMT(attention_lm(), segment_len=8, sensory_len=2, n_memories=2, num_mem_embed=value)
    checks.true(True)


@pytest.mark.parametrize("mode", ["causal", "paper"])
def test_every_memory_embedding_reaches_the_cache_and_the_recall(mode, checks):
    """E = 3: each of the E embeddings written by segment 0 (m_0 = Y[-E:]) is cached and
    recalled: perturbing any one of them in the carried state changes the logits of
    segments 1 and 2, and the loss of segment 2 has a gradient on every row of m_init and
    on every one of the N*E cached embeddings it recalls from."""
    E, L = 3, 8
    model = hmt("attention", n_memories=2, num_mem_embed=E, recall_query=mode)
    ids = torch.randint(0, V, (1, 3 * L))
    with torch.no_grad():
        first = model(ids[:, :L])                                # segment 0: writes m_0
        base = model(ids[:, L:], first.state).logits
        checks.true(bool((first.state.cache[:, -E:].std(1) > 0).all()), "E distinct slots")
        for e in range(E):
            cache = first.state.cache.clone()
            cache[:, -E + e] += 0.5 * torch.randn_like(cache[:, -E + e])
            moved = model(ids[:, L:], first.state._replace(cache=cache)).logits
            d = (moved - base).abs().amax(-1)[0]
            checks.true(bool((d > 1e-8).all()), f"slot {e}: the later logits move {d.tolist()}")
    model.zero_grad()
    out = model(ids)
    out.logits[:, 2 * L:].sum().backward()
    g = model.init_memory.grad.abs().amax(-1)                    # per row of m_init [E]
    checks.true(bool((g > 0).all()), f"every row of m_init gets gradient: {g.tolist()}")
    state = model(ids[:, :2 * L]).state                          # m_0 and m_1 cached
    cache = state.cache.detach().requires_grad_(True)
    model(ids[:, 2 * L:], state._replace(cache=cache)).logits.sum().backward()
    g = cache.grad.abs().amax(-1)[0]                             # per cached embedding [N*E]
    checks.true(g.shape == (2 * E,) and bool((g > 0).all()),
                f"every cached embedding gets gradient: {g.tolist()}")
