"""Suite ``peers``: memarch against other implementations of the same work, measured side by
side in the same run and reported as ratios.

    python -m benchmarks peers --threads 2                  # every group, every length
    python -m benchmarks peers --quick                      # T = 1k (attention: 1k, 4k)
    python -m benchmarks peers --peers-groups attention     # one group, merged into the JSON

Groups (``group`` in the rows; ``case`` names the peer):

* ``titans``: titans-pytorch's ``NeuralMemory`` (0.5.5) against ``memarch.mixers.
  NeuralMemory``, built by ``benchmarks/peers_titans.py`` (d_model 256, 4 heads
  of 64, depth-2 MLP memory, chunk 64, momentum, forgetting, B=1); the peer at its defaults
  and with ``batch_size=64`` (the recurrence memarch computes). The two are different
  parametrisations of the same layer, so their outputs are not compared (``max_abs_diff``
  None). T = 1k, 4k.
* ``attention`` (B=1, H=4, D=64; inputs [B, H, T, D], the SDPA layout): PyTorch SDPA
  (``is_causal=True``) against memarch's full-attention path (``Attention._full``: SDPA with
  its non-finite guard and KV-cache build, called on the same q, k, v without projections
  or RoPE) and against ``sliding_window_attn(window=T, impl="torch")`` (the op has no
  ``window=None``; W = T is full causal attention; T = 1k only: its blocked scores are
  O(T (T + 64)), 4 GB at 16k); FlexAttention (``torch.compile(flex_attention)``, a block mask
  ``k <= q and (q - k < 512 or k < 4)``, built once per length outside the timing) against
  ``sliding_window_attn(window=512, sink_k=k[:, :4], sink_v=v[:, :4], impl="torch")``.
  T = 1k, 4k, 16k. FlexAttention has no backward on CPU (torch 2.13 raises
  ``NotImplementedError`` for inputs that require grad, compiled or not), so its fwd+bwd rows
  carry that message (from an eager call after the timing: a failed compiled call leaves
  the compiled forward falling back to the unfused path for the rest of the process).
* ``fla`` (B=1, H=4, K=V=64; BASED: feature dim 16): flash-linear-attention's PyTorch
  reference paths (the ones that run on CPU) against memarch's ``memarch.kernels`` ops with
  ``impl="torch"`` (the chunked CPU path): ``naive_recurrent_linear_attn`` /
  ``naive_chunk_linear_attn`` against ``linear_attn`` (non-negative q, k, normalised, eps
  1e-10 on both sides); ``naive_parallel_based`` / ``naive_chunk_based`` against BASED's
  Taylor feature map (``TaylorFeatureMap(16)``, 153 features) + ``linear_attn(normalize=True,
  scale=1, eps=1e-6)``; ``delta_rule_recurrence`` / ``delta_rule_chunkwise`` against
  ``delta_rule`` (L2-normalised q, k, beta = sigmoid); ``naive_recurrent_gated_delta_rule``
  / ``naive_chunk_gated_delta_rule`` against ``delta_rule(g=...)`` (g = logsigmoid(x + 3)).
  T = 1k, 4k (token-loop references: 1k only, their backward grows as T^2). With
  ``--device cuda`` fla's Triton kernels (``chunk_linear_attn``,
  ``parallel_based``, ``chunk_delta_rule``, ``chunk_gated_delta_rule``) are timed against
  memarch's Triton kernels instead.

Timing: the two sides of a case alternate call by call (order flipped every repeat, as
``common.alternate`` does), each side's call = a forward under ``torch.no_grad`` then a
forward+backward (``out.backward(dy)`` with a fixed random ``dy``, every floating input
requiring grad; module parameters' grads set to None first); ``warmup`` calls, then the
median of ``reps`` calls. ``ratio`` = peer ms / memarch ms, so > 1 means memarch is faster.
Both sides get the same inputs (seed 0); ``max_abs_diff`` is the largest |difference| of the
two outputs of the first (warm-up) call, ``grad_max_abs_diff`` that of the inputs' gradients
(fwd+bwd rows), ``ref_max_abs`` the largest |peer output| for scale. ``others_cpu_share`` is
the share of the machine's CPUs other processes used while the case ran (from
/proc/stat): on a shared machine absolute times are noisy, the ratios less so. The
inductor compile of FlexAttention happens in its warm-up call (``peer_compile_s``).

``--quick`` measures the same rows (same settings, seeds, repeats) at fewer lengths. Where
memarch is slower (ratio < 1) the row carries ``reason``, from ``REASONS`` below (written
from profiles of these calls), and the README lists it; ``python benchmarks/suite_peers.py
--refresh-reasons benchmarks/results/peers-cpu.json`` puts edited reasons into a results
file without measuring again.

The peers are not memarch dependencies; they live in ``.bench-deps/`` (git-ignored), put
there with ``--no-deps`` so pip never touches the venv's torch::

    .venv/bin/python -m pip install --no-deps --target .bench-deps <peers_titans.py's list> \\
        fla-core==0.6.0
    echo '*' > .bench-deps/.gitignore

(``fla-core`` is flash-linear-attention's ops package, ``fla``; the ``flash-linear-attention``
distribution adds its layers and models on top and pulls ``transformers``, not needed here.)
This module appends ``.bench-deps`` to ``sys.path`` (after the venv). A missing peer
gives rows with ``status`` "not measured: ..." instead of times.

``--device cuda`` / ``--dtype bfloat16`` are supported but untested: no GPU was at hand
when this suite was written; the published numbers are CPU, float32.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

KEY = ("group", "case", "T", "pass", "dtype")
GROUPS = ("titans", "attention", "fla")
LENGTHS = {"titans": ([1024, 4096], [1024]), "attention": ([1024, 4096, 16384], [1024, 4096]),
           "fla": ([1024, 4096], [1024])}            # (full, quick)
TINY_T = 256                                           # --peers-tiny (tests)
SEED = 0
WINDOW, SINKS = 512, 4
SWA_FULL_MAX_T = 1024          # sliding_window_attn(window=T): O(T (T + 64)) scores, slow
PASSES = ("fwd", "fwd_bwd")
RECURRENT_MAX_T = 1024
RECURRENT_WHY = (f"not measured above T={RECURRENT_MAX_T}: fla's token-loop reference writes "
                 "o[..., t, :] in place every step, so autograd copies the whole output "
                 "gradient once per token and its backward grows as T^2 (tens of seconds per "
                 "call at 4k); a reference, not a training path")

# Why memarch is slower where it is (ratio < 1), keyed by (group, case) or (group, case,
# pass); written from torch.profiler runs of these calls (see the report in the rows).
_GUARD = ("non-finite guard: memarch's ops keep causality for NaN/inf input "
          "(docs/design.md#the-nan-rule), so they run isfinite/all/where passes over k, v "
          "(and beta, g) that fla's reference code does not")
REASONS: dict[tuple, str] = {
    ("attention", "SDPA causal / Attention full"): (
        "the same SDPA kernel (outputs identical) plus what the layer does around it: the "
        "non-finite guard (_finite_kv: isfinite/all/where and finite copies of k and v, so "
        "that a NaN cannot leak through masked positions) and the KV cache it returns "
        "(torch.cat under grad; without grad a copy into a buffer with 1.5x spare capacity "
        "for decoding, which SDPA then reads as strided views). These are O(T D) passes "
        "against SDPA's O(T^2 D), so the gap closes as T grows"),
    ("attention", "SDPA causal / sliding_window_attn W=T"): (
        "the banded op is built for W << T: with W = T every 64-query block scores all "
        "T + 63 keys (about twice the causal triangle's work, nothing skipped), through "
        "unfold copies of K and V, a non-finite selection and an unfused softmax; SDPA's "
        "CPU flash kernel skips the masked half and fuses the softmax. Full attention in "
        "memarch is Attention(window=None), which calls SDPA (row above)"),
    ("attention", f"FlexAttention W={WINDOW}+{SINKS} sinks / sliding_window_attn"): (
        "memarch's CPU path (sliding_window_torch) is unfused: per 64-query block it "
        f"materialises the scores against {WINDOW + 63} window keys (unfold copies of K and "
        "V), scales them, selects masked/non-finite entries (isfinite/where, ~30% of its "
        "time in a profile at 4k), concatenates the sink scores and runs a separate softmax "
        "(~16%); the matmuls are only ~20%. Compiled FlexAttention fuses mask, scale and an "
        "online softmax per block and skips the blocks outside the band and the sinks"),
    ("fla", "fla naive_chunk_linear_attn"): (
        _GUARD + "; memarch also copies q, k, v into fp32 [B, H, N, C, *] chunks and appends "
        "a ones column to v for the normaliser (profile at 1k: copies ~25%, guard ~15%)"),
    ("fla", "fla naive_parallel_based"): (
        "at T = 1k the peer's quadratic form is cheap (a T x T score matrix over 16 "
        "feature dims, 1 + s + s^2/2 elementwise) while memarch's linear form expands every "
        "q and k to 153 Taylor features and keeps a 153 x 64 state per head; memarch's cost "
        "is linear in T, the peer's quadratic, so memarch is ahead from a few thousand "
        "tokens"),
    ("fla", "fla naive_chunk_based"): (
        "at T = 1k both are chunked linear forms of the same size; memarch adds the Taylor "
        "expansion to 153 features, the non-finite guard and fp32 chunk copies, fla "
        "computes the 2nd-order term by einsum without expanding the features"),
    ("fla", "fla delta_rule_chunkwise"): (
        _GUARD + " (~25% of memarch's forward at 1k), and memarch solves the UT transform "
        "with linalg.solve_triangular on 64-token chunks (~25%) where fla's reference builds "
        "it with a 32-step in-place loop on 32-token chunks; in fwd+bwd the loop's "
        "backward costs fla more"),
    ("fla", "fla naive_chunk_gated_delta_rule"): (
        _GUARD + " (~25% of memarch's forward at 1k), plus the decay masks exp(b_t - b_s) "
        "built for every chunk; fla's reference uses the same 64-token chunks and a "
        "64-step loop for the inverse, whose backward costs it more in fwd+bwd"),
}


def reason_for(group: str, case: str, pas: str) -> str:
    return REASONS.get((group, case, pas)) or REASONS.get((group, case)) or "not analysed"


# ----------------------------------------------------------------------------- the cases
@dataclass
class Pair:
    """Both sides of a case at one length: functions of the same inputs, returning outputs of
    one layout (so that they can be compared)."""
    memarch: Callable
    peer: Callable
    inputs: tuple
    modules: dict = field(default_factory=dict)           # side -> module (param grads)
    comparable: bool = True
    peer_passes: tuple = PASSES                           # what the peer can run
    probe: Callable | None = None     # called after timing: why the peer cannot fwd+bwd
    note: str | None = None


@dataclass
class Case:
    group: str
    case: str                 # the peer (the row key)
    memarch_call: str
    peer_call: str
    make: Callable            # (T, device, dtype) -> Pair
    version: Callable         # () -> peer version string
    reps: int = 5
    max_T: int | None = None  # longer lengths: a row with status instead
    max_T_why: str = ""


def _randn(*shape, device, dtype, g):
    return torch.randn(*shape, generator=g, device="cpu").to(device=device, dtype=dtype)


def _gen():
    return torch.Generator().manual_seed(SEED)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fla_version() -> str | None:
    common.add_bench_deps()
    return _version("fla-core") or _version("flash-linear-attention")


# -- titans
def titans_cases(device):
    import peers_titans as tb  # the sides and their settings

    def make(batch_size):
        def mk(T, device, dtype):
            tb.import_peer()
            torch.manual_seed(SEED)
            m, run_m, _ = tb.make_memarch()
            torch.manual_seed(SEED)
            p, run_p, _ = tb.make_peer(batch_size=batch_size)
            m, p = m.to(device=device, dtype=dtype), p.to(device=device, dtype=dtype)
            x = _randn(tb.CONFIG["batch"], T, tb.CONFIG["d_model"], device=device, dtype=dtype,
                       g=_gen())
            return Pair(run_m, run_p, (x,), {"memarch": m, "peer": p}, comparable=False)
        return mk

    def version():
        tb.import_peer()
        return _version("titans-pytorch")
    c = tb.CONFIG
    mem = (
        f"memarch.mixers.NeuralMemory({c['d_model']}, n_heads={c['n_heads']}, head_dim="
        f"{c['head_dim']}, depth={c['depth']}, expansion={c['expansion']}, chunk_size="
        f"{c['chunk_size']}, momentum=True, forgetting=True)(x).y")
    peer = (f"titans_pytorch.NeuralMemory(dim={c['d_model']}, heads={c['n_heads']}, dim_head="
            f"{c['head_dim']}, chunk_size={c['chunk_size']}, momentum=True, batch_size={{}}, "
            f"default_model_kwargs=dict(depth={c['depth']}, expansion_factor="
            f"{float(c['expansion'])}))(x)[0]")
    return [Case("titans", tb.PEER, mem, peer.format(None), make(None), version, reps=3),
            Case("titans", tb.PEER_MATCHED, mem, peer.format(c["chunk_size"]),
                 make(c["chunk_size"]), version, reps=3)]


# -- attention
ATT = {"B": 1, "H": 4, "D": 64}


def _qkv_bhtd(T, device, dtype):
    g = _gen()
    B, H, D = ATT["B"], ATT["H"], ATT["D"]
    return tuple(_randn(B, H, T, D, device=device, dtype=dtype, g=g) for _ in range(3))


def _torch_version():
    return torch.__version__


def attention_cases(device, compile_flex=True):
    import torch.nn.functional as F

    from memarch.kernels import sliding_window_attn
    from memarch.mixers import Attention
    impl = "torch" if device == "cpu" else "auto"

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def mk_full(T, device, dtype):
        a = Attention(ATT["H"] * ATT["D"], n_heads=ATT["H"]).to(device=device, dtype=dtype)

        def mem(q, k, v):
            return a._full(q, q, k, v, a.init_state(q.shape[0], device=q.device,
                                                    dtype=q.dtype))[0]
        return Pair(mem, sdpa, _qkv_bhtd(T, device, dtype))

    def mk_swa_full(T, device, dtype):
        def mem(q, k, v):
            t = lambda x: x.transpose(1, 2)                         # noqa: E731
            return t(sliding_window_attn(t(q), t(k), t(v), window=q.shape[2], impl=impl))
        return Pair(mem, sdpa, _qkv_bhtd(T, device, dtype))

    def mk_flex(T, device, dtype):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def mask_mod(b, h, qi, ki):
            return (ki <= qi) & ((qi - ki < WINDOW) | (ki < SINKS))
        bm = create_block_mask(mask_mod, None, None, T, T, device=device)
        fx = torch.compile(flex_attention, dynamic=False) if compile_flex else flex_attention

        def peer(q, k, v):
            return fx(q, k, v, block_mask=bm)

        def mem(q, k, v):
            t = lambda x: x.transpose(1, 2)                         # noqa: E731
            return t(sliding_window_attn(t(q), t(k), t(v), window=WINDOW,
                                         sink_k=t(k)[:, :SINKS], sink_v=t(v)[:, :SINKS],
                                         impl=impl))
        def probe(q, k, v):
            """Eager call with grad (compiled, the failure would leave the compiled
            forward falling back to the unfused one for the rest of the process)."""
            return flex_attention(q.detach().requires_grad_(), k, v, block_mask=bm)
        cpu = device == "cpu"
        return Pair(mem, peer, _qkv_bhtd(T, device, dtype),
                    peer_passes=("fwd",) if cpu else PASSES, probe=probe if cpu else None,
                    note=None if compile_flex else "FlexAttention eager (unfused; --peers-tiny)")
    swa = (f"sliding_window_attn(q, k, v, window={WINDOW}, sink_k=k[:, :{SINKS}], "
           f"sink_v=v[:, :{SINKS}], impl={impl!r})")
    flex = ("torch.compile(flex_attention)(q, k, v, block_mask=create_block_mask(k <= q and "
            f"(q - k < {WINDOW} or k < {SINKS})))")
    return [
        Case("attention", "SDPA causal / Attention full", "Attention._full(q, q, k, v, "
             "init_state) (SDPA is_causal inside)",
             "F.scaled_dot_product_attention(q, k, v, is_causal=True)", mk_full,
             _torch_version, reps=3),
        Case("attention", "SDPA causal / sliding_window_attn W=T",
             f"sliding_window_attn(q, k, v, window=T, impl={impl!r})",
             "F.scaled_dot_product_attention(q, k, v, is_causal=True)", mk_swa_full,
             _torch_version, reps=5, max_T=SWA_FULL_MAX_T,
             max_T_why=f"not measured above T={SWA_FULL_MAX_T}: window=T makes the banded op's "
                       "blocked scores O(T (T + 64)) (~9 s per fwd+bwd at 4k, 4 GB at 16k)"),
        Case("attention", f"FlexAttention W={WINDOW}+{SINKS} sinks / sliding_window_attn",
             swa, flex, mk_flex, _torch_version, reps=3),
    ]


# -- flash-linear-attention
LA = {"B": 1, "H": 4, "K": 64, "V": 64, "F": 16}


def _la_inputs(T, device, dtype, kind):
    g = _gen()
    B, H, K, V = LA["B"], LA["H"], LA["K"], LA["V"]
    r = lambda *s: _randn(*s, device=device, dtype=dtype, g=g)    # noqa: E731
    F = torch.nn.functional
    if kind == "linear":          # feature-mapped (non-negative) q, k
        return r(B, T, H, K).abs(), r(B, T, H, K).abs(), r(B, T, H, V)
    if kind == "based":           # q, k before the Taylor map (feature dim 16)
        return r(B, T, H, LA["F"]), r(B, T, H, LA["F"]), r(B, T, H, V)
    q, k = F.normalize(r(B, T, H, K), dim=-1), F.normalize(r(B, T, H, K), dim=-1)
    v, beta = r(B, T, H, V), torch.sigmoid(r(B, T, H))
    if kind == "delta":
        return q, k, v, beta
    return q, k, v, beta, F.logsigmoid(r(B, T, H) + 3)


def fla_cases(device):
    from memarch.kernels import delta_rule, linear_attn
    from memarch.mixers.feature_maps import TaylorFeatureMap
    impl = "torch" if device == "cpu" else "triton"
    t = lambda x: x.transpose(1, 2)                                 # noqa: E731

    def fla(mod, name):
        common.add_bench_deps()
        return getattr(importlib.import_module(f"fla.ops.{mod}"), name)

    def la(q, k, v):
        return linear_attn(q, k, v, normalize=True, eps=1e-10, impl=impl)[0]

    def taylor(device, dtype):
        return TaylorFeatureMap(LA["F"]).to(device)

    def based_mem(phi):
        def f(q, k, v):
            return linear_attn(phi(q), phi(k), v, scale=1.0, normalize=True, eps=1e-6,
                               impl=impl)[0]
        return f

    def dr(q, k, v, beta):
        return delta_rule(q, k, v, beta, impl=impl)[0]

    def gdr(q, k, v, beta, g):
        return delta_rule(q, k, v, beta, g=g, impl=impl)[0]

    def pair(kind, mem, peer_of):
        def mk(T, device, dtype):
            peer = peer_of()
            m = mem(device, dtype) if kind == "based" else mem
            return Pair(m, peer, _la_inputs(T, device, dtype, kind))
        return mk

    cpu = [
        ("linear", "fla naive_recurrent_linear_attn",
         "linear_attn(q, k, v, normalize=True, eps=1e-10)", la,
         "naive_recurrent_linear_attn(q, k, v, normalize=True)",
         lambda: (lambda q, k, v, f=fla("linear_attn.naive", "naive_recurrent_linear_attn"):
                  f(q, k, v, normalize=True)[0]), 3),
        ("linear", "fla naive_chunk_linear_attn",
         "linear_attn(q, k, v, normalize=True, eps=1e-10)", la,
         "naive_chunk_linear_attn(q, k, v, normalize=True)",
         lambda: (lambda q, k, v, f=fla("linear_attn.naive", "naive_chunk_linear_attn"):
                  f(q, k, v, normalize=True)), 5),
        ("based", "fla naive_parallel_based",
         "linear_attn(phi(q), phi(k), v, scale=1, normalize=True, eps=1e-6), phi = "
         "TaylorFeatureMap(16)", lambda d, dt: based_mem(taylor(d, dt)),
         "naive_parallel_based(q, k, v, use_norm=True) ([B, H, T, D])",
         lambda: (lambda q, k, v, f=fla("based.naive", "naive_parallel_based"):
                  t(f(t(q), t(k), t(v), use_norm=True))), 3),
        ("based", "fla naive_chunk_based",
         "linear_attn(phi(q), phi(k), v, scale=1, normalize=True, eps=1e-6), phi = "
         "TaylorFeatureMap(16)", lambda d, dt: based_mem(taylor(d, dt)),
         "naive_chunk_based(q, k, v, chunk_size=256) ([B, H, T, D])",
         lambda: (lambda q, k, v, f=fla("based.naive", "naive_chunk_based"):
                  t(f(t(q), t(k), t(v)))), 5),
        ("delta", "fla delta_rule_recurrence", "delta_rule(q, k, v, beta)", dr,
         "delta_rule_recurrence(q, k, v, beta) ([B, H, T, D])",
         lambda: (lambda q, k, v, b, f=fla("delta_rule.naive", "delta_rule_recurrence"):
                  t(f(t(q), t(k), t(v), t(b))[0])), 3),
        ("delta", "fla delta_rule_chunkwise", "delta_rule(q, k, v, beta)", dr,
         "delta_rule_chunkwise(q, k, v, beta, chunk_size=32) ([B, H, T, D])",
         lambda: (lambda q, k, v, b, f=fla("delta_rule.naive", "delta_rule_chunkwise"):
                  t(f(t(q), t(k), t(v), t(b))[0])), 5),
        ("gated", "fla naive_recurrent_gated_delta_rule", "delta_rule(q, k, v, beta, g=g)", gdr,
         "naive_recurrent_gated_delta_rule(q, k, v, beta, g)",
         lambda: (lambda q, k, v, b, g, f=fla("gated_delta_rule.naive",
                                               "naive_recurrent_gated_delta_rule"):
                  f(q, k, v, b, g)[0]), 3),
        ("gated", "fla naive_chunk_gated_delta_rule", "delta_rule(q, k, v, beta, g=g)", gdr,
         "naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=64)",
         lambda: (lambda q, k, v, b, g, f=fla("gated_delta_rule.naive",
                                               "naive_chunk_gated_delta_rule"):
                  f(q, k, v, g, b)[0]), 5),
    ]
    gpu = [
        ("linear", "fla chunk_linear_attn", "linear_attn(q, k, v, normalize=True, eps=1e-10)",
         la, "chunk_linear_attn(q, k, v, normalize=True)",
         lambda: (lambda q, k, v, f=fla("linear_attn", "chunk_linear_attn"):
                  f(q, k, v, normalize=True)[0]), 10),
        ("based", "fla parallel_based",
         "linear_attn(phi(q), phi(k), v, scale=1, normalize=True, eps=1e-6), phi = "
         "TaylorFeatureMap(16)", lambda d, dt: based_mem(taylor(d, dt)),
         "parallel_based(q, k, v, use_norm=True)",
         lambda: (lambda q, k, v, f=fla("based", "parallel_based"): f(q, k, v, use_norm=True)),
         10),
        ("delta", "fla chunk_delta_rule", "delta_rule(q, k, v, beta)", dr,
         "chunk_delta_rule(q, k, v, beta)",
         lambda: (lambda q, k, v, b, f=fla("delta_rule", "chunk_delta_rule"):
                  f(q, k, v, b)[0]), 10),
        ("gated", "fla chunk_gated_delta_rule", "delta_rule(q, k, v, beta, g=g)", gdr,
         "chunk_gated_delta_rule(q, k, v, g, beta)",
         lambda: (lambda q, k, v, b, g, f=fla("gated_delta_rule", "chunk_gated_delta_rule"):
                  f(q, k, v, g, b)[0]), 10),
    ]
    out = []
    for kind, case, mcall, mem, pcall, peer_of, reps in (cpu if device == "cpu" else gpu):
        loop = "recurrent" in case or "recurrence" in case
        out.append(Case("fla", case, f"memarch.kernels.{mcall}, impl={impl!r}",
                        f"fla.ops.{pcall}", pair(kind, mem, peer_of), fla_version, reps=reps,
                        max_T=RECURRENT_MAX_T if loop else None,
                        max_T_why=RECURRENT_WHY if loop else ""))
    return out


def cases(groups, device, tiny=False) -> list[Case]:
    out = []
    for g in groups:
        if g == "titans":
            out += titans_cases(device)
        elif g == "attention":
            out += attention_cases(device, compile_flex=not tiny)
        elif g == "fla":
            out += fla_cases(device)
    return out


# ----------------------------------------------------------------------------- measuring
def _cast_out(o):
    return o if isinstance(o, torch.Tensor) else o[0]


def _max_diff(a, b):
    if a is None or b is None:
        return None
    return float((a.float() - b.float()).abs().max())


def measure(pair: Pair, reps: int, warmup: int, device: str) -> dict:
    """Interleaved timing of both sides of a pair: {side: {pass: [seconds]}}, the outputs'
    and input gradients' differences, errors per side and pass."""
    sides = {"memarch": pair.memarch, "peer": pair.peer}
    times = {s: {p: [] for p in PASSES} for s in sides}
    errors: dict = {}
    first: dict = {}
    dy = None
    shares = []
    # pass by pass, the two sides back to back (order flipped every repeat): each side's call
    # follows the other side's call of the same pass, never a heavier pass of the other side
    for rep in range(warmup + reps):
        order = ["memarch", "peer"] if rep % 2 == 0 else ["peer", "memarch"]
        for pas, side in ((pas, side) for pas in PASSES for side in order):
            fn, mod = sides[side], pair.modules.get(side)
            a, w0 = common.cpu_ticks(), time.perf_counter()
            if (side, pas) in errors or (side == "peer" and pas not in pair.peer_passes):
                continue
            try:
                if pas == "fwd":
                    with torch.no_grad():
                        common.sync(device)
                        t0 = time.perf_counter()
                        out = _cast_out(fn(*pair.inputs))
                        common.sync(device)
                        dt = time.perf_counter() - t0
                    grads = None
                else:
                    if mod is not None:
                        mod.zero_grad(set_to_none=True)
                    ins = [x.detach().requires_grad_() for x in pair.inputs]
                    if dy is None:
                        with torch.no_grad():
                            shape = _cast_out(fn(*pair.inputs)).shape
                        dy = torch.randn(shape, generator=torch.Generator().manual_seed(
                            SEED + 1)).to(device=device, dtype=pair.inputs[0].dtype)
                    common.sync(device)
                    t0 = time.perf_counter()
                    out = _cast_out(fn(*ins))
                    out.backward(dy)
                    common.sync(device)
                    dt = time.perf_counter() - t0
                    grads = [x.grad for x in ins]
            except Exception as e:   # noqa: BLE001 - an unsupported pass is recorded
                errors[(side, pas)] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                continue
            if rep == 0:
                first[(side, pas)] = (out.detach(), grads, dt)
            if rep >= warmup:
                times[side][pas].append(dt)
            share = common.others_share(a, common.cpu_ticks(), time.perf_counter() - w0)
            if share is not None:
                shares.append(share)
    if pair.probe is not None and ("peer", "fwd_bwd") not in errors:
        try:
            pair.probe(*pair.inputs)
            errors[("peer", "fwd_bwd")] = "fwd+bwd not timed (see peer_call)"
        except Exception as e:   # noqa: BLE001 - recorded
            errors[("peer", "fwd_bwd")] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    diffs = {}
    for pas in PASSES:
        m, p = first.get(("memarch", pas)), first.get(("peer", pas))
        if m is None or p is None or not pair.comparable:
            diffs[pas] = {}
            continue
        d = {"max_abs_diff": _max_diff(m[0], p[0]), "ref_max_abs": float(p[0].abs().max())}
        if pas == "fwd_bwd" and m[1] is not None and p[1] is not None:
            gd = [_max_diff(a, b) for a, b in zip(m[1], p[1])]
            d["grad_max_abs_diff"] = max((x for x in gd if x is not None), default=None)
        diffs[pas] = d
    return {"times": times, "errors": errors, "diffs": diffs,
            "first_s": {f"{s}_{p}": v[2] for (s, p), v in first.items()},
            "others_cpu_share": round(statistics.median(shares), 3) if shares else None}


