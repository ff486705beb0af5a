"""Titans: neural long-term memory that learns at test time, and the MAC / MAG / MAL
architectures. Paper: Behrouz, Zhong, Mirrokni, "Titans: Learning to Memorize at Test Time"
(2501.00663).

Neural memory (``NeuralMemory``), per head, for token t with
q_t, k_t, v_t = L2(conv(SiLU(x_t W_q))), L2(conv(SiLU(x_t W_k))), conv(SiLU(x_t W_v)):

    loss      l(M; k_t, v_t) = || M(k_t) - v_t ||^2                       (associative loss)
    surprise  S_t = eta_t S_{t-1} - theta_t grad_M l(M_{c(t)}; k_t, v_t)   (momentum)
    update    M_t = (1 - alpha_t) M_{t-1} + S_t                           (forgetting)
    read      y_t = M_{c(t)}(q_t)                                          (no update)

where M_{c(t)} are the weights at the end of the update chunk before t's chunk: tokens are
grouped in chunks of C (``chunk_size``, part of the model's math), every gradient inside a
chunk is taken at the chunk's starting weights (the paper's parallel training, section
3.2), and the read is strictly causal. theta_t = max_lr * sigmoid(.), eta_t = sigmoid(.),
alpha_t = sigmoid(.) are linear functions of x_t per head (``gates="token"``), or of the
chunk's mean input (``gates="chunk"``, the paper's cheaper option).

The chunk's end weights are a few matmuls, never per-token weight copies: for a linear layer
of the memory the per-token gradient is an outer product x_u^T delta_u (its input times its
back-propagated error), so with A_t = prod_{s<=t} (1 - alpha_s), E_t = prod_{s<=t} eta_s
(inside the chunk) the recurrences close to

    S_C = E_C S_0 - X^T diag(theta_u E_C / E_u) Delta
    M_C = A_C M_0 + (sum_t (A_C / A_t) E_t) S_0 - X^T diag(c) Delta,
          c_u = theta_u sum_{t >= u} (A_C / A_t) (E_t / E_u)

computed from log-space segment sums (no division, no cumulative product underflow).
The per-layer gradients are explicit (closed form back-propagation through the MLP, its
SiLU and the optional norm), and autograd trains the outer model through them: the
second-order path through the memory update, as in the paper. The update over complete
chunks is the op ``memarch.kernels.neural_memory.neural_memory_update`` (this closed form in
its ``torch_chunk.py``, the token-by-token spec in ``naive.py``); ``scan`` keeps the pending
tokens of the incomplete chunk and their reads.

Memory: an MLP per head, ``depth`` layers of widths head_dim -> head_dim*expansion -> ...
-> head_dim with SiLU between layers (depth 1: a linear matrix memory). ``residual_norm``
wraps it as M(k) = k + RMSNorm(MLP(k)) (a parameter-free RMS norm). The initial weights are
learned parameters; memory weights and momentum are fp32 (fp64 for fp64 inputs).

Output: o_t = W_o (RMSNorm(y_t) * SiLU(x_t W_g)), the paper's "normalisation and gating with
a linear layer before the output projection" (section 4.4).

State: the memory weights and momentum after the last completed chunk, the keys, values and
gate logits of the pending tokens of the incomplete chunk (decode reads with the last
completed weights and updates when the chunk fills), the conv window, and positions. Its
size does not depend on the tokens seen. Positions are checked against what the rest of the
state implies (off CUDA): pos % chunk_size is the number of pending tokens it holds, and
MAC's / MAG's sub-states advance with their own ``pos``; a hand-edited pos is refused.
Sequences of a batch at different positions (their chunk boundaries differ) are run one row
at a time.

Choices where the paper gives no value (the defaults):
* ``max_lr=0.1``: with unit-norm keys and the loss's factor 2, theta = 0.5 would overwrite
  a linear memory's association in one step; a step of at most 0.1 writes in a few.
* ``chunk_size=64`` (titans-pytorch's example), ``expansion=4`` (titans-pytorch and the
  usual MLP ratio), SiLU in the memory MLP (the activation the paper uses for q/k/v).
* Initial gates (``theta_init``, ``eta_init``, ``alpha_init``; the biases of the gate
  projection): theta = 1e-3, eta = 0.5, alpha = 1e-3. All gradients of a chunk are taken
  at the same weights and add up, and momentum sums a geometric series: C identical tokens
  move the memory by about 2 C theta / (1 - eta) times their gradient, which must stay
  below ~1 for the inner descent to be stable (theta = 0.05, eta = 0.9 and C = 16 diverge
  within a few chunks of filler tokens). The model learns larger steps where they pay
  (theta is data dependent, up to max_lr); small models on short tasks learn faster from
  a larger theta_init (configs/experiment/titans_*_tiny.yaml). alpha = 1e-3 keeps what the
  memory writes over thousands of tokens until training says otherwise.
  ``init_own_parameters`` re-applies these after ``MemLM``'s generic init.
* The initial memory is empty, M_0(k) = 0: its last layer starts at zero (earlier layers
  ~ N(0, 1/fan_in)), so a read returns only what was written; the output's RMS norm then
  makes even the first small writes visible to the model. Training moves it (learned).

Where titans-pytorch differs: it normalises the loss by the head dimension (mean, not sum)
and uses GELU; we follow the paper's ||.||^2. Its MAC writes the memory before attending
(titans-pytorch issue #32); ours attends first, as the paper does (``MemoryAsContext``).

MAC, MAG and MAL: see ``MemoryAsContext``, ``MemoryAsGate``; MAL is the layer stack
``NeuralMemory`` then windowed ``Attention`` (``configs/model/titans_mal.yaml``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from memarch.kernels.neural_memory import memory_apply, neural_memory_update, read_after_write
from memarch.mixers.attention import Attention, _finite_kv
from memarch.mixers.base import (
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
from memarch.modules.rotary import apply_rotary

# memory_apply (a read M(x)) lives with the update op in memarch.kernels.neural_memory; it
# stays importable from here
__all__ = ["NeuralMemory", "NeuralMemoryState", "MemoryAsContext", "MemoryAsContextState",
           "MemoryAsGate", "MemoryAsGateState"]

_L2_EPS = 1e-12
MAX_DEPTH = 64           # NeuralMemory(depth=...): layers of the memory MLP
_NORM_EPS = 1e-6


def _l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_L2_EPS)


def _silu_conv(u: torch.Tensor, conv: torch.Tensor, w: torch.Tensor | None, ct):
    """SiLU then the depthwise causal conv over [window, new]: u [B, T, C] (a projection),
    conv [B, K-1, C] the window. Returns (out [B, T, C] in ct, the new window)."""
    u = F.silu(u).to(ct)
    return (u, conv) if w is None else causal_conv_step(u, conv, w.to(ct))


class NeuralMemoryState(NamedTuple):
    weights: tuple        # per layer [B, H, d_in, d_out]: memory after the last completed chunk
    momentum: tuple | None  # per layer, the surprise S (None without momentum)
    pend_k: torch.Tensor  # [B, H, C-1, Dh] keys of the pending (incomplete chunk) tokens
    pend_v: torch.Tensor  # [B, H, C-1, Dh] their values
    pend_g: torch.Tensor  # [B, H, C-1, 3] their gate logits (theta, eta, alpha)
    conv: torch.Tensor    # [B, K-1, 3 H Dh] SiLU(x W_qkv) of the last K-1 tokens
    pos: torch.Tensor     # [B] int64 tokens seen


class NeuralMemory(Mixer):
    """Titans' neural long-term memory as a mixer; see the module docstring.

    Args:
        d_model: model width.
        n_heads: memory heads (default: d_model // 64, at least 1).
        head_dim: key/value width per head (default: d_model // n_heads).
        depth: MLP layers of the memory (1: linear matrix memory; 2: the paper's deep memory).
        expansion: hidden width factor of a deep memory.
        chunk_size: update chunk C (gradients inside a chunk at its starting weights).
        momentum: the surprise momentum eta (off: S_t = -theta_t grad).
        forgetting: the forgetting gate alpha (off: alpha = 0).
        max_lr: theta_t = max_lr * sigmoid(x_t w_theta + b_theta).
        gates: "token" (theta, eta, alpha per token) or "chunk" (from the chunk's mean input).
        conv_size: depthwise causal conv width on q, k, v (0: none).
        residual_norm: memory M(k) = k + RMSNorm(MLP(k)) instead of MLP(k).
        max_grad_norm: clamp each token's inner gradient to this norm (None: no clamp).
        theta_init, eta_init, alpha_init: the gates' values at initialisation (the gate
            projection's biases; its weights start small): 0 < theta_init < max_lr,
            0 < eta_init < 1, 0 < alpha_init < 1.
        read_after_write: False (default): token t reads the weights from before its update
            chunk (the paper's parallel form for the reads M*(q)). True: token t reads M_t,
            the weights after its own write (tokens 1..t of its chunk, their gradients at
            the chunk's start): the paper's o_t = y_t * M*_t(y_t) of MAC, causal per token
            (``memarch.kernels.neural_memory.read_after_write``). Linear memory (depth 1)
            and per-token gates only.
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None,
                 n_heads: int | None = None, head_dim: int | None = None, depth: int = 2,
                 expansion: int = 4, chunk_size: int = 64, momentum: bool = True,
                 forgetting: bool = True, max_lr: float = 0.1, gates: str = "token",
                 conv_size: int = 4, residual_norm: bool = False,
                 max_grad_norm: float | None = None, theta_init: float = 1e-3,
                 eta_init: float = 0.5, alpha_init: float = 1e-3,
                 read_after_write: bool = False):
        super().__init__(d_model, layer_idx=layer_idx)
        own = "NeuralMemory"
        n_heads = max(1, d_model // 64) if n_heads is None else n_heads
        check_positive_int(own, "n_heads", n_heads)
        if head_dim is None and n_heads > d_model:
            raise ValueError(f"{own}: n_heads={n_heads} must be <= d_model={d_model} (head_dim "
                             f"= d_model // n_heads), or give head_dim")
        head_dim = d_model // n_heads if head_dim is None else head_dim
        check_positive_int(own, "head_dim", head_dim)
        # the paper's memories have 1-4 layers; each layer is a Parameter per head, so a depth in
        # the millions would build millions of modules before any size check could fire
        check_int(own, "depth", depth, minimum=1, maximum=MAX_DEPTH)
        check_positive_int(own, "expansion", expansion)
        check_positive_int(own, "chunk_size", chunk_size)
        check_int(own, "conv_size", conv_size, minimum=0)
        check_bool(own, "momentum", momentum)
        check_bool(own, "forgetting", forgetting)
        check_bool(own, "residual_norm", residual_norm)
        max_lr = check_number(own, "max_lr", max_lr, minimum=0, min_open=True,  # fp32-finite
                              maximum=torch.finfo(torch.float32).max,
                              expected="a number > 0 (finite in fp32)")
        for name, val, hi in (("theta_init", theta_init, max_lr), ("eta_init", eta_init, 1.0),
                              ("alpha_init", alpha_init, 1.0)):
            check_number(own, name, val, minimum=0, maximum=hi, min_open=True, max_open=True)
        check_choice(own, "gates", gates, ("token", "chunk"))
        check_bool(own, "read_after_write", read_after_write)
        if read_after_write and (depth != 1 or gates != "token"):
            raise ValueError(f"{own}: read_after_write=True needs depth=1 and gates='token' "
                             f"(a closed form for the linear memory; a partial chunk's "
                             f"chunk-mean gates would change as it fills), got depth={depth}, "
                             f"gates={gates!r}")
        max_grad_norm = check_number(own, "max_grad_norm", max_grad_norm, minimum=0,
                                     min_open=True, none_ok=True)
        # the memory MLP's weights (widths Dh -> Dh e -> ... -> Dh), counted without building
        # the list of widths (depth = 10**12 must be refused, not a MemoryError)
        hid = head_dim * expansion
        n_mem = n_heads * (head_dim * head_dim if depth == 1
                           else 2 * head_dim * hid + (depth - 2) * hid * hid)
        HD = n_heads * head_dim
        args = {"d_model": d_model, "n_heads": n_heads, "head_dim": head_dim, "depth": depth,
                "expansion": expansion}
        check_scalars(own, "parameters", n_mem + 5 * d_model * HD + 3 * HD * conv_size,
                      {**args, "conv_size": conv_size})
        check_scalars(own, "state scalars per sequence",
                      2 * n_mem + n_heads * (chunk_size - 1) * (2 * head_dim + 3)
                      + max(conv_size - 1, 0) * 3 * HD,
                      {**args, "chunk_size": chunk_size, "conv_size": conv_size})
        self.n_heads, self.head_dim, self.depth = n_heads, head_dim, depth
        self.expansion, self.chunk_size = expansion, chunk_size
        self.momentum, self.forgetting = momentum, forgetting
        self.max_lr, self.gates = max_lr, gates
        self.conv_size, self.residual_norm = conv_size, residual_norm
        self.max_grad_norm, self.read_after_write = max_grad_norm, read_after_write
        self.theta_init, self.eta_init, self.alpha_init = theta_init, eta_init, alpha_init
        H, Dh = n_heads, head_dim
        self.qkv_proj = nn.Linear(d_model, 3 * H * Dh, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(3 * H * Dh, 1, max(conv_size, 1)))
        if conv_size == 0:
            self.conv_weight = None
        self.gate_proj = nn.Linear(d_model, 3 * H)          # theta, eta, alpha logits per head
        widths = [Dh] + [Dh * expansion] * (depth - 1) + [Dh]
        self.memory_init = nn.ParameterList(
            nn.Parameter(torch.empty(H, a, b)) for a, b in zip(widths, widths[1:]))
        self.out_norm = RMSNorm(Dh, eps=_NORM_EPS)
        self.out_gate = nn.Linear(d_model, H * Dh, bias=False)
        self.o_proj = nn.Linear(H * Dh, d_model, bias=False)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        H = self.n_heads
        with torch.no_grad():
            nn.init.normal_(self.gate_proj.weight, std=0.02)
            p = (self.theta_init / self.max_lr, self.eta_init, self.alpha_init)
            for j, b in enumerate(p):                     # sigmoid(logit(p)) = p
                self.gate_proj.bias[j * H:(j + 1) * H] = math.log(b / (1 - b))
            if self.conv_weight is not None:
                K = self.conv_size
                nn.init.uniform_(self.conv_weight, -K ** -0.5, K ** -0.5)
            for w in self.memory_init[:-1]:
                nn.init.normal_(w, std=w.shape[1] ** -0.5)
            nn.init.zeros_(self.memory_init[-1])           # the empty memory: M_0(k) = 0

    # -- state -------------------------------------------------------------------------
    def state_dtype(self, x_dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if x_dtype == torch.float64 else torch.float32

    def init_state(self, batch_size, *, device=None, dtype=None) -> NeuralMemoryState:
        dtype = dtype or torch.float32
        B, H, Dh, C = batch_size, self.n_heads, self.head_dim, self.chunk_size
        ws = tuple(w.to(device=device, dtype=dtype).unsqueeze(0).expand(B, *w.shape)
                   for w in self.memory_init)
        mom = (tuple(torch.zeros(B, *w.shape, device=device, dtype=dtype)
                     for w in self.memory_init) if self.momentum else None)

        def z(*shape):
            return torch.zeros(B, *shape, device=device, dtype=dtype)
        return NeuralMemoryState(ws, mom, z(H, C - 1, Dh), z(H, C - 1, Dh), z(H, C - 1, 3),
                                 z(max(self.conv_size - 1, 0), 3 * H * Dh),
                                 torch.zeros(B, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        H, Dh, C = self.n_heads, self.head_dim, self.chunk_size
        w = sum(p.numel() for p in self.memory_init)
        return (w * (2 if self.momentum else 1) + H * (C - 1) * (2 * Dh + 3)
                + max(self.conv_size - 1, 0) * 3 * H * Dh)

    # -- pieces shared with MemoryAsContext ----------------------------------------------
    def qkv(self, x: torch.Tensor, conv: torch.Tensor, ct: torch.dtype):
        """q, k, v [B, H, T, Dh] (ct) and the new conv window, from x [B, T, D]."""
        B, T, _ = x.shape
        H, Dh = self.n_heads, self.head_dim
        u, new_conv = _silu_conv(self.qkv_proj(x), conv, self.conv_weight, ct)  # [B, T, 3HDh]
        q, k, v = u.view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)           # [B, H, T, Dh] each
        return _l2(q), _l2(k), v, new_conv

    def read(self, ws, q: torch.Tensor) -> torch.Tensor:
        """M(q) for q [B, H, N, Dh] with weights ``ws``."""
        return memory_apply(ws, q, self.residual_norm)

    def output(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o = W_o (RMSNorm(y) * SiLU(x W_g)) for reads y [B, H, T, Dh] and inputs x [B, T, D]."""
        B, H, T, Dh = y.shape
        y = self.out_norm(y.transpose(1, 2)).reshape(B, T, H * Dh).to(x.dtype)
        return self.o_proj(y * F.silu(self.out_gate(x)))

    def _gates(self, g: torch.Tensor):
        """g [B, H, n, C, 3] gate logits of n complete chunks -> the op's gates: theta (step
        size), log eta (None without momentum), log(1 - alpha) (None without forgetting)."""
        theta = self.max_lr * torch.sigmoid(g[..., 0])                     # [B, H, n, C]
        log_eta = F.logsigmoid(g[..., 1]) if self.momentum else None
        log_keep = F.logsigmoid(-g[..., 2]) if self.forgetting else None
        return theta, log_eta, log_keep

    def scan(self, state: NeuralMemoryState, q, k, v, g):
        """The memory over new tokens: reads of q and writes of (k, v) with gate logits g.

        q [B, H, T, Dh] or None (write only), k, v [B, H, T, Dh], g [B, H, T, 3] (ct).
        Returns the reads [B, H, T, Dh] (None if q is None) and the new memory fields
        (weights, momentum, pend_k, pend_v, pend_g).

        The complete chunks go to the op ``neural_memory_update`` (one call for the chunks
        whose reads are all new tokens, one more for a first chunk that completes pending
        tokens: its reads are only the new ones); the incomplete chunk's tokens stay
        pending and its new queries read the last weights (``read``)."""
        B, H, T, Dh = k.shape
        C = self.chunk_size
        n = int(state.pos[0]) % C                                          # pending tokens
        k = torch.cat([state.pend_k[:, :, :n], k], 2)                      # [B, H, n+T, Dh]
        v = torch.cat([state.pend_v[:, :, :n], v], 2)
        g = torch.cat([state.pend_g[:, :, :n], g], 2)
        total = n + T
        nfull = total // C
        ws, mom = state.weights, state.momentum
        reads = []
        after = self.read_after_write and q is not None
        if after:
            # chunk by chunk (complete or the open one): reads after each token's own write,
            # from the chunk's starting weights; then the complete chunk's update
            for c0 in range(0, total, C):
                c1 = min(c0 + C, total)
                kc, vc, gc = k[:, :, c0:c1], v[:, :, c0:c1], g[:, :, c0:c1]
                theta, log_eta, log_keep = self._gates(gc)                   # [B, H, L]
                lo = max(c0, n)                                   # the new tokens read
                reads.append(read_after_write(q[:, :, lo - n:c1 - n], kc, vc, theta, log_eta,
                                              log_keep, ws, mom, self.residual_norm,
                                              self.max_grad_norm))
                if c1 - c0 == C:
                    one = lambda t: None if t is None else t.unsqueeze(2)
                    _, ws, mom = neural_memory_update(
                        None, one(kc), one(vc), one(theta), one(log_eta), one(log_keep),
                        weights=ws, momentum=mom, residual_norm=self.residual_norm,
                        max_grad_norm=self.max_grad_norm, impl="torch")
            q = q[:, :, T:]                                                  # all read
        if nfull and not after:
            gfull = g[:, :, :nfull * C].unflatten(2, (nfull, C))           # [B, H, nf, C, 3]
            if self.gates == "chunk":
                gfull = gfull.mean(3, keepdim=True).expand(B, H, nfull, C, 3)
            theta, log_eta, log_keep = self._gates(gfull)
            kf = k[:, :, :nfull * C].unflatten(2, (nfull, C))              # [B, H, nf, C, Dh]
            vf = v[:, :, :nfull * C].unflatten(2, (nfull, C))
            first = 1 if n else 0            # a first chunk that completes pending tokens
            sizes = [first, nfull - first]
            parts = [t.split(sizes, 2) if t is not None else (None, None)
                     for t in (kf, vf, theta, log_eta, log_keep)]
            if q is not None:   # the new tokens' queries: first chunk, full chunks, the rest
                qsz = [first * (C - n), (nfull - first) * C]
                q1, qm, q = q.split([*qsz, T - sum(qsz)], 2)
                qparts = (q1.unsqueeze(2), qm.unflatten(2, (nfull - first, C)))
            else:
                qparts = (None, None)
            for j in range(2):
                if not sizes[j]:
                    continue
                r, ws, mom = neural_memory_update(
                    qparts[j], *(p[j] for p in parts), weights=ws, momentum=mom,
                    residual_norm=self.residual_norm, max_grad_norm=self.max_grad_norm,
                    impl="torch")
                if r is not None:
                    reads.append(r.flatten(2, 3))
        if q is not None and q.shape[2]:
            reads.append(self.read(ws, q))
        r = total - nfull * C                                              # new pending
        pad = C - 1 - r

        def pend(t):
            tail = t[:, :, nfull * C:]
            return torch.cat([tail, tail.new_zeros(B, H, pad, t.shape[-1])], 2)
        y = torch.cat(reads, 2) if reads else None
        return y, (ws, mom, pend(k), pend(v), pend(g))

    # -- state checks (past the generic one) ---------------------------------------------
    def _check_state(self, x: torch.Tensor, state) -> None:
        super()._check_state(x, state)
        self.check_positions(state)

    def check_positions(self, state: NeuralMemoryState, owner: str | None = None,
                        prefix: str = "") -> None:
        """What ``pos`` implies about the rest of the state: the pending slots (``pend_*``)
        hold exactly the pos % chunk_size tokens of the incomplete chunk, zeros after them
        (a pending token's gate logits are never all zero: the gate biases are not). A
        hand-edited ``pos`` therefore disagrees with them and is refused, naming the field.
        Skipped on CUDA (a host sync per call) and for chunk_size 1 (nothing pending)."""
        C, pos = self.chunk_size, state.pos
        if C == 1 or pos.device.type in ("cuda", "meta") or pos.numel() == 0:
            return
        held = (state.pend_g != 0).any(-1).any(1)                     # [B, C-1] slots in use
        want = torch.arange(C - 1, device=pos.device) < (pos % C)[:, None]
        if not bool((held == want).all()):
            raise ValueError(
                f"{owner or self._owner()}: state field '{prefix}pos' = {pos.tolist()} "
                f"disagrees with the state's pending tokens ({held.sum(1).tolist()} per row; "
                f"pos % chunk_size={C} must equal that count): pass the state this mixer "
                "returned, unedited")

    # -- forward -----------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, state: NeuralMemoryState) -> MixerOutput:
        if x.shape[0] > 1 and not bool((state.pos == state.pos[0]).all()):
            return _per_row(self, x, state)
        B, T, _ = x.shape
        ct = self.state_dtype(x.dtype)
        q, k, v, conv = self.qkv(x, state.conv, ct)
        g = self.gate_proj(x).to(ct).view(B, T, 3, self.n_heads).permute(0, 3, 1, 2)
        y, (ws, mom, pk, pv, pg) = self.scan(state, q, k, v, g)           # y [B, H, T, Dh]
        new = NeuralMemoryState(ws, mom, pk, pv, pg, conv, state.pos + T)
        return MixerOutput(self.output(y, x), new, None)


def _per_row(mixer: Mixer, x: torch.Tensor, state):
    """Sequences at different positions (chunk boundaries differ): one row at a time."""
    from memarch import state as st
    outs = [mixer._forward(x[i:i + 1], st.select(state, [i])) for i in range(x.shape[0])]
    y = torch.cat([o.y for o in outs], 0)
    new = torch.utils._pytree.tree_map(
        lambda *ts: torch.cat(ts, 0) if isinstance(ts[0], torch.Tensor) else ts[0],
        *[o.state for o in outs])
    return MixerOutput(y, new, None)


def _same_positions(owner: str, state, *fields: str) -> None:
    """Each sub-state's ``pos`` (``fields``, e.g. "memory") advances with the state's own
    ``pos``: any difference is a hand-edited state. Skipped on CUDA (no host sync)."""
    pos = state.pos
    if pos.device.type in ("cuda", "meta"):
        return
    for f in fields:
        sub = getattr(state, f).pos
        if not torch.equal(sub, pos):
            raise ValueError(f"{owner}: state field '{f}.pos' = {sub.tolist()} disagrees with "
                             f"state field 'pos' = {pos.tolist()} (they advance together): "
                             "pass the state this mixer returned, unedited")


class _NormGate(nn.Module):
    """The paper's normalised non-linear combination (section 4.2, MAG):
    o = RMSNorm_y(y) * sigmoid(RMSNorm_m(m)), both norms with learned vector weights."""

    def __init__(self, d_model: int):
        super().__init__()
        self.norm_y = RMSNorm(d_model, eps=_NORM_EPS)
        self.norm_m = RMSNorm(d_model, eps=_NORM_EPS)

    def forward(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm_y(y) * torch.sigmoid(self.norm_m(m))


def _memory_kwargs(owner: str, memory, **defaults) -> dict:
    if memory is None:
        memory = {}
    if not isinstance(memory, Mapping):            # dict, or Hydra's DictConfig
        raise ValueError(f"{owner}: memory must be a dict of NeuralMemory kwargs, got "
                         f"{type(memory).__name__}")
    known = set(inspect.signature(NeuralMemory.__init__).parameters) - {
        "self", "d_model", "layer_idx"}
    unknown = sorted(set(memory) - known)
    if unknown:
        raise ValueError(f"{owner}: unknown memory keys {unknown}; NeuralMemory takes "
                         f"{sorted(known)}")
    return {**defaults, **dict(memory)}


class MemoryAsGateState(NamedTuple):
    attn: tuple                  # the sliding-window attention's state (SinkWindowState)
    memory: NeuralMemoryState
    pos: torch.Tensor            # [B] int64 tokens seen


class MemoryAsGate(Mixer):
    """Titans MAG (section 4.2): sliding-window attention and the neural memory in parallel,
    combined by the paper's normalised gate:

        y = SW-Attn([p_1..p_Np] || x)          (window W; persistent memory p)
        o = RMSNorm(y) * sigmoid(RMSNorm(M(x)))  (M: ``NeuralMemory`` over x, read then write)

    The persistent tokens are input-independent, so for attention they are N_p learned,
    position-free key/value pairs (``Attention(n_persistent=N_p)``). The paper also feeds
    them to the memory branch at the start of the sequence; with learned initial memory
    weights that only moves the (learned) initial memory, so the memory reads x alone.

    Args:
        d_model, layer_idx: as for every mixer.
        n_heads, n_kv_heads: attention heads (default d_model // 64).
        window: attention window W (key j visible to query i iff i - W < j <= i).
        n_persistent: N_p persistent (learned key/value) tokens.
        rope_base: RoPE base of the attention.
        memory: kwargs of the ``NeuralMemory`` branch (n_heads, depth, chunk_size, ...).
    State: (attention ring buffer of W - 1 entries, memory state): constant size.
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None,
                 n_heads: int | None = None, n_kv_heads: int | None = None,
                 window: int = 512, n_persistent: int = 4, rope_base: float = 10000.0,
                 memory: dict | None = None):
        super().__init__(d_model, layer_idx=layer_idx)
        check_positive_int("MemoryAsGate", "window", window)
        self.attn = Attention(d_model, layer_idx=layer_idx, n_heads=n_heads,
                              n_kv_heads=n_kv_heads, window=window, n_persistent=n_persistent,
                              rope_base=rope_base)
        self.memory = NeuralMemory(d_model, layer_idx=layer_idx,
                                   **_memory_kwargs("MemoryAsGate", memory))
        # the window cache is allocated at the first call: refuse a huge window here
        check_scalars("MemoryAsGate", "state scalars per sequence",
                      self.attn.state_size(window) + self.memory.state_size(window),
                      {"window": window, "d_model": d_model})
        self.gate = _NormGate(d_model)

    def init_own_parameters(self) -> None:
        self.memory.init_own_parameters()

    def init_state(self, batch_size, *, device=None, dtype=None) -> MemoryAsGateState:
        dtype = dtype or torch.get_default_dtype()
        return MemoryAsGateState(
            self.attn.init_state(batch_size, device=device, dtype=dtype),
            self.memory.init_state(batch_size, device=device,
                                   dtype=self.memory.state_dtype(dtype)),
            torch.zeros(batch_size, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        return self.attn.state_size(seq_len) + self.memory.state_size(seq_len)

    def _check_state(self, x: torch.Tensor, state) -> None:
        super()._check_state(x, state)
        _same_positions(self._owner(), state, "attn", "memory")
        self.memory.check_positions(state.memory, self._owner(), "memory.")

    def _forward(self, x: torch.Tensor, state: MemoryAsGateState) -> MixerOutput:
        a = self.attn._forward(x, state.attn)
        m = self.memory._forward(x, state.memory)
        return MixerOutput(self.gate(a.y, m.y),
                           MemoryAsGateState(a.state, m.state, state.pos + x.shape[1]), None)


class MemoryAsContextState(NamedTuple):
    memory: NeuralMemoryState
    hconv: torch.Tensor          # [B, K-1, H_m Dh_m] SiLU(x W_h) of the last K-1 tokens
    seg_weights: tuple | None    # memory weights at the segment start (None if C % N == 0)
    k: torch.Tensor              # [B, Hkv, N-1, Dh] keys of the segment's tokens so far
    v: torch.Tensor              # [B, Hkv, N-1, Dh]
    hk: torch.Tensor             # [B, Hkv, N-1, Dh] keys of their memory reads h
    hv: torch.Tensor             # [B, Hkv, N-1, Dh]
    pos: torch.Tensor            # [B] int64 tokens seen


class MemoryAsContext(Mixer):
    """Titans MAC (section 4.1). The input is split into segments of N tokens; for segment s

        h   = M*_{s-1}(q),  q = L2(conv(SiLU(x W_h)))        read, memory before the segment
        y   = Attn([p_1..p_Np] || h || x)                    causal: x_i sees p, h_j, x_j, j <= i
        M_s = M_{s-1} updated with y                         (the neural memory writes y)
        o   = RMSNorm(y) * sigmoid(RMSNorm(M*(y)))            the paper's normalised gate

    Causality. Read literally, the paper's segment-level equations let token i see h_j and
    the memory's read of y_j for j > i. So (docs/design.md#titans) attention sees h_j only
    for j <= i, and M*(y) is the memory's own causal pass over y: each y_t is read with the
    weights from before its update chunk and then stored. The memory's update chunk C
    defaults to N, so it updates exactly at segment ends and "the memory before the segment"
    is its last completed state; with another C the state keeps the segment-start weights.
    titans-pytorch's MAC writes the memory before attending (its issue #32); we attend first.

    h is the memory's full output (read, norm, gate by x, projection) at width d_model
    (``h_gate=False``: read, norm, projection, without the gate SiLU(x W_g), whose small
    initial values shrink h; an option, not the paper's, which does not say how h is
    brought to width d_model); h_j and x_j share the segment-local RoPE position j; the N_p
    persistent tokens are learned, position-free key/value pairs
    (``Attention(n_persistent=N_p)``, whose projections and persistent pairs this mixer uses).

    Args:
        d_model, layer_idx: as for every mixer.
        n_heads, n_kv_heads: attention heads (default d_model // 64).
        segment_len: N.
        n_persistent: N_p.
        rope_base: RoPE base.
        memory: kwargs of the ``NeuralMemory`` (its chunk_size defaults to segment_len).
        h_gate: gate the reads h by SiLU(x W_g) as the memory's own output (default);
            False: h = W_o RMSNorm(M*(q)).
    State: memory state, the conv window of h's queries, the current segment's keys/values
    of x and h (N - 1 entries each), positions: constant size.
    """

    def __init__(self, d_model: int, *, layer_idx: int | None = None,
                 n_heads: int | None = None, n_kv_heads: int | None = None,
                 segment_len: int = 128, n_persistent: int = 4, rope_base: float = 10000.0,
                 memory: dict | None = None, h_gate: bool = True):
        super().__init__(d_model, layer_idx=layer_idx)
        check_positive_int("MemoryAsContext", "segment_len", segment_len)
        check_bool("MemoryAsContext", "h_gate", h_gate)
        self.segment_len, self.h_gate = segment_len, h_gate
        self.attn = Attention(d_model, layer_idx=layer_idx, n_heads=n_heads,
                              n_kv_heads=n_kv_heads, n_persistent=n_persistent,
                              rope_base=rope_base)
        check_scalars("MemoryAsContext", "state scalars per sequence",
                      4 * (segment_len - 1) * self.attn.n_kv_heads * self.attn.head_dim,
                      {"segment_len": segment_len, "d_model": d_model})
        self.memory = NeuralMemory(d_model, layer_idx=layer_idx, **_memory_kwargs(
            "MemoryAsContext", memory, chunk_size=segment_len))
        mem = self.memory
        self.h_proj = nn.Linear(d_model, mem.n_heads * mem.head_dim, bias=False)
        self.h_conv_weight = (nn.Parameter(torch.empty(mem.n_heads * mem.head_dim, 1,
                                                       mem.conv_size))
                              if mem.conv_size else None)
        self.gate = _NormGate(d_model)
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        self.memory.init_own_parameters()
        if self.h_conv_weight is not None:
            K = self.memory.conv_size
            with torch.no_grad():
                nn.init.uniform_(self.h_conv_weight, -K ** -0.5, K ** -0.5)

    @property
    def _snapshot(self) -> bool:
        return self.memory.chunk_size % self.segment_len != 0

    def init_state(self, batch_size, *, device=None, dtype=None) -> MemoryAsContextState:
        dtype = dtype or torch.get_default_dtype()
        mem = self.memory
        ms = mem.init_state(batch_size, device=device, dtype=mem.state_dtype(dtype))
        a = self.attn

        def z(n):
            return torch.zeros(batch_size, a.n_kv_heads, n, a.head_dim, device=device,
                               dtype=dtype)
        N = self.segment_len
        return MemoryAsContextState(
            ms, torch.zeros(batch_size, max(mem.conv_size - 1, 0), mem.n_heads * mem.head_dim,
                            device=device, dtype=mem.state_dtype(dtype)),
            ms.weights if self._snapshot else None, z(N - 1), z(N - 1), z(N - 1), z(N - 1),
            torch.zeros(batch_size, dtype=torch.long, device=device))

    def state_size(self, seq_len: int) -> int:
        mem, a = self.memory, self.attn
        snap = sum(p.numel() for p in mem.memory_init) if self._snapshot else 0
        return (mem.state_size(seq_len) + snap + max(mem.conv_size - 1, 0) * mem.n_heads
                * mem.head_dim + 4 * (self.segment_len - 1) * a.n_kv_heads * a.head_dim)

    def _h(self, x, conv, ws, ct):
        """The memory's reads h [B, T, D] for queries from x, and the new conv window."""
        mem = self.memory
        B, T, _ = x.shape
        u, conv = _silu_conv(self.h_proj(x), conv, self.h_conv_weight, ct)  # [B, T, Hm Dhm]
        q = _l2(u.view(B, T, mem.n_heads, mem.head_dim).transpose(1, 2))  # [B, Hm, T, Dhm]
        r = mem.read(ws, q)                                                 # [B, Hm, T, Dhm]
        if self.h_gate:
            return mem.output(r, x), conv
        r = mem.out_norm(r.transpose(1, 2)).reshape(B, T, -1).to(x.dtype)  # [B, T, Hm Dhm]
        return mem.o_proj(r), conv

    def _attend(self, x, h, a0, state):
        """Attention of x's tokens at segment positions a0.. over [p, h_j, x_j : j <= i]."""
        at = self.attn
        B, T, _ = x.shape
        H, Hkv, Dh, G = at.n_heads, at.n_kv_heads, at.head_dim, at.n_heads // at.n_kv_heads
        dev = x.device
        q = at.q_proj(x).view(B, T, H, Dh)
        k, v = at.kv_proj(x).view(B, T, 2, Hkv, Dh).unbind(2)
        hk, hv = at.kv_proj(h).view(B, T, 2, Hkv, Dh).unbind(2)
        p = a0 + torch.arange(T, device=dev)                               # segment positions
        cos, sin = at.rotary.cos_sin(p, x.dtype)
        cos, sin = cos[:, None], sin[:, None]                              # [T, 1, Dh/2]
        qr = apply_rotary(q, cos, sin).transpose(1, 2)                     # [B, H, T, Dh]
        k = apply_rotary(k, cos, sin).transpose(1, 2)                      # [B, Hkv, T, Dh]
        hk = apply_rotary(hk, cos, sin).transpose(1, 2)
        v, hv = v.transpose(1, 2), hv.transpose(1, 2)
        N = self.segment_len
        K = torch.cat([state.k[:, :, :a0], k, state.hk[:, :, :a0], hk], 2)  # [B, Hkv, 2(a0+T), Dh]
        V = torch.cat([state.v[:, :, :a0], v, state.hv[:, :, :a0], hv], 2)
        kp = torch.arange(a0 + T, device=dev).repeat(2)                   # key positions
        Kf, Vf, bad = _finite_kv(K, V)                                    # bad [B, Hkv, L]
        mask = kp[None, :] <= p[:, None]                                   # [T, L] causal
        o = at._attend_with_persistent(q.transpose(1, 2), qr, Kf, Vf, mask)  # [B, H, T, Dh]
        seen = (bad[:, :, None, :] & mask).any(-1).repeat_interleave(G, 1)  # [B, H, T]
        o = o.masked_fill(seen[..., None], float("nan"))      # a visible non-finite key/value
        y = at.o_proj(o.transpose(1, 2).reshape(B, T, H * Dh))
        end = a0 + T
        if end == N:                                                       # segment complete
            kv = [torch.zeros_like(t) for t in (state.k, state.v, state.hk, state.hv)]
        else:
            kv = [torch.cat([c[:, :, :a0], n, c[:, :, end:]], 2)
                  for c, n in ((state.k, k), (state.v, v), (state.hk, hk), (state.hv, hv))]
        return y, kv

    def _check_state(self, x: torch.Tensor, state) -> None:
        super()._check_state(x, state)
        _same_positions(self._owner(), state, "memory")
        self.memory.check_positions(state.memory, self._owner(), "memory.")

    def _forward(self, x: torch.Tensor, state: MemoryAsContextState) -> MixerOutput:
        if x.shape[0] > 1 and not bool((state.pos == state.pos[0]).all()):
            return _per_row(self, x, state)
        N, T = self.segment_len, x.shape[1]
        ct = self.memory.state_dtype(x.dtype)
        pos = int(state.pos[0])
        outs, i = [], 0
        ms, hconv, seg_w = state.memory, state.hconv, state.seg_weights
        kv = (state.k, state.v, state.hk, state.hv)
        while i < T:
            a0 = (pos + i) % N
            n = min(T - i, N - a0)
            xs = x[:, i:i + n]
            if a0 == 0 and self._snapshot:
                seg_w = ms.weights
            h, hconv = self._h(xs, hconv, seg_w if self._snapshot else ms.weights, ct)
            st_ = MemoryAsContextState(ms, hconv, seg_w, *kv, state.pos)
            y, kv = self._attend(xs, h, a0, st_)
            m = self.memory._forward(y, ms)
            ms = m.state
            outs.append(self.gate(y, m.y))
            i += n
        new = MemoryAsContextState(ms, hconv, seg_w, *kv, state.pos + T)
        return MixerOutput(torch.cat(outs, 1), new, None)
