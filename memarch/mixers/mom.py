"""Mixture-of-Memories (Du et al., "MoM: Linear Sequence Modeling with Mixture-of-Memories",
2502.13685): a router sends each token to k of M linear recurrent memories, an always-on
shared memory sees every token, and the reads are mixed by the routing weights.

Per token x_t (heads h = 1..H; memories m = 1..M, plus the shared memory m = 0):

    p_t       = softmax(W_r x_t)                      [M]   router (fp32; route_by="token")
    R_t, w_t  = top-k of p_t, w_t renormalised to sum to 1
    q_t       = act(conv(W_q x))_t                    shared by every memory
    k^m_t     = act(conv(W_k^m x))_t,  v^m_t = act(conv(W_v^m x))_t     own projections
    g^m_t     = -exp(A_log) softplus(W_a^m x_t + dt_bias)   (<= 0, log decay per head)
    beta^m_t  = sigmoid(W_b^m x_t)                    (gated_delta only)

    cell "gated_delta":  S^m_t = exp(g^m_t) (I - beta^m_t k k^T) S^m_{t-1} + beta^m_t k v^T,
                         q, k L2-normalised             (``memarch.kernels.delta_rule``)
    cell "linear":       S^m_t = exp(g^m_t) S^m_{t-1} + k v^T    (gated linear attention,
                         ``memarch.kernels.linear_attn`` with decay, no normaliser)
    a memory m not in R_t is untouched at t: zero write and no decay (beta = 0 | k = 0, g = 0)

    o_t = sum_{m in R_t} w^m_t (scale q_t^T S^m_t) + scale q_t^T S^0_t      [H, V]
    y_t = W_o [ RMSNorm(o_t) * SiLU(W_g x_t) ]         (per-head gated RMSNorm)

conv is a depthwise causal convolution of width ``conv_size`` (then SiLU; no conv when
``conv_size`` is 0: SiLU only), computed on the original timeline for every memory, with
its own weights per channel, so each memory's k and v have their own conv (the MoM code
shares one k conv and one v conv across the memories). The
reference repositories pack each memory's tokens into its own sequence, run the convolution
there (across memory boundaries: a token's window holds other tokens routed to the same
memory, and in training even the neighbouring memory's tokens) and sort tokens with an
unstable sort; memarch follows the paper's definition of the memories as recurrences over
the tokens routed to them and keeps the conv a per-token feature of x (a choice, see
docs/design.md#mixture-of-memories), so routing never changes what a token writes, only where.

Routing by keys and queries (``route_by="key_query"``). With ``route_by="token"`` (the
paper's, the default) one routing of x_t picks the memories token t writes AND reads. On a
recall task the association k_i -> v_i is written at the value token while the query reads
at a later occurrence of the key token: two different x, so the routing may write the pair
into one memory and read it from another (``benchmarks/mom_routing.py`` measures this).
``route_by="key_query"`` routes each side by features of the space where the memories match
keys to queries, with the same router matrix W_r [M, H K] (no bias):

    r^q_t     = l2(q_t)                  [H K]  the shared query, L2-normalised per head
    r^k_t     = l2(k^0_t)                [H K]  the shared memory's key (shared_memory on), or
              = l2(act(conv(W_rk x))_t)  [H K]  an extra key channel group in the conv'd
                                                projection (shared_memory off)
    p^w_t = softmax(W_r r^k_t), R^w_t, w^w_t = top-k      write routing   [M]
    p^r_t = softmax(W_r r^q_t), R^r_t, w^r_t = top-k      read routing    [M]
    S^m_t = (step of the cell with token t's k^m, v^m, g^m, beta^m)   if m in R^w_t
          = S^m_{t-1}                                                  otherwise
    o_t   = sum_{m in R^r_t} w^{r,m}_t (scale q_t^T S^m_t) + scale q_t^T S^0_t

(l2 per head in both cells; q, k enter the cells as with "token"). A memory m receives the
writes of the tokens whose write routing selects it and serves the reads of the tokens whose
read routing selects it: a memory no token writes keeps its state bitwise, and reads may
still select it. When q_t matches the key a pair was written with, both routings see the same
direction, so a query is routed where its association was written. The write routing is a
hard selection (as with "token", where the routing weights only mix the reads): W_r learns
from the read mix and from the balance loss, which for "key_query" is the mean of the loss
over the write routing (p^w, R^w) and over the read routing (p^r, R^r). With shared_memory
off the extra channels (H K) grow the conv state: C = H K + (M + 1) H (K + V) with the
shared memory, H K + M H (K + V) + H K without (then the last H K channels are W_rk's).

Implementation: the masked form. All M + 1 memories run over the whole timeline as M + 1
groups of heads in one kernel call; an unrouted token is an exact identity step (selected,
never multiplied by zero), so a memory that no token of the call reaches keeps its state
bitwise. This costs (M + 1) / (k + 1) of a packed path in flops
(5/3 at the paper's M = 4, k = 2) and needs no sort, gather or host sync.

Load balancing (Switch Transformer, 2101.03961, eq. 4, with top-k): over the tokens of the
call, f_m = (number of top-k slots routed to m) / (N k), P_m = mean p_t[m] (the full
softmax); ``aux_loss = aux_loss_coef * M * sum_m f_m P_m`` (= aux_loss_coef at perfect
balance). ``MemLM`` sums its layers' aux losses and training adds the sum to the loss as it
is (``LitLM.aux_loss_weight`` = 1). The MoM code differs in scale: it averages the layers
(memarch sums them) and its per-layer term is about k times this one (Mixtral's form, with
P from the renormalised top-k weights), so with L MoM layers memarch's default pulls the
router about L / k times harder (12x for model=mom's 24 layers at top-2; 1x for the 2-layer
tiny models): set ``aux_loss_coef = 0.01 * k / L`` to match it. With top-1 the renormalised
weight is always 1, so only the balance loss trains the router (as in the MoM code; Switch
scales by the unnormalised probability).

State ``MoMState(S [B, M, H, K, V], shared [B, H, K, V] | None, conv [B, conv_size-1, C] |
None, pos [B])`` (``MoMLinearState``, the same fields, for ``cell="linear"``: each cell
refuses the other's state): the memories, the shared memory and the window of the last conv_size - 1
q/k/v projections (C = H K + (M + 1) H (K + V) with the shared memory, H K + M H (K + V)
without, plus H K routing-key channels for ``route_by="key_query"`` without the shared
memory). fp32 (fp64 for fp64 input); constant size.

Defaults are the paper's (MoM repo ``training/configs/mom.json``): 4 memories, top-2, a
shared memory, gated delta cell, 4 heads, conv 4, aux loss scale 0.01, expand_v 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch.kernels import delta_rule, linear_attn
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
from memarch.modules.conv import causal_conv_step
from memarch.modules.norm import RMSNorm

__all__ = ["MoM", "MoMLinearState", "MoMState"]

CELLS = ("gated_delta", "linear")
ROUTE_BY = ("token", "key_query")
_L2_EPS = 1e-6


class MoMState(NamedTuple):
    S: torch.Tensor                # [B, M, H, K, V] the routed memories (fp32)
    shared: torch.Tensor | None    # [B, H, K, V] the shared memory, or None
    conv: torch.Tensor | None      # [B, conv_size-1, C] last q|k|v projections, or None
    pos: torch.Tensor              # [B] int64 tokens seen


class MoMLinearState(MoMState):
    """The state of a MoM with ``cell="linear"``: ``MoMState``'s fields, its own type. The two
    cells' states have the same shapes but not the same meaning (a linear memory summed
    without a normaliser vs a delta-rule memory over unit keys), so each cell refuses the
    other's state (``Mixer._check_state`` compares types)."""
    __slots__ = ()


