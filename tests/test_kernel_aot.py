"""GPU readiness without a GPU: compile every Triton kernel configuration the dispatcher can
launch for sm_80 and sm_90 (ptxas ships in the triton wheel) and read the cubin's resources
with cuobjdump: no register spills (STACK 0, LOCAL 0), shared memory within the limit.

Runs in a subprocess without TRITON_INTERPRET (conftest sets it for the interpreter tests).
Marked slow: about 6 minutes on 2 cores for the default subset (largest tiles per kernel, all
dtypes); `python -m memarch.kernels.aot --full` compiles every tile configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def aot_rows():
    try:
        from memarch.kernels import aot
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"triton not importable: {e}")
    if not (aot.tool("ptxas") and aot.tool("cuobjdump")):
        pytest.skip("the triton wheel ships no ptxas/cuobjdump here (not a CUDA-enabled build)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "memarch.kernels.aot"], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"AOT compile failed:\n{out.stderr[-4000:]}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _fmt(rows):
    return "\n".join(f"{r['kernel']} sm_{r['cc']}: REG {r['REG']} STACK {r['STACK']} "
                     f"LOCAL {r['LOCAL']} SHARED {r['SHARED']}/{r['shared_limit']}" for r in rows)


@pytest.mark.slow
def test_every_kernel_config_compiles_within_shared_memory(aot_rows, checks):
    checks.true(len(aot_rows) > 0, "no kernel was compiled")
    bad = [r for r in aot_rows if r["SHARED"] > r["shared_limit"]]
    checks.true(not bad, "shared memory over the limit:\n" + _fmt(bad))


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known register spills (benchmarks/results/"
                   "aot_resources.json): block sizes need tuning on a GPU; strict, so this "
                   "marker must go once the kernels are spill-free")
def test_no_register_spills(aot_rows, checks):
    bad = [r for r in aot_rows if r["STACK"] or r["LOCAL"]]
    checks.true(not bad, f"{len(bad)} of {len(aot_rows)} builds spill:\n" + _fmt(bad))
