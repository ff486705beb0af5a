"""Titans neural memory on CPU: memarch's ``NeuralMemory`` against titans-pytorch's, in one
process, same input, matched settings. Forward+backward and forward-only tokens/s.

    python -m benchmarks.titans             # T = 1024, 4096 -> results/titans_cpu.{json,md}
    python -m benchmarks.titans --quick     # T = 1024 only, fewer repeats (a smoke run)
    python -m benchmarks.titans --render benchmarks/results/titans_cpu.json   # markdown table
    python -m benchmarks.titans --profile 4096   # torch.profiler top ops of memarch's fwd+bwd
    python -m benchmarks.titans --add-flops benchmarks/results/titans_cpu.json   # matmul FLOPs
                                                 # into a results file (same code only)

The peer, titans-pytorch, is NOT a memarch dependency. It goes into a folder of its own,
``.bench-deps/`` at the repository root (git-ignored by the ``.gitignore`` inside it), with
``--no-deps`` so that pip never touches the venv's torch (an unpinned ``torch>=2.8`` would
pull a multi-GB CUDA wheel); the rest of its dependencies (einops, numpy, sympy,
cloudpickle, packaging, tqdm) are already in memarch's venv::

    .venv/bin/python -m pip install --no-deps --target .bench-deps \\
        titans-pytorch==0.5.5 assoc-scan==0.0.6 axial-positional-embedding==0.3.12 \\
        einx==0.4.3 hyper-connections==0.4.11 rotary-embedding-torch==0.9.1 \\
        tensordict==0.15.3 x-transformers==2.31.10 torch-einops-utils==0.2.0 \\
        frozendict==2.5.1 pyvers==0.2.3 loguru==0.7.3
    echo '*' > .bench-deps/.gitignore

(``ninja`` and ``accelerated-scan``, also in its metadata, are only used on GPU and not
installed.) This script appends ``.bench-deps`` to ``sys.path`` (after the venv, so the
venv's torch and einops win) and records every version it imported in the JSON.

Settings (all sides): d_model 256, 4 heads of 64, memory = 2-layer MLP with expansion 4,
chunk 64, momentum on, forgetting (weight decay) on; batch 1, fp32, ``torch.set_num_threads
(2)`` by default. titans-pytorch: ``NeuralMemory(dim=256, heads=4, dim_head=64,
chunk_size=64, momentum=True, default_model_kwargs=dict(depth=2, expansion_factor=4.))``,
everything else at its defaults (the headline peer), and once more with ``batch_size=64``:
its default takes every chunk's gradient at the weights the call started with, while
memarch (as the paper) takes chunk j's gradient at the weights after chunk j-1;
``batch_size=64`` makes titans-pytorch compute that same recurrence. What each side
computes and which defaults differ is written to the JSON under ``sides``.

Forward is timed under ``torch.no_grad``; forward+backward is ``m(x).sum().backward()``
with ``x`` requiring grad. Time = median over ``reps`` calls after ``warmup`` calls,
``time.perf_counter``; the sides alternate call by call (order flipped every repeat) so
that load on a shared machine hits them alike; every call's time is in the JSON (and the
fastest as ``*_best``). tokens/s = B*T/seconds. On a 2-core machine shared with other
jobs a 2-thread call runs many times slower (10x to 60x was seen) while another process holds
a core, as torch's two threads wait for each other at every op; so a pair of calls during
which other processes used more than ``--max-busy`` of the CPUs (read from /proc/stat) is
measured again after the machine is idle (``--retries``); the share of every kept pair is
in the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ops import RESULTS, meta, quiet_c_stderr

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / ".bench-deps"
PEER_PINS = {   # what the install command above puts in .bench-deps (recorded in the JSON)
    "titans-pytorch": "0.5.5", "assoc-scan": "0.0.6", "axial-positional-embedding": "0.3.12",
    "einx": "0.4.3", "hyper-connections": "0.4.11", "rotary-embedding-torch": "0.9.1",
    "tensordict": "0.15.3", "x-transformers": "2.31.10", "torch-einops-utils": "0.2.0",
    "frozendict": "2.5.1", "pyvers": "0.2.3", "loguru": "0.7.3",
}
CONFIG = {"d_model": 256, "n_heads": 4, "head_dim": 64, "depth": 2, "expansion": 4,
          "chunk_size": 64, "momentum": True, "forgetting": True, "batch": 1, "dtype": "float32"}
TARGET_FWD_BWD_RATIO = 10.0
INSTALL = ("pip install --no-deps --target .bench-deps "
           + " ".join(f"{k}=={v}" for k, v in PEER_PINS.items()))


# ----------------------------------------------------------------------------- the sides
def make_memarch(c=CONFIG):
    """memarch's NeuralMemory at the benchmark's settings: (module, run, description)."""
    from memarch.mixers import NeuralMemory
    m = NeuralMemory(c["d_model"], n_heads=c["n_heads"], head_dim=c["head_dim"],
                     depth=c["depth"], expansion=c["expansion"], chunk_size=c["chunk_size"],
                     momentum=c["momentum"], forgetting=c["forgetting"])
    kwargs = (f"NeuralMemory({c['d_model']}, n_heads={c['n_heads']}, head_dim={c['head_dim']}, "
              f"depth={c['depth']}, expansion={c['expansion']}, chunk_size={c['chunk_size']}, "
              f"momentum={c['momentum']}, forgetting={c['forgetting']})")
    return m, (lambda x: m(x).y), {"constructor": f"memarch.mixers.{kwargs}",
                                   "notes": MEMARCH_NOTES}


def import_peer():
    """Import titans_pytorch from the venv or from .bench-deps; its package versions."""
    if DEPS.is_dir() and str(DEPS) not in sys.path:
        sys.path.append(str(DEPS))          # after the venv: the venv's torch/einops win
    import titans_pytorch  # noqa: F401
    versions = {}
    for name in PEER_PINS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


MEMARCH_NOTES = [
    ("memarch.mixers.NeuralMemory at its defaults otherwise: q, k, v = SiLU(x W) then a "
     "depthwise causal conv of width 4, q and k L2-normalised; per-token gates theta (max_lr "
     "0.1), eta (momentum), alpha (forgetting) (gates='token'); memory MLP 64->256->64 per "
     "head with SiLU, no residual norm; loss ||M(k) - v||^2 (sum over the head dim)"),
    ("chunks are sequential: the gradients of chunk j are taken at the weights after chunk "
     "j-1 (the paper's chunked training), in closed form (no autograd inside); the read of a "
     "token uses the weights after the previous complete chunk; output W_o (RMSNorm(y) * "
     "SiLU(x W_g))"),
]

PEER_NOTES = [
    ("settings mapped: dim=256, heads=4, dim_head=64, chunk_size=64, momentum=True (first "
     "order), default_model_kwargs=dict(depth=2, expansion_factor=4.) (its MemoryMLP "
     "64->256->64 per head, GELU, no biases); forgetting is always on in titans-pytorch "
     "(to_decay_factor)"),
    ("defaults kept: per-token adaptive learning rate (sigmoid * max_lr 1, as a loss weight), "
     "per-chunk momentum and decay gates from the chunk's mean input (AveragePool), loss "
     "mean over the head dim of (M(k) - v)^2"),
    ("defaults kept: pre_rmsnorm=True (RMSNorm before retrieve and store), "
     "mem_model_norm_add_residual=True (memory output = LayerNorm(MLP(k)) + k), "
     "per_head_learned_parameters=True, qk_rmsnorm=False, post_rmsnorm=False, no short conv, "
     "no q/k L2 norm, a sigmoid retrieve gate per head, output projection (combine_heads), "
     "max_grad_norm=None, use_accelerated_scan=False (its accelerated scan is GPU-only), no "
     "torch.compile"),
    ("per-token gradients with torch.func (vmap of grad over the chunks), momentum and decay "
     "as two associative scans over chunks; output used: retrieved (first element of its "
     "(retrieved, state) return)"),
]
PEER_BATCH_NOTES = {
    None: "batch_size=None (its default, the fastest): every chunk's gradient is taken at the "
          "weights the call started with (all chunks in one vmap); the weights the gradients "
          "see never change within a call, unlike memarch's",
    64: "batch_size=64 (= chunk_size): the weights are updated after every chunk, so each "
        "chunk's gradient is taken at the weights after the previous chunk, the same "
        "recurrence memarch computes; titans-pytorch then loops over chunks in Python",
}


def make_peer(c=CONFIG, batch_size=None):
    """titans-pytorch's NeuralMemory at the benchmark's settings: (module, run, description).
    ``batch_size`` is its TTT batch (None: its default; 64: update every chunk, as memarch)."""
    from titans_pytorch import NeuralMemory
    m = NeuralMemory(dim=c["d_model"], heads=c["n_heads"], dim_head=c["head_dim"],
                     chunk_size=c["chunk_size"], momentum=c["momentum"], batch_size=batch_size,
                     default_model_kwargs={"depth": c["depth"],
                                           "expansion_factor": float(c["expansion"])})
    constructor = (f"titans_pytorch.NeuralMemory(dim={c['d_model']}, heads={c['n_heads']}, "
                   f"dim_head={c['head_dim']}, chunk_size={c['chunk_size']}, "
                   f"momentum={c['momentum']}, batch_size={batch_size}, "
                   f"default_model_kwargs=dict(depth={c['depth']}, "
                   f"expansion_factor={float(c['expansion'])}))")
    return m, (lambda x: m(x)[0]), {"constructor": constructor,
                                    "notes": [PEER_BATCH_NOTES[batch_size], *PEER_NOTES]}


PEER = "titans-pytorch"                  # the headline peer: its defaults
PEER_MATCHED = "titans-pytorch batch_size=64"
SIDES = {"memarch": make_memarch, PEER: make_peer,
         PEER_MATCHED: lambda c=CONFIG: make_peer(c, batch_size=c["chunk_size"])}


# ----------------------------------------------------------------------------- measuring
def _fwd(module, run, x):
    with torch.no_grad():
        run(x)


def _fwd_bwd(module, run, x):
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    t0 = time.perf_counter()
    run(x).sum().backward()
    return time.perf_counter() - t0


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# Load from other processes. The host has 2 cores shared with other jobs; while another
# process holds a core, a 2-thread call runs several times slower (each of torch's threads
# waits for the other at every op), so a pair of calls (fwd, fwd+bwd) during which other
# processes used more than MAX_BUSY of the machine is measured again after the machine is
# idle (at most RETRIES times; the share of every kept call is in the JSON).
MAX_BUSY, RETRIES, IDLE_WAIT_S = 0.2, 6, 120
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks():
    """(busy ticks of the whole machine, CPU ticks of this process) from /proc, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        return sum(v) - v[3] - v[4], int(own[11]) + int(own[12])   # less idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def _others_share(a, b, wall):
    """Share of all CPUs that other processes used between two _cpu_ticks() snapshots."""
    if a is None or b is None or wall <= 0:
        return None
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / _TICK / (wall * (os.cpu_count() or 1)))


