"""Step 3 of the GPU check: ``impl="triton"`` and ``impl="torch"`` against the naive fp32
reference, per op x dtype x head dim; the tolerance rule; the compiled kernels' registers."""

from __future__ import annotations

import importlib
import sys
import time
import traceback

try:      # a missing torch is reported by preflight() with what to do; triton is not imported here
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

from .env import dev

# relative-error tolerances (see the module docstring)
FP32_TOL = {"out": 4e-4, "grad": 2e-3}
LOWP_FLOOR = {"fp16": {"out": 2e-3, "grad": 4e-3}, "bf16": {"out": 1e-2, "grad": 2e-2}}
LOWP_INPUTS = ("q", "k", "v", "sink_k", "sink_v")    # given in the tested dtype; the rest fp32


# ----------------------------------------------------------------------------- 3. correctness
def correctness_cases(op: str, grid: dict) -> list[dict]:
    """The cases of one (op, dtype, D) task: T, variant, grad and the op's settings."""
    Ts, W, S = grid["Ts"], grid["W"], grid["sinks"]
    longest, first_long = max(Ts), min((t for t in Ts if t > 1), default=None)
    cases = []
    for T in Ts:
        if op == "linear_attn":
            base = dict(T=T, gate=True, init=True)
            if T == 1:
                cases += [dict(base, variant="decode", normalize=False, grad=False),
                          dict(base, variant="decode+normalize", normalize=True, grad=False)]
            cases.append(dict(base, variant="g+S0", normalize=False, grad=True))
            if T > 1:
                cases.append(dict(base, variant="g+S0+normalize", normalize=True, grad=True))
            if grid["variants"] and T == longest:
                cases.append(dict(T=T, gate=False, init=False, normalize=False, grad=True,
                                  variant="plain (no g, no S0)"))
        elif op == "delta_rule":
            base = dict(T=T, gate=True, init=True)
            if T == 1:
                cases.append(dict(base, variant="decode", grad=False))
            cases.append(dict(base, variant="g+beta+S0", grad=True))
            if grid["variants"] and T == longest:
                cases.append(dict(T=T, gate=False, init=False, grad=True,
                                  variant="plain (no g, no S0)"))
        else:
            base = dict(T=T, W=W, sinks=S, gqa=True)
            off = 3 * W
            if T == 1:
                cases.append(dict(base, Tq=1, Tk=W, q_offset=off, grad=False,
                                  variant=f"decode (Tk={W}, offset {off})"))
            cases.append(dict(base, Tq=T, Tk=T, q_offset=0, grad=True, variant="sinks+GQA"))
            if T == first_long:
                cases.append(dict(base, Tq=T, Tk=T + W - 1, q_offset=off, grad=True,
                                  variant=f"chunked prefill (Tk={T + W - 1}, offset {off})"))
            if grid["variants"] and T == longest:
                cases.append(dict(T=T, W=W, sinks=0, gqa=False, Tq=T, Tk=T, q_offset=0,
                                  grad=True, variant="no sinks, no GQA"))
    return cases


