"""GPU check: memarch's Triton kernels on a CUDA device, against the naive fp32 reference and
against their peers (issue 16).

    python3 -m pip install --no-deps --no-build-isolation -e . && make gpu-check
    python3 benchmarks/gpu_check.py [--quick | --full] [--out DIR] [--jobs N] [--wheels DIR]
    python3 benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check    # CPU: every step, tiny

Steps (each a function below):

1. ``preflight``: unsets TRITON_INTERPRET (``--dry-run``: sets it to 1) before anything
   imports triton, stops at once with what to do when torch has no CUDA device, then imports
   triton and memarch.kernels. Only torch, triton, memarch.kernels and the peers are imported.
2. ``prepare_peers``: flash-linear-attention (``fla-core``), flash-attn and FlexAttention
   (part of torch). A missing peer is installed with pip (from PyPI, or from ``--wheels DIR``
   offline); when that fails the peer is skipped with the reason, never the whole check.
3. ``run_correctness``: for each op x dtype (fp32, fp16, bf16) x head dim, ``impl="triton"``
   and ``impl="torch"`` on inputs in that dtype against ``impl="naive"`` on the same inputs
   up-cast to fp32 (TF32 off): outputs, final states and the gradients of every input (fixed
   random cotangents), prefill (T > 1), T = 1 with gradients, and decode (T = 1 without
   gradients: the fused decode kernels, whose launch is checked; sliding window: one query
   over a window of cached keys). Relative error = max |x - ref| / max(max |ref|, 1).
   Tolerances: fp32 <= 4e-4 (outputs) / 2e-3 (gradients); fp16 and bf16 <= 2 x the torch
   path's error (same inputs, fp32 arithmetic) + a floor of 2e-3 / 4e-3 (fp16) or
   1e-2 / 2e-2 (bf16). Tasks run in ``--jobs`` parallel processes (Triton compiles dominate),
   together with warm-up tasks that compile the benchmark's kernels.
4. ``run_benchmarks``: forward and forward+backward time (CUDA events, median of reps after
   warm-up) and peak extra memory of fwd+bwd, one op at a time, for triton, the torch path
   and the peers: fla's chunk_simple_gla (linear_attn with decay) and chunk_gated_delta_rule,
   FlexAttention with a sliding-window + sinks block mask (the same function as ours),
   flash-attn's ``flash_attn_func(..., window_size=(W-1, 0))`` (no sinks) and SDPA full causal
   attention (a reference for the cost of dense attention). Peers of the same function report
   their forward's relative difference from triton. fla refuses its gated backward on Hopper
   with Triton < 3.7.1 (its gradients come out wrong there, fla #640): that fwd+bwd is skipped
   with the reason (``--fla-bypass-hopper-check`` times it anyway, timing only).
5. ``write_report`` / ``print_tables``: ``<out>/gpu_check-<device>.json`` (top-level ``meta``:
   device, torch, triton, cuda, date, command) and ``.log``; a correctness table and a
   benchmark table on stdout.

Grids: ``--quick`` (default; about 4 minutes on an H100/H200, mostly Triton compiles): D in
{64, 128}, T in {1, 65, 1000}; benchmark bf16, B=4, H=8, D in {64, 128}, T=16384, sliding
window W=512 with 4 sinks. ``--full``: D in {32, 64, 128, 256} (delta_rule <= 128), T in
{1, 63, 64, 65, 1000} plus variants without decay / initial state / sinks; benchmark T in
{4096, 16384, 65536}. ``--time-limit S`` stops correctness tasks 0.3 S (at least 30 s) before
the end and starts no benchmark case in the last 10 s, reporting what did not run.

``--dry-run``: D=16, T in {1, 40}, benchmark T=64 in fp32, on the CPU through the Triton
interpreter; in-process unless ``--jobs`` > 1; fla and flash-attn are skipped (CUDA only),
FlexAttention runs its eager forward (its backward is skipped, with the reason).

Exit status: 0 all correct; 1 a correctness case failed or did not run, or one of our kernels
failed in the benchmark (a peer's failure is reported, never fatal); 2 could not start (no
CUDA, no torch/triton, memarch not installed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

try:      # a missing torch is reported by preflight() with what to do; triton is not imported here
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = F = None

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OPS = ("linear_attn", "sliding_window_attn", "delta_rule")
DTYPES = ("fp32", "fp16", "bf16")
INSTALL_HINT = "python3 -m pip install --no-deps --no-build-isolation -e ."

GRIDS = {
    "quick": dict(Ds=(64, 128), Ts=(1, 65, 1000), B=2, H=2, W=100, sinks=3, variants=False,
                  bench=dict(B=4, H=8, Ds=(64, 128), Ts=(16384,), W=512, sinks=4,
                             dtype="bf16", reps=5, warmup=2)),
    "full": dict(Ds=(32, 64, 128, 256), Ts=(1, 63, 64, 65, 1000), B=2, H=2, W=100, sinks=3,
                 variants=True,
                 bench=dict(B=4, H=8, Ds=(64, 128), Ts=(4096, 16384, 65536), W=512, sinks=4,
                            dtype="bf16", reps=5, warmup=2)),
    "dry-run": dict(Ds=(16,), Ts=(1, 40), B=1, H=2, W=8, sinks=2, variants=False,
                    bench=dict(B=1, H=2, Ds=(16,), Ts=(64,), W=16, sinks=2, dtype="fp32",
                               reps=1, warmup=1)),
}

# relative-error tolerances (see the module docstring)
FP32_TOL = {"out": 4e-4, "grad": 2e-3}
LOWP_FLOOR = {"fp16": {"out": 2e-3, "grad": 4e-3}, "bf16": {"out": 1e-2, "grad": 2e-2}}
LOWP_INPUTS = ("q", "k", "v", "sink_k", "sink_v")    # given in the tested dtype; the rest fp32

PEERS = {   # name -> import name, pip package (None: part of torch), what it is compared with
    "fla": dict(module="fla", pip="fla-core", dists=("flash-linear-attention",),
                ops="linear_attn (chunk_simple_gla), delta_rule (chunk_gated_delta_rule)"),
    "flash_attn": dict(module="flash_attn", pip="flash-attn", dists=("flash_attn",),
                       ops="sliding_window_attn (flash_attn_func, window_size=(W-1, 0), no sinks)"),
    "flex_attention": dict(module="torch.nn.attention.flex_attention", pip=None,
                           ops="sliding_window_attn (sliding-window + sinks block mask)"),
}
PEER_OPS = {"linear_attn": ("fla",), "delta_rule": ("fla",),
            "sliding_window_attn": ("flex_attention", "flash_attn")}
FLA_HOPPER_REASON = ("fla refuses its gated backward on Hopper with Triton < 3.7.1 (its gradients "
                     "come out wrong there, fla #640): fwd+bwd not timed; use Triton >= 3.7.1 "
                     "(torch 2.13) or --fla-bypass-hopper-check for timing only")

_LOG = None   # the log file beside the JSON, opened by main()
_LOG_LOCK = threading.Lock()
_DEVICE = "cpu"


def log(*parts):
    """Print to stdout and to the log file."""
    line = " ".join(str(p) for p in parts)
    with _LOG_LOCK:                        # worker threads report their tasks
        print(line, flush=True)
        if _LOG is not None:
            _LOG.write(line + "\n")
            _LOG.flush()


def version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def dev() -> str:
    """Where the check runs: "cuda", or "cpu" for --dry-run (set by preflight)."""
    return _DEVICE


# ----------------------------------------------------------------------------- 1. preflight
class CannotRun(Exception):
    """The check cannot start here; the message says what to do."""


def preflight(dry_run: bool) -> dict:
    """Sets TRITON_INTERPRET, checks CUDA, imports triton and memarch.kernels. Returns meta."""
    global _DEVICE
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"          # before memarch.kernels / triton import
    elif os.environ.pop("TRITON_INTERPRET", None) is not None:
        log("note: TRITON_INTERPRET was set; unset it so the kernels compile for the GPU")
    if "triton" in sys.modules and not dry_run:
        raise CannotRun("triton was imported before TRITON_INTERPRET could be unset")
    if torch is None:
        raise CannotRun(
            f"{sys.executable} cannot import torch. Run the check with a Python that has a "
            "CUDA build of torch and triton (GPU machines: torch 2.11 + triton 3.6, or torch "
            "2.13 + triton 3.7.1), e.g. `make gpu-check GPU_PY=/path/to/python`, after "
            f"`{INSTALL_HINT}` with that Python.")
    if not dry_run and not torch.cuda.is_available():
        raise CannotRun(
            f"no CUDA device found (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}). This check runs the Triton kernels on an NVIDIA GPU: run "
            f"`{INSTALL_HINT} && make gpu-check` on a machine with one. Here, `make gpu-check "
            "GPU_PY=.venv/bin/python ARGS=--dry-run` runs its steps on the CPU with tiny sizes "
            "(Triton interpreter), and `make test` runs the kernel tests.")
    _DEVICE = "cpu" if dry_run else "cuda"
    try:
        import triton
    except ImportError as e:
        raise CannotRun(f"cannot import triton ({e}): install the triton that matches torch "
                        "(torch 2.11 + triton 3.6, or torch 2.13 + triton 3.7.1)") from e
    try:
        import memarch.kernels  # noqa: F401
    except ImportError as e:
        raise CannotRun(f"cannot import memarch.kernels ({e}): run `{INSTALL_HINT}` in the "
                        "repository first") from e
    meta = dict(device=torch.cuda.get_device_name() if not dry_run else "cpu (dry run)",
                capability=list(torch.cuda.get_device_capability()) if not dry_run else None,
                memory_gib=(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                            if not dry_run else None),
                torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                command=shlex.join([sys.executable, *sys.argv]),
                triton_interpret=os.environ.get("TRITON_INTERPRET"))
    try:
        meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                        capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        meta["commit"] = None
    return meta


def device_slug(meta: dict) -> str:
    if meta["capability"] is None:
        return "cpu-dry-run"
    return re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-") or "cuda"


# ----------------------------------------------------------------------------- 2. peers
def pip_install(package: str, wheels: str | None, timeout: int = 300) -> tuple[bool, str]:
    """pip install one package (binary wheels only) into this Python, keeping its torch and
    triton (a constraints file pins them). Returns (ok, pip's last lines)."""
    import triton
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(f"torch=={torch.__version__}\ntriton=={triton.__version__}\n")
        constraints = f.name
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--retries", "0", "--timeout", "15", "--only-binary", ":all:", "-c", constraints]
    if wheels:
        cmd += ["--no-index", "--find-links", str(Path(wheels).resolve())]
    try:
        p = subprocess.run(cmd + [package], capture_output=True, text=True, timeout=timeout)
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
        return p.returncode == 0, tail
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        os.unlink(constraints)


def installed_version(name: str) -> str | None:
    """The peer's version, without importing it (importing fla runs its autotune decorators,
    which load_fla must see first); None when it is not installed."""
    spec = PEERS[name]
    try:
        if importlib.util.find_spec(spec["module"]) is None:
            return None
    except (ImportError, ValueError):
        return None
    if spec["pip"] is None:
        return torch.__version__
    for dist in (spec["pip"], *spec.get("dists", ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


def prepare_peer(name: str, *, dry_run: bool, install: bool, wheels: str | None) -> dict:
    """Find a peer, pip-installing it when missing. Returns {status: ok|skipped, version,
    reason, installed}; never raises."""
    spec = PEERS[name]
    rec = dict(status="skipped", version=None, reason=None, installed=False, ops=spec["ops"])
    if dry_run and spec["pip"]:
        rec["reason"] = "dry run: a CUDA-only package, not installed or run on the CPU"
        return rec
    version = installed_version(name)
    if version is None:
        if spec["pip"] is None:
            rec["reason"] = f"not in this torch ({torch.__version__})"
            return rec
        if not install:
            rec["reason"] = f"not installed (--no-install): pip install {spec['pip']}"
            return rec
        log(f"peer {name}: not installed; pip install {spec['pip']}"
            + (f" from {wheels}" if wheels else " from PyPI"))
        ok, out = pip_install(spec["pip"], wheels)
        importlib.invalidate_caches()
        version = installed_version(name) if ok else None
        if version is None:
            rec["reason"] = (f"pip install {spec['pip']} failed: {out}" if not ok else
                             f"pip installed {spec['pip']} but {spec['module']} is not found")
            return rec
        rec["installed"] = True
    rec.update(status="ok", version=version)
    if name == "fla" and fla_backward_blocked():
        rec["note"] = FLA_HOPPER_REASON
    return rec


def prepare_peers(args) -> dict:
    peers = {}
    for name in PEERS:
        peers[name] = prepare_peer(name, dry_run=args.dry_run, install=not args.no_install,
                                   wheels=args.wheels)
        p = peers[name]
        log(f"peer {name}: {p['status']}"
            + (f" {p['version']}" if p["version"] else "")
            + (" (installed now)" if p["installed"] else "")
            + (f": {p['reason']}" if p["reason"] else "")
            + (f" [{p['note']}]" if p.get("note") else ""))
    return peers


def fla_backward_blocked() -> bool:
    """fla 0.6 raises in its gated backward on Hopper (sm_90) with 3.4 <= Triton < 3.7.1."""
    import triton
    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
            and (3, 4, 0) <= version_tuple(triton.__version__) < (3, 7, 1))


def load_fla(full_autotune: bool, bypass_hopper_check: bool) -> dict:
    """fla's two ops. Unless full_autotune, each fla kernel autotunes over its 2 configs
    closest to 4 warps / 2 stages (the full sweep costs minutes of compiles): fla's times are
    then untuned, but cheap to take."""
    import triton
    original = triton.autotune

    def cut_autotune(configs, key, *a, **kw):
        def distance(c):
            return abs(c.num_warps.bit_length() - 3), abs((c.num_stages or 2) - 2)
        return original(sorted(configs, key=distance)[:2], key, *a, **kw)

    if not full_autotune:
        triton.autotune = cut_autotune
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.simple_gla import chunk_simple_gla
    finally:
        triton.autotune = original
    if bypass_hopper_check:
        importlib.import_module("fla.ops.common.chunk_o").TRITON_ABOVE_3_7_1 = True
    return dict(chunk_simple_gla=chunk_simple_gla, chunk_gated_delta_rule=chunk_gated_delta_rule)


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
    mod = {"linear_attn": "memarch.kernels.linear_attn.triton_chunk",
           "delta_rule": "memarch.kernels.delta_rule.triton_chunk"}.get(op)
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
            "linear_attn.triton_chunk", "sliding_window.triton_swa", "delta_rule.triton_chunk")]
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