def wait_idle(max_busy=MAX_BUSY, timeout=IDLE_WAIT_S):
    """Wait (1 s samples, at most ``timeout`` s) until other processes use <= max_busy of the
    machine; returns the seconds waited (None if it never got idle)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        a, w = _cpu_ticks(), time.perf_counter()
        time.sleep(1.0)
        busy = _others_share(a, _cpu_ticks(), time.perf_counter() - w)
        if busy is None or busy <= max_busy:
            return round(time.perf_counter() - t0, 1)
    return None


def bench_T(sides, T, reps, warmup, seed=0, max_busy=MAX_BUSY, retries=RETRIES):
    """Interleaved timing of every side at length T:
    {side: {fwd_s: [...], fwd_bwd_s: [...], busy: [...], retried: n}}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(CONFIG["batch"], T, CONFIG["d_model"], generator=g)
    times = {name: {"fwd_s": [], "fwd_bwd_s": [], "busy": [], "retried": 0} for name in sides}
    names = list(sides)
    wait_idle(max_busy)
    for rep in range(warmup + reps):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            module, run = sides[name]
            gave_up = False
            for attempt in range(retries + 1):
                a, t0 = _cpu_ticks(), time.perf_counter()
                f = _timed(_fwd, module, run, x)
                fb = _fwd_bwd(module, run, x)
                busy = _others_share(a, _cpu_ticks(), time.perf_counter() - t0)
                if (rep < warmup or busy is None or busy <= max_busy or attempt == retries
                        or gave_up):
                    break
                print(f"  T={T:5d} {name:15s} others used {busy:.0%} of the CPUs "
                      f"(fwd {f:.3f} s, fwd+bwd {fb:.3f} s): waiting, then again", flush=True)
                times[name]["retried"] += 1
                gave_up = wait_idle(max_busy) is None      # never idle: keep the next one
            if rep >= warmup:
                times[name]["fwd_s"].append(f)
                times[name]["fwd_bwd_s"].append(fb)
                times[name]["busy"].append(None if busy is None else round(busy, 3))
            print(f"  T={T:5d} {'warm-up' if rep < warmup else f'rep {rep - warmup + 1}':8s} "
                  f"{name:15s} fwd {f:8.3f} s  fwd+bwd {fb:8.3f} s  (others "
                  f"{'?' if busy is None else f'{busy:.0%}'})", flush=True)
    return times