def case_inputs(op: str, case: dict, D: int, B: int, H: int, seed: int = 0) -> dict:
    """fp32 CPU inputs of one case (None entries are absent inputs)."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen)
    if op == "sliding_window_attn":
        Hkv = H // 2 if case["gqa"] else H
        x = dict(q=r(B, case["Tq"], H, D), k=r(B, case["Tk"], Hkv, D),
                 v=r(B, case["Tk"], Hkv, D))
        if case["sinks"]:
            x.update(sink_k=r(B, case["sinks"], Hkv, D), sink_v=r(B, case["sinks"], Hkv, D))
        return x
    T = case["T"]
    if op == "linear_attn":
        q, k = r(B, T, H, D), r(B, T, H, D)
        if case["normalize"]:                                  # positive feature maps
            q, k = F.elu(q) + 1, F.elu(k) + 1
        x = dict(q=q, k=k, v=r(B, T, H, D))
    else:
        x = dict(q=F.normalize(r(B, T, H, D), dim=-1), k=F.normalize(r(B, T, H, D), dim=-1),
                 v=r(B, T, H, D), beta=torch.sigmoid(r(B, T, H)))
    if case["gate"]:
        x["g"] = F.logsigmoid(r(B, T, H) + 3.0)
    if case["init"]:
        x["S0"] = r(B, H, D, D)
        if case.get("normalize"):
            x["z0"] = r(B, H, D).abs() * T
    return x


def call_op(op: str, impl: str, x: dict, case: dict) -> dict:
    """One forward; returns {output name: tensor} (outputs and final states)."""
    from memarch.kernels import LinearAttnState, delta_rule, linear_attn, sliding_window_attn
    if op == "linear_attn":
        norm = case["normalize"]
        state = LinearAttnState(x["S0"], x.get("z0")) if norm and "S0" in x else x.get("S0")
        o, st = linear_attn(x["q"], x["k"], x["v"], g=x.get("g"), normalize=norm,
                            initial_state=state, output_final_state=True, impl=impl)
        return dict(o=o, S=st.S, **({"z": st.z} if norm else {}))
    if op == "delta_rule":
        o, S = delta_rule(x["q"], x["k"], x["v"], x["beta"], g=x.get("g"),
                          initial_state=x.get("S0"), output_final_state=True, impl=impl)
        return dict(o=o, S=S)
    o = sliding_window_attn(x["q"], x["k"], x["v"], window=case["W"], q_offset=case["q_offset"],
                            sink_k=x.get("sink_k"), sink_v=x.get("sink_v"), impl=impl)
    return dict(o=o)


def forward_backward(op: str, impl: str, x: dict, case: dict, cot: dict | None):
    """Outputs, and (when cot is given) the gradients of sum(out * cot) w.r.t. every input."""
    if cot is None:
        with torch.no_grad():
            return {n: t.detach() for n, t in call_op(op, impl, x, case).items()}, {}
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    outs = call_op(op, impl, leaves, case)
    loss = sum((outs[n].float() * cot[n]).sum() for n in outs)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {n: t.detach() for n, t in outs.items()}, dict(zip(leaves, grads))


def rel_error(actual, ref) -> dict:
    """max |actual - ref| / max(max |ref|, 1), and whether actual is finite."""
    if actual is None:
        return dict(rel=float("nan"), finite=False, missing=True)
    a, e = actual.float(), ref.float()
    scale = max(e.abs().max().item() if e.numel() else 0.0, 1.0)
    diff = (a - e).abs().max().item() if e.numel() else 0.0
    return dict(rel=diff / scale, finite=bool(torch.isfinite(a).all().item()))


def tolerance(dtype: str, kind: str, torch_err: dict | None) -> float:
    if dtype == "fp32":
        return FP32_TOL[kind]
    base = torch_err["rel"] if torch_err and torch_err["finite"] else 0.0
    return 2 * base + LOWP_FLOOR[dtype][kind]


def decode_calls(op: str) -> int | None:
    """The decode-kernel launch counter of an op's Triton module (None: it has none)."""
    mod = {"linear_attn": "memarch.kernels.linear_attention.triton_chunk",
           "delta_rule": "memarch.kernels.gated_delta_rule.triton_chunk"}.get(op)
    return importlib.import_module(mod).DECODE_CALLS if mod else None