# ----------------------------------------------------------------------------- 4. benchmarks
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


def time_ms(fn, reps: int, warmup: int) -> float:
    """Median milliseconds of fn() over reps runs after warmup runs (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if dev() == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(impl: Impl, inputs: dict, reps: int, warmup: int, ref=None) -> dict:
    """fwd (no grad) and fwd+bwd times, peak extra memory of fwd+bwd, diff from ref."""
    if impl.error:
        raise RuntimeError(impl.error)
    args = impl.prepare(inputs)
    row = dict(impl=impl.name, note=impl.note)
    with torch.no_grad():
        out = impl.run(*args)
    if ref is not None and impl.same:
        row["rel_diff_vs_triton"] = rel_error(out, ref)["rel"]

    def fwd():
        with torch.no_grad():
            impl.run(*args)
    row["fwd_ms"] = time_ms(fwd, reps, warmup)
    if impl.bwd_skip:
        row["bwd_skipped"] = impl.bwd_skip
        return row
    leaves = [a.detach().requires_grad_() for a in args]
    cot = torch.randn_like(out)

    def fwd_bwd():
        for leaf in leaves:
            leaf.grad = None
        impl.run(*leaves).backward(cot)
    try:
        row["fwd_bwd_ms"] = time_ms(fwd_bwd, reps, warmup)
    except Exception as e:   # noqa: BLE001 - a peer without a backward here
        row["bwd_skipped"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        return row
    if dev() == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        row["peak_mb"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)
    return row


def bench_dtype(bench: dict):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[bench["dtype"]]


def bench_ops(D: int) -> list[str]:
    return [op for op in OPS if D <= max_triton_dim(op)]


def max_triton_dim(op: str) -> int:
    mod = {"linear_attn": "linear_attn", "delta_rule": "delta_rule",
           "sliding_window_attn": "sliding_window"}[op]
    return importlib.import_module(f"memarch.kernels.{mod}").MAX_TRITON_DIM


def run_warm_task(op: str, D: int, bench: dict, peers: dict, args) -> dict:
    """Compile (Triton's and Inductor's disk caches) what the benchmark of (op, D) runs:
    triton and the peers, one fwd and one fwd+bwd at each benchmark T, not timed."""
    done = []
    for T in bench["Ts"]:
        inputs = bench_inputs(op, bench["B"], T, bench["H"], D, bench["sinks"], bench_dtype(bench))
        try:
            impls = bench_impls(op, T, bench, peers, args, with_torch=False)
        except Exception as e:   # noqa: BLE001 - the benchmark step reports it
            done.append(dict(T=T, error=f"{type(e).__name__}: {e}"[:300]))
            continue
        for impl in impls:
            t0 = time.time()
            try:
                measure(impl, inputs, reps=1, warmup=0)
                done.append(dict(T=T, impl=impl.name, seconds=round(time.time() - t0, 1)))
            except Exception as e:   # noqa: BLE001
                done.append(dict(T=T, impl=impl.name, error=f"{type(e).__name__}: {e}"[:300]))
        del inputs
    return dict(warm=done)


def run_benchmarks(grid: dict, peers: dict, args, report: dict, save) -> list[dict]:
    """One op at a time (nothing else on the GPU): rows of bench_impls' times."""
    bench = grid["bench"]
    rows = report["benchmark"]["rows"]
    deadline = args.t_start + args.time_limit - 10 if args.time_limit else None
    for D in bench["Ds"]:
        for T in bench["Ts"]:
            for op in (o for o in args.ops if o in bench_ops(D)):
                if deadline is not None and time.time() > deadline:
                    report["benchmark"]["not_run"].append(dict(op=op, D=D, T=T))
                    continue
                try:
                    inputs = bench_inputs(op, bench["B"], T, bench["H"], D, bench["sinks"],
                                          bench_dtype(bench))
                    impls = bench_impls(op, T, bench, peers, args)
                except Exception as e:   # noqa: BLE001
                    rows.append(dict(op=op, D=D, T=T, impl="(setup)", ours=True,
                                     error=f"{type(e).__name__}: {e}"[:500]))
                    continue
                ref = None
                for impl in impls:
                    row = dict(op=op, D=D, T=T, impl=impl.name,
                               ours=impl.name in ("triton", "torch"))
                    try:
                        row.update(measure(impl, inputs, bench["reps"], bench["warmup"], ref))
                        if impl.name == "triton":
                            with torch.no_grad():
                                ref = impl.run(*impl.prepare(inputs)).float()
                    except Exception as e:   # noqa: BLE001
                        row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:500]
                    rows.append(row)
                    log(bench_line(row))
                    save()
                del inputs, ref
                if dev() == "cuda":
                    torch.cuda.empty_cache()
    return rows