def summarize(name, T, t):
    B = CONFIG["batch"]
    f, fb = statistics.median(t["fwd_s"]), statistics.median(t["fwd_bwd_s"])
    return {"side": name, "T": T, "B": B, "fwd_s": round(f, 5), "fwd_bwd_s": round(fb, 5),
            "fwd_tokens_per_s": round(B * T / f, 1),
            "fwd_bwd_tokens_per_s": round(B * T / fb, 1),
            "fwd_tokens_per_s_best": round(B * T / min(t["fwd_s"]), 1),
            "fwd_bwd_tokens_per_s_best": round(B * T / min(t["fwd_bwd_s"]), 1),
            "fwd_s_all": [round(v, 5) for v in t["fwd_s"]],
            "fwd_bwd_s_all": [round(v, 5) for v in t["fwd_bwd_s"]],
            "others_cpu_share_all": t["busy"], "retried": t["retried"]}


def ratios(rows):
    """memarch / peer tokens/s per T and peer side (a speed-up: > 1 means memarch is faster):
    {T: {peer side: {fwd, fwd_bwd}}}."""
    by = {(r["side"], r["T"]): r for r in rows}
    out = {}
    for T in sorted({r["T"] for r in rows}):
        a = by.get(("memarch", T))
        for side in (s for s in SIDES if s != "memarch"):
            b = by.get((side, T))
            if a and b:
                out.setdefault(str(T), {})[side] = {
                    "fwd": round(a["fwd_tokens_per_s"] / b["fwd_tokens_per_s"], 2),
                    "fwd_bwd": round(a["fwd_bwd_tokens_per_s"] / b["fwd_bwd_tokens_per_s"], 2)}
    return out