def check_case(op: str, dtype: str, D: int, case: dict, grid: dict) -> dict:
    """One correctness case: errors of triton and torch per tensor, tolerance, pass/fail."""
    device, dt = dev(), getattr(torch, {"fp32": "float32", "fp16": "float16",
                                        "bf16": "bfloat16"}[dtype])
    raw = case_inputs(op, case, D, grid["B"], 4 if op == "sliding_window_attn" else grid["H"])
    low = {n: (t.to(dt) if n in LOWP_INPUTS else t).to(device) for n, t in raw.items()}
    up = {n: t.float() for n, t in low.items()}
    ref_out, _ = forward_backward(op, "naive", up, case, None)
    cot = None
    if case["grad"]:
        gen = torch.Generator().manual_seed(1)
        cot = {n: torch.randn(t.shape, generator=gen).to(device) for n, t in ref_out.items()}
        ref_out, ref_grad = forward_backward(op, "naive", up, case, cot)
    errs, failures = {}, []
    for impl in ("torch", "triton"):
        before = decode_calls(op)
        try:
            out, grad = forward_backward(op, impl, low, case, cot)
        except Exception as e:   # noqa: BLE001 - recorded as a failed case
            errs[impl] = {"error": f"{type(e).__name__}: {e}"[:1000]}
            continue
        errs[impl] = {f"out:{n}": rel_error(out[n], ref_out[n]) for n in ref_out}
        if cot is not None:
            errs[impl].update({f"grad:{n}": rel_error(grad.get(n), ref_grad[n])
                               for n in ref_grad})
        if impl == "triton" and not case["grad"] and before is not None:
            errs[impl]["decode_kernel"] = decode_calls(op) == before + 1
    tensors = {}
    if "error" in errs["triton"]:
        failures.append(f"triton raised {errs['triton']['error']}")
    else:
        for name, e in errs["triton"].items():
            if name == "decode_kernel":
                if not e:
                    failures.append("the decode kernel was not used")
                continue
            torch_err = errs["torch"].get(name) if "error" not in errs["torch"] else None
            tol = tolerance(dtype, name.split(":")[0], torch_err)
            ok = e["finite"] and e["rel"] <= tol
            tensors[name] = dict(triton=e["rel"], torch=torch_err["rel"] if torch_err else None,
                                 tol=tol, finite=e["finite"], ok=ok)
            if not ok:
                failures.append(f"{name} rel {e['rel']:.3g} > tol {tol:.3g}"
                                + ("" if e["finite"] else " (non-finite)"))
    return dict(op=op, dtype=dtype, D=D, **case, tensors=tensors,
                decode_kernel=errs["triton"].get("decode_kernel"),
                torch_error=errs["torch"].get("error"), failures=failures, ok=not failures)


def run_corr_task(op: str, dtype: str, D: int, grid: dict) -> dict:
    """Every case of one (op, dtype, D); returns {cases, kernels}."""
    if dev() == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False     # the naive reference in real fp32
        torch.backends.cudnn.allow_tf32 = False
    cases = []
    for case in correctness_cases(op, grid):
        t0 = time.time()
        try:
            rec = check_case(op, dtype, D, case, grid)
        except Exception as e:   # noqa: BLE001
            rec = dict(op=op, dtype=dtype, D=D, T=case["T"], variant=case["variant"],
                       ok=False, failures=[f"{type(e).__name__}: {e}"[:1000]],
                       traceback=traceback.format_exc()[-2000:])
        rec["seconds"] = round(time.time() - t0, 2)
        cases.append(rec)
        print(f"[{op} {dtype} D={D}] {case['variant']} T={case['T']}: "
              f"{'ok' if rec['ok'] else 'FAIL ' + '; '.join(rec['failures'])} "
              f"({rec['seconds']} s)", file=sys.stderr, flush=True)
    return dict(cases=cases, kernels=compiled_kernels() if dev() == "cuda" else [])


def compiled_kernels() -> list[dict]:
    """Registers and spills of every kernel build this process compiled (Triton metadata)."""
    rows = []
    try:
        from triton.runtime.jit import JITFunction
        mods = [importlib.import_module(f"memarch.kernels.{m}") for m in (
            "linear_attention.triton_chunk", "sliding_window.triton_swa",
            "gated_delta_rule.triton_chunk")]
    except ImportError:
        return rows
    for mod in mods:
        short = mod.__name__.split(".")[-2]
        for name, fn in vars(mod).items():
            if not isinstance(fn, JITFunction):
                continue
            for caches in getattr(fn, "device_caches", {}).values():
                cache = caches[0] if isinstance(caches, tuple) else caches
                for kernel in list(cache.values()):
                    try:
                        kernel._init_handles()
                        rows.append(dict(kernel=f"{short}.{name}", n_regs=kernel.n_regs,
                                         n_spills=kernel.n_spills,
                                         num_warps=kernel.metadata.num_warps,
                                         shared=kernel.metadata.shared))
                    except Exception as e:   # noqa: BLE001 - metadata only
                        rows.append(dict(kernel=f"{short}.{name}", error=str(e)[:200]))
    return rows