def case_rows(c: Case, T: int, device: str, dtype: str, warmup: int, reps: int,
              peer_version: str | None) -> list[dict]:
    base = {"group": c.group, "case": c.case, "T": T, "memarch_call": c.memarch_call,
            "peer_call": c.peer_call, "peer_version": peer_version, "dtype": dtype,
            "seed": SEED, "reps": reps, "warmup": warmup}
    if c.group == "titans":
        import peers_titans as tb
        base["config"] = dict(tb.CONFIG)
    else:
        base["config"] = dict(LA) if c.group == "fla" else dict(ATT)
        if c.case.startswith("FlexAttention"):
            base["config"].update(window=WINDOW, sinks=SINKS)
        elif "W=T" in c.case:
            base["config"].update(window=T, sinks=0)
    if c.max_T is not None and T > c.max_T:
        return [{**base, "pass": p, "status": c.max_T_why} for p in PASSES]
    try:
        pair = c.make(T, device, getattr(torch, dtype))
    except Exception as e:   # noqa: BLE001 - a missing peer is reported, not fatal
        why = f"not measured: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"  {c.group} / {c.case} T={T}: {why}", flush=True)
        return [{**base, "pass": p, "status": why} for p in PASSES]
    r = measure(pair, reps, warmup, device)
    if pair.note:
        base["note"] = pair.note
    del pair
    rows = []
    for pas in PASSES:
        row = {**base, "pass": pas}
        tm, tp = r["times"]["memarch"][pas], r["times"]["peer"][pas]
        err = r["errors"].get(("memarch", pas)) or r["errors"].get(("peer", pas))
        if tm and tp:
            ms_m, ms_p = statistics.median(tm) * 1e3, statistics.median(tp) * 1e3
            row.update(status="measured", memarch_ms=common.sig(ms_m), peer_ms=common.sig(ms_p),
                       ratio=common.sig(ms_p / ms_m, 3),
                       memarch_ms_all=[common.sig(t * 1e3, 3) for t in tm],
                       peer_ms_all=[common.sig(t * 1e3, 3) for t in tp])
        else:
            who = "peer" if not tp else "memarch"
            row["status"] = (f"not measured: {who}: " + (
                err or f"{pas} not supported (see peer_call)"))
            if tm:
                row["memarch_ms"] = common.sig(statistics.median(tm) * 1e3)
        for k, v in r["diffs"].get(pas, {}).items():
            row[k] = common.sig(v, 3)
        if not pair_comparable(c):
            row["max_abs_diff"] = None
            row["diff_note"] = "different parametrisations of the layer: outputs not compared"
        if c.case.startswith("FlexAttention") and pas == "fwd":
            row["peer_compile_s"] = common.sig(r["first_s"].get("peer_fwd"), 3)
        row["others_cpu_share"] = r["others_cpu_share"]
        if row.get("ratio") is not None and row["ratio"] < 1:
            row["reason"] = reason_for(c.group, c.case, pas)
        rows.append(row)
        print(f"  {c.group:9s} {c.case:50s} T={T:6d} {pas:7s} memarch "
              f"{row.get('memarch_ms', '-')!s:>8} ms  peer {row.get('peer_ms', '-')!s:>8} ms  "
              f"ratio {row.get('ratio', '-')!s:>6}  diff {row.get('max_abs_diff', '-')}"
              + ("" if row["status"] == "measured" else f"  [{row['status']}]"), flush=True)
    return rows