def target_met(rat):
    """Whether memarch's fwd+bwd is >= TARGET_FWD_BWD_RATIO x the headline peer at every T
    (None when no T has both sides)."""
    rs = [r[PEER]["fwd_bwd"] for r in rat.values() if PEER in r]
    return None if not rs else all(r >= TARGET_FWD_BWD_RATIO for r in rs)


def count_flops(module, run, T):
    """Matmul GFLOP (torch.utils.flop_counter: matmuls and convolutions only) of one fwd+bwd
    call at length T."""
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.randn(CONFIG["batch"], T, CONFIG["d_model"])
    with FlopCounterMode(display=False) as fc:
        _fwd_bwd(module, run, x)
    module.zero_grad(set_to_none=True)
    return fc.get_total_flops() / 1e9


def add_flops(rows, sides):
    """Fill each row's matmul GFLOP per fwd+bwd call and the GFLOP/s its median time reaches."""
    for r in rows:
        if r["side"] in sides:
            fb = count_flops(*sides[r["side"]], r["T"])
            r.update(matmul_gflop_fwd_bwd=round(fb, 3),
                     matmul_gflop_per_s_fwd_bwd=round(fb / r["fwd_bwd_s"], 1))


def profile_memarch(T, threads, top=25):
    """Print torch.profiler's top ops (self CPU time) of one memarch fwd+bwd at length T."""
    from torch.profiler import ProfilerActivity, profile
    torch.set_num_threads(threads)
    module, run, _ = make_memarch()
    x = torch.randn(CONFIG["batch"], T, CONFIG["d_model"])
    _fwd_bwd(module, run, x)                                   # warm-up
    with quiet_c_stderr(), profile(activities=[ProfilerActivity.CPU]) as p:
        _fwd_bwd(module, run, x)
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


# ----------------------------------------------------------------------------- report
def _source_id(path):
    """git blob sha1 of a file as measured, and whether it differs from HEAD's (the code under
    test may be uncommitted when the run is made)."""
    import subprocess
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, check=False,
                                    cwd=ROOT).stdout.strip()
    try:
        blob = git("hash-object", path)
        return {"path": path, "blob": blob, "modified_vs_head": blob != git("rev-parse",
                                                                       f"HEAD:{path}")}
    except OSError:
        return {"path": path}