def bench_line(row: dict) -> str:
    def ms(key):
        return f"{row[key]:9.3f}" if row.get(key) is not None else f"{'-':>9s}"
    tail = row.get("error") or row.get("bwd_skipped") or ""
    return (f"  bench {row['op']:19s} D={row['D']:<3d} T={row['T']:<6d} {row['impl']:32s} "
            f"fwd {ms('fwd_ms')} ms  fwd+bwd {ms('fwd_bwd_ms')} ms  {tail}")


# ----------------------------------------------------------------------------- task runner
def corr_tasks(grid: dict, ops, dtypes) -> list[dict]:
    """(op, dtype, D) tasks, slowest first (sliding window, fp32, wide heads compile longest)."""
    tasks = [dict(kind="corr", op=op, dtype=dt, D=D) for op in ops for dt in dtypes
             for D in grid["Ds"] if D <= max_triton_dim(op)]
    cost = {"sliding_window_attn": 0, "linear_attn": 1, "delta_rule": 2}
    return sorted(tasks, key=lambda t: (cost[t["op"]], DTYPES.index(t["dtype"]), -t["D"]))


def warm_tasks(grid: dict, ops) -> list[dict]:
    return [dict(kind="warm", op=op, D=D) for D in grid["bench"]["Ds"] for op in ops
            if op in bench_ops(D)]


