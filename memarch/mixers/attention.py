"""Causal softmax attention with RoPE, GQA, a sliding window and attention sinks.

Papers: "Attention Is All You Need" (1706.03762); RoPE (2104.09864); GQA (2305.13245);
StreamingLLM, "Efficient Streaming Language Models with Attention Sinks" (2309.17453).

For query position i (absolute, 0-based) the visible keys are

    V(i) = { j : i - W < j <= i }  U  { j : j < S }         (window W, S sinks)
    o_i  = sum_{j in V(i)} softmax_j( <rope(q_i, p_q(i, j)), rope(k_j, p_k(j))> / sqrt(D) ) v_j

with ``window=None`` meaning W = infinity (full causal attention; sinks then need no mention).
Positions, ``sink_positions``:

* ``"absolute"``: p_q = i, p_k = j: every token keeps its absolute RoPE position.
* ``"cache"`` (StreamingLLM): positions are slots in a cache that holds the S sinks and the
  W most recent tokens (the current one included). Window keys keep the relative distance
  i - j; a sink j sits in slot j and is scored by the query in slot min(i, S + W - 1).
  RoPE scores depend on p_q - p_k only, so we cache keys rotated at their absolute
  position and rotate a second copy of the queries at min(i, S + W - 1) for the sinks:
  identical scores to StreamingLLM's "cache un-rotated keys, rotate by slot", and the
  parallel (training) pass and token-by-token decode compute the same function.

Persistent memory, ``n_persistent=N_p`` (Titans, "Learning to Memorize at Test Time"
(2501.00663) section 3.3): N_p learned tokens prepended to the sequence. Their keys and
values do not depend on the input, so for attention N_p prepended learned tokens are the
same thing as N_p learned key/value pairs per KV head, ``persistent_kv [2, Hkv, N_p, Dh]``,
that every query sees:

    o_i  = sum_{n < N_p} a_{i,n} pv_n  +  sum_{j in V(i)} a_{i,j} v_j,
    a_i  = softmax over [ <q_i, pk_n> / sqrt(D)  (n < N_p) ;  the scores of V(i) above ]

They are position-free: scored with the *un-rotated* query q_i, so they need no RoPE slot,
count toward no window (the window and the S sinks are token positions only) and never
leave the cache. ``learned_sink=True`` is ``n_persistent=1``: StreamingLLM's dedicated
sink token for pre-training.

State. Full attention: a KV cache that grows by one entry per token; under ``no_grad``
(generation, evaluation) it appends in place into spare capacity (amortised O(1) per token,
see ``_KVBuffer``), and states stay functional: an older state that is continued again (a
branch) copies first, so no state ever sees its entries change. Window: the S sink
entries plus the W-1 most recent entries (the current token comes from the input), a
constant size; under ``no_grad`` its entries are views of a buffer with spare room after
the window (``_window_append``, ``_window_decode``): a token is written in place, the window
is never cloned per token and is copied once every max(64, W/2) tokens. The persistent
pairs are parameters, not state: ``state_size`` does not count them. A state is checked
against what ``init_state`` makes for this configuration (the KV cache's length is the
declared growing dimension).

Paths. A pass over the window (prefill, training) goes through the op
``memarch.kernels.sliding_window_attn`` (query blocks of fused SDPA on CPU, Triton on CUDA;
never a T x T mask). A decode step (one token, every sequence at one position) sees a
contiguous set of keys, so it needs no mask: without autograd one SDPA call over a
contiguous run of the window buffer [valid window entries, new token, visible sinks]
(``_decode_step``: the sinks are written after the new entry; for cache positions past
the cache, the sink keys are turned so that the step's own query scores them, since
<rope(q, c), k> = <rope(q, p), rope(k, p - c)>); with autograd one softmax over the window
and the sinks (``_decode_attend``). Persistent pairs, or a batch whose sequences sit at
different positions, take an equivalent blocked PyTorch path in this module.

Causality holds for any input: a NaN/inf at token t changes no output before t. Masks
select (masked scores), values are made finite before a matmul whose weights can be zero,
and every query that sees a non-finite key or value gets a NaN output (persistent pairs
are parameters, finite unless the weights themselves are not). The decode step keeps the
promise without a pass over the window: the buffer remembers the last slot that held a
non-finite entry (each new entry is checked by one reduction, a copied window once), and
while such a slot is visible the guarded softmax runs instead of the fused kernel (which
would give a key with a -inf score weight 0: a finite, wrong output).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch.kernels import known_finite
from memarch.kernels.sliding_window import sliding_window_attn
from memarch.mixers.base import (
    IMPLS,
    Mixer,
    MixerOutput,
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_positive_int,
    check_scalars,
)
from memarch.modules.rotary import (
    Rotary,
    apply_rotary,
    check_rope_scaling,
    full_width,
    rotate,
    rotation_matrix,
)

__all__ = ["Attention", "KVCacheState", "SinkWindowState"]


class KVCacheState(NamedTuple):
    """Full attention: the growing KV cache (keys rotated at their absolute positions)."""
    k: torch.Tensor    # [B, Hkv, L, Dh]
    v: torch.Tensor    # [B, Hkv, L, Dh]
    pos: torch.Tensor  # [B] int64 tokens seen


class SinkWindowState(NamedTuple):
    """Windowed attention: constant size S + W - 1 entries (zeros where no token was yet)."""
    sink_k: torch.Tensor  # [B, Hkv, S, Dh] keys of positions 0..S-1 (rotated at j = their slot)
    sink_v: torch.Tensor  # [B, Hkv, S, Dh]
    k: torch.Tensor       # [B, Hkv, W-1, Dh] keys of positions pos-W+1 .. pos-1, oldest first
    v: torch.Tensor       # [B, Hkv, W-1, Dh]
    pos: torch.Tensor     # [B] int64 tokens seen


class Attention(Mixer):
    """Multi-head causal attention; see the module docstring for the exact semantics.

    Args:
        d_model: model width.
        n_heads: query heads (default: d_model // 64, at least 1).
        n_kv_heads: key/value heads for GQA (default: n_heads); must divide n_heads.
        window: sliding window W (key j visible to query i iff i-W < j <= i); None = full.
        n_sinks: S attention sinks (first S tokens stay visible); requires a window.
        sink_positions: "absolute" or "cache" (StreamingLLM's slot positions).
        n_persistent: N_p >= 0 persistent-memory tokens (Titans 2501.00663, section 3.3):
            learned, input-independent tokens prepended to the sequence, which for
            attention are N_p learned key/value pairs per KV head (``persistent_kv
            [2, Hkv, N_p, Dh]``) that every query sees. Position-free: scored with the
            un-rotated query, no RoPE slot, outside the window and the sinks.
        learned_sink: StreamingLLM's dedicated (learned) sink token; ``True`` is
            ``n_persistent=1`` (kept for configs and checkpoints that use it; with
            ``n_persistent`` other than 0 or 1 it is an error).
        rope_base: RoPE base.
        rope_scaling: RoPE frequency scaling of pretrained checkpoints (``None``, or a dict
            of type ``"linear"`` or ``"llama3"``; see ``memarch.modules.rotary``).
        head_dim: per-head width (default: d_model // n_heads; pretrained models such as
            Mistral-Nemo use another): q_proj maps d_model -> n_heads * head_dim.
        bias: biases on all four projections (Llama's ``attention_bias``).
        qkv_bias, o_bias: override ``bias`` for the q/k/v projections and for o_proj
            (Qwen2: ``qkv_bias=True, o_bias=False``); None follows ``bias``.
        block_size: query block of the banded fallback path (memory/speed, not semantics).
        impl: implementation of ``memarch.kernels.sliding_window_attn`` for the windowed
            path ("auto": Triton on CUDA, chunked PyTorch elsewhere).
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None,
                 n_heads: int | None = None, n_kv_heads: int | None = None,
                 window: int | None = None, n_sinks: int = 0,
                 sink_positions: str = "absolute", learned_sink: bool = False,
                 n_persistent: int = 0, rope_base: float = 10000.0, bias: bool = False,
                 block_size: int = 128, impl: str = "auto", rope_scaling: dict | None = None,
                 head_dim: int | None = None, qkv_bias: bool | None = None,
                 o_bias: bool | None = None):
        super().__init__(d_model, layer_idx=layer_idx)
        n_heads = max(1, d_model // 64) if n_heads is None else n_heads
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        check_positive_int("Attention", "n_heads", n_heads)
        check_positive_int("Attention", "n_kv_heads", n_kv_heads)
        if head_dim is None and d_model % n_heads:
            raise ValueError(f"Attention: n_heads={n_heads} must divide d_model={d_model} "
                             "(or pass head_dim)")
        if head_dim is not None:
            check_positive_int("Attention", "head_dim", head_dim)
        check_bool("Attention", "bias", bias)
        for name, b in (("qkv_bias", qkv_bias), ("o_bias", o_bias)):
            if b is not None:
                check_bool("Attention", name, b)
        if n_heads % n_kv_heads:
            raise ValueError(
                f"Attention: n_kv_heads={n_kv_heads} must divide n_heads={n_heads} (GQA)")
        window = check_int("Attention", "window", window, minimum=1, none_ok=True,
                           expected="a positive int or None")
        n_sinks = check_int("Attention", "n_sinks", n_sinks, minimum=0)
        if n_sinks and window is None:
            raise ValueError(
                "Attention: n_sinks > 0 needs a window (full attention sees every token anyway)")
        if not isinstance(sink_positions, str) or sink_positions not in ("absolute", "cache"):
            raise ValueError(
                f"Attention: sink_positions must be 'absolute' or 'cache', got {sink_positions!r}")
        n_persistent = check_int("Attention", "n_persistent", n_persistent, minimum=0)
        check_bool("Attention", "learned_sink", learned_sink)
        if learned_sink:
            if n_persistent not in (0, 1):
                raise ValueError(
                    f"Attention: learned_sink=True is n_persistent=1 (one learned sink pair), "
                    f"but n_persistent={n_persistent}: pass n_persistent alone")
            n_persistent = 1
        check_positive_int("Attention", "block_size", block_size)
        impl = check_choice("Attention", "impl", impl, IMPLS)   # also with window=None
        rope_base = check_number("Attention", "rope_base", rope_base, minimum=1, min_open=True)
        head_dim_ = d_model // n_heads if head_dim is None else head_dim
        check_scalars("Attention", "parameters",
                      d_model * head_dim_ * (2 * n_heads + 2 * n_kv_heads)
                      + 2 * n_persistent * n_kv_heads * head_dim_,
                      {"d_model": d_model, "n_heads": n_heads, "head_dim": head_dim,
                       "n_persistent": n_persistent})
        if window is not None:              # the window cache: W - 1 entries + the sinks
            check_scalars("Attention", "state scalars per sequence",
                          2 * n_kv_heads * head_dim_ * (window - 1 + n_sinks),
                          {"window": window, "n_sinks": n_sinks, "n_kv_heads": n_kv_heads,
                           "head_dim": head_dim_})
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim_
        self.window, self.n_sinks = window, n_sinks
        self.sink_positions = sink_positions
        self.n_persistent = n_persistent
        self.block_size, self.impl = block_size, impl
        self.scale = self.head_dim ** -0.5
        Dh = self.head_dim
        qkv_bias = bias if qkv_bias is None else qkv_bias
        o_bias = bias if o_bias is None else o_bias
        self.q_proj = nn.Linear(d_model, n_heads * Dh, bias=qkv_bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * Dh, bias=qkv_bias)  # [k; v] rows
        self.o_proj = nn.Linear(n_heads * Dh, d_model, bias=o_bias)
        self.rotary = Rotary(Dh, base=rope_base,
                             scaling=check_rope_scaling("Attention", rope_scaling))
        if n_persistent:   # [2 (key, value), Hkv, Np, Dh]
            self.persistent_kv = nn.Parameter(
                torch.randn(2, n_kv_heads, n_persistent, Dh) * 0.02)
        else:
            self.register_parameter("persistent_kv", None)

    @property
    def learned_sink(self) -> bool:
        """True iff the module has persistent (learned, position-free) key/value pairs."""
        return self.n_persistent > 0

    @property
    def sink_kv(self) -> torch.Tensor | None:
        """Deprecated read-only alias from before ``n_persistent``: the single learned
        sink pair ``[2, Hkv, Dh]`` (a view of ``persistent_kv``), None without one. With
        ``n_persistent > 1`` there is no single pair: read ``persistent_kv``."""
        if self.n_persistent > 1:
            raise AttributeError(
                f"Attention: sink_kv is defined for n_persistent <= 1 only (here "
                f"n_persistent={self.n_persistent}); use persistent_kv [2, Hkv, Np, Dh]")
        return None if self.persistent_kv is None else self.persistent_kv[:, :, 0]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        """Checkpoints from before ``n_persistent`` hold ``<prefix>sink_kv [2, Hkv, Dh]``:
        the same pair as ``persistent_kv [2, Hkv, 1, Dh]``."""
        old, new = prefix + "sink_kv", prefix + "persistent_kv"
        if old in state_dict and new not in state_dict:
            t = state_dict[old]
            if isinstance(t, torch.Tensor) and t.dim() == 3:
                del state_dict[old]
                state_dict[new] = t.unsqueeze(2)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    # -- state -------------------------------------------------------------------------
    def init_state(self, batch_size, *, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        pos = torch.zeros(batch_size, dtype=torch.long, device=device)

        def z(n):
            return torch.zeros(batch_size, self.n_kv_heads, n, self.head_dim, device=device,
                               dtype=dtype)
        if self.window is None:
            return KVCacheState(z(0), z(0), pos)
        return SinkWindowState(z(self.n_sinks), z(self.n_sinks), z(self.window - 1),
                               z(self.window - 1), pos)

    def state_growing_dims(self):
        return {"k": {2: "L"}, "v": {2: "L"}} if self.window is None else {}

    def state_size(self, seq_len: int) -> int:
        entries = seq_len if self.window is None else self.n_sinks + self.window - 1
        return 2 * self.n_kv_heads * self.head_dim * entries

    # -- forward -----------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, state) -> MixerOutput:
        B, T, _ = x.shape
        H, Hkv, Dh = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, Dh)
        kvx = self.kv_proj(x)                                         # [B, T, 2 Hkv Dh]
        k, v = kvx.view(B, T, 2, Hkv, Dh).unbind(2)                   # [B, T, Hkv, Dh]
        pos = (state.pos[:, None] if T == 1 else
               state.pos[:, None] + torch.arange(T, device=x.device))  # [B, T] absolute
        cos, sin = self.rotary.cos_sin(pos, x.dtype)                  # [B, T, Dh/2]
        cs2 = full_width(cos[:, :, None], sin[:, :, None])            # [B, T, 1, Dh] each
        qr = rotate(q, *cs2).transpose(1, 2)                          # [B, H, T, Dh]
        kr = rotate(k, *cs2).transpose(1, 2)                          # [B, Hkv, T, Dh]
        v = v.transpose(1, 2)                                         # [B, Hkv, T, Dh]
        if self.window is None:
            o, new = self._full(q.transpose(1, 2), qr, kr, v, state)
        else:
            o, new = self._banded(q.transpose(1, 2), qr, pos, kr, v, state, cs2, kvx)
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, H * Dh))
        return MixerOutput(y, new, None)

    def _full(self, q, qr, kr, v, state: KVCacheState):
        """Full causal attention over [cache, new] with SDPA.

        The cache grows by ``_append_kv``: in place (amortised O(1) per token) when that
        is safe, by copy otherwise. With T > 1 new tokens, pairs among them are masked, and
        a masked NaN leaks through SDPA (NaN + -inf, 0 * NaN): so the compute sees the new
        keys/values made finite, and every query that sees a non-finite new key or value
        gets a NaN output. Cache entries are visible to every new query, so a non-finite
        one makes every output NaN by itself. The state keeps the raw values."""
        T, L0 = qr.shape[2], state.k.shape[2]
        bad = None
        if T == 1:
            K, V = _append_kv(state.k, state.v, kr, v)                 # [B, Hkv, L0+1, Dh]
            Kc, Vc = K, V
        else:
            if known_finite(kr, v):                                    # the guard's fast path
                ks, vs = kr, v
            else:
                ks, vs, bad = _finite_kv(kr, v)                        # bad [B, Hkv, T]
            if torch.is_grad_enabled() and L0 == 0:   # a first call: nothing to concatenate
                K, V, Kc, Vc = kr, v, ks, vs
            elif torch.is_grad_enabled():
                K, V = torch.cat([state.k, kr], 2), torch.cat([state.v, v], 2)
                Kc, Vc = torch.cat([state.k, ks], 2), torch.cat([state.v, vs], 2)
            else:     # the buffer's new slots hold the finite copies during the compute
                K, V = Kc, Vc = _append_kv(state.k, state.v, ks, vs)
        new = KVCacheState(K, V, state.pos + T)
        if self.n_persistent:
            u = torch.arange(L0 + T, device=qr.device)
            mask = u[None, :] <= (L0 + torch.arange(T, device=qr.device))[:, None]  # [T, L0+T]
            o = self._attend_with_persistent(q, qr, Kc, Vc, mask)
        elif T == 1:                                                   # decode: sees all
            o = _sdpa_one_query(qr, Kc, Vc, self.scale)
        elif L0 == 0:
            o = F.scaled_dot_product_attention(qr, Kc, Vc, is_causal=True, scale=self.scale,
                                               enable_gqa=True)
        else:   # bottom-right aligned causal mask: new token t sees cache entries 0 .. L0 + t
            u = torch.arange(L0 + T, device=qr.device)
            mask = u[None, :] <= (L0 + torch.arange(T, device=qr.device))[:, None]
            o = F.scaled_dot_product_attention(qr, Kc, Vc, attn_mask=mask, scale=self.scale,
                                               enable_gqa=True)
        if bad is not None:   # new query t sees new keys 0 .. t: a prefix
            if K is Kc:                                                # buffer: raw values back
                K[:, :, L0:] = kr
                V[:, :, L0:] = v
            seen = bad.cumsum(-1) > 0                                  # [B, Hkv, T]
            seen = seen.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            o = o.masked_fill(seen[..., None], float("nan"))
        return o, new

    def _attend_with_persistent(self, q, qr, K, V, mask):
        """Softmax over [Np persistent pairs, K] (the pairs scored with un-rotated queries);
        ``mask [T, L]`` selects the visible keys. With Np = 0: plain masked attention."""
        B, H, T, Dh = qr.shape
        Hkv, G, Np = self.n_kv_heads, H // self.n_kv_heads, self.n_persistent
        ct = _compute_dtype(qr.dtype)
        qg = qr.reshape(B, Hkv, G, T, Dh).to(ct)
        s = torch.einsum("bhgtd,bhud->bhgtu", qg, K.to(ct)) * self.scale
        s = s.masked_fill(~mask, float("-inf"))
        if Np:
            pk, pv = self.persistent_kv.to(ct)                           # [Hkv, Np, Dh] each
            s0 = torch.einsum("bhgtd,hnd->bhgtn", q.reshape(B, Hkv, G, T, Dh).to(ct),
                              pk) * self.scale                           # [B, Hkv, G, T, Np]
            s = torch.cat([s0, s], dim=-1)
        p = torch.softmax(s, dim=-1)
        o = torch.einsum("bhgtu,bhud->bhgtd", p[..., Np:], V.to(ct))
        if Np:
            o = o + torch.einsum("bhgtn,hnd->bhgtd", p[..., :Np], pv)
        return o.reshape(B, H, T, Dh).to(qr.dtype)

    def _decode_step(self, qr, kr, v, state: SinkWindowState, p: int, cs2, kvx):
        """One token (position p, every sink set) without autograd: one SDPA call over a
        contiguous run of the window buffer, [valid window entries, new token, visible sinks]
        (``_window_decode``). Sinks enter in the form ``qr`` scores: for cache positions
        past the cache (p > S + W - 1) the query's slot is c = S + W - 1, and
        <rope(q, c), k_s> = <rope(q, p), rope(k_s, p - c)>, so the sink keys are turned by
        p - c (``rotation_matrix(-c)`` then the step's own cos/sin of p)."""
        W, S = self.window, self.n_sinks
        u0 = max(0, W - 1 - p)                                           # slots before token 0
        ns = min(S, max(0, p - W + 1))                                   # sinks s <= p - W
        sk = sv = None
        if ns:
            sk, sv = state.sink_k, state.sink_v
            if ns < S:
                sk, sv = sk[:, :, :ns], sv[:, :, :ns]
            if self.sink_positions == "cache" and p > S + W - 1:   # ns == S here
                a, a_half = self._sinks_back(state.sink_k)              # rotate(a, *cs2)
                sk = a * cs2[0] + a_half * cs2[1]                        # cs2: [B, 1, 1, Dh]
        K, V, wk, wv, clean = _window_decode(state.k, state.v, kr, v, sk, sv, u0,
                                             known_finite(kvx), (state.sink_k, state.sink_v))
        new = SinkWindowState(state.sink_k, state.sink_v, wk, wv, state.pos + 1)
        if clean:            # nothing visible is non-finite: the fused kernel, raw entries
            o = _sdpa_one_query(qr, K, V, self.scale)
        else:                # the guarded softmax (every visible key: NaN where non-finite)
            o = _decode_attend(qr, qr, K, V, None, None, self.scale)
        return o, new

    def _sinks_back(self, sink_k):
        """(A, [A2, A1]) for A = sink_k turned back by the cache slot c = S + W - 1: what
        ``rotate`` turns by the step's position p into rope(k_s, p - c). Kept for the last
        sink tensor (the sinks of a stream do not change once set)."""
        last = self.__dict__.get("_sinks_back_cache")
        if last is None or last[0] is not sink_k:
            c = self.n_sinks + self.window - 1
            a = sink_k @ rotation_matrix(self.rotary, -c, sink_k.dtype, sink_k.device)
            a1, a2 = a.chunk(2, dim=-1)
            last = self.__dict__["_sinks_back_cache"] = (sink_k, a, torch.cat([a2, a1], -1))
        return last[1], last[2]

    def _sink_queries(self, q, qr, pos):
        """The queries that score the sinks, [B, H, T, Dh]: ``qr`` for absolute positions;
        for cache positions rotated at the query's cache slot min(p, S + W - 1)."""
        if not (self.n_sinks and self.sink_positions == "cache"):
            return qr
        slot = pos.clamp(max=self.n_sinks + self.window - 1)             # [B, T]
        c2, s2 = self.rotary.cos_sin(slot, q.dtype)
        return apply_rotary(q.transpose(1, 2), c2[:, :, None], s2[:, :, None]).transpose(1, 2)

    def _banded(self, q, qr, pos, kr, v, state: SinkWindowState, cos_sin=None, kvx=None):
        """Sliding window + sinks, in query blocks over [window cache, new keys]."""
        B, H, T, Dh = qr.shape
        Hkv, G, W, S = self.n_kv_heads, H // self.n_kv_heads, self.window, self.n_sinks
        dev, ct = qr.device, _compute_dtype(qr.dtype)
        p0 = state.pos                                                   # [B]
        if B == 1:                                                       # one host sync
            lo = hi = int(p0)
        else:
            lo, hi = torch.stack(p0.aminmax()).tolist()
        decode = T == 1 and not self.n_persistent and lo == hi
        if decode and lo >= S and not torch.is_grad_enabled():
            return self._decode_step(qr, kr, v, state, lo, cos_sin, kvx)
        # [window cache, new]: views of a buffer with spare room under no_grad (no copy of
        # the window per call), a concatenation when autograd records
        if lo == hi == 0 and not self.n_persistent and torch.is_grad_enabled() and T >= W - 1:
            # a fresh sequence under autograd (training): no cache entry is visible, so the
            # new keys alone are K (no concatenation with the W-1 empty slots kept for the
            # backward); the new cache is their last W-1
            K, V = kr, v
            wk = kr[:, :, T - (W - 1):].clone()
            wv = v[:, :, T - (W - 1):].clone()
            pre = W - 1                                                  # K starts at slot W-1
        else:
            K, V, wk, wv = _window_append(state.k, state.v, kr, v)      # [B, Hkv, W-1+T, Dh]
            pre = 0
        if S and lo >= S:                                                # every sink is set
            sink_k, sink_v = state.sink_k, state.sink_v
        elif S:
            # sinks: slot j takes the new token at position j when it arrives in this call
            j = torch.arange(S, device=dev)
            arrives = (j[None] >= p0[:, None]) & (j[None] < p0[:, None] + T)  # [B, S]
            idx = (j[None] - p0[:, None]).clamp(0, T - 1)[:, None, :, None].expand(B, Hkv, S, Dh)
            sink_k = torch.where(arrives[:, None, :, None], kr.gather(2, idx), state.sink_k)
            sink_v = torch.where(arrives[:, None, :, None], v.gather(2, idx), state.sink_v)
        else:
            sink_k, sink_v = state.sink_k, state.sink_v
        new = SinkWindowState(sink_k, sink_v, wk, wv, p0 + T)
        if decode:
            # decode: every visible key is a contiguous run (the window's valid slots, the
            # sinks that left the window), so one softmax over both, no mask
            u0 = max(0, W - 1 - lo) - pre                                # slots before token 0
            ns = min(S, max(0, lo - W + 1))                              # sinks s <= p - W
            q_sink = self._sink_queries(q, qr, pos) if ns else qr
            if u0:                                                       # warm-up only
                K, V = K[:, :, u0:], V[:, :, u0:]
            if ns < S:
                sink_k, sink_v = sink_k[:, :, :ns], sink_v[:, :, :ns]
            o = _decode_attend(qr, q_sink, K, V, sink_k if ns else None,
                               sink_v if ns else None, self.scale)
            return o, new
        q_sink = self._sink_queries(q, qr, pos)
        if not self.n_persistent and lo == hi:
            # the kernel: one position for the whole batch; drop cache slots before token 0
            p = lo
            u0 = max(0, W - 1 - p) - pre
            sk = dict(sink_k=sink_k.transpose(1, 2), sink_v=sink_v.transpose(1, 2),
                      sink_q=q_sink.transpose(1, 2)) if S else {}
            o = sliding_window_attn(qr.transpose(1, 2), K[:, :, u0:].transpose(1, 2),
                                    V[:, :, u0:].transpose(1, 2), window=W, q_offset=p,
                                    scale=self.scale, impl=self.impl, **sk)
            return o.transpose(1, 2), new
        # general path (persistent pairs, or sequences at different positions): query blocks.
        kpos = p0[:, None] - (W - 1) + torch.arange(W - 1 + T, device=dev)  # [B, W-1+T]
        # Finite copies for the matmuls; a visible non-finite key/value poisons its score.
        K, V, bad = _finite_kv(K, V)                                     # bad [B, Hkv, W-1+T]
        Np = self.n_persistent
        if Np:
            pk, pv = self.persistent_kv.to(ct)                           # [Hkv, Np, Dh] each
        if S:
            sink_k, sink_v, sink_bad = _finite_kv(sink_k, sink_v)       # [B, Hkv, S]
        out = []
        for a in range(0, T, self.block_size):
            n = min(self.block_size, T - a)
            qb = qr[:, :, a:a + n].reshape(B, Hkv, G, n, Dh).to(ct)
            kb, vb = K[:, :, a:a + n + W - 1].to(ct), V[:, :, a:a + n + W - 1].to(ct)
            s = torch.einsum("bhgtd,bhud->bhgtu", qb, kb) * self.scale      # [B,Hkv,G,n,n+W-1]
            s = s.masked_fill(bad[:, :, None, None, a:a + n + W - 1], float("nan"))
            r = torch.arange(n, device=dev)[:, None]
            c = torch.arange(n + W - 1, device=dev)[None, :]
            band = (c >= r) & (c <= r + W - 1)                               # [n, n+W-1]
            valid = kpos[:, a:a + n + W - 1] >= 0                            # [B, n+W-1]
            mask = band[None] & valid[:, None, :]                            # [B, n, n+W-1]
            parts = [s.masked_fill(~mask[:, None, None], float("-inf"))]
            if S:
                qs = q_sink[:, :, a:a + n].reshape(B, Hkv, G, n, Dh).to(ct)
                ss = torch.einsum("bhgtd,bhsd->bhgts", qs, sink_k.to(ct)) * self.scale
                ss = ss.masked_fill(sink_bad[:, :, None, None], float("nan"))
                qpos = p0[:, None] + a + torch.arange(n, device=dev)         # [B, n]
                smask = torch.arange(S, device=dev)[None, None, :] <= qpos[..., None] - W
                parts.append(ss.masked_fill(~smask[:, None, None], float("-inf")))
            if Np:   # persistent pairs: un-rotated queries, always visible
                q0 = q[:, :, a:a + n].reshape(B, Hkv, G, n, Dh).to(ct)
                parts.append(torch.einsum("bhgtd,hmd->bhgtm", q0, pk) * self.scale)
            p = torch.softmax(torch.cat(parts, dim=-1), dim=-1)
            ob = torch.einsum("bhgtu,bhud->bhgtd", p[..., :n + W - 1], vb)
            if S:
                ob = ob + torch.einsum("bhgts,bhsd->bhgtd", p[..., n + W - 1:n + W - 1 + S],
                                       sink_v.to(ct))
            if Np:
                ob = ob + torch.einsum("bhgtm,hmd->bhgtd", p[..., -Np:], pv)
            out.append(ob.reshape(B, H, n, Dh))
        o = torch.cat(out, dim=2).to(qr.dtype)                           # [B, H, T, Dh]
        return o, new


def _finite_kv(k: torch.Tensor, v: torch.Tensor):
    """(k, v) with non-finite entries zeroed, and ``bad [B, H, L]``: entry j had a
    non-finite key or value. Masks then select instead of multiplying by zero."""
    fk, fv = k.isfinite(), v.isfinite()
    bad = ~(fk.all(-1) & fv.all(-1))
    return torch.where(fk, k, 0), torch.where(fv, v, 0), bad


class _KVBuffer:
    """Storage with spare capacity behind a full-attention KV cache. A state's ``k``/``v``
    are views ``buf[:, :, :L]``; ``fill`` is the number of slots some state already claims.
    Appending to a state with ``L == fill`` writes the free slots in place; any other
    state (an older one: a branch) copies, so no state ever sees its entries change.

    The link from a state's tensors to their buffer lives in ``_BUFFERS`` (keyed by the
    tensor object, dropped when it is freed), not on the tensors, so a saved state is plain
    tensors that ``torch.load(weights_only=True)`` reads (``torch.save`` writes a view's
    whole storage: clone a state to drop the spare capacity before saving it)."""
    __slots__ = ("k", "v", "fill", "k_view", "v_view", "bad", "sinks", "__weakref__")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, fill: int):
        self.k, self.v, self.fill = k, v, fill
        self.k_view = self.v_view = None          # weak references to the newest views
        self.bad = None     # ``_window_decode``: the last slot known non-finite (-1: none)
        self.sinks = None   # ``_window_decode``: (sink_k, sink_v, known finite) last checked


