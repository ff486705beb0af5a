"""HMT: the Hierarchical Memory Transformer (He et al., 2405.06067) around any ``MemLM``.

The sequence is cut into segments of ``L = segment_len`` tokens; segment n holds the tokens
``H_n`` (embeddings ``E[H_n]``). The backbone (BBM) sees one segment at a time; what lies
further back reaches it only through memory embeddings. For segment n:

    S_n = BBM([T, E[q_n], T])[-1]                       # (1) summary: the trailing T slot
    P_n = softmax((S_n W_q)(M W_k)^T / sqrt(d_h)) M     # (2) recall over the cache M
    P_0 = m_init                                         #     (empty cache: learned)
    Y   = BBM([P_n, E[H_{n-1}[L-k:]], E[H_n], P_n])      # (3) augmented pass
    logits(H_n) = head(Y[1+k : 1+k+L]),  m_n = Y[-1]     #     m_n enters the cache

With ``E = num_mem_embed`` memory embeddings per segment (a count; ``E[...]`` with brackets
stays the token embedding), default 1: the equations above, which are this form with
E = 1 (the code has one path for every E). T, m_init, S_n, P_n and m_n are E vectors each
([E, D]) and the cache M holds the E embeddings of each of the last N segments ([N*E, D],
newest last):

    S_n = BBM([T, E[q_n], T])[-E:]                      # (1) [E, D]: the E trailing T slots
    P_n = softmax((S_n W_q)(M W_k)^T / sqrt(d_h)) M     # (2) [E, D]: E queries, each over
                                                         #     all N*E cached embeddings
    Y   = BBM([P_n, E[H_{n-1}[L-k:]], E[H_n], P_n])      # (3) [E + k + L + E, D]
    logits(H_n) = head(Y[E+k : E+k+L]),  m_n = Y[-E:]    #     m_n ([E, D]) enters the cache

This is HMT-pytorch's ``MemoryCell(num_mem_tokens=E)`` (RMT's memory tokens): an ``[E, D]``
``memory`` parameter read at the first E positions and written from the last E
(``hidden_states[-1][:, -num_mem_tokens:]``), the memory state placed before and after the
segment; its ``RecurrentWrapper`` appends the E written embeddings of every segment to
``memory_seq`` (``torch.cat(..., dim=1)``) and its ``CrossAttentionMemory`` attends each of
the E queries ``q_mem [B, E, D]`` over all cached entries (no per-slot recall). Departures,
for E > 1 only (HMT-pytorch's ``main.py`` fixes ``memory_size = 1``): its summary prompt
``mem`` stays one vector, so its E queries would be the trailing prompt slot plus the
hidden states of the last E-1 summarised tokens; memarch learns E prompt slots T on each
side and reads the E trailing ones. Its ``ltm_context`` counts cached entries; memarch's
``n_memories`` counts segments (N*E entries).

* ``BBM(x)`` is the backbone on input embeddings: its final-norm hidden states
  (``MemLM.forward_embeds``; HF's ``hidden_states[-1]``). Each pass starts from a fresh
  backbone state, so the backbone's positions restart at every segment.
* ``T [E, D]``: the learned segment-summarisation prompt, at both ends of the summary pass as in
  the paper's equation (HMT-pytorch puts its summary prompt first and its initial memory
  embedding last). ``m_init [E, D]``: the learned memory of the first segment (HMT-pytorch's
  ``init_pre_memory_state``). Both start as N(0, std of the token embeddings) like
  HMT-pytorch's.
* The augmented pass ends with ``P_n`` as the paper's equation; HMT-pytorch's
  ``MemoryCell`` ends it with ``m_init`` (its ``suf_memory_state`` is never passed).
* Recall (the paper's equation): queries and keys are projected to ``d_h = recall_dim``
  (default ``d_model``; HMT-pytorch: 4096), values are the cached memory embeddings
  themselves, the scale is ``1/sqrt(d_h)`` always. HMT-pytorch's ``long_mem_cross_attn.py``
  divides by ``d_h`` instead when ``d_model >= 4096`` in training but not in generation (its
  ``long_mem_cross_attn_vanilla.py``, the one ``language_modeling.py`` imports, always uses
  the square root); memarch does not. The cache
  ``M`` holds the memory embeddings of the last ``N = n_memories`` segments, E per
  segment (fewer at the start: only those that exist are attended). ``n_memories = 0``: no
  cache, no recall, ``P_n = m_init`` always (the same segmentation and sensory memory
  without HMT's memory: the ablation baseline).
* Sensory memory: the last ``k = sensory_len`` tokens of segment n-1, embedded again (exactly
  the embeddings the paper carries; the state keeps their token ids).
* ``q_n``, the tokens the summary reads (``recall_query``):
  - ``"causal"`` (default): the last ``h = summary_len`` tokens of segment n-1. Strictly
    causal: the token-level streaming contract holds (one call == any split == token by
    token).
  - ``"paper"``: the first ``h`` tokens of segment n, as the paper and HMT-pytorch
    (``seg['input_ids'][:, :round(segment_size * sum_fraction)]``). The memory recalled for
    every token of segment n then depends on tokens up to ``h`` of that same segment: a
    look-ahead for the tokens before ``h``, which the paper's perplexities include. Exact at
    segment granularity (calls whose boundaries fall on segment boundaries); the recall is
    made once, at the first call that reaches the segment, from the tokens of the segment
    that call holds (at most ``h``; fewer for a shorter call or a shorter last segment) and
    kept for the rest of the segment, which is what HMT-pytorch's ``generate`` does with
    the last segment of a prompt.
* Streaming: the state holds the cache, the last R tokens (``R = max(k, h)`` in causal mode
  with memories, else ``k``: sensory tokens and causal query), the open segment's ``P_n``
  and the backbone state over ``[P_n, sensory, the segment so far]``. Tokens of an
  incomplete segment are answered at once; the trailing ``P_n`` slot and ``m_n`` are
  computed when the segment's L-th token arrives. In causal mode those tokens get exactly
  the logits a longer call gives them (nothing in them depends on later tokens), so a call
  ending inside a segment equals a longer call on every token it returns and in the state
  it leaves; in paper mode that holds once the call has reached ``h`` tokens of the
  segment (before, the recall had fewer tokens to read). The generation and evaluation
  harness cut their calls on segment boundaries (``memarch.generation.segment_aligned``).
* ``aux_loss``: the backbone's aux losses (e.g. MoM's balance loss) averaged over its
  passes, weighted by each pass's length, so its scale does not grow with the number of
  segments.
* Training: backpropagation through time over ``bptt_segments`` segments: the cache is
  detached at the start of every segment whose index is a multiple of ``bptt_segments``
  (absolute indices, so windows do not depend on how the stream is cut into calls; None:
  no cut inside a call). Carried between training steps (``data.stateful=true``), the
  state is detached by ``LitLM``.

All rows of a batch must be at the same position (their segments must line up).
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch import state as st
from memarch.hub import HubMixin
from memarch.mixers.base import (
    check_bool,
    check_choice,
    check_int,
    check_positive_int,
    check_scalars,
)
from memarch.models.lm import LMOutput, check_ids

__all__ = ["HMT", "HMTState"]

log = logging.getLogger(__name__)

RECALL_QUERIES = ("causal", "paper")


class HMTState(NamedTuple):
    cache: torch.Tensor     # [B, N*E, D] memory embeddings of the last N segments (E per
                            # segment, E = num_mem_embed), oldest first, newest last
    recent: torch.Tensor    # [B, R] int64: the last R = max(k, h) tokens seen
    prompt: torch.Tensor    # [B, E*D] P_n of the open segment, its E vectors flattened (so
                            # E = 1 keeps the [B, D] layout); zeros at a segment boundary
    backbone: tuple         # backbone state over [P_n (E), sensory, the open segment so far]
    pos: torch.Tensor       # [B] int64 tokens seen


class HMT(HubMixin, nn.Module):
    """Args:
        backbone: a ``MemLM`` (any mixers; ``forward_embeds``, ``embed``, ``head``).
        segment_len: L, tokens per segment.
        sensory_len: k <= L, tokens of the previous segment prepended (sensory memory).
        n_memories: N >= 0, segments whose memory embeddings are cached and recalled from
            (0: no memory).
        summary_len: h in [1, L], tokens the summary reads (default round(L / 2), the
            paper's ``sum_fraction = 0.5``).
        recall_dim: d_h of the recall projections (default d_model).
        recall_query: ``"causal"`` (default) or ``"paper"``; see the module docstring.
        bptt_segments: segments per backpropagation window (None: the whole call).
            ``memarch.lit.callbacks.HMTTwoStageBPTT`` trains with a shorter window first
            (the paper's two-stage training).
        num_mem_embed: E >= 1, memory embeddings per segment (HMT-pytorch's / RMT's
            ``num_mem_tokens``): m_init, T, P_n and m_n are E vectors and the cache holds
            N*E; see the module docstring. Default 1: the paper's single embedding.
        d_model: the backbone's width, checked when given (None: taken from the backbone);
            ``configs/model/hmt.yaml`` sets the backbone's width from it, so
            ``model.d_model=...`` sizes HMT as it sizes a ``MemLM``.
        freeze_backbone: train HMT's own parameters only (``extra_parameters()``), as the
            paper does over a pretrained model: the backbone's parameters get
            ``requires_grad=False`` (gradients still flow through its activations to the
            memory). With ``memarch.models.from_hf`` as the backbone
            (``configs/model/backbone/hf.yaml``).
    """

    def __init__(self, backbone: nn.Module, *, segment_len: int, sensory_len: int,
                 n_memories: int, summary_len: int | None = None,
                 recall_dim: int | None = None, recall_query: str = "causal",
                 bptt_segments: int | None = None, d_model: int | None = None,
                 freeze_backbone: bool = False, num_mem_embed: int = 1):
        super().__init__()
        self.init_kwargs = dict(backbone=backbone, segment_len=segment_len,
                                sensory_len=sensory_len, n_memories=n_memories,
                                summary_len=summary_len, recall_dim=recall_dim,
                                recall_query=recall_query, bptt_segments=bptt_segments,
                                d_model=d_model, freeze_backbone=freeze_backbone,
                                num_mem_embed=num_mem_embed)
        for attr in ("embed", "head", "forward_embeds", "init_state", "state_size"):
            if not hasattr(backbone, attr):
                raise TypeError(f"HMT: backbone must be a memarch MemLM (with {attr!r}), got "
                                f"{type(backbone).__name__}")
        check_positive_int("HMT", "segment_len", segment_len)
        L = segment_len
        summary_given = summary_len is not None
        if summary_len is None:
            summary_len = max(1, int(round(L * 0.5)))
        for name, v, lo, hi in (("sensory_len", sensory_len, 0, L),
                                ("summary_len", summary_len, 1, L),
                                ("n_memories", n_memories, 0, None)):
            rng = f"in [{lo}, segment_len={L}]" if hi is not None else f">= {lo}"
            check_int("HMT", name, v, minimum=lo, maximum=hi, expected=f"an int {rng}")
        check_choice("HMT", "recall_query", recall_query, RECALL_QUERIES)
        check_int("HMT", "bptt_segments", bptt_segments, minimum=1, none_ok=True,
                  expected="a positive int or None")
        check_bool("HMT", "freeze_backbone", freeze_backbone)
        check_positive_int("HMT", "num_mem_embed", num_mem_embed)
        E = num_mem_embed
        check_int("HMT", "d_model", d_model, minimum=1, none_ok=True,
                  expected="a positive int or None")
        if freeze_backbone:
            backbone.requires_grad_(False)
        backbone.train(self.training)            # from_hf returns eval mode: follow HMT's
        D = backbone.d_model
        if d_model is not None and d_model != D:
            raise ValueError(f"HMT: d_model={d_model!r} differs from the backbone's d_model={D}")
        if recall_dim is None:
            recall_dim = D
        check_positive_int("HMT", "recall_dim", recall_dim)
        check_scalars("HMT", "state scalars per sequence (without the backbone's)",
                      (n_memories + 1) * E * D + max(sensory_len, summary_len),
                      {"n_memories": n_memories, "num_mem_embed": E, "d_model": D,
                       "sensory_len": sensory_len,
                       **({"summary_len": summary_len} if summary_given
                          else {"segment_len": segment_len})})
        check_scalars("HMT", "parameters of its own", 2 * D * recall_dim + 2 * E * D,
                      {"recall_dim": recall_dim, "num_mem_embed": E, "d_model": D})
        self.backbone = backbone
        self.segment_len, self.sensory_len, self.n_memories = L, sensory_len, n_memories
        self.summary_len, self.recall_dim, self.recall_query = summary_len, recall_dim, recall_query
        self.bptt_segments, self.num_mem_embed = bptt_segments, E
        self.vocab_size, self.d_model = backbone.vocab_size, D
        causal_query = recall_query == "causal" and n_memories > 0
        self.n_recent = max(sensory_len, summary_len if causal_query else 0)
        std = float(backbone.embed.weight.detach().float().std())
        self.init_memory = nn.Parameter(torch.randn(E, D) * std)               # m_init [E, D]
        if n_memories > 0:
            self.summary_prompt = nn.Parameter(torch.randn(E, D) * std)        # T [E, D]
            self.wq = nn.Linear(D, recall_dim, bias=False)
            self.wk = nn.Linear(D, recall_dim, bias=False)
        else:
            self.summary_prompt, self.wq, self.wk = None, None, None
        w = backbone.embed.weight                 # HMT's parameters follow the backbone's
        self.to(device=w.device, dtype=w.dtype)   # (e.g. a bf16 pretrained checkpoint)
        n_extra = sum(p.numel() for p in self.extra_parameters())
        n_bb = sum(p.numel() for p in backbone.parameters())
        self.extra_fraction = n_extra / max(n_bb, 1)
        log.info("HMT: %s extra parameters (%.2f %% of the backbone's %s)",
                 f"{n_extra:,}", 100 * self.extra_fraction, f"{n_bb:,}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints from before ``num_mem_embed`` hold m_init and T as [D]: read them as
        the [1, D] of ``num_mem_embed=1`` (the same values)."""
        for name in ("init_memory", "summary_prompt"):
            v = state_dict.get(prefix + name)
            if isinstance(v, torch.Tensor) and v.dim() == 1 and self.num_mem_embed == 1:
                state_dict[prefix + name] = v[None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_parameters(self) -> list[nn.Parameter]:
        """The parameters HMT adds to its backbone (m_init, T, W_q, W_k)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    # -- state -------------------------------------------------------------------------
    def init_state(self, batch_size: int, *, device=None, dtype=None) -> HMTState:
        dtype = dtype or self.backbone.embed.weight.dtype
        B, D, E = batch_size, self.d_model, self.num_mem_embed
        return HMTState(
            torch.zeros(B, self.n_memories * E, D, device=device, dtype=dtype),
            torch.zeros(B, self.n_recent, device=device, dtype=torch.long),
            torch.zeros(B, E * D, device=device, dtype=dtype),
            self.backbone.init_state(B, device=device, dtype=dtype),
            torch.zeros(B, device=device, dtype=torch.long))

    def state_size(self, seq_len: int) -> int:
        """Floating-point state scalars per sequence after ``seq_len`` tokens."""
        r, E = seq_len % self.segment_len, self.num_mem_embed
        inside = 0 if r == 0 else (
            E + (self.sensory_len if seq_len >= self.segment_len else 0) + r)
        return (self.n_memories + 1) * E * self.d_model + self.backbone.state_size(inside)

    def _check_state(self, state, B: int) -> None:
        """Structure, shapes and integer dtypes as ``init_state`` builds them (the backbone's
        state is checked by its own mixers), and floating-point memories."""
        if not isinstance(state, HMTState):
            raise ValueError(f"HMT: state must be an HMTState (from init_state or a previous "
                             f"call), got {type(state).__name__}")
        spec = self.init_state(B, device="meta")._replace(backbone=None)
        st.check_like(state._replace(backbone=None), spec, owner="HMT")
        for name in ("cache", "prompt"):
            if not getattr(state, name).is_floating_point():
                raise ValueError(f"HMT: state field {name!r} must be floating point, got "
                                 f"{getattr(state, name).dtype}")
        r = state.recent
        if r.numel() and r.device.type not in ("cuda", "meta") and (
                r.min() < 0 or r.max() >= self.vocab_size):     # no host sync on CUDA
            raise ValueError(f"HMT: state field 'recent' must hold token ids in [0, "
                             f"vocab_size={self.vocab_size}), got values in [{int(r.min())}, "
                             f"{int(r.max())}] (pass the state this model returned, unedited)")

    @staticmethod
    def _position(state: HMTState) -> int:
        """The batch's common position (one host sync per call), or a clear error."""
        pos = state.pos.tolist()
        if any(p != pos[0] for p in pos):
            raise ValueError(f"HMT: all rows of a batch must be at the same position (their "
                             f"segments line up), got state.pos={pos}; run them as separate "
                             "batches")
        return pos[0] if pos else 0

    # -- the three steps -----------------------------------------------------------------
    def summarize(self, q_ids: torch.Tensor):
        """S_n = BBM([T, E[q], T])[-E:] for q [B, h] -> ([B, E, D], aux)."""
        B, E = q_ids.shape[0], self.num_mem_embed
        T = self.summary_prompt.to(self.backbone.embed.weight.dtype)[None].expand(B, E, -1)
        x = torch.cat([T, self.backbone.embed(q_ids), T], 1)                   # [B, h+2E, D]
        h, _, aux = self.backbone.forward_embeds(x, None)
        return h[:, -E:], aux

    def recall(self, s: torch.Tensor, memories: torch.Tensor):
        """Cross-attention of the summary s [B, E, D] (E queries; or one, [B, D]) over
        memories [B, n, D] (n >= 1): returns (P [B, E, D] (or [B, D]), attention weights
        [B, E, n] (or [B, n]))."""
        q = self.wq(s)                                                          # [B, E, d_h]
        k = self.wk(memories)                                                   # [B, n, d_h]
        scores = torch.einsum("b...d,bnd->b...n", q, k) / math.sqrt(self.recall_dim)
        w = F.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)),
                      dim=-1).to(memories.dtype)                                # [B, E, n]
        return torch.einsum("b...n,bnd->b...d", w, memories), w

    # -- forward -----------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, state: HMTState | None = None) -> LMOutput:
        check_ids("HMT", ids, self.vocab_size)
        B, n_tok = ids.shape
        bb = self.backbone
        dtype = bb.embed.weight.dtype
        if state is None:
            state, p0 = self.init_state(B, device=ids.device, dtype=dtype), 0
        else:
            self._check_state(state, B)
            p0 = self._position(state)
        ids = ids.long()
        L, k, h, N, R, E = (self.segment_len, self.sensory_len, self.summary_len,
                            self.n_memories, self.n_recent, self.num_mem_embed)
        end = p0 + n_tok
        ext = torch.cat([state.recent, ids], 1)          # ext[:, j]: position p0 - R + j

        def tokens(a: int, b: int) -> torch.Tensor:      # tokens at positions [a, b)
            return ext[:, a - p0 + R: b - p0 + R]

        # (1) the summaries of every segment that starts in this call and recalls (batched)
        starts = range(-(-p0 // L) * L, end, L)
        queries = {}
        for b in starts:
            if N > 0 and b > 0:
                queries[b] = (tokens(b - h, b) if self.recall_query == "causal"
                              else tokens(b, min(b + h, end)))
        summaries, aux = {}, _Mean()
        for length in sorted({q.shape[1] for q in queries.values()}):
            group = [b for b, q in queries.items() if q.shape[1] == length]
            s, a = self.summarize(torch.cat([queries[b] for b in group], 0))
            aux.add(a, len(group) * (length + 2))
            for i, b in enumerate(group):
                summaries[b] = s[i * B:(i + 1) * B]

        cache, bstate = state.cache, state.backbone                 # [B, N*E, D]
        D = self.d_model
        prompt = state.prompt.reshape(B, E, D)                          # P_n [B, E, D]
        logits, t = [], p0
        while t < end:
            n, off = divmod(t, L)
            take = min(L - off, end - t)
            parts = []
            if off == 0:                                 # (2) open segment n: recall
                if t in summaries:
                    if self.bptt_segments is not None and n % self.bptt_segments == 0:
                        cache = cache.detach()
                    prompt, _ = self.recall(summaries[t], cache[:, (N - min(n, N)) * E:])
                else:
                    prompt = self.init_memory.to(dtype)[None].expand(B, -1, -1).clone()
                bstate = None
                parts.append(prompt)                     # [B, E, D]
                if n > 0 and k > 0:
                    parts.append(bb.embed(tokens(t - k, t)))
            n_pre = sum(x.shape[1] for x in parts)
            parts.append(bb.embed(tokens(t, t + take)))
            closes = off + take == L
            if closes:
                parts.append(prompt)
            x = torch.cat(parts, 1)
            y, bstate, a = bb.forward_embeds(x, bstate)                      # (3) [B, *, D]
            aux.add(a, x.shape[1])
            logits.append(bb.head(y[:, n_pre:n_pre + take]))                # [B, take, V]
            if closes:                                   # m_n = Y[-E:] enters the cache
                if N > 0:
                    cache = torch.cat([cache[:, E:], y[:, -E:]], 1)
                bstate = None
            t += take
        if end % L == 0:                                 # at a boundary: nothing is open
            prompt = torch.zeros_like(state.prompt)
        if bstate is None:
            bstate = bb.init_state(B, device=ids.device, dtype=dtype)
        out = (torch.cat(logits, 1) if logits else
               torch.zeros(B, 0, self.vocab_size, device=ids.device, dtype=dtype))
        sd = state.cache.dtype                           # autocast: keep the state's dtype
        new = HMTState(cache.to(sd), ext[:, ext.shape[1] - R:], prompt.reshape(B, E * D).to(sd),
                       bstate, state.pos + n_tok)
        return LMOutput(out, new, aux.value())


class _Mean:
    """Length-weighted mean of the backbone passes' aux losses (None if none has one)."""

    def __init__(self):
        self.total, self.n = None, 0

    def add(self, a, n: int) -> None:
        if a is not None:
            self.total = a * n if self.total is None else self.total + a * n
            self.n += n

    def value(self):
        return None if self.total is None else self.total / self.n