def run_task(task: dict, grid: dict, peers: dict, args) -> dict:
    if task["kind"] == "corr":
        return run_corr_task(task["op"], task["dtype"], task["D"], grid)
    return run_warm_task(task["op"], task["D"], grid["bench"], peers, args)


def task_name(task: dict) -> str:
    return " ".join(str(task[k]) for k in ("kind", "op", "dtype", "D") if k in task)


def run_tasks(tasks: list[dict], grid: dict, peers: dict, args,
              deadline: float | None) -> list[tuple[dict, dict]]:
    """Run tasks in this process (jobs <= 1) or in `jobs` worker processes of this script
    (Triton compiles one kernel at a time per process: parallel processes compile in
    parallel). A task that would start or run past `deadline` is not run / stopped there."""
    def time_left():
        return args.task_timeout if deadline is None else min(args.task_timeout,
                                                              deadline - time.time())

    def in_process(task):
        if time_left() <= 5:
            return dict(error="not run: --time-limit reached", timeout=True)
        try:
            return run_task(task, grid, peers, args)
        except Exception as e:   # noqa: BLE001
            return dict(error=f"{type(e).__name__}: {e}", log_tail=traceback.format_exc())

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_COMPILE_THREADS="1")

    def in_worker(task, i):
        out, errlog = tmp / f"task{i}.json", tmp / f"task{i}.log"
        limit = time_left()
        if limit <= 5:
            return dict(error="not run: --time-limit reached", timeout=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), *args.worker_flags,
               "--worker", json.dumps(task), "--worker-out", str(out)]
        with open(errlog, "w") as f:
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    timeout=limit).returncode
            except subprocess.TimeoutExpired:
                return dict(error=f"stopped after {limit:.0f} s (time limit)", timeout=True,
                            log_tail=errlog.read_text()[-1500:])
        if rc == 0 and out.exists():
            return json.loads(out.read_text())
        return dict(error=f"worker exit status {rc}", log_tail=errlog.read_text()[-3000:])

    def run_one(i, task):
        t0 = time.time()
        res = in_worker(task, i) if args.jobs > 1 else in_process(task)
        log(f"  task {task_name(task)}: {time.time() - t0:.1f} s"
            + (f" ({res['error']})" if "error" in res else ""))
        return task, res

    if args.jobs <= 1:
        return [run_one(i, t) for i, t in enumerate(tasks)]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(run_one, range(len(tasks)), tasks))


