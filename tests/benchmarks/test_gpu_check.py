"""benchmarks/gpu_check/ (`make gpu-check`: `python -m benchmarks.gpu_check`) as far as a CPU can
run it: the dry run (every step with tiny sizes, the Triton interpreter) and the JSON it writes,
the worker processes, the stop without CUDA, the time limit, and the peers' skip paths."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
OPS = ("linear_attn", "sliding_window_attn", "delta_rule")
INPUTS = {"linear_attn": {"q", "k", "v", "g", "S0"},
          "delta_rule": {"q", "k", "v", "beta", "g", "S0"},
          "sliding_window_attn": {"q", "k", "v", "sink_k", "sink_v"}}
OUTPUTS = {"linear_attn": {"o", "S"}, "delta_rule": {"o", "S"}, "sliding_window_attn": {"o"}}

sys.path.insert(0, str(BENCH))                     # benchmarks/ is not a package
from gpu_check import correctness, env, impls, peers, speed  # noqa: E402


def run_script(*args, timeout=240):
    environ = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    p = run_script("--dry-run", "--out", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads((out / "gpu_check-cpu-dry-run.json").read_text())
    return p, data, out


@pytest.mark.slow
def test_dry_run_meta_names_the_machine_and_command(dry_run):
    _, data, _ = dry_run
    m = data["meta"]
    for key in ("device", "torch", "triton", "date", "command", "python"):
        assert m[key], key
    assert "cuda" in m and m["mode"] == "dry-run"
    assert m["torch"] == torch.__version__
    assert "--dry-run" in m["command"] and "-m benchmarks.gpu_check" in m["command"]
    assert m["triton_interpret"] == "1"          # set before memarch.kernels was imported
    assert data["passed"] is True


def test_dry_run_every_case_within_tolerance(dry_run):
    _, data, _ = dry_run
    cases = data["correctness"]["cases"]
    s = data["correctness"]["summary"]
    assert s["cases"] == len(cases) == s["passed"] and not s["failed"] and not s["not_run"]
    assert {(c["op"], c["dtype"]) for c in cases} == {(o, d) for o in OPS
                                                      for d in ("fp32", "fp16", "bf16")}
    floors = {"fp16": {"out": 2e-3, "grad": 4e-3}, "bf16": {"out": 1e-2, "grad": 2e-2}}
    for c in cases:
        name = f"{c['op']} {c['dtype']} {c['variant']} T={c['T']}"
        assert c["ok"] and not c["failures"] and c["torch_error"] is None, name
        outs = {n.split(":")[1] for n in c["tensors"] if n.startswith("out:")}
        grads = {n.split(":")[1] for n in c["tensors"] if n.startswith("grad:")}
        assert OUTPUTS[c["op"]] <= outs, (name, outs)               # outputs and final states
        if c.get("normalize"):
            assert "z" in outs, name
        if c["grad"]:                                               # every input's gradient
            assert grads == INPUTS[c["op"]] | ({"z0"} if c.get("normalize") else set()), name
        else:
            assert not grads, name
        for n, t in c["tensors"].items():
            assert t["finite"] and t["ok"], (name, n, t)
            assert math.isfinite(t["triton"]) and 0 <= t["triton"] <= t["tol"], (name, n, t)
            assert math.isfinite(t["torch"]), (name, n, t)
            kind = n.split(":")[0]
            want = ({"out": 4e-4, "grad": 2e-3}[kind] if c["dtype"] == "fp32"
                    else 2 * t["torch"] + floors[c["dtype"]][kind])
            assert t["tol"] == pytest.approx(want), (name, n, t)
            if c["dtype"] == "fp32":
                assert t["triton"] < 1e-5, (name, n, t)       # interpreter fp32: ~1e-7


def test_dry_run_covers_prefill_grad_and_decode(dry_run):
    _, data, _ = dry_run
    cases = data["correctness"]["cases"]
    for op in OPS:
        mine = [c for c in cases if c["op"] == op]
        assert {c["T"] for c in mine} == {1, 40}, op
        assert any(c["grad"] and c["T"] == 1 for c in mine), op    # T = 1 with gradients
        decode = [c for c in mine if c["variant"].startswith("decode")]
        assert decode and all(not c["grad"] for c in decode), op
        if op == "sliding_window_attn":
            assert all(c["Tq"] == 1 and c["Tk"] == c["W"] and c["q_offset"] > c["W"]
                       for c in decode)
            assert any(c["Tk"] > c["Tq"] for c in mine if c["grad"])   # chunked prefill
        else:
            assert all(c["decode_kernel"] is True for c in decode), op   # the fused kernel ran


def test_dry_run_benchmark_rows(dry_run):
    _, data, _ = dry_run
    rows = data["benchmark"]["rows"]
    assert data["benchmark"]["config"]["Ts"] == [64] and not data["benchmark"]["not_run"]
    for op in OPS:
        for impl in ("triton", "torch"):
            r = [r for r in rows if r["op"] == op and r["impl"] == impl]
            assert len(r) == 1 and r[0]["ours"] and "error" not in r[0], (op, impl, r)
            assert r[0]["fwd_ms"] > 0 and r[0]["fwd_bwd_ms"] > 0, r[0]
        torch_row = next(r for r in rows if r["op"] == op and r["impl"] == "torch")
        assert torch_row["rel_diff_vs_triton"] < 1e-5, torch_row      # the same function
    flex = [r for r in rows if r["impl"].startswith("flex_attention")]
    assert len(flex) == 1 and flex[0]["fwd_ms"] > 0, flex             # eager forward on CPU
    assert flex[0]["rel_diff_vs_triton"] < 1e-5, flex            # sinks + window: our function
    assert "fwd_bwd_ms" not in flex[0] and "backward" in flex[0]["bwd_skipped"], flex
    assert any(r["impl"].startswith("sdpa") for r in rows)
    peers = data["peers"]
    assert peers["flex_attention"]["status"] == "ok"
    for name in ("fla", "flash_attn"):
        assert peers[name]["status"] == "skipped" and peers[name]["reason"], peers[name]


def test_dry_run_prints_the_tables_and_writes_the_log(dry_run):
    p, data, out = dry_run
    corr, _, bench = p.stdout.partition("\nBenchmark: ")
    assert bench, p.stdout[-2000:]
    for op in OPS:                      # markdown rows (render(), also the README's tables)
        assert re.search(rf"^\| {op} \| fp32 \| 16 \| ", corr, re.M), op
        assert re.search(rf"^\| {op} \| 16 \| 64 \| triton \| ", bench, re.M), op
    n = data["correctness"]["summary"]["cases"]
    assert f"correctness: {n}/{n} cases pass" in p.stdout
    assert "gpu-check PASSED" in p.stdout
    assert "peer fla skipped" in p.stdout
    assert (out / "gpu_check-cpu-dry-run.log").read_text().strip() == p.stdout.strip()


@pytest.mark.slow
def test_worker_processes_and_warmup(tmp_path):
    p = run_script("--dry-run", "--jobs", "2", "--ops", "linear_attn", "--dtypes", "bf16",
                   "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check-cpu-dry-run.json").read_text())
    assert data["meta"]["jobs"] == 2 and data["meta"]["ops"] == ["linear_attn"]
    cases = data["correctness"]["cases"]
    assert len(cases) == 5 and all(c["ok"] and c["op"] == "linear_attn" for c in cases)
    assert {c["dtype"] for c in cases} == {"bf16"}
    warm = data["warmup"]
    assert warm and all("error" not in w for w in warm), warm
    assert {w["impl"] for w in warm} == {"triton"}
    assert {r["op"] for r in data["benchmark"]["rows"]} == {"linear_attn"}


@pytest.mark.slow
def test_time_limit_reports_what_did_not_run(tmp_path):
    p = run_script("--dry-run", "--time-limit", "1", "--ops", "delta_rule", "--out",
                   str(tmp_path))
    assert p.returncode == 1, p.stdout + p.stderr
    data = json.loads((tmp_path / "gpu_check-cpu-dry-run.json").read_text())
    assert data["passed"] is False
    assert len(data["correctness"]["summary"]["not_run"]) == 3       # one task per dtype
    assert data["benchmark"]["not_run"] and not data["benchmark"]["rows"]
    assert "NOT RUN" in p.stdout and "gpu-check FAILED" in p.stdout


@pytest.mark.slow
def test_without_cuda_it_stops_at_once(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    t0 = time.time()
    p = run_script("--out", str(tmp_path), timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no CUDA device found" in p.stderr and "--dry-run" in p.stderr, p.stderr
    assert "TRITON_INTERPRET was set; unset it" in p.stdout      # GPU mode never interprets
    assert not list(tmp_path.iterdir())                          # nothing written
    assert time.time() - t0 < 60


def test_make_target_uses_its_own_python():
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bgpu-check\b", text, re.M)
    assert re.search(r"^gpu-check:\s*$", text, re.M)           # no setup: not the CPU venv
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    p = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check", "ARGS=--full"],
                       cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "python3 -m benchmarks.gpu_check --full"


def test_peer_whose_install_fails_is_skipped(monkeypatch):
    calls = []

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for fla-core"

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return Failed()
    monkeypatch.setattr(peers, "installed_version", lambda name: None)
    monkeypatch.setattr(peers.subprocess, "run", fake_run)
    rec = peers.prepare_peer("fla", dry_run=False, install=True, wheels="/wheels")
    assert rec["status"] == "skipped" and "No matching distribution" in rec["reason"], rec
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and cmd[-1] == "fla-core"
    assert "--only-binary" in cmd and "-c" in cmd and "--find-links" in cmd, cmd
    rec = peers.prepare_peer("flash_attn", dry_run=False, install=False, wheels=None)
    assert rec["status"] == "skipped" and "--no-install" in rec["reason"]
    assert len(calls) == 1


def test_fla_on_hopper_with_old_triton_skips_its_backward(monkeypatch):
    monkeypatch.setattr(peers, "installed_version", lambda name: "0.6.0")
    monkeypatch.setattr(peers, "fla_backward_blocked", lambda: True)
    rec = peers.prepare_peer("fla", dry_run=False, install=False, wheels=None)
    assert rec["status"] == "ok" and "Triton < 3.7.1" in rec["note"]
    x = {"a": torch.randn(4, 3)}
    row = speed.measure(impls.Impl("peer", lambda a: a * 2,
                                   bwd_skip=peers.FLA_HOPPER_REASON), x, 1, 0)
    assert row["fwd_ms"] > 0 and "fwd_bwd_ms" not in row
    assert row["bwd_skipped"] == peers.FLA_HOPPER_REASON


def test_a_peer_that_fails_to_load_is_an_error_row_not_ours(monkeypatch):
    def broken(op, args):
        raise RuntimeError("fla needs a newer triton")
    monkeypatch.setattr(impls, "fla_impl", broken)
    status = {name: {"status": "skipped"} for name in peers.PEERS}
    status["fla"] = {"status": "ok"}
    bench = env.GRIDS["dry-run"]["bench"]
    made = impls.bench_impls("delta_rule", 64, bench, status, None)
    assert [i.name for i in made] == ["triton", "torch", "fla"]
    with pytest.raises(RuntimeError, match="newer triton"):
        speed.measure(made[-1], {}, 1, 0)


def test_tolerance_rule():
    assert correctness.tolerance("fp32", "out", None) == 4e-4
    assert correctness.tolerance("fp32", "grad", {"rel": 1.0, "finite": True}) == 2e-3
    assert correctness.tolerance("bf16", "grad", {"rel": 1e-3, "finite": True}) == \
        pytest.approx(2e-3 + 2e-2)
    assert correctness.tolerance("fp16", "out", {"rel": float("nan"), "finite": False}) == 2e-3
    e = correctness.rel_error(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    assert e["finite"] is False
    assert correctness.rel_error(torch.tensor([3.5]), torch.tensor([3.0]))["rel"] == \
        pytest.approx(0.5 / 3)
