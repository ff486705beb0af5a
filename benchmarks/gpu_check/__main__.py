"""The GPU check's command line: ``python3 -m benchmarks.gpu_check`` (``make gpu-check``), or
``python3 benchmarks/gpu_check`` (the folder; the worker processes run it so). The steps are
in the package's docstring."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if not __package__:   # the folder run as a script: import this package as `gpu_check` (PEP 366)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "gpu_check"

from . import __doc__ as DOC  # noqa: E402
from . import env  # noqa: E402
from .correctness import FP32_TOL, LOWP_FLOOR  # noqa: E402
from .env import DTYPES, GRIDS, OPS, CannotRun, device_slug, log, preflight  # noqa: E402
from .peers import PEERS, prepare_peer, prepare_peers  # noqa: E402
from .report import print_tables, write_report  # noqa: E402
from .speed import run_benchmarks  # noqa: E402
from .tasks import run_correctness, run_task  # noqa: E402


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=DOC,
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
        Path(tempfile.gettempdir()) / "gpu_check" if args.dry_run else env.shared().RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check-{device_slug(meta)}.json"
    env._LOG = open(path.with_suffix(".log"), "w")
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
    env._LOG.close()
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
