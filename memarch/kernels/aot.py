"""Ahead-of-time compilation of Triton kernels for a CUDA target without a GPU (GPU readiness).

``compile_usage(fn, types, constexprs, num_warps, cc)`` compiles one kernel configuration with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and returns the resource
usage that ``cuobjdump --dump-resource-usage`` (shipped in the triton wheel) reads from the
cubin: REG, STACK, LOCAL, SHARED. Must run with TRITON_INTERPRET unset (the test runs it in a
subprocess). Imports triton: never imported by ``memarch.kernels`` itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}      # max dynamic shared memory per block


def tool(name: str) -> str | None:
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else None


HEAD_DIMS = ("K", "V", "D")       # int args that are head dims (multiples of 16 in practice)


def attrs_like_jit(fn, types: dict, constexprs: dict, div16=HEAD_DIMS) -> dict:
    """The specialisation attributes Triton's JIT gives a launch: ``tt.divisibility 16``
    for every pointer (torch allocations are 16-byte aligned) and for the int args in
    ``div16`` (head dims 32, 64, 128, 256). The kernels mark their length args
    ``do_not_specialize``, so no other int is specialised and one AOT build per
    configuration is what the GPU compiles."""
    out = {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            continue
        if types[name].startswith("*") or name in div16:
            out[(i,)] = [["tt.divisibility", 16]]
    return out


def compile_usage(fn, types: dict, constexprs: dict, num_warps: int, cc: int,
                  div16=HEAD_DIMS) -> dict:
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            const[(i,)] = constexprs[name]
        else:
            sig[name] = types[name]
    src = ASTSource(fn=fn, signature=sig, constexprs=const,
                    attrs=attrs_like_jit(fn, types, constexprs, div16))
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=num_warps))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(k.asm["cubin"])
        out = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    usage = {key: int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    usage["SHARED"] = max(usage.get("SHARED", 0), int(k.metadata.shared))
    return usage


def configs(full: bool = False):
    """(name, fn, types, constexprs, num_warps) of every build the dispatchers can launch."""
    from .gated_delta_rule import triton_chunk as triton_dr
    from .linear_attention import triton_chunk
    from .sliding_window import triton_swa
    for mod in (triton_chunk, triton_swa, triton_dr):
        yield from mod.aot_configs(full)


def tiles(constexprs: dict) -> dict:
    """The tile sizes of a build (its int constexprs: BM, BN, BK, BV, BT, ...)."""
    return {k: v for k, v in sorted(constexprs.items())
            if isinstance(v, int) and not isinstance(v, bool)}


def build(cfg, cc: int) -> dict:
    name, fn, types, constexprs, nw = cfg
    cx = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    u = compile_usage(fn, types, cx, nw, cc)
    return dict(kernel=name, cc=cc, num_warps=nw, tiles=tiles(cx), **u,
                shared_limit=SHARED_LIMIT[cc])


def report(full: bool = False, ccs=(80, 90), jobs: int = 1):
    """Compile every configuration of every memarch Triton kernel; yields one dict per build
    (in order). ``jobs > 1`` compiles in that many processes."""
    work = [(i, cc, full) for i, _ in enumerate(configs(full)) for cc in ccs]
    if jobs <= 1:
        yield from map(_build_index, work)
        return
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(jobs) as ex:
        yield from ex.map(_build_index, work, chunksize=1)


def _build_index(args) -> dict:
    i, cc, full = args
    return build(list(configs(full))[i], cc)


def write_json(path: str, rows: list[dict], command: str) -> None:
    """``benchmarks/results/aot_resources.json``: the measured resources of every build (the
    data behind the dispatchers' tile tables; tests/kernels/test_kernel_aot.py compares them)."""
    import datetime
    import json
    import platform
    spills = sum(1 for r in rows if r["STACK"] or r["LOCAL"])
    over = sum(1 for r in rows if r["SHARED"] > r["shared_limit"])
    meta = dict(command=command, triton=triton.__version__, machine=platform.machine(),
                date=datetime.date.today().isoformat(), builds=len(rows), spilling=spills,
                over_shared_memory=over,
                note="STACK/LOCAL > 0 = register spills; compiled ahead of time with ptxas "
                     "(no GPU) with the JIT's alignment attributes")
    Path(path).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")


if __name__ == "__main__":     # python -m memarch.kernels.aot [--full] [--jobs N] [--json F]
    import argparse
    import json
    import sys
    ap = argparse.ArgumentParser(prog="python -m memarch.kernels.aot")
    ap.add_argument("--full", action="store_true", help="every tile configuration")
    ap.add_argument("--jobs", type=int, default=1, help="compile in N processes")
    ap.add_argument("--cc", type=int, nargs="*", default=[80, 90])
    ap.add_argument("--json", default=None, help="also write the rows (with meta) to this file")
    a = ap.parse_args()
    rows = []
    for row in report(full=a.full, ccs=tuple(a.cc), jobs=a.jobs):
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        write_json(a.json, rows, "python -m memarch.kernels.aot " + " ".join(sys.argv[1:]))
