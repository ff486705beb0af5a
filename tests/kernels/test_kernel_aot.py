"""GPU readiness without a GPU: compile every Triton kernel configuration the dispatcher can
launch for sm_80 and sm_90 (ptxas ships in the triton wheel) and read the cubin's resources
with cuobjdump: no register spills (STACK 0, LOCAL 0), shared memory within the limit.

The builds carry the attributes Triton's JIT gives a launch (16-byte aligned pointers, head
dims divisible by 16; the kernels mark their length arguments ``do_not_specialize``), so each
AOT build is the one a GPU compiles. The measured resources are data:
``benchmarks/results/aot_resources.json`` (regenerate: ``python -m memarch.kernels.aot --jobs 2
--json benchmarks/results/aot_resources.json``); the fast test checks that the dispatchers'
tile tables are exactly the recorded, spill-free builds; the slow ones compile everything
again (a subprocess without TRITON_INTERPRET; about 3 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "aot_resources.json"


def _key(r):
    return (r["kernel"], r["cc"], r["num_warps"], json.dumps(r["tiles"], sort_keys=True))


def _fmt(rows):
    return "\n".join(f"{r['kernel']} sm_{r['cc']}: REG {r['REG']} STACK {r['STACK']} "
                     f"LOCAL {r['LOCAL']} SHARED {r['SHARED']}/{r['shared_limit']}" for r in rows)


def test_dispatcher_tables_are_the_recorded_spill_free_builds(checks):
    """Every build the dispatchers can launch (``aot_configs``) has a row in
    aot_resources.json (same tiles and warps, sm_80 and sm_90), no row is stale, and every
    recorded build is spill-free and within shared memory."""
    aot = pytest.importorskip("memarch.kernels.aot")
    recorded = json.loads(RESULTS.read_text())["rows"]
    want = {_key(dict(kernel=name, cc=cc, num_warps=nw, tiles=aot.tiles(
        {k: v for k, v in cx.items() if k in fn.arg_names})))
            for name, fn, _, cx, nw in aot.configs(False) for cc in (80, 90)}
    have = {_key(r) for r in recorded}
    checks.true(want == have, f"dispatcher builds without a recorded row: {sorted(want - have)[:5]}"
                f"; recorded rows no dispatcher launches: {sorted(have - want)[:5]} (regenerate "
                "the file, see the module docstring)")
    bad = [r for r in recorded if r["STACK"] or r["LOCAL"] or r["SHARED"] > r["shared_limit"]]
    checks.true(not bad, f"{len(bad)} recorded builds spill or exceed shared memory:\n"
                + _fmt(bad))


@pytest.fixture(scope="module")
def aot_rows():
    try:
        from memarch.kernels import aot
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"triton not importable: {e}")
    if not (aot.tool("ptxas") and aot.tool("cuobjdump")):
        pytest.skip("the triton wheel ships no ptxas/cuobjdump here (not a CUDA-enabled build)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "memarch.kernels.aot", "--jobs", "2"], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, f"AOT compile failed:\n{out.stderr[-4000:]}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_every_kernel_config_compiles_within_shared_memory(aot_rows, checks):
    checks.true(len(aot_rows) > 0, "no kernel was compiled")
    bad = [r for r in aot_rows if r["SHARED"] > r["shared_limit"]]
    checks.true(not bad, "shared memory over the limit:\n" + _fmt(bad))


@pytest.mark.slow
def test_no_register_spills(aot_rows, checks):
    bad = [r for r in aot_rows if r["STACK"] or r["LOCAL"]]
    checks.true(not bad, f"{len(bad)} of {len(aot_rows)} builds spill:\n" + _fmt(bad))
    recorded = {_key(r) for r in json.loads(RESULTS.read_text())["rows"]}
    checks.true({_key(r) for r in aot_rows} == recorded,
                "the compiled builds are the recorded ones (aot_resources.json)")
