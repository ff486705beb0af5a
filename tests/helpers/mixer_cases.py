"""Example configurations of every exported mixer, with the internal boundaries that
contract tests must split across (window, sinks, query block, conv width)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from memarch import mixers as mx

D_MODEL = 32


def run_chunks(m, x, lengths):
    """Run mixer ``m`` over x [B, T, D] in calls of the given lengths, carrying the state:
    (outputs [B, T, D], final state)."""
    ys, s, a = [], None, 0
    for n in lengths:
        out = m(x[:, a:a + n], s)
        ys.append(out.y)
        s, a = out.state, a + n
    return torch.cat(ys, dim=1), s


@dataclass
class Case:
    cls: type
    kwargs: dict
    boundaries: list[int] = field(default_factory=list)

    def build(self, **over):
        return self.cls(D_MODEL, layer_idx=0, **{**self.kwargs, **over})

    @property
    def horizon(self) -> int:
        """A length past every boundary: at least 3 x (window + sinks)."""
        return 3 * max(self.boundaries or [4]) + 5


CASES: dict[str, Case] = {
    "attn_full": Case(mx.Attention, dict(n_heads=4), [1]),
    "attn_full_gqa_learned_sink": Case(mx.Attention, dict(n_heads=4, n_kv_heads=2,
                                                          learned_sink=True), [1]),
    "attn_window": Case(mx.Attention, dict(n_heads=4, window=8, block_size=5), [5, 8]),
    "attn_window1_sinks": Case(mx.Attention, dict(n_heads=4, window=1, n_sinks=2,
                                                  block_size=3), [1, 2, 3]),
    "attn_window_sinks_absolute": Case(
        mx.Attention, dict(n_heads=4, window=8, n_sinks=3, block_size=5), [3, 5, 8, 11]),
    "attn_window_sinks_cache": Case(
        mx.Attention, dict(n_heads=4, window=8, n_sinks=3, sink_positions="cache",
                           block_size=5), [3, 5, 8, 11]),
    "attn_window_sinks_cache_gqa_learned": Case(
        mx.Attention, dict(n_heads=4, n_kv_heads=2, window=6, n_sinks=2,
                           sink_positions="cache", learned_sink=True, block_size=4),
        [2, 4, 6, 8]),
    "attn_window_sinks_cache_persistent3": Case(
        mx.Attention, dict(n_heads=4, n_kv_heads=2, window=6, n_sinks=2,
                           sink_positions="cache", n_persistent=3, block_size=4),
        [2, 4, 6, 8]),
    # linear attention: T > 3 x 64 straddles the chunked kernel's 64-token chunks
    "linear_attn_elu": Case(mx.LinearAttention, dict(n_heads=4, feature_map="elu"), [64]),
    "linear_attn_gated_relu": Case(mx.LinearAttention, dict(n_heads=2, feature_map="relu",
                                                            gated=True), [64]),
    "linear_attn_identity_unnormalized": Case(
        mx.LinearAttention, dict(n_heads=4, feature_map="identity", normalize=False), [64]),
    "based_linear_unique": Case(mx.BasedLinearAttention, dict(n_heads=4, feature_dim=8), [64]),
    "based_linear_full": Case(mx.BasedLinearAttention, dict(n_heads=2, feature_dim=4,
                                                            taylor_form="full"), [64]),
    "base_conv": Case(mx.BaseConv, dict(kernel_size=3), [2, 3]),
    "short_conv": Case(mx.ShortConv, dict(kernel_size=4), [3, 4]),
    "short_conv_k1_linear": Case(mx.ShortConv, dict(kernel_size=1, activation=None), [1]),
}

# Titans: boundaries at the update chunk (C), the conv width (4), the MAC segment (N) and
# the MAG window (W); gates that vary per token so every term of the update matters.
CASES.update({
    "neural_memory_deep": Case(mx.NeuralMemory, dict(n_heads=2, chunk_size=5, max_lr=0.3),
                               [3, 5]),
    "neural_memory_linear_chunk_gates": Case(
        mx.NeuralMemory, dict(n_heads=2, depth=1, chunk_size=4, gates="chunk",
                              momentum=False, residual_norm=True), [3, 4]),
    "titans_mac": Case(mx.MemoryAsContext, dict(n_heads=2, segment_len=6, n_persistent=2,
                                                memory=dict(n_heads=2, max_lr=0.3)), [3, 6]),
    "titans_mac_snapshot": Case(
        mx.MemoryAsContext, dict(n_heads=4, n_kv_heads=2, segment_len=6, n_persistent=1,
                                 memory=dict(n_heads=2, chunk_size=4, max_lr=0.3)), [3, 4, 6]),
    # reads after each token's own write (linear memory), and MAC's h without the x-gate
    "neural_memory_read_after_write": Case(
        mx.NeuralMemory, dict(n_heads=2, depth=1, chunk_size=5, max_lr=0.3,
                              read_after_write=True), [3, 5]),
    "titans_mac_read_after_write_no_hgate": Case(
        mx.MemoryAsContext, dict(n_heads=2, segment_len=6, n_persistent=2, h_gate=False,
                                 memory=dict(n_heads=2, depth=1, max_lr=0.3,
                                             read_after_write=True)), [3, 6]),
    "titans_mac_read_after_write_snapshot": Case(
        mx.MemoryAsContext, dict(n_heads=2, segment_len=6, n_persistent=1,
                                 memory=dict(n_heads=2, depth=1, chunk_size=4, max_lr=0.3,
                                             read_after_write=True,
                                             residual_norm=True, max_grad_norm=0.5)),
        [3, 4, 6]),
    "titans_mag": Case(mx.MemoryAsGate, dict(n_heads=2, window=6, n_persistent=2,
                                             memory=dict(n_heads=2, chunk_size=5, max_lr=0.3)),
                       [3, 5, 6]),
})

# MoM: boundaries at the conv width (4) and the kernels' 32/64-token chunks; 3 memories so that
# top-k leaves one out; both cells, shared memory on and off, top-k 1 and 2.
CASES.update({
    "mom_gdn_shared_top2": Case(mx.MoM, dict(n_heads=2, n_memories=3, topk=2), [3, 4, 64]),
    "mom_gdn_top1": Case(mx.MoM, dict(n_heads=2, n_memories=3, topk=1, shared_memory=False),
                         [3, 4, 64]),
    "mom_linear_shared_top1": Case(mx.MoM, dict(n_heads=2, n_memories=3, topk=1,
                                                cell="linear"), [3, 4, 64]),
    "mom_linear_top2_noconv": Case(mx.MoM, dict(n_heads=4, n_memories=3, topk=2, cell="linear",
                                                shared_memory=False, conv_size=0), [64]),
    # route_by="key_query": writes routed by the shared key, reads by the query; without the
    # shared memory by its own routing-key channels (a wider conv state)
    "mom_gdn_shared_top2_key_query": Case(mx.MoM, dict(n_heads=2, n_memories=3, topk=2,
                                                       route_by="key_query"), [3, 4, 64]),
    "mom_linear_top1_key_query_own_key": Case(
        mx.MoM, dict(n_heads=2, n_memories=3, topk=1, cell="linear", shared_memory=False,
                     route_by="key_query"), [3, 4, 64]),
})
