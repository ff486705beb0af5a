"""Step 4 of the GPU check, what is timed: the benchmark inputs and the implementations
(triton, the torch path, the peers) behind one ``Impl``."""

from __future__ import annotations

import importlib
import warnings

try:      # a missing torch is reported by preflight() with what to do; triton is not imported here
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from .env import OPS, dev
from .peers import FLA_HOPPER_REASON, PEER_OPS, fla_backward_blocked, load_fla


def bench_inputs(op: str, B: int, T: int, H: int, D: int, S: int, dtype) -> dict:
    device = dev()
    torch.manual_seed(0)

    def r(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt)
    if op == "linear_attn":
        return dict(q=r(B, T, H, D).abs() * 0.1, k=r(B, T, H, D).abs() * 0.1, v=r(B, T, H, D),
                    g=F.logsigmoid(r(B, T, H, dt=torch.float32) + 3))
    if op == "delta_rule":
        return dict(q=F.normalize(r(B, T, H, D, dt=torch.float32), dim=-1).to(dtype),
                    k=F.normalize(r(B, T, H, D, dt=torch.float32), dim=-1).to(dtype),
                    v=r(B, T, H, D), beta=torch.sigmoid(r(B, T, H, dt=torch.float32)),
                    g=F.logsigmoid(r(B, T, H, dt=torch.float32) + 3))
    return dict(q=r(B, T, H, D), k=r(B, T, H, D), v=r(B, T, H, D), sink_k=r(B, S, H, D),
                sink_v=r(B, S, H, D))


class Impl:
    """One benchmarked implementation: prepare(inputs) -> tensors (outside the timing),
    run(*tensors) -> output [B, T, H, D]; same: computes our function (then its forward is
    compared with triton's); bwd_skip: why fwd+bwd is not timed."""

    def __init__(self, name, run, prepare=None, same=True, note=None, bwd_skip=None, error=None):
        self.name, self.run, self.same, self.note, self.bwd_skip = name, run, same, note, bwd_skip
        self.prepare = prepare or (lambda x: tuple(x.values()))
        self.error = error       # set when the peer could not be set up: measure() raises it


def bench_impls(op: str, T: int, bench: dict, peers: dict, args, *,
                with_torch: bool = True) -> list[Impl]:
    """triton (first: the others' forward is compared with it), the torch path, the peers."""
    from memarch.kernels import delta_rule, linear_attn, sliding_window_attn
    impls, W, S = [], bench["W"], bench["sinks"]
    for impl in ("triton", "torch") if with_torch else ("triton",):
        if op == "linear_attn":
            impls.append(Impl(impl, lambda q, k, v, g, impl=impl: linear_attn(
                q, k, v, g=g, impl=impl)[0]))
        elif op == "delta_rule":
            impls.append(Impl(impl, lambda q, k, v, beta, g, impl=impl: delta_rule(
                q, k, v, beta, g=g, impl=impl)[0]))
        else:
            impls.append(Impl(impl, lambda q, k, v, sk, sv, impl=impl: sliding_window_attn(
                q, k, v, window=W, sink_k=sk, sink_v=sv, impl=impl)))
    builders = {"fla": lambda: fla_impl(op, args),
                "flex_attention": lambda: flex_impl(T, W, S),
                "flash_attn": lambda: flash_attn_impl(W)}
    for name in PEER_OPS[op]:
        if peers[name]["status"] != "ok":
            continue
        try:
            impls.append(builders[name]())
        except Exception as e:   # noqa: BLE001 - a peer that fails to load is reported, not fatal
            impls.append(Impl(name, None, error=f"setup: {type(e).__name__}: {e}"[:500]))
    if op == "sliding_window_attn":
        impls.append(Impl(
            "sdpa full causal (reference)",
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            .transpose(1, 2),
            prepare=lambda x: tuple(x[n].transpose(1, 2).contiguous() for n in "qkv"),
            same=False, note="dense causal attention: T^2 work, no window"))
    return impls


def fla_impl(op: str, args) -> Impl:
    fla = load_fla(args.fla_full_autotune, args.fla_bypass_hopper_check)
    skip = FLA_HOPPER_REASON if fla_backward_blocked() and not args.fla_bypass_hopper_check \
        else None
    note = ("Hopper check bypassed: fwd+bwd is timing only, its gradients are wrong on this "
            "Triton" if args.fla_bypass_hopper_check and fla_backward_blocked() else None)
    if not args.fla_full_autotune:
        note = "; ".join(filter(None, [note, "autotune cut to 2 configs"]))
    if op == "linear_attn":
        f = fla["chunk_simple_gla"]
        return Impl("fla chunk_simple_gla", lambda q, k, v, g: f(q, k, v, g=g)[0],
                    note=note, bwd_skip=skip)
    f = fla["chunk_gated_delta_rule"]
    return Impl("fla chunk_gated_delta_rule", lambda q, k, v, beta, g: f(q, k, v, g, beta)[0],
                note=note, bwd_skip=skip)


def flash_attn_impl(W: int) -> Impl:
    from flash_attn import flash_attn_func
    return Impl("flash_attn (window, no sinks)",
                lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=(W - 1, 0)),
                prepare=lambda x: (x["q"], x["k"], x["v"]), same=False)


def flex_impl(T: int, W: int, S: int) -> Impl:
    """FlexAttention over [sinks; keys] with the mask of sliding_window_attn: key j visible to
    query i iff i - W < j <= i, sink s iff s <= i - W. Compiled on CUDA; eager (forward only)
    on the CPU."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def mask(b, h, qi, ki):
        j = ki - S
        return ((ki < S) & (ki <= qi - W)) | ((ki >= S) & (j <= qi) & (j > qi - W))
    block_mask = create_block_mask(mask, None, None, T, S + T, device=dev())
    if dev() == "cuda":
        cfg = importlib.import_module("torch._dynamo").config   # a compile per shape, grad mode
        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(cfg, knob):
                setattr(cfg, knob, max(getattr(cfg, knob), 64))
        fn = torch.compile(flex_attention, dynamic=False)
    else:
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        fn = flex_attention

    def prepare(x):
        return (x["q"].transpose(1, 2).contiguous(),
                torch.cat([x["sink_k"], x["k"]], 1).transpose(1, 2).contiguous(),
                torch.cat([x["sink_v"], x["v"]], 1).transpose(1, 2).contiguous())
    return Impl("flex_attention (window + sinks)",
                lambda q, k, v: fn(q, k, v, block_mask=block_mask).transpose(1, 2),
                prepare=prepare, note=None if dev() == "cuda" else "eager")


def bench_dtype(bench: dict):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[bench["dtype"]]


def bench_ops(D: int) -> list[str]:
    return [op for op in OPS if D <= max_triton_dim(op)]


def max_triton_dim(op: str) -> int:
    mod = {"linear_attn": "linear_attention", "delta_rule": "gated_delta_rule",
           "sliding_window_attn": "sliding_window"}[op]
    return importlib.import_module(f"memarch.kernels.{mod}").MAX_TRITON_DIM