def pair_comparable(c: Case) -> bool:
    return c.group != "titans"


# ----------------------------------------------------------------------------- suite API
def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--peers-groups", nargs="+", choices=GROUPS, default=list(GROUPS),
                    help="peer groups to measure (default: all)")
    ap.add_argument("--peers-cases", nargs="+", default=None,
                    help="only the cases whose name contains one of these strings")
    ap.add_argument("--peers-lengths", type=int, nargs="+", default=None,
                    help="only these of the suite's lengths")
    ap.add_argument("--peers-tiny", action="store_true", help=argparse.SUPPRESS)


def lengths(group: str, quick: bool, tiny: bool = False) -> list[int]:
    if tiny:
        return [TINY_T]
    full, q = LENGTHS[group]
    return q if quick else full


def run(args) -> list[dict]:
    tiny = getattr(args, "peers_tiny", False)
    device = args.device
    groups = getattr(args, "peers_groups", None) or list(GROUPS)
    only = getattr(args, "peers_cases", None)
    warmup = 1
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
    warnings.filterwarnings("ignore", message=".*Triton is not supported on current platform")
    rows = []
    versions: dict = {}
    for c in cases(groups, device, tiny=tiny):
        if only and not any(s in c.case for s in only):
            continue
        if c.case not in versions:
            try:
                versions[c.case] = c.version()
            except Exception:   # noqa: BLE001 - the rows say why
                versions[c.case] = None
        reps = 1 if tiny else c.reps
        for T in lengths(c.group, args.quick, tiny):
            if args.peers_lengths and T not in args.peers_lengths and not tiny:
                continue
            rows += case_rows(c, T, device, args.dtype, warmup, reps, versions[c.case])
    return rows