_BUFFERS: dict[int, _KVBuffer] = {}               # id(view tensor) -> its buffer


def _buffer_of(ck: torch.Tensor, cv: torch.Tensor) -> _KVBuffer | None:
    buf = _BUFFERS.get(id(ck))
    if (buf is None or _BUFFERS.get(id(cv)) is not buf or buf.k_view is None
            or buf.k_view() is not ck or buf.v_view() is not cv):
        return None
    return buf


def _room(buf: _KVBuffer, k: torch.Tensor, n: int) -> bool:
    """``buf`` can take ``n`` more entries like ``k`` in place: the free slots are there, and
    dtype, device and inference mode match (an inference tensor cannot join autograd)."""
    return (buf.fill + n <= buf.k.shape[2] and k.dtype == buf.k.dtype
            and k.device == buf.k.device
            and buf.k.is_inference() == torch.is_inference_mode_enabled())


def _link(view: torch.Tensor, buf: _KVBuffer) -> weakref.ref:
    key = id(view)
    _BUFFERS[key] = buf
    weakref.finalize(view, _BUFFERS.pop, key, None)
    return weakref.ref(view)


def _append_kv(ck: torch.Tensor, cv: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """[cache, new] along dim 2, as a new state's (K, V); never mutates what ``ck``/``cv``
    show. With autograd recording, a plain concatenation (in-place writes would break
    the backward of earlier calls); otherwise in place into spare capacity when safe,
    else a copy into a buffer grown geometrically (x1.5): amortised O(1) per token."""
    if torch.is_grad_enabled():
        return torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
    L0, T = ck.shape[2], k.shape[2]
    buf = _buffer_of(ck, cv)
    if not (buf is not None and buf.fill == L0 and _room(buf, k, T)):
        cap = max(64, L0 + T + (L0 + T) // 2)
        B, H, _, D = k.shape
        buf = _KVBuffer(k.new_empty(B, H, cap, D), v.new_empty(B, H, cap, D), L0)
        buf.k[:, :, :L0] = ck
        buf.v[:, :, :L0] = cv
    buf.k[:, :, L0:L0 + T] = k
    buf.v[:, :, L0:L0 + T] = v
    buf.fill = L0 + T
    K, V = buf.k[:, :, :L0 + T], buf.v[:, :, :L0 + T]
    buf.k_view, buf.v_view = _link(K, buf), _link(V, buf)
    return K, V


def _window_append(ck: torch.Tensor, cv: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """A window cache ``ck, cv [B, H, n, D]`` (n = W-1, oldest first) and T new entries ->
    ``(K, V, wk, wv)``: ``K, V = [cache, new]`` along dim 2 (n + T entries, what the call
    attends over) and the new cache ``wk, wv`` = their last n entries. Never mutates what
    ``ck``/``cv`` show.

    Under no_grad both are views of one buffer with spare room after the window: the newest
    state appends in place (no copy of the window per token, no re-layout: entries keep
    their slots, oldest first), any other state (a branch) copies into a new buffer, so no
    state ever sees its entries change. A buffer holds the window plus ``spare`` =
    max(64, n/2) slots, so the window is copied once every ``spare`` tokens (amortised
    O(1) per token); a call longer than ``spare`` keeps only the window, in a buffer of
    its own. With autograd recording: a concatenation."""
    n, T = ck.shape[2], k.shape[2]
    if torch.is_grad_enabled():
        K, V = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
        if T == 1:                                           # a view: K is n + 1 entries
            return K, V, K[:, :, 1:], V[:, :, 1:]
        return K, V, K[:, :, T:].clone(), V[:, :, T:].clone()   # don't keep K alive
    spare = max(64, n // 2)
    buf = _buffer_of(ck, cv)
    if not (buf is not None and _room(buf, k, T)):
        B, H, _, D = k.shape
        cap = n + max(T, spare)
        buf = _KVBuffer(k.new_empty(B, H, cap, D), v.new_empty(B, H, cap, D), n)
        buf.k[:, :, :n] = ck
        buf.v[:, :, :n] = cv
    f = buf.fill                                             # the cache is buf[f - n : f]
    buf.k[:, :, f:f + T] = k
    buf.v[:, :, f:f + T] = v
    K, V = buf.k[:, :, f - n:f + T], buf.v[:, :, f - n:f + T]
    if T > spare:                                            # keep the window, not the call
        B, H, _, D = k.shape
        buf = _KVBuffer(k.new_empty(B, H, n + spare, D), v.new_empty(B, H, n + spare, D), 0)
        buf.k[:, :, :n] = K[:, :, T:]
        buf.v[:, :, :n] = V[:, :, T:]
        f, T = 0, n
    buf.fill = f + T
    wk, wv = buf.k[:, :, f + T - n:f + T], buf.v[:, :, f + T - n:f + T]
    buf.k_view, buf.v_view = _link(wk, buf), _link(wv, buf)
    return K, V, wk, wv


def _sdpa_one_query(q, K, V, scale: float) -> torch.Tensor:
    """One query per sequence that sees every key: ``q [B, H, 1, Dh]``, ``K, V [B, Hkv, L,
    Dh]``. The G = H / Hkv query heads of a KV head become G query rows of one SDPA call
    (no mask is needed), so the keys are read once, not repeated per query head."""
    B, H, _, Dh = q.shape
    Hkv = K.shape[1]
    o = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv, Dh), K, V, scale=scale)
    return o.reshape(B, H, 1, Dh)


def _window_decode(ck, cv, k, v, sk, sv, u0: int, new_ok: bool, sinks):
    """One no-grad decode step of a window cache ``ck, cv [B, H, n, D]`` (n = W-1, oldest
    first) and the new entry ``k, v [B, H, 1, D]``, with ``sk, sv [B, H, ns, D]`` (or None)
    the visible sinks in the form the query scores. Returns ``(K, V, wk, wv, clean)``:
    ``K, V`` the visible keys as one contiguous run of the buffer, [window entries from slot
    u0 on, new entry, sinks]; ``wk, wv`` the new cache (views, as ``_window_append``); and
    ``clean``: no visible entry is known to be non-finite, so a fused kernel may see them raw.

    The sinks are written after the new entry, into slots no state's window owns yet (the
    next step's entry overwrites them), so no state sees its entries change. The buffer
    remembers the last slot that held a non-finite entry (``new_ok``: the step's new key and
    value, checked by the caller; a copied window is checked once) and, per sink tensors
    (``sinks``: the state's raw sink_k, sink_v), whether they are finite."""
    n, ns = ck.shape[2], 0 if sk is None else sk.shape[2]
    spare = max(64, n // 2)
    buf = _buffer_of(ck, cv)
    if not (buf is not None and buf.bad is not None and _room(buf, k, 1 + ns)):
        B, H, _, D = k.shape
        cap = n + max(spare, 1 + ns)
        buf = _KVBuffer(k.new_empty(B, H, cap, D), v.new_empty(B, H, cap, D), n)
        buf.k[:, :, :n] = ck
        buf.v[:, :, :n] = cv
        buf.bad = -1 if known_finite(ck[:, :, u0:], cv[:, :, u0:]) else n - 1
    f = buf.fill                                             # the cache is buf[f - n : f]
    buf.k[:, :, f:f + 1] = k
    buf.v[:, :, f:f + 1] = v
    if not new_ok:
        buf.bad = f
    clean = buf.bad < f - n + u0
    if ns:
        buf.k[:, :, f + 1:f + 1 + ns] = sk
        buf.v[:, :, f + 1:f + 1 + ns] = sv
        if buf.sinks is None or buf.sinks[0] is not sinks[0] or buf.sinks[1] is not sinks[1]:
            buf.sinks = (sinks[0], sinks[1], known_finite(*sinks))
        clean = clean and buf.sinks[2]
    K, V = buf.k[:, :, f - n + u0:f + 1 + ns], buf.v[:, :, f - n + u0:f + 1 + ns]
    buf.fill = f + 1
    wk, wv = buf.k[:, :, f + 1 - n:f + 1], buf.v[:, :, f + 1 - n:f + 1]
    buf.k_view, buf.v_view = _link(wk, buf), _link(wv, buf)
    return K, V, wk, wv, clean


def _decode_attend(q, q_sink, K, V, sink_k, sink_v, scale: float) -> torch.Tensor:
    """One query per sequence over keys that are all visible: ``K, V [B, Hkv, n, Dh]`` scored
    with ``q [B, H, 1, Dh]`` and the sinks ``sink_k, sink_v [B, Hkv, ns, Dh]`` (or None)
    scored with ``q_sink``, in one softmax (at least fp32). Returns o [B, H, 1, Dh].

    Non-finite input, with no pass over the keys or values: a non-finite score (a
    non-finite key, or an overflow) becomes NaN, so the softmax makes the output NaN (a
    -inf score must not hide its key behind a zero weight), and a visible non-finite value
    makes the output non-finite, which becomes NaN: the promise of the banded op."""
    B, H, _, Dh = q.shape
    Hkv, ns = K.shape[1], 0 if sink_k is None else sink_k.shape[2]
    q_dtype, ct = q.dtype, _compute_dtype(q.dtype)
    nan = float("nan")
    if q.dtype != ct:                                                     # fp16/bf16
        q, q_sink, K, V = q.to(ct), q_sink.to(ct), K.to(ct), V.to(ct)
        if ns:
            sink_k, sink_v = sink_k.to(ct), sink_v.to(ct)
    s = torch.matmul(q.reshape(B, Hkv, H // Hkv, Dh), K.transpose(-1, -2))  # [B, Hkv, G, n]
    if ns:
        qs = q_sink.reshape(B, Hkv, H // Hkv, Dh)
        s = torch.cat([torch.matmul(qs, sink_k.transpose(-1, -2)), s], -1)
    p = torch.softmax(torch.nan_to_num(s * scale, nan=nan, posinf=nan, neginf=nan), -1)
    o = torch.matmul(p[..., ns:], V)                                      # [B, Hkv, G, Dh]
    if ns:
        o = o + torch.matmul(p[..., :ns], sink_v)
    o = torch.nan_to_num(o, nan=nan, posinf=nan, neginf=nan).reshape(B, H, 1, Dh)
    return o if o.dtype == q_dtype else o.to(q_dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and softmax in at least fp32 (fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)

