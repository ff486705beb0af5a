"""What every results suite shares (``python -m benchmarks SUITE``): the ``meta`` block,
results files, row merging, timing and memory helpers.

A suite is a module ``benchmarks/suite_<name>.py`` with

* ``add_args(ap)``: its own command-line options (optional);
* ``run(args) -> list[dict]``: the rows it measured (``args.quick``, ``args.device``,
  ``args.dtype``, ``args.threads`` and its own options are set); every row carries the keys
  named in ``KEY`` (rows of a later run replace rows with the same key, so ``--quick``
  re-measures a subset of the full run's rows and keeps the others);
* ``KEY``: the tuple of row keys that identify a measurement (``dtype`` among them: a bf16
  run never replaces a float32 row);
* ``THREADS`` (optional): the torch threads the suite runs at unless ``--threads`` is given
  (default: all cores), so ``--quick`` re-measures rows at their full run's thread count;
* ``render(data) -> str``: the markdown the README shows (``data`` = the results file);
  ``render_<view>(data)`` for more README blocks (``<!-- bench:SUITE-DEVICE__VIEW -->``);
* ``render_findings(data) -> str`` (optional): one sentence per paper finding, each saying
  reproduced / partly reproduced / not reproduced, decided by a rule written in the code;
* ``plot(data, stem: Path) -> list[Path]`` (optional): PNGs beside the JSON, written to
  ``<stem>.png`` or ``<stem>-<what>.png`` (``stem`` = ``results/<suite>-<device>``).

Results live in ``benchmarks/results/<suite>-<device>.json``: ``{"meta": ..., "runs":
{run_id: meta}, "rows": [...]}``; ``meta`` is the latest run's (device, torch, triton, date,
command, threads, cpu/gpu, commit, load average, ``run``: its id, the date made unique) and
every row names its run (``run``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SUITES = ("mixers", "peers", "recall", "long", "streaming", "inference")
DEPS = ROOT / ".bench-deps"       # the peers (make bench-deps), never in the venv: git-ignored


def add_bench_deps() -> None:
    """Make the peers in ``.bench-deps/`` importable, after the venv (the venv's torch and
    einops win over any copy there)."""
    if DEPS.is_dir() and str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))


# ----------------------------------------------------------------------------- meta + files
def device_name(device: str) -> str:
    """The ``<device>`` part of a results file name: ``cpu``, or the GPU's short name
    (``h100``, ``h200``, ``a100``; else ``cuda``)."""
    if device == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name().lower()
    for short in ("h200", "h100", "a100", "l40s", "l4", "a10g", "4090", "3090"):
        if short in name:
            return short
    return "cuda"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def meta(device: str, threads: int, command: str | None = None) -> dict:
    """Where and how a run was measured. ``loadavg`` is the 1-minute load average at the
    start: above ``threads`` the machine was shared and absolute speeds are low (the
    ratios of a suite are measured in the same run, side by side)."""
    m = dict(device=device, torch=torch.__version__, triton=None,
             date=datetime.datetime.now().isoformat(timespec="seconds"),
             command=command or shlex.join(["python", "-m", "benchmarks", *sys.argv[1:]]),
             threads=threads, python=platform.python_version(), machine=platform.machine(),
             cpu=cpu_name(), cpus=os.cpu_count())
    try:
        import triton
        m["triton"] = triton.__version__
    except ImportError:
        pass
    if device == "cuda":
        m["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        m["loadavg"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError):
        m["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()
    return m


def script_command() -> str:
    """The command line of a standalone script (``python benchmarks/ops.py ...``), for
    ``meta(..., command=script_command())``; the suites' default is ``python -m benchmarks``."""
    return shlex.join(["python", *sys.argv])


def results_path(suite: str, device: str, results: Path = RESULTS) -> Path:
    return results / f"{suite}-{device}.json"


def row_key(row: dict, key: tuple) -> tuple:
    return tuple(json.dumps(row.get(k), sort_keys=True) for k in key)