def run_correctness(grid: dict, peers: dict, args, report: dict) -> None:
    """Correctness tasks (and the benchmark's warm-up compiles) into report['correctness']."""
    tasks = corr_tasks(grid, args.ops, args.dtypes)
    if not args.no_bench and args.jobs > 1:     # compile the benchmark's kernels meanwhile
        tasks = warm_tasks(grid, args.ops) + tasks          # the longest (fla's compiles) first
    deadline = None
    if args.time_limit:
        reserve = 5 if args.no_bench else max(30, 0.3 * args.time_limit)   # for the benchmark
        deadline = args.t_start + args.time_limit - reserve
    n_corr = sum(t["kind"] == "corr" for t in tasks)
    log(f"correctness: {n_corr} tasks (op x dtype x D)"
        + (" and benchmark warm-up compiles" if len(tasks) > n_corr else "")
        + f", {args.jobs} at a time")
    cases, kernels, warm, not_run = [], {}, [], []
    for task, res in run_tasks(tasks, grid, peers, args, deadline):
        if "error" in res:
            if res.get("log_tail"):
                log(f"  task {task_name(task)} failed: {res['error']}; its log ends:\n"
                    + res["log_tail"][-1500:])
            if task["kind"] == "corr":
                (not_run if res.get("timeout") else cases).append(dict(
                    op=task["op"], dtype=task["dtype"], D=task["D"], T=None,
                    variant="(whole task)", ok=False, failures=[res["error"]],
                    log_tail=res.get("log_tail", "")[-2000:]))
            continue
        cases += res.get("cases", [])
        warm += [dict(op=task["op"], D=task["D"], **w) for w in res.get("warm", [])]
        for k in res.get("kernels", []):
            kernels[json.dumps(k, sort_keys=True)] = k
    report["correctness"] = dict(
        summary=dict(cases=len(cases), passed=sum(c["ok"] for c in cases),
                     failed=[f"{c['op']} {c['dtype']} D={c['D']} T={c['T']} {c['variant']}: "
                             + "; ".join(c["failures"]) for c in cases if not c["ok"]],
                     not_run=[f"{t['op']} {t['dtype']} D={t['D']}: {t['failures'][0]}"
                              for t in not_run]),
        cases=cases)
    report["kernels"] = dict(
        builds=len(kernels), spilling=sorted({k["kernel"] for k in kernels.values()
                                              if k.get("n_spills")}),
        rows=sorted(kernels.values(), key=lambda k: k["kernel"]))
    report["warmup"] = warm