def refresh_reasons(data: dict) -> dict:
    """Put the current ``REASONS`` into a results dict's rows (text, not measurements: a
    reason written after a run needs no new run): ``reason`` on every row with ratio < 1."""
    for r in data["rows"]:
        r.pop("reason", None)
        if r.get("ratio") is not None and r["ratio"] < 1:
            r["reason"] = reason_for(r["group"], r["case"], r["pass"])
    return data


# ----------------------------------------------------------------------------- report
CASE_ORDER = ["titans-pytorch", "titans-pytorch batch_size=64",
              "SDPA causal / Attention full", "SDPA causal / sliding_window_attn W=T",
              f"FlexAttention W={WINDOW}+{SINKS} sinks / sliding_window_attn",
              "fla naive_recurrent_linear_attn", "fla naive_chunk_linear_attn",
              "fla chunk_linear_attn", "fla naive_parallel_based", "fla naive_chunk_based",
              "fla parallel_based", "fla delta_rule_recurrence", "fla delta_rule_chunkwise",
              "fla chunk_delta_rule", "fla naive_recurrent_gated_delta_rule",
              "fla naive_chunk_gated_delta_rule", "fla chunk_gated_delta_rule"]
GROUP_TITLES = {
    "titans": "titans-pytorch `NeuralMemory` vs memarch `NeuralMemory`",
    "attention": "PyTorch SDPA / FlexAttention vs memarch attention",
    "fla": "flash-linear-attention vs memarch kernels",
}