def merge(old: dict | None, rows: list[dict], run_meta: dict, key: tuple) -> dict:
    """``old``'s rows with those of this run put in place (same key: replaced; new: appended
    in this run's order); ``runs`` keeps the meta of every run that still owns a row."""
    runs = {} if old is None else dict(old.get("runs", {}))
    run_id, n = run_meta["date"], 1
    while run_id in runs:                       # two runs in one second: date#2, date#3, ...
        n += 1
        run_id = f"{run_meta['date']}#{n}"
    run_meta = {**run_meta, "run": run_id}
    rows = [{**r, "run": run_id} for r in rows]
    new = {row_key(r, key): r for r in rows}
    kept = [] if old is None else [r for r in old["rows"] if row_key(r, key) not in new]
    merged = kept + rows
    runs[run_id] = run_meta
    runs = {k: v for k, v in runs.items() if any(r.get("run") == k for r in merged)}
    return {"meta": run_meta, "runs": runs, "rows": merged}


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a crash never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def load(suite: str, device: str = "cpu", results: Path = RESULTS) -> dict | None:
    path = results_path(suite, device, results)
    return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_s(fn: Callable[[], object], device: str = "cpu", reps: int = 3, warmup: int = 1
           ) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def alternate(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Alternated calls of ``fns`` (name -> fn), order flipped every repetition, so that load
    on a shared machine hits them alike: median seconds, all seconds (after ``warmup``
    rounds), the first call's seconds and output (a tuple output: its first element)."""
    names = list(fns)
    times = {n: [] for n in names}
    first = {}
    for rep in range(warmup + reps):
        for n in (names if rep % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            out = fns[n]()
            dt = time.perf_counter() - t0
            if rep == 0:
                first[n] = (dt, out if isinstance(out, torch.Tensor) else out[0])
            if rep >= warmup:
                times[n].append(dt)
    return {"median": {n: statistics.median(v) if v else None for n, v in times.items()},
            "all": times, "first": first}


def memory_bandwidth(nbytes: int, reps: int = 5) -> tuple[float, float]:
    """Single-process CPU memory bandwidth (bytes/s), best of ``reps``: ``x.sum()`` over
    ``nbytes`` of fp32 (read) and ``y.copy_(x)`` (copy: bytes read + written)."""
    x = torch.ones(nbytes // 4)
    y = torch.empty_like(x)
    x.sum()
    y.copy_(x)
    rd, cp = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        rd.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        y.copy_(x)
        cp.append(time.perf_counter() - t0)
    del x, y
    return nbytes / min(rd), 2 * nbytes / min(cp)


# Load from other processes. On a small machine shared with other jobs, a 2-thread call runs
# several times slower while another process holds a core (each of torch's threads waits for
# the other at every op): the peers suite records the share of the CPUs that others used.
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, CPU ticks of this process) from /proc, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(v) - v[3] - v[4], int(own[11]) + int(own[12])   # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def others_share(a, b, wall: float) -> float | None:
    """Share of all CPUs that other processes used between two ``cpu_ticks()`` snapshots
    ``wall`` seconds apart."""
    if a is None or b is None or wall <= 0:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / _TICK / (wall * (os.cpu_count() or 1)))


@contextlib.contextmanager
def quiet_c_stderr():
    """Send file descriptor 2 to /dev/null for the block: the CPU profiler (kineto) prints
    ``USDT:... profiler_start/stop`` lines from C++, which no Python logging knob reaches."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def peak_bytes(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak memory ``fn()`` allocates beyond what is live when it starts (bytes):
    ``torch.cuda.max_memory_allocated`` on GPU, the profiler's allocation trace on CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with quiet_c_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in p.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nb in events:
        live += nb
        peak = max(peak, live)
    return peak


def sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` significant figures, so the JSON stays readable (None, 0
    and non-finite values unchanged)."""
    if x is None or x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A table cell: ``x`` to ``digits`` significant figures with k/M suffixes, ``-`` for
    None."""
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.{digits}g}{suffix}"
    return f"{x:.{digits}g}"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (the suites' ``plot`` writes PNG files only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def verdict(reproduced: bool, partly: bool = False) -> str:
    """The word a finding sentence uses."""
    return "reproduced" if reproduced else ("partly reproduced" if partly else
                                            "not reproduced")


# ----------------------------------------------------------------------------- README index
def render_index(results: Path = RESULTS) -> str:
    """The README's table of the results suites: per suite and device, the machine, the
    rows, the highest 1-minute load average any of its runs started under (above the
    thread count the machine was shared and wall times are long), the CPU time of its full
    run (``-`` when a run predates that record), and the wall time of its full and of its
    latest quick run (a full run done in
    several invocations, e.g. one recall point at a time, sums their wall times), and the
    sum over the suites per device."""
    lines = ["| suite | device | rows | full run (wall) | full run (CPU) | load (max) | "
             "quick run (wall) | machine | last run |",
             "|---|---|---:|---:|---:|---:|---:|---|---|"]
    totals: dict[str, list[float]] = {}
    for suite in SUITES:
        for path in sorted(results.glob(f"{suite}-*.json")):
            data = json.loads(path.read_text())
            runs = data.get("runs", {}).values()
            full = sum(r.get("wall_s", 0) for r in runs if not r.get("quick"))
            cpu = [r.get("cpu_s") for r in runs if not r.get("quick")]
            cpu_s = sum(cpu) if cpu and None not in cpu else None
            load = max((r["loadavg"] for r in runs if "loadavg" in r), default=None)
            quick = [r for r in runs if r.get("quick")]
            quick_s = max(quick, key=lambda r: r["date"]).get("wall_s") if quick else None
            t = totals.setdefault(data["meta"]["device"], [0.0, 0.0])
            t[0] += full
            t[1] += quick_s or 0.0
            m = data["meta"]
            machine = (f"{m.get('gpu') or m.get('cpu')}, {m.get('threads')} thread(s), "
                       f"torch {m.get('torch')}")
            lines.append(
                f"| `{suite}` | {m['device']} | {len(data['rows'])} | "
                f"{_minutes(full) if full else '-'} | "
                f"{_minutes(cpu_s) if cpu_s is not None else '-'} | "
                f"{load if load is not None else '-'} | "
                f"{_minutes(quick_s) if quick_s is not None else '-'} | {machine} | "
                f"{m['date'][:10]}, commit {m.get('commit', '?')} |")
    for device, (full, quick) in totals.items():
        lines.append(f"| **all** | {device} | | {_minutes(full)} | | | {_minutes(quick)} | | |")
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# -- seeds (the findings' protocol) ----------------------------------------------------------
DATA_SEED = 100          # training seed S != 0 trains on data.seed = DATA_SEED + S


def data_seed(seed: int) -> int:
    """The training data's seed (``data.seed``) of training seed ``seed``: the configs' 0 for
    seed 0, else ``DATA_SEED + seed`` (small data seeds are the held-out streams')."""
    return 0 if seed == 0 else DATA_SEED + seed


def upgrade_old_rows(path: Path) -> bool:
    """Rows written before the seed was part of a suite's key lack ``seed``: they are seed 0.
    Write it into the results file, so that ``merge`` (which compares the key's values as
    stored) replaces them with a new run's seed-0 rows; True if the file changed."""
    data = json.loads(path.read_text()) if path.exists() else None
    if not data or all("seed" in r for r in data["rows"]):
        return False
    data["rows"] = [{**r, "seed": r.get("seed", 0)} for r in data["rows"]]
    write_json(path, data)
    return True