# ----------------------------------------------------------------------------- 5. report
def render(report: dict) -> str:
    """Markdown tables of a report: correctness (worst relative error over T and tensors,
    triton / torch path, worst triton error over its tolerance) and the benchmark (x = time /
    triton's; diff = forward vs triton, relative). Printed by the check; the README's
    ``<!-- bench:gpu_check_* -->`` blocks are this of ``benchmarks/results/gpu_check_*.json``
    (``python benchmarks/update_readme.py``)."""
    meta, out = report.get("meta", {}), []
    if meta:
        out += [f"{meta.get('device', '?')}, torch {meta.get('torch')}, triton "
                f"{meta.get('triton')}, CUDA {meta.get('cuda')}, {meta.get('date')}", ""]
    corr = report.get("correctness")
    if corr:
        out += ["| op | dtype | D | cases | pass | outputs: triton / torch | "
                "gradients: triton / torch | worst / tol | decode kernel |",
                "|---|---|---:|---:|---:|---|---|---:|---|"]
        groups = {}
        for c in corr["cases"]:
            groups.setdefault((c["op"], c["dtype"], c["D"]), []).append(c)
        for (op, dt, D), cs in groups.items():
            cols = []
            for kind in ("out", "grad"):
                ts = [t for c in cs for n, t in c.get("tensors", {}).items()
                      if n.startswith(kind)]
                tr = max((t["triton"] for t in ts), default=None)
                to = max((t["torch"] for t in ts if t["torch"] is not None), default=None)
                cols.append(f"{fmt(tr)} / {fmt(to)}")
            ratio = max((t["triton"] / t["tol"] for c in cs
                         for t in c.get("tensors", {}).values()), default=float("nan"))
            dec = [c["decode_kernel"] for c in cs if c.get("decode_kernel") is not None]
            used = "used" if dec and all(dec) else ("NOT USED" if dec else "-")
            out.append(f"| {op} | {dt} | {D} | {len(cs)} | {sum(c['ok'] for c in cs)} | "
                       f"{cols[0]} | {cols[1]} | {ratio:.2f} | {used} |")
        s = corr["summary"]
        out += ["", f"correctness: {s['passed']}/{s['cases']} cases pass"]
        out += [f"- FAIL {f}" for f in s["failed"]] + [f"- NOT RUN {f}" for f in s["not_run"]]
    rows = report.get("benchmark", {}).get("rows")
    if rows:
        b = report["benchmark"]["config"]
        out += ["", f"Benchmark: {b['dtype']}, B={b['B']}, H={b['H']}, sliding window "
                f"W={b['W']} with {b['sinks']} sinks; median of {b['reps']} after "
                f"{b['warmup']} warm-up; x = time / triton's; diff = forward vs triton, "
                "relative.", "",
                "| op | D | T | impl | fwd ms | x | fwd+bwd ms | x | peak MiB | diff | note |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        base = {(r["op"], r["D"], r["T"]): r for r in rows if r["impl"] == "triton"}
        for r in rows:
            t = base.get((r["op"], r["D"], r["T"]), {})
            note = "; ".join(filter(None, [r.get("error"), r.get("bwd_skipped"), r.get("note")]))
            out.append(f"| {r['op']} | {r['D']} | {r['T']} | {r['impl']} | "
                       f"{fmt(r.get('fwd_ms'), '.3f')} | {ratio_str(r, t, 'fwd_ms').strip()} | "
                       f"{fmt(r.get('fwd_bwd_ms'), '.3f')} | "
                       f"{ratio_str(r, t, 'fwd_bwd_ms').strip()} | "
                       f"{fmt(r.get('peak_mb'), '.1f')} | "
                       f"{fmt(r.get('rel_diff_vs_triton'), '.1e')} | "
                       f"{note[:120].replace('|', '/')} |")
    skipped = [f"peer {n} skipped: {p['reason']}" for n, p in report.get("peers", {}).items()
               if p["status"] != "ok"]
    if skipped:
        out += [""] + [f"- {line}" for line in skipped]
    return "\n".join(out)


def print_tables(report: dict) -> None:
    log("\n" + render(report))


def fmt(x, spec: str = ".1e", width: int = 0) -> str:
    return (format(x, spec) if x is not None else "-").rjust(width)


def ratio_str(row: dict, triton_row: dict, key: str) -> str:
    a, b = row.get(key), triton_row.get(key)
    return f"{a / b:6.2f}" if a is not None and b else f"{'-':>6s}"


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick grid (default)")
    mode.add_argument("--full", action="store_true", help="the whole grid")
    mode.add_argument("--dry-run", action="store_true",
                      help="CPU: every step with tiny sizes, Triton interpreter, no installs")
    ap.add_argument("--out", default=None,
                    help="folder for gpu_check-<device>.json and .log (default "
                         "benchmarks/results; dry run: $TMPDIR/gpu_check)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="parallel correctness processes (default: min(16, CPUs); dry run 1)")
    ap.add_argument("--task-timeout", type=int, default=600, help="seconds per task process")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds for the whole check: correctness tasks stop 0.3 x it before "
                         "the end, the benchmark starts no case in its last 10 s; what did "
                         "not run is reported")
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of the ops")
    ap.add_argument("--dtypes", default=",".join(DTYPES),
                    help="comma-separated subset of the correctness dtypes")
    ap.add_argument("--no-bench", action="store_true", help="correctness only")
    ap.add_argument("--no-correctness", action="store_true", help="benchmark only")
    ap.add_argument("--no-install", action="store_true", help="never pip install a peer")
    ap.add_argument("--wheels", default=None,
                    help="install missing peers from the wheels in this folder (offline)")
    ap.add_argument("--fla-full-autotune", action="store_true",
                    help="let fla autotune over all its configs (minutes of compiles)")
    ap.add_argument("--fla-bypass-hopper-check", action="store_true",
                    help="time fla's fwd+bwd on Hopper with Triton < 3.7.1 anyway (its "
                         "gradients are wrong there: timing only)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.mode = "full" if a.full else "dry-run" if a.dry_run else "quick"
    a.ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    for name, got, known in (("--ops", a.ops, OPS), ("--dtypes", a.dtypes, DTYPES)):
        if not got or set(got) - set(known):
            ap.error(f"{name}: choose from {list(known)}, got {got}")
    if a.jobs is None:
        a.jobs = 1 if a.dry_run else min(16, os.cpu_count() or 1)
    # what a worker process needs to rebuild the same grid and peers
    a.worker_flags = [f for f, on in (("--full", a.full), ("--dry-run", a.dry_run),
                                      ("--no-install", True),
                                      ("--fla-full-autotune", a.fla_full_autotune),
                                      ("--fla-bypass-hopper-check",
                                       a.fla_bypass_hopper_check)) if on]
    return a


def worker_main(args) -> int:
    """A task process: run one task, write its result JSON."""
    preflight(args.dry_run)
    task = json.loads(args.worker)
    peers = {name: prepare_peer(name, dry_run=args.dry_run, install=False, wheels=None)
             for name in PEERS} if task["kind"] == "warm" else {}
    res = run_task(task, GRIDS[args.mode], peers, args)
    Path(args.worker_out).write_text(json.dumps(res, allow_nan=True))
    return 0


def main(argv=None) -> int:
    global _LOG
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    args.t_start = t_start = time.time()
    try:
        meta = preflight(args.dry_run)
    except CannotRun as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    grid = GRIDS[args.mode]
    out_dir = Path(args.out) if args.out else (
        Path(tempfile.gettempdir()) / "gpu_check" if args.dry_run else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check-{device_slug(meta)}.json"
    _LOG = open(path.with_suffix(".log"), "w")
    meta.update(mode=args.mode, jobs=args.jobs, ops=args.ops, dtypes=args.dtypes)
    log(f"gpu-check ({args.mode}) on {meta['device']}: torch {meta['torch']}, triton "
        f"{meta['triton']}, CUDA {meta['cuda']}; writing {path}")
    report = dict(meta=meta, grid={k: v for k, v in grid.items() if k != "bench"},
                  tolerances=dict(fp32=FP32_TOL, low_precision_floor=LOWP_FLOOR,
                                  rule="fp32: rel <= tol; fp16/bf16: rel <= 2 x torch path's "
                                       "rel + floor; rel = max abs err / max(max|ref|, 1)"))

    def save():
        report["meta"]["seconds"] = round(time.time() - t_start, 1)
        write_report(report, path)

    report["peers"] = prepare_peers(args)
    save()
    if not args.no_correctness:
        t0 = time.time()
        run_correctness(grid, report["peers"], args, report)
        report["meta"]["correctness_seconds"] = round(time.time() - t0, 1)
        save()
    if not args.no_bench:
        t0 = time.time()
        report["benchmark"] = dict(config=grid["bench"], rows=[], not_run=[])
        log("benchmark: one op at a time")
        run_benchmarks(grid, report["peers"], args, report, save)
        report["meta"]["benchmark_seconds"] = round(time.time() - t0, 1)
    summary = report.get("correctness", {}).get("summary", {})
    failed, not_run = summary.get("failed", []), summary.get("not_run", [])
    bench_errors = [r for r in report.get("benchmark", {}).get("rows", [])
                    if r.get("ours") and r.get("error")]
    bench_not_run = report.get("benchmark", {}).get("not_run", [])
    report["passed"] = not failed and not not_run and not bench_errors
    save()
    print_tables(report)
    log(f"\ngpu-check {'PASSED' if report['passed'] else 'FAILED'}: {len(failed)} failed "
        f"correctness case(s), {len(not_run)} correctness task(s) not run, "
        f"{len(bench_errors)} benchmark error(s) of our kernels"
        + (f", {len(bench_not_run)} benchmark case(s) not run (time limit)"
           if bench_not_run else "")
        + f"; {report['meta']['seconds']:.0f} s; {path}")
    _LOG.close()
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