def _order(r):
    c = r["case"]
    ci = CASE_ORDER.index(c) if c in CASE_ORDER else len(CASE_ORDER)
    return (GROUPS.index(r["group"]) if r["group"] in GROUPS else 9, ci, c, r["T"],
            PASSES.index(r["pass"]) if r["pass"] in PASSES else 9)


def _cell(x, digits=3):
    return "-" if x is None else common.fmt_num(x, digits)


def _ratio(x):
    return "-" if x is None else f"{x:.3g}x"


def _diff(r):
    if r.get("max_abs_diff") is None:
        return "n/a" if r.get("diff_note") else "-"
    s = f"{r['max_abs_diff']:.2g}"
    if r.get("grad_max_abs_diff") is not None:
        s += f" (grad {r['grad_max_abs_diff']:.2g})"
    return s


def render(data) -> str:
    rows = sorted(data["rows"], key=_order)
    m = data["meta"]
    out = [f"Peers, {m['device']} ({m.get('cpu') or m.get('gpu')}, {m['threads']} threads, "
           f"torch {m['torch']}, {m['date'][:10]}): milliseconds per call (median), "
           "**ratio = peer ms / memarch ms (> 1: memarch faster)**, sides alternated call by "
           "call; max abs diff = largest |memarch - peer| of the outputs (and of the inputs' "
           "gradients in fwd+bwd rows)."]
    notes = []
    for g in [g for g in GROUPS if any(r["group"] == g for r in rows)]:
        out += ["", f"**{GROUP_TITLES[g]}**", "",
                "| peer (memarch side below) | T | pass | memarch ms | peer ms | ratio (> 1: "
                "memarch faster) | max abs diff | peer version |",
                "|---|---:|---|---:|---:|---:|---:|---|"]
        for r in (r for r in rows if r["group"] == g):
            st = r.get("status", "measured")
            mark = ""
            if st != "measured":
                if st not in notes:
                    notes.append(st)
                mark = f" [{notes.index(st) + 1}]"
            out.append(f"| {r['case']}{mark} | {r['T']:,} | {r['pass'].replace('_', '+')} | "
                       f"{_cell(r.get('memarch_ms'))} | {_cell(r.get('peer_ms'))} | "
                       f"{_ratio(r.get('ratio'))} | {_diff(r)} | "
                       f"{r.get('peer_version') or '-'} |")
        calls = {}
        for r in (r for r in rows if r["group"] == g):
            calls.setdefault(r["case"], (r["memarch_call"], r["peer_call"]))
        out += [""] + [f"- {c}: memarch `{mc}`; peer `{pc}`" for c, (mc, pc) in calls.items()]
    if notes:
        out += [""] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)]
    slow = [r for r in rows if r.get("ratio") is not None and r["ratio"] < 1]
    out += ["", "**Where memarch is slower** (ratio < 1):", ""]
    if not slow:
        out.append("- nowhere in these rows.")
    by_case: dict = {}
    for r in slow:
        by_case.setdefault((r["group"], r["case"]), []).append(r)
    for (_, case), rs in by_case.items():
        where = "; ".join(f"T={r['T']:,} {r['pass'].replace('_', '+')} {_ratio(r['ratio'])} "
                          f"({_cell(r['memarch_ms'])} vs {_cell(r['peer_ms'])} ms)" for r in rs)
        reasons = list(dict.fromkeys(r.get("reason") or "not analysed" for r in rs))
        out.append(f"- {case}: {where}. Why: {' / '.join(reasons)}.")
    shares = [r["others_cpu_share"] for r in rows if r.get("others_cpu_share") is not None]
    if shares:
        out += ["", f"Load: other processes used {min(shares):.0%}-{max(shares):.0%} of the "
                    f"machine's CPUs while the cases ran (1-minute load average "
                    f"{m.get('loadavg', '?')} at the start, {m.get('cpus', '?')} CPUs); "
                    "absolute times move with it, the alternated ratios less (SDPA against "
                    "Attention full runs the same kernel on both sides: its spread around 1x "
                    "is the noise)."]
    return "\n".join(out) + "\n"


