"""Op benchmarks: forward and forward+backward time and peak memory against sequence length.

    python benchmarks/ops.py                # CPU: naive vs torch -> results/ops_cpu.{json,png,md}
    python benchmarks/ops.py --device cuda        # GPU: triton vs torch vs peers (fla, SDPA, Flex)
    python benchmarks/ops.py --render results/ops_cpu.json    # markdown table from a JSON
    python benchmarks/ops.py --plot results/ops_cpu.json      # redraw the PNG beside a JSON

Ops: linear_attn (B=1, H=4, K=V=64, with decay g), sliding_window_attn (B=1, H=4, D=64,
W=64, 4 sinks), delta_rule (B=1, H=4, K=V=64, L2-normalised q/k, beta, decay g), and the MoM
layer for both cells (B=1, d_model=256, 4 heads, 4 memories, top-2, shared memory; fwd+bwd
includes the parameters' gradients; its table adds tokens/s). Peers are imported optionally
(flash-linear-attention's chunk_linear_attn, fused_chunk_linear_attn and parallel_based;
PyTorch SDPA with a banded mask; FlexAttention with a sliding-window block mask) and skipped
when missing. Time is the median of `reps` runs after warm-up (naive: 1 run, no warm-up, it
is a token loop). Peak memory is the extra memory a run needs beyond its inputs:
torch.cuda.max_memory_allocated on GPU, the profiler's allocation trace on CPU (its C-level
stderr chatter, ``USDT:... profiler_start``, is silenced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from memarch.kernels import delta_rule, linear_attn, sliding_window_attn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import RESULTS, peak_bytes, time_s  # noqa: E402

NAIVE_MAX_T = 4096


# ----------------------------------------------------------------------------- measuring
# the shared helpers live in common.py (also used by the results suites)
def _time(fn, device, reps, warmup):
    """Median milliseconds of ``fn()`` (``common.time_s`` in ms)."""
    return time_s(fn, device, reps, warmup) * 1e3


def measure(make_inputs, run, device, reps, warmup):
    """run(*inputs) -> tensor(s); returns fwd_ms, fwd_bwd_ms, peak_mb (fwd+bwd)."""
    inputs = make_inputs()

    def fwd():
        with torch.no_grad():
            run(*inputs)

    def fwd_bwd():
        ins = [x.detach().requires_grad_() if x.is_floating_point() else x for x in inputs]
        out = run(*ins)
        out = out if isinstance(out, torch.Tensor) else out[0]
        out.float().square().mean().backward()

    f = _time(fwd, device, reps, warmup)
    fb = _time(fwd_bwd, device, reps, warmup)
    return f, fb, peak_bytes(fwd_bwd, device) / 2**20


# ----------------------------------------------------------------------------- cases
def linear_attn_cases(device, T, dtype, B=1, H=4, K=64, V=64):
    def mk():
        q = torch.randn(B, T, H, K, device=device, dtype=dtype).abs()
        k = torch.randn(B, T, H, K, device=device, dtype=dtype).abs()
        v = torch.randn(B, T, H, V, device=device, dtype=dtype)
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=device) + 3)
        return q, k, v, g
    impls = {}
    for impl in (["naive", "torch"] if device == "cpu" else ["torch", "triton"]):
        impls[impl] = lambda q, k, v, g, impl=impl: linear_attn(q, k, v, g=g, impl=impl)[0]
    if device == "cuda":
        try:  # flash-linear-attention, optional peer (no decay in chunk_linear_attn)
            from fla.ops.based import parallel_based
            from fla.ops.linear_attn import chunk_linear_attn, fused_chunk_linear_attn
            impls["fla_chunk_linear_attn"] = lambda q, k, v, g: chunk_linear_attn(
                q, k, v, normalize=False)[0]
            impls["fla_fused_chunk_linear_attn"] = lambda q, k, v, g: fused_chunk_linear_attn(
                q, k, v, normalize=False)[0]
            impls["fla_parallel_based(K=16)"] = lambda q, k, v, g: parallel_based(
                q[..., :16], k[..., :16], v)
        except Exception as e:   # noqa: BLE001
            print(f"flash-linear-attention not available: {e}", file=sys.stderr)
    return mk, impls


def delta_rule_cases(device, T, dtype, B=1, H=4, K=64, V=64):
    F = torch.nn.functional

    def mk():
        q = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype)
        k = F.normalize(torch.randn(B, T, H, K, device=device), dim=-1).to(dtype)
        v = torch.randn(B, T, H, V, device=device, dtype=dtype)
        beta = torch.sigmoid(torch.randn(B, T, H, device=device))
        g = F.logsigmoid(torch.randn(B, T, H, device=device) + 3)
        return q, k, v, beta, g
    impls = {}
    for impl in (["naive", "torch"] if device == "cpu" else ["torch", "triton"]):
        impls[impl] = lambda q, k, v, beta, g, impl=impl: delta_rule(q, k, v, beta, g=g,
                                                                      impl=impl)[0]
    if device == "cuda":
        try:  # flash-linear-attention, optional peer
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            impls["fla_chunk_gated_delta_rule"] = lambda q, k, v, beta, g: (
                chunk_gated_delta_rule(q, k, v, g, beta)[0])
        except Exception as e:   # noqa: BLE001
            print(f"flash-linear-attention not available: {e}", file=sys.stderr)
    return mk, impls


def mom_cases(cell):
    """The MoM layer (memarch.mixers.MoM) with kernel impl torch (CPU) or triton (GPU)."""
    def cases(device, T, dtype, B=1, D=256):
        from memarch.mixers import MoM

        def mk():
            return (torch.randn(B, T, D, device=device, dtype=dtype),)
        impls = {}
        for impl in (["torch"] if device == "cpu" else ["torch", "triton"]):
            torch.manual_seed(0)
            m = MoM(D, n_heads=4, n_memories=4, topk=2, cell=cell, impl=impl).to(device)
            impls[impl] = lambda x, m=m: m(x.to(dtype)).y
        return mk, impls
    return cases


def sliding_window_cases(device, T, dtype, B=1, H=4, D=64, W=64, S=4):
    def mk():
        r = lambda *s: torch.randn(*s, device=device, dtype=dtype)
        return r(B, T, H, D), r(B, T, H, D), r(B, T, H, D), r(B, S, H, D), r(B, S, H, D)
    impls = {}
    for impl in (["naive", "torch"] if device == "cpu" else ["torch", "triton"]):
        impls[impl] = lambda q, k, v, sk, sv, impl=impl: sliding_window_attn(
            q, k, v, window=W, sink_k=sk, sink_v=sv, impl=impl)
    if device == "cuda":
        import torch.nn.functional as F
        def sdpa(q, k, v, sk, sv):
            i = torch.arange(T, device=device)
            m = (i[None] <= i[:, None]) & (i[None] > i[:, None] - W)
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                  v.transpose(1, 2), attn_mask=m)
        impls["sdpa_banded_mask(no sinks)"] = sdpa
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            bm = create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (ki > qi - W), None, None,
                                   T, T, device=device)
            flex = torch.compile(flex_attention)
            impls["flex_attention(no sinks)"] = lambda q, k, v, sk, sv: flex(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm)
        except Exception as e:   # noqa: BLE001
            print(f"FlexAttention not available: {e}", file=sys.stderr)
    return mk, impls


# ----------------------------------------------------------------------------- run + report
def run_all(device, Ts, reps, dtype):
    rows = []
    for op, cases in (("linear_attn", linear_attn_cases),
                      ("sliding_window_attn", sliding_window_cases),
                      ("delta_rule", delta_rule_cases),
                      ("mom_layer_gated_delta", mom_cases("gated_delta")),
                      ("mom_layer_linear", mom_cases("linear"))):
        for T in Ts:
            mk, impls = cases(device, T, dtype)
            for name, fn in impls.items():
                if name == "naive" and T > NAIVE_MAX_T:
                    continue
                slow = name == "naive"
                try:
                    f, fb, mb = measure(mk, fn, device, 1 if slow else reps, 0 if slow else 1)
                except Exception as e:   # noqa: BLE001
                    print(f"{op} {name} T={T}: failed: {e}", file=sys.stderr)
                    continue
                rows.append(dict(op=op, impl=name, T=T, fwd_ms=round(f, 3),
                                 fwd_bwd_ms=round(fb, 3), peak_mb=round(mb, 2)))
                print(f"{op:20s} {name:28s} T={T:6d} fwd {f:9.2f} ms  fwd+bwd {fb:9.2f} ms  "
                      f"peak {mb:8.1f} MB", flush=True)
    return rows


def speedups(rows, base="naive", fast="torch"):
    out = {}
    for r in rows:
        if r["impl"] != fast:
            continue
        b = [x for x in rows if x["op"] == r["op"] and x["T"] == r["T"] and x["impl"] == base]
        if b:
            out[f"{r['op']}@T={r['T']}"] = dict(
                fwd=round(b[0]["fwd_ms"] / r["fwd_ms"], 1),
                fwd_bwd=round(b[0]["fwd_bwd_ms"] / r["fwd_bwd_ms"], 1))
    return out


def render(data) -> str:
    """Markdown tables (one per op) from a results dict or JSON path."""
    if isinstance(data, (str, Path)):
        data = json.loads(Path(data).read_text())
    m = data["meta"]
    lines = [f"Device: {m.get('gpu') or m.get('cpu')} ({m['device']}), torch {m['torch']}, "
             f"triton {m.get('triton')}, {m['threads']} thread(s), {m['date']}", ""]
    for op in dict.fromkeys(r["op"] for r in data["results"]):
        layer = op.startswith("mom_layer")
        lines += [f"### {op} ({data['shapes'].get(op, '')})", "",
                  "| impl | T | fwd ms | fwd+bwd ms | peak MB (fwd+bwd) |"
                  + (" fwd+bwd tokens/s |" if layer else ""),
                  "|---|---:|---:|---:|---:|" + ("---:|" if layer else "")]
        for r in (r for r in data["results"] if r["op"] == op):
            tps = f" {r['T'] / r['fwd_bwd_ms'] * 1e3:,.0f} |" if layer else ""
            lines.append(f"| {r['impl']} | {r['T']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} "
                         f"| {r['peak_mb']:.1f} |{tps}")
        lines.append("")
    if data.get("speedups"):
        lines += ["Speedup torch vs naive:", "", "| case | fwd | fwd+bwd |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['fwd']}x | {v['fwd_bwd']}x |" for k, v in data["speedups"].items()]
    return "\n".join(lines) + "\n"


def plot(data, path):
    """Time and peak memory against T (log2 axis, one labelled tick per measured T)."""
    if isinstance(data, (str, Path)):
        data = json.loads(Path(data).read_text())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    Ts = sorted({r["T"] for r in data["results"]})
    label = FuncFormatter(lambda x, _: f"{x / 1024:g}k" if x >= 1024 else f"{x:g}")
    ops = list(dict.fromkeys(r["op"] for r in data["results"]))
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 4 * len(ops)), squeeze=False)
    for row, op in zip(axes, ops):
        for impl in dict.fromkeys(r["impl"] for r in data["results"] if r["op"] == op):
            rs = [r for r in data["results"] if r["op"] == op and r["impl"] == impl]
            row[0].plot([r["T"] for r in rs], [r["fwd_bwd_ms"] for r in rs], "o-", label=impl)
            row[1].plot([r["T"] for r in rs], [r["peak_mb"] for r in rs], "o-", label=impl)
        for ax, what in zip(row, ("fwd+bwd time (ms)", "peak memory, fwd+bwd (MB)")):
            ax.set(yscale="log", xlabel="T (sequence length)", ylabel=what, title=op)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(Ts))
            ax.xaxis.set_major_formatter(label)
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"memarch ops on {data['meta'].get('gpu') or data['meta']['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--T", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default 1)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) | bfloat16 (GPU default)")
    ap.add_argument("--out", default=None, help="JSON path (default results/ops_<device>.json)")
    ap.add_argument("--render", default=None, help="print the markdown table of a JSON and exit")
    ap.add_argument("--plot", default=None, help="redraw FILE.png from FILE.json and exit")
    a = ap.parse_args(argv)
    if a.render:
        print(render(a.render))
        return
    if a.plot:
        plot(a.plot, Path(a.plot).with_suffix(".png"))
        print(f"wrote {Path(a.plot).with_suffix('.png')}")
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    Ts = a.T or ([256, 512, 1024, 2048, 4096, 8192] if a.device == "cpu"
                 else [2048, 8192, 32768])
    dtype = getattr(torch, a.dtype or ("float32" if a.device == "cpu" else "bfloat16"))
    rows = run_all(a.device, Ts, a.reps, dtype)
    data = dict(meta=common.meta(a.device, a.threads, command=common.script_command()),
                shapes=dict(linear_attn=f"B=1, H=4, K=V=64, decay g, {dtype}",
                            sliding_window_attn=f"B=1, H=4, D=64, W=64, 4 sinks, {dtype}",
                            delta_rule=f"B=1, H=4, K=V=64, beta, decay g, {dtype}",
                            **{f"mom_layer_{c}": f"B=1, d_model=256, 4 heads, 4 memories, "
                               f"top-2, shared memory, {c} cell, {dtype}"
                               for c in ("gated_delta", "linear")}),
                results=rows, speedups=speedups(rows))
    if a.device == "cpu":
        data["gpu"] = dict(status="not measured", reason=(
            "no GPU was lent to this session (device status: can_start_another=false); the "
            "GPU acceptance figures (triton vs fla / FlexAttention, decode bandwidth) are "
            "left to a later issue: run `python benchmarks/ops.py --device cuda`"))
    out = Path(a.out or RESULTS / f"ops_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    plot(data, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(render(data))
    print(render(data))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "0")
    main()
