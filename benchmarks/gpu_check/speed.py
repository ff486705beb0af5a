"""Step 4 of the GPU check, the timing: ``measure`` (fwd, fwd+bwd, peak memory, diff from
triton), the warm-up compiles and the benchmark loop."""

from __future__ import annotations

import statistics
import time

try:      # a missing torch is reported by preflight() with what to do
    import torch
except ImportError:
    torch = None

from .correctness import rel_error
from .env import dev, log
from .impls import Impl, bench_dtype, bench_impls, bench_inputs, bench_ops


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