def plot(data, stem: Path) -> list[Path]:
    """One horizontal bar per measured row: the ratio on a log axis (right of 1: memarch
    faster)."""
    plt = common.pyplot()
    rows = [r for r in sorted(data["rows"], key=_order) if r.get("ratio")]
    if not rows:
        return []
    colors = {"titans": "tab:purple", "attention": "tab:blue", "fla": "tab:green"}
    fig, ax = plt.subplots(figsize=(9, 0.22 * len(rows) + 1.2))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [r["ratio"] - 1 for r in rows], left=1,
            color=[colors.get(r["group"], "gray") for r in rows])
    ax.set_xscale("log")
    ax.set_yticks(y, [f"{r['case']}, T={r['T']}, {r['pass'].replace('_', '+')}"
                      for r in rows], fontsize=6)
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xlabel("peer ms / memarch ms (log; > 1: memarch faster)")
    ax.set_title(f"memarch vs peers, {data['meta']['device']}, same run, sides alternated")
    fig.tight_layout()
    path = Path(f"{stem}.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="suite peers: utilities (measure with "
                                             "python -m benchmarks peers)")
    ap.add_argument("--render", help="print the markdown of a results file")
    ap.add_argument("--refresh-reasons", metavar="JSON",
                    help="rewrite the rows' reason fields from REASONS (no measuring)")
    a = ap.parse_args()
    if a.refresh_reasons:
        import json
        path = Path(a.refresh_reasons)
        common.write_json(path, refresh_reasons(json.loads(path.read_text())))
    if a.render:
        import json
        print(render(json.loads(Path(a.render).read_text())), end="")
