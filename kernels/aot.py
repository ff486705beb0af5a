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


def compile_usage(fn, types: dict, constexprs: dict, num_warps: int, cc: int) -> dict:
    sig, const = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            const[(i,)] = constexprs[name]
        else:
            sig[name] = types[name]
    src = ASTSource(fn=fn, signature=sig, constexprs=const)
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=dict(num_warps=num_warps))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        Path(path).write_bytes(k.asm["cubin"])
        out = subprocess.run([tool("cuobjdump"), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    usage = {key: int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out)}
    usage["SHARED"] = max(usage.get("SHARED", 0), int(k.metadata.shared))
    return usage


def report(full: bool = False, ccs=(80, 90)):
    """Compile every configuration of every memarch Triton kernel; yields one dict per build."""
    from .delta_rule import triton_chunk as triton_dr
    from .linear_attn import triton_chunk
    from .sliding_window import triton_swa
    for mod in (triton_chunk, triton_swa, triton_dr):
        for name, fn, types, constexprs, nw in mod.aot_configs(full):
            cx = {k: v for k, v in constexprs.items() if k in fn.arg_names}
            for cc in ccs:
                u = compile_usage(fn, types, cx, nw, cc)
                yield dict(kernel=name, cc=cc, num_warps=nw, **u,
                           shared_limit=SHARED_LIMIT[cc])


if __name__ == "__main__":     # python -m memarch.kernels.aot [--full]: JSON lines
    import json
    import sys
    for row in report(full="--full" in sys.argv):
        print(json.dumps(row), flush=True)
