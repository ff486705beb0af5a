"""Suite ``peers`` (benchmarks/suite_peers.py): a tiny run end to end, the ratio's direction,
the output comparison, unsupported passes, quick-is-a-subset, and the rendering."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import suite_peers as sp  # noqa: E402


def _has(mod: str) -> bool:
    sp.common.add_bench_deps()
    return importlib.util.find_spec(mod) is not None


def test_tiny_run_end_to_end(tmp_path):
    """attention (always) and, when .bench-deps holds it, two fla cases, at T=256: rows carry
    both sides' times, the ratio is peer / memarch, and the outputs agree."""
    spec = importlib.util.spec_from_file_location("benchmarks_main", BENCH / "__main__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = mod.main
    torch.set_num_threads(1)
    groups = ["attention"] + (["fla"] if _has("fla") else [])
    argv = ["peers", "--peers-tiny", "--threads", "1", "--results", str(tmp_path), "--no-plots",
            "--peers-groups", *groups, "--peers-cases", "SDPA", "FlexAttention",
            "naive_recurrent_linear_attn", "naive_chunk_gated_delta_rule"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "peers-cpu.json").read_text())
    rows = data["rows"]
    assert {r["group"] for r in rows} == set(groups)
    for r in rows:
        assert r["T"] == sp.TINY_T and r["pass"] in sp.PASSES
        for k in sp.KEY:
            assert k in r
        if r["status"] != "measured":
            assert r["status"].startswith("not measured")
            continue
        # ratio = peer / memarch (> 1: memarch faster), 3 significant figures
        assert r["ratio"] == pytest.approx(r["peer_ms"] / r["memarch_ms"], rel=5e-3)
        assert r["max_abs_diff"] < 1e-4 * max(1.0, r["ref_max_abs"]), r
        if r["pass"] == "fwd_bwd":
            assert r["grad_max_abs_diff"] < 1e-3, r
        if r["ratio"] < 1:
            assert r["reason"]
        assert r["peer_version"]
    # SDPA inside Attention._full: bit-identical outputs
    full = [r for r in rows if r["case"] == "SDPA causal / Attention full"]
    assert full and all(r["max_abs_diff"] == 0 for r in full)
    # the W=T band matches causal SDPA; flex (eager here) matches the window + sinks op
    assert any(r["case"].startswith("FlexAttention") and r["status"] == "measured"
               for r in rows)
    text = sp.render(data)
    assert "ratio = peer ms / memarch ms (> 1: memarch faster)" in text


class _Slow:
    def __init__(self, s, add=0.0):
        self.s, self.add = s, add

    def __call__(self, x):
        time.sleep(self.s)
        return x * 2 + self.add


def test_measure_ratio_direction_and_diff():
    x = torch.randn(4, 8)
    fast, slow = _Slow(0.0), _Slow(0.02, add=0.5)
    case = sp.Case("fla", "synthetic", "m", "p",
                   lambda T, d, dt: sp.Pair(fast, slow, (x,)), lambda: "1.0", reps=3)
    rows = sp.case_rows(case, 16, "cpu", "float32", 1, 3, "1.0")
    assert [r["pass"] for r in rows] == list(sp.PASSES)
    for r in rows:
        assert r["ratio"] > 1                            # the peer sleeps: memarch faster
        assert r["peer_ms"] >= 20 and r["memarch_ms"] < 10
        assert r["max_abs_diff"] == pytest.approx(0.5)
        assert "reason" not in r
        assert len(r["memarch_ms_all"]) == len(r["peer_ms_all"]) == 3
    assert rows[1]["grad_max_abs_diff"] == 0             # d(2x + c)/dx = 2 on both sides
    # the other way round: memarch slower -> ratio < 1 and a reason
    case = sp.Case("fla", "synthetic", "m", "p",
                   lambda T, d, dt: sp.Pair(slow, fast, (x,)), lambda: "1.0", reps=3)
    sp.REASONS[("fla", "synthetic", "fwd")] = "because"
    try:
        rows = sp.case_rows(case, 16, "cpu", "float32", 1, 3, "1.0")
    finally:
        del sp.REASONS[("fla", "synthetic", "fwd")]
    assert all(r["ratio"] < 1 for r in rows)
    assert rows[0]["reason"] == "because" and rows[1]["reason"] == "not analysed"


