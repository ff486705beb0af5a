"""memarch's results suites: one entry point.

    python -m benchmarks SUITE [SUITE ...] [--quick] [--device cpu|cuda] [--dtype D]
                                [--threads N] [suite options]
    python -m benchmarks all [--quick]        # every suite, in order
    python -m benchmarks mixers --help        # a suite's own options

Suites: ``mixers`` (speed and memory of every block against length), ``peers`` (the same work
against titans-pytorch, SDPA, FlexAttention and flash-linear-attention, as ratios),
``recall`` (MQAR accuracy against state size), ``long`` (accuracy against context length past
the window), ``streaming`` (StreamingLLM: perplexity by position to 1M tokens, decode speed),
``inference`` (inference speed on CPU: the real model against transformers and llama.cpp, window
decode against context, tiny models, ops; its speed targets).
Each writes ``benchmarks/results/<suite>-<device>.json`` (rows of an earlier run that this run
does not measure are kept: ``--quick`` re-measures a subset) and its PNGs; then
``python benchmarks/update_readme.py`` regenerates the README's tables and figures
(``make bench`` / ``make bench-quick`` do both).
"""

from __future__ import annotations

import argparse
import importlib
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def suite_module(name: str):
    if name not in common.SUITES:
        raise SystemExit(f"unknown suite {name!r}: expected one of {list(common.SUITES)} or "
                         "'all'")
    return importlib.import_module(f"suite_{name}")


def parse(argv):
    names = []
    while argv and not argv[0].startswith("-"):
        names.append(argv.pop(0))
    if not names:
        raise SystemExit(f"usage: python -m benchmarks SUITE [SUITE ...] [options]; suites: "
                         f"{', '.join(common.SUITES)}, all")
    names = list(common.SUITES) if names == ["all"] else names
    mods = [suite_module(n) for n in names]
    ap = argparse.ArgumentParser(prog="python -m benchmarks " + " ".join(names),
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the subset of each suite that fits bench-quick (< 10 min on CPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None,
                    help="float32 (default on CPU) or bfloat16 (default on GPU)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the suite's THREADS, else all cores)")
    ap.add_argument("--results", default=str(common.RESULTS), help="folder of the results")
    ap.add_argument("--no-plots", action="store_true")
    for m in mods:
        if hasattr(m, "add_args"):
            m.add_args(ap)
    args = ap.parse_args(argv)
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"--dtype must be float32, bfloat16 or float16, not {args.dtype!r}")
    if args.device == "cuda" and not __import__("torch").cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    return names, mods, args


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the child processes it waited for
    (a suite may train in worker processes)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv=None) -> int:
    import torch
    names, mods, args = parse(list(sys.argv[1:] if argv is None else argv))
    all_cores, threads = torch.get_num_threads(), args.threads
    results = Path(args.results)
    dev = common.device_name(args.device)
    for name, mod in zip(names, mods):
        # the published rows of a suite were measured at its THREADS (the training suites: 1,
        # as their full runs); --quick keeps it, so a quick row re-measures a full row as it was
        args.threads = threads or getattr(mod, "THREADS", None) or all_cores
        torch.set_num_threads(args.threads)
        t0, c0 = time.time(), cpu_seconds()
        print(f"== {name} ({'quick' if args.quick else 'full'}, {args.device}, {args.dtype}, "
              f"{args.threads} threads)", flush=True)
        run_meta = common.meta(args.device, args.threads)
        run_meta.update(suite=name, quick=args.quick, dtype=args.dtype)
        rows = [{"dtype": args.dtype, "threads": args.threads, **r} for r in mod.run(args)]
        run_meta["wall_s"] = round(time.time() - t0, 1)
        run_meta["cpu_s"] = round(cpu_seconds() - c0, 1)
        path = common.results_path(name, dev, results)
        data = common.merge(common.load(name, dev, results), rows, run_meta, mod.KEY)
        common.write_json(path, data)
        if not args.no_plots and hasattr(mod, "plot"):
            for p in mod.plot(data, results / f"{name}-{dev}") or []:
                print(f"   wrote {p}")
        print(f"   wrote {path} ({len(rows)} rows, {run_meta['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