class MoM(Mixer):
    """Args:
        n_heads: heads (paper: 4).
        head_dim: q/k width per head (default d_model // n_heads).
        expand_v: v width per head = head_dim * expand_v (paper: 1).
        n_memories: routed memories M (paper: 4).
        topk: memories per token (paper: 2).
        cell: "gated_delta" (paper's main model) or "linear" (gated linear attention).
        shared_memory: an extra memory every token writes and reads (paper: on).
        aux_loss_coef: scale of the load-balancing loss (paper: 0.01); 0 returns None.
        conv_size: width of the causal conv on q/k/v (paper: 4); 0 = none.
        norm_eps: eps of the output RMSNorm.
        impl: kernel implementation ("auto", "torch", "naive", "triton").
        route_by: "token" (paper: the router reads x_t, and one routing picks the memories a
            token writes and reads) or "key_query" (writes routed by the token's key, reads
            by its query, through one router W_r [M, H K]; module docstring).
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None, n_heads: int = 4,
                 head_dim: int | None = None, expand_v: float = 1.0, n_memories: int = 4,
                 topk: int = 2, cell: str = "gated_delta", shared_memory: bool = True,
                 aux_loss_coef: float = 0.01, conv_size: int = 4, norm_eps: float = 1e-6,
                 impl: str = "auto", route_by: str = "token"):
        super().__init__(d_model, layer_idx=layer_idx)
        name = type(self).__name__
        check_positive_int(name, "n_heads", n_heads)
        check_positive_int(name, "n_memories", n_memories)
        check_positive_int(name, "topk", topk)
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"{name}: n_heads={n_heads} must divide d_model={d_model} "
                                 "(or give head_dim)")
            head_dim = d_model // n_heads
        check_positive_int(name, "head_dim", head_dim)
        if topk > n_memories:
            raise ValueError(f"{name}: topk must be <= n_memories={n_memories}, got {topk}")
        check_choice(name, "cell", cell, CELLS)
        expected = f"> 0 with head_dim * expand_v an int (head_dim={head_dim})"
        check_number(name, "expand_v", expand_v, minimum=0, min_open=True, expected=expected)
        v_dim = head_dim * expand_v
        if v_dim != int(v_dim):
            raise ValueError(f"{name}: expand_v must be {expected}, got expand_v={expand_v!r}")
        check_int(name, "conv_size", conv_size, minimum=0)
        # aux_loss <= aux_loss_coef * n_memories, computed in fp32: keep it finite there
        check_number(name, "aux_loss_coef", aux_loss_coef, minimum=0,
                     maximum=torch.finfo(torch.float32).max / n_memories,
                     expected="a number >= 0 (with aux_loss_coef * n_memories finite in fp32)")
        check_bool(name, "shared_memory", shared_memory)
        check_number(name, "norm_eps", norm_eps, minimum=0, min_open=True)
        check_choice(name, "impl", impl, IMPLS)
        check_choice(name, "route_by", route_by, ROUTE_BY)
        H, K, V = n_heads, head_dim, int(v_dim)
        E = n_memories + int(shared_memory)                       # memories with a state
        # key_query without the shared memory: an own routing-key channel group (H K)
        R = H * K if route_by == "key_query" and not shared_memory else 0
        C = H * K + E * H * (K + V) + R
        router_in = d_model if route_by == "token" else H * K
        args = {"d_model": d_model, "n_heads": n_heads, "head_dim": head_dim,
                "expand_v": expand_v, "n_memories": n_memories, "conv_size": conv_size}
        check_scalars(name, "parameters", d_model * (C + 2 * E * H + 2 * H * V)
                      + router_in * n_memories + C * conv_size, args)
        check_scalars(name, "state scalars per sequence", E * H * K * V
                      + max(conv_size - 1, 0) * C, args)
        self.n_heads, self.head_dim, self.v_dim = n_heads, head_dim, int(v_dim)
        self.n_memories, self.topk, self.cell = n_memories, topk, cell
        self.shared_memory, self.aux_loss_coef = shared_memory, float(aux_loss_coef)
        self.conv_size, self.impl, self.route_by = conv_size, impl, route_by
        self.n_channels = C                         # q | k per memory | v per memory | [rk]
        self.router = nn.Linear(router_in, n_memories, bias=False)   # W_r [M, D | H K]
        self.qkv_proj = nn.Linear(d_model, self.n_channels, bias=False)
        self.a_proj = nn.Linear(d_model, E * H, bias=False)       # decay input per memory
        self.b_proj = nn.Linear(d_model, E * H, bias=False) if cell == "gated_delta" else None
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.conv_weight = (nn.Parameter(torch.empty(self.n_channels, 1, conv_size))
                            if conv_size else None)
        self.g_proj = nn.Linear(d_model, H * V, bias=False)
        self.o_norm = RMSNorm(V, eps=norm_eps)
        self.o_proj = nn.Linear(H * V, d_model, bias=False)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        """Mamba-2 / Gated DeltaNet decay init (as the MoM code): A ~ U(0, 16), dt log-uniform
        in [1e-3, 0.1], dt_bias = softplus^-1(dt); conv weights U(+-1/sqrt(width))."""
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1e-4, 16).log())
            dt = torch.exp(torch.rand_like(self.dt_bias) * (math.log(0.1) - math.log(1e-3))
                           + math.log(1e-3)).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            if self.conv_weight is not None:
                bound = self.conv_size ** -0.5
                self.conv_weight.uniform_(-bound, bound)

    # -- contract ----------------------------------------------------------------------
    def state_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if x_dtype == torch.float64 else torch.float32

    def init_state(self, batch_size, *, device=None, dtype=None) -> MoMState:
        dtype = dtype or torch.float32
        H, K, V, M = self.n_heads, self.head_dim, self.v_dim, self.n_memories

        def z(*shape):
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)
        kind = MoMState if self.cell == "gated_delta" else MoMLinearState
        return kind(z(M, H, K, V), z(H, K, V) if self.shared_memory else None,
                        z(self.conv_size - 1, self.n_channels) if self.conv_size else None,
                        torch.zeros(batch_size, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        E = self.n_memories + int(self.shared_memory)
        conv = max(self.conv_size - 1, 0) * self.n_channels
        return E * self.n_heads * self.head_dim * self.v_dim + conv

    # -- math ---------------------------------------------------------------------------
    def route(self, x: torch.Tensor):
        """Router input [B, T, D] (x, route_by="token") or [B, T, H K] (a routing feature,
        "key_query") -> (probs [B, T, M] fp32, routed [B, T, M] bool, weights [B, T, M]
        renormalised over the top-k, 0 elsewhere)."""
        probs = torch.softmax(self.router(x).float(), dim=-1)             # [B, T, M]
        w, idx = probs.topk(self.topk, dim=-1)                              # [B, T, k]
        w = w / w.sum(-1, keepdim=True)
        routed = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, True)
        return probs, routed, torch.zeros_like(probs).scatter(-1, idx, w)

    def routings(self, x: torch.Tensor, state: MoMState | None = None):
        """The routings of the tokens of x [B, T, D] from ``state`` (None: a fresh start):
        ``(write, read)``, each ``route``'s (probs, routed, weights) [B, T, M]. For
        route_by="token" both are ``route(x)`` (the same tuple); for "key_query" the write
        routing is by the tokens' keys r^k and the read routing by their queries r^q, which
        depend on the conv window, so a call continuing a sequence needs its state."""
        self._check_input(x)
        if state is not None:
            self._check_state(x, state)
        if self.route_by == "token":
            r = self.route(x)
            return r, r
        if state is None:
            state = self.init_state(x.shape[0], device=x.device,
                                    dtype=self.state_dtype(x.dtype))
        q, k, _, rk, _ = self._features(x, state.conv)
        return self._key_query_routings(x, q, k, rk)

    def _features(self, x: torch.Tensor, conv: torch.Tensor | None):
        """q [B, T, 1, H, K], k [B, T, E, H, K], v [B, T, E, H, V], the routing keys
        [B, T, H, K] | None and the new conv window, in the state dtype (before L2)."""
        B, T, _ = x.shape
        H, K, V, M = self.n_heads, self.head_dim, self.v_dim, self.n_memories
        E = M + int(self.shared_memory)
        ct = self.state_dtype(x.dtype)
        u = self.qkv_proj(x).to(ct)                                          # [B, T, C]
        if self.conv_weight is not None:
            u, conv = causal_conv_step(u, conv, self.conv_weight.to(ct))
        u = F.silu(u)
        a, b = H * K, H * K + E * H * K
        q = u[..., :a].view(B, T, 1, H, K)                                   # shared query
        k = u[..., a:b].view(B, T, E, H, K)
        v = u[..., b:b + E * H * V].view(B, T, E, H, V)
        c = b + E * H * V
        rk = u[..., c:].view(B, T, H, K) if self.n_channels > c else None   # own routing key
        return q, k, v, rk, conv

    def _key_query_routings(self, x, q, k, rk):
        """route_by="key_query": (write routing by l2(k^0 | rk), read routing by l2(q)),
        features [B, T, H K] in x's dtype through the one router."""
        B, T = x.shape[:2]
        key = k[:, :, self.n_memories] if rk is None else rk                # [B, T, H, K]
        def feat(t):
            return F.normalize(t, dim=-1, eps=_L2_EPS).reshape(B, T, -1).to(x.dtype)
        return self.route(feat(key)), self.route(feat(q[:, :, 0]))

    def balance_loss(self, probs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor | None:
        """Switch-style load balancing over the call's tokens (module docstring)."""
        if self.aux_loss_coef == 0:
            return None
        M = self.n_memories
        f = routed.flatten(0, 1).float().mean(0) / self.topk                # [M], sums to 1
        P = probs.flatten(0, 1).mean(0)                                      # [M]
        return self.aux_loss_coef * M * (f * P).sum()

    def _forward(self, x: torch.Tensor, state: MoMState) -> MixerOutput:
        B, T, _ = x.shape
        H, K, V, M = self.n_heads, self.head_dim, self.v_dim, self.n_memories
        E = M + int(self.shared_memory)
        ct = self.state_dtype(x.dtype)
        q, k, v, rk, conv = self._features(x, state.conv)

        if self.route_by == "token":
            probs, routed, w = self.route(x)                                 # [B, T, M]
            routed_r, aux = routed, self.balance_loss(probs, routed)
        else:
            (probs, routed, _), (probs_r, routed_r, w) = self._key_query_routings(x, q, k, rk)
            aux = self.balance_loss(probs, routed)                           # write routing
            if aux is not None:
                aux = (aux + self.balance_loss(probs_r, routed_r)) / 2      # and read routing
        on = torch.ones(B, T, E - M, dtype=torch.bool, device=x.device)
        live = torch.cat([routed, on], -1)[..., None]                        # [B, T, E, 1] write
        read = live if routed_r is routed else torch.cat([routed_r, on], -1)[..., None]
        mix = torch.cat([w, on.to(w.dtype)], -1).to(ct)                      # [B, T, E] read
        g = -self.A_log.to(ct).exp() * F.softplus(
            self.a_proj(x).to(ct).view(B, T, E, H) + self.dt_bias.to(ct))    # [B, T, E, H]
        S0 = state.S if state.shared is None else torch.cat([state.S, state.shared[:, None]], 1)
        if self.cell == "gated_delta":
            q, k = F.normalize(q, dim=-1, eps=_L2_EPS), F.normalize(k, dim=-1, eps=_L2_EPS)
        # an unrouted token is an exact identity step: no decay (g = 0), no write (k = v = 0,
        # beta = 0), so the memory's state keeps its bits; selecting (not multiplying) keeps
        # a non-finite token out of the memories it is not routed to
        g = torch.where(live, g, 0.0)
        k = torch.where(live[..., None], k, 0.0)
        v = torch.where(live[..., None], v, 0.0)
        q = q.expand(B, T, E, H, K)                                          # no copy
        if self.cell == "gated_delta":
            beta = torch.where(live, torch.sigmoid(self.b_proj(x).to(ct).view(B, T, E, H)), 0.0)
            o, S = delta_rule(_heads(q), _heads(k), _heads(v), _heads(beta), g=_heads(g),
                              initial_state=S0.flatten(1, 2), output_final_state=True,
                              impl=self.impl)
        else:
            o, (S, _) = linear_attn(_heads(q), _heads(k), _heads(v), g=_heads(g),
                                    initial_state=S0.flatten(1, 2), output_final_state=True,
                                    impl=self.impl)
        o = o.view(B, T, E, H, V)                    # q_t^T S^m_t for every memory m
        S = S.view(B, E, H, K, V)
        o = torch.where(read[..., None], o * mix[..., None, None], 0.0).sum(2)   # [B, T, H, V]
        y = self.o_norm(o) * F.silu(self.g_proj(x).to(ct).view(B, T, H, V))
        y = self.o_proj(y.reshape(B, T, H * V).to(x.dtype))
        new = type(state)(S[:, :M], S[:, M] if self.shared_memory else None, conv,
                          state.pos + T)
        return MixerOutput(y, new, aux)


def _heads(t: torch.Tensor) -> torch.Tensor:
    """[B, T, E, H, ...] -> [B, T, E H, ...]: the memories as groups of heads."""
    return t.flatten(2, 3)