def test_unsupported_pass_and_missing_peer():
    x = torch.randn(3)
    case = sp.Case("attention", "synthetic", "m", "p",
                   lambda T, d, dt: sp.Pair(_Slow(0), _Slow(0), (x,), peer_passes=("fwd",)),
                   lambda: "1.0")
    fwd, fb = sp.case_rows(case, 8, "cpu", "float32", 1, 2, "1.0")
    assert fwd["status"] == "measured" and fb["status"].startswith("not measured: peer")
    assert "ratio" not in fb and fb["memarch_ms"] is not None

    def boom(x):
        raise NotImplementedError("no backward here")
    case = sp.Case("attention", "synthetic", "m", "p",
                   lambda T, d, dt: sp.Pair(_Slow(0), lambda y: boom(y) if y.requires_grad
                                            else y * 2, (x,)), lambda: "1.0")
    fwd, fb = sp.case_rows(case, 8, "cpu", "float32", 1, 2, "1.0")
    assert fwd["status"] == "measured" and "NotImplementedError: no backward here" in fb["status"]

    def missing(T, d, dt):
        raise ModuleNotFoundError("No module named 'fla'")
    rows = sp.case_rows(sp.Case("fla", "synthetic", "m", "p", missing, lambda: None), 8, "cpu",
                        "float32", 1, 2, None)
    assert all(r["status"].startswith("not measured: ModuleNotFoundError") for r in rows)
    too_long = sp.Case("attention", "synthetic", "m", "p", missing, lambda: None, max_T=4,
                       max_T_why="too long")
    assert all(r["status"] == "too long" for r in sp.case_rows(too_long, 8, "cpu", "float32",
                                                               1, 2, None))


def test_quick_is_a_subset_with_the_same_settings():
    for g in sp.GROUPS:
        assert set(sp.lengths(g, True)) <= set(sp.lengths(g, False))
    assert sp.lengths("titans", True) == [1024] and sp.lengths("attention", False)[-1] == 16384


def _row(group, case, T, pas, m, p, **kw):
    return {"group": group, "case": case, "T": T, "pass": pas, "memarch_call": "mc",
            "peer_call": "pc", "peer_version": "9", "status": "measured", "memarch_ms": m,
            "peer_ms": p, "ratio": round(p / m, 3), "max_abs_diff": 1e-7, **kw}


def test_render_is_deterministic_and_lists_the_slow_rows():
    rows = [_row("fla", "fla naive_chunk_linear_attn", 1024, "fwd", 2.0, 1.0,
                 reason="blocked copies"),
            _row("fla", "fla naive_chunk_linear_attn", 1024, "fwd_bwd", 2.0, 4.0),
            _row("attention", "SDPA causal / Attention full", 4096, "fwd", 10.0, 30.0),
            {"group": "attention", "case": "SDPA causal / sliding_window_attn W=T",
             "T": 16384, "pass": "fwd", "memarch_call": "mc", "peer_call": "pc",
             "peer_version": "9", "status": "not measured above T=4096"},
            _row("titans", "titans-pytorch", 1024, "fwd_bwd", 100.0, 50.0,
                 max_abs_diff=None, diff_note="different", reason="vmap")]
    data = {"meta": {"device": "cpu", "cpu": "x", "threads": 2, "torch": "2.13",
                     "date": "2026-12-04T00:00:00"}, "rows": rows}
    text = sp.render(data)
    shuffled = dict(data, rows=random.Random(1).sample(rows, len(rows)))
    assert sp.render(shuffled) == text
    slow = text.split("**Where memarch is slower**")[1]
    assert "- fla naive_chunk_linear_attn: T=1,024 fwd 0.5x (2 vs 1 ms). Why: blocked copies." \
        in slow
    assert "- titans-pytorch: T=1,024 fwd+bwd 0.5x (100 vs 50 ms). Why: vmap." in slow
    assert "Attention full" not in slow and "fwd+bwd 2x" not in slow
    # group order titans, attention, fla; the unmeasured row is a footnote
    assert text.index("titans-pytorch `NeuralMemory`") < text.index("SDPA / FlexAttention") \
        < text.index("flash-linear-attention vs")
    assert "[1] not measured above T=4096" in text and "| 3x |" in text