def render(data) -> str:
    """Markdown table from a results dict or JSON path."""
    if isinstance(data, (str, Path)):
        data = json.loads(Path(data).read_text())
    m, c = data["meta"], data["config"]
    peer = data["sides"].get(PEER, {}).get("version")
    src = m.get("memarch_titans_py") or {}
    commit = str(m.get("commit"))
    if src.get("modified_vs_head"):
        commit += f" with uncommitted {src['path']} (blob {src['blob'][:7]})"
    head = (f"Titans neural memory, tokens/s, {m['device']} ({m.get('cpu')}, {m['threads']} "
            f"threads, torch {m['torch']}, commit {commit}, {m['date'][:10]}): "
            f"d_model {c['d_model']}, {c['n_heads']} heads x {c['head_dim']}, "
            f"depth-{c['depth']} MLP memory (expansion {c['expansion']}), chunk "
            f"{c['chunk_size']}, momentum, forgetting, B={c['batch']}, {c['dtype']}; "
            f"median of {data['reps']} calls, sides interleaved; titans-pytorch {peer} "
            f"(`batch_size=64`: weights updated every chunk, the recurrence memarch "
            f"computes; default: all gradients at the starting weights):")
    flops = all("matmul_gflop_fwd_bwd" in r for r in data["rows"])
    cols = ("| T | implementation | fwd+bwd tokens/s | fwd tokens/s | memarch speed-up, "
            "fwd+bwd | memarch speed-up, fwd |")
    lines = [head, "", cols + (" matmul GFLOP per fwd+bwd | GFLOP/s, fwd+bwd |" if flops
                               else ""),
             "|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if flops else "")]
    for r in data["rows"]:
        rr = data["ratios"].get(str(r["T"]), {}).get(r["side"])
        name = {PEER: f"titans-pytorch {peer} (defaults)",
                PEER_MATCHED: f"titans-pytorch {peer}, `batch_size=64`"}.get(r["side"], r["side"])
        lines.append(f"| {r['T']:,} | {name} | {r['fwd_bwd_tokens_per_s']:,.0f} | "
                     f"{r['fwd_tokens_per_s']:,.0f} | "
                     + (f"{rr['fwd_bwd']:.1f}x | {rr['fwd']:.1f}x |" if rr else "— | — |")
                     + (f" {r['matmul_gflop_fwd_bwd']:.1f} | "
                        f"{r['matmul_gflop_per_s_fwd_bwd']:.1f} |" if flops else ""))
    t = data["target"]
    met = {True: "met", False: "not met", None: "not measured"}[t.get("met")]
    lines += ["", (f"Target: memarch fwd+bwd >= {t['fwd_bwd_ratio']:g}x titans-pytorch "
                   f"(defaults): {met}.")
              + (" Matmul FLOPs are torch.utils.flop_counter's count (matmuls and "
                 "convolutions) of one call; GFLOP/s divides it by the median time." if flops
                 else "")]
    for name, s in data["sides"].items():
        if s.get("status") not in (None, "measured"):
            lines += ["", f"{name}: {s['status']}"]
    return "\n".join(lines) + "\n"


def build_sides(only=None):
    """The modules to measure: ({name: (module, run)}, {name: description or status})."""
    sides, info = {}, {}
    for name, make in SIDES.items():
        if only and name != only:
            continue
        try:
            versions = import_peer() if name.startswith("titans-pytorch") else None
            torch.manual_seed(0)
            module, run, desc = make()
        except Exception as e:   # noqa: BLE001 - a missing side is reported, not fatal
            info[name] = {"status": f"not measured: {type(e).__name__}: {e}"}
            print(f"{name}: not measured: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        desc["params"] = sum(p.numel() for p in module.parameters())
        if versions:
            desc["version"], desc["packages"] = versions["titans-pytorch"], versions
            desc["install"] = INSTALL
        info[name] = {"status": "measured", **desc}
        sides[name] = (module, run)
    return sides, info


def flops_into(path):
    """Add the matmul FLOP counts to an existing results file (they do not depend on the
    machine's load), after checking that the code is the one that was measured."""
    path = Path(path)
    data = json.loads(path.read_text())
    was = data["meta"].get("memarch_titans_py", {})
    now = _source_id(was.get("path", "memarch/mixers/titans.py"))
    if now.get("blob") != was.get("blob"):
        raise SystemExit(f"{now.get('path')} is not the measured one (blob {now.get('blob')} "
                         f"vs {was.get('blob')}): measure again instead")
    sides, info = build_sides()
    for name, s in info.items():
        old = data["sides"].get(name, {})
        if s.get("version") != old.get("version"):
            raise SystemExit(f"{name}: version {s.get('version')} is not the measured "
                             f"{old.get('version')}")
    add_flops(data["rows"], sides)
    data["meta"]["flops_added"] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": f"python -m benchmarks.titans --add-flops {path}"}
    path.write_text(json.dumps(data, indent=1) + "\n")
    path.with_suffix(".md").write_text(render(data))
    print(render(data), end="")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T=1024 only, 3 repeats")
    ap.add_argument("--T", type=int, nargs="+", default=None, help="lengths (default 1024 4096)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per side (default 7)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-busy", type=float, default=MAX_BUSY,
                    help="retry a call pair when other processes used more than this share of "
                         f"the CPUs meanwhile (default {MAX_BUSY}; 1 = never)")
    ap.add_argument("--retries", type=int, default=RETRIES,
                    help=f"retries per call pair (default {RETRIES})")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--only", choices=list(SIDES), default=None, help="measure one side only")
    ap.add_argument("--out", default=None, help="JSON path (default results/titans_cpu.json; "
                                                "--quick prints only unless given)")
    ap.add_argument("--render", default=None, help="print the markdown table of a JSON and exit")
    ap.add_argument("--profile", type=int, default=None, metavar="T",
                    help="print torch.profiler's top ops of memarch's fwd+bwd at T and exit")
    ap.add_argument("--add-flops", default=None, metavar="JSON",
                    help="add matmul FLOP counts to a results file measured with this code")
    a = ap.parse_args(argv)
    if a.add_flops:
        flops_into(a.add_flops)
        return
    if a.render:
        print(render(a.render), end="")
        return
    if a.profile:
        profile_memarch(a.profile, a.threads)
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    Ts = a.T or ([1024] if a.quick else [1024, 4096])
    reps = a.reps or (3 if a.quick else 7)
    sides, info = build_sides(a.only)
    load_before = os.getloadavg()
    rows = []
    for T in Ts:
        times = bench_T(sides, T, reps, a.warmup, max_busy=a.max_busy, retries=a.retries)
        for name in sides:
            r = summarize(name, T, times[name])
            rows.append(r)
            print(f"T={T:5d} {name:15s} fwd+bwd {r['fwd_bwd_tokens_per_s']:9.1f} tok/s  "
                  f"fwd {r['fwd_tokens_per_s']:9.1f} tok/s", flush=True)
    add_flops(rows, sides)
    m = meta("cpu", torch.get_num_threads())
    m["memarch_titans_py"] = _source_id("memarch/mixers/titans.py")
    m["loadavg_1_5_15"] = {"before": [round(v, 2) for v in load_before],
                           "after": [round(v, 2) for v in os.getloadavg()]}
    m["command"] = "python -m benchmarks.titans" + (" " + " ".join(argv if argv is not None
                                                                  else sys.argv[1:])).rstrip()
    rat = ratios(rows)
    data = {
        "meta": m, "config": CONFIG, "reps": reps, "warmup": a.warmup,
        "load_control": {"max_busy": a.max_busy, "retries": a.retries, "meaning": (
            "a (fwd, fwd+bwd) call pair during which other processes used more than max_busy "
            "of all CPUs (from /proc/stat less this process) is measured again after a wait "
            "for an idle second, at most `retries` times; rows[].others_cpu_share_all is that "
            "share for every kept pair, rows[].retried how many pairs were measured again")},
        "timing": ("median of reps calls after warmup calls, time.perf_counter, sides "
                   "interleaved call by call (order flipped every repeat), same input x ~ N(0, 1) "
                   "(seed 0); fwd under torch.no_grad; fwd+bwd = m(x).sum().backward() with "
                   "x.requires_grad, grads set to None first; tokens/s = B*T/seconds (*_best: "
                   "from the fastest call); meta.loadavg_1_5_15 is the machine's load around "
                   "the run (2 cores, shared)"),
        "target": {"fwd_bwd_ratio": TARGET_FWD_BWD_RATIO, "met": target_met(rat),
                   "meaning": (f"memarch fwd+bwd tokens/s >= {TARGET_FWD_BWD_RATIO:g}x "
                               "titans-pytorch's at its defaults, at every T")},
        "sides": info, "rows": rows, "ratios": rat}
    text = render(data)
    if a.out or not a.quick:
        out = Path(a.out or RESULTS / "titans_cpu.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=1) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out}")
    print(text, end="")


if __name__ == "__main__":
    os.environ.setdefault("TRITON_PRINT_AUTOTUNING", "0")
    main()
