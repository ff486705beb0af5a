"""The ``mixers`` results suite (benchmarks/suite_mixers.py) at a tiny setting: the numbers
are computed the right way round, the state sizes are the models', quick rows are a subset
of the full run's with the same settings, stops are recorded, and render/plot work."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import common  # noqa: E402
import suite_mixers as sm  # noqa: E402

bench_main = importlib.import_module("benchmarks.__main__")

SECONDS = 0.25          # what the patched timer says every timed call took
PEAK = 12345


@pytest.fixture
def fake_timers(monkeypatch):
    """time_s / peak_bytes call fn once (so the state advances) and return fixed numbers."""
    calls = []

    def time_s(fn, device="cpu", reps=3, warmup=1):
        calls.append((reps, warmup))
        fn()
        return SECONDS

    def peak_bytes(fn, device="cpu"):
        fn()
        return PEAK
    monkeypatch.setattr(common, "time_s", time_s)
    monkeypatch.setattr(common, "peak_bytes", peak_bytes)
    torch.set_num_threads(1)
    return calls


def _args(*extra):
    _, _, args = bench_main.parse(["mixers", "--mixers-tiny", "--threads", "1", *extra])
    return args


def test_rows_math_and_state_sizes(fake_timers):
    rows = sm.run(_args())
    assert {r["block"] for r in rows} == set(sm.BY_NAME)
    assert sorted({r["T"] for r in rows}) == list(sm.TINY["lengths"])
    for r in rows:
        assert "skipped" not in r, r
        T = r["T"]
        # tokens/s = tokens / seconds, never the inverse
        assert r["train_tok_s"] == pytest.approx(T / SECONDS)
        assert r["prefill_tok_s"] == pytest.approx(T / SECONDS)
        assert r["train_s"] == r["prefill_s"] == SECONDS
        assert r["decode_tok_s"] == pytest.approx(1 / SECONDS)      # one token per step
        assert r["decode_ms"] == pytest.approx(SECONDS * 1e3)
        assert r["peak_bytes"] == PEAK
        # the row's model is the one its config builds: same state size, same parameters
        model = sm.build(r["config"])
        assert r["state_size"] == model.state_size(T) == r["state_numel"]
        assert r["params"] == sum(p.numel() for p in model.parameters())
        assert r["state_unit"] == "elements"
        assert r["state_bytes"] >= 2 * r["state_size"]
    by = {(r["block"], r["T"]): r for r in rows}
    D, L = sm.TINY["d_model"], sm.N_LAYERS
    for T in sm.TINY["lengths"]:
        assert by["attention", T]["state_size"] == 2 * L * D * T            # K and V per layer
        assert by["attention", T]["state_bytes"] == 4 * 2 * L * D * T       # fp32
        W = by["attention_window", T]["config"]["mixer"]["window"]
        assert by["attention_window", T]["state_size"] == 2 * L * D * (W - 1)
        assert by["attention_sinks", T]["state_size"] == 2 * L * D * (W - 1 + 4)
        hmt = by["hmt_attention", T]["config"]["hmt"]
        assert T % hmt["segment_len"] == 0       # at a segment boundary: cache + prompt only
        assert by["hmt_attention", T]["state_size"] == (hmt["n_memories"] + 1) * D
    # every block shares the MemLM around it; HMT wraps the attention one
    assert by["hmt_attention", 64]["params"] > by["attention", 64]["params"]
    assert by["attention", 64]["params"] == by["attention_window", 64]["params"]
    # (reps, warm-up) of the timers: train after the peak call, prefill, decode (tiny: 3 steps)
    assert set(fake_timers) == {(3, 0), (3, 1), (sm.TINY["decode_steps"], sm.DECODE_WARMUP)}


def test_full_configs_follow_the_yaml():
    cfgs = {b.name: sm.model_config(b) for b in sm.BLOCKS}
    for name, c in cfgs.items():
        assert c["d_model"] == 256 and c["n_layers"] == 2 and c["vocab_size"] == 256
        assert c["mixer"].get("n_heads", 4) == 4, name
    assert cfgs["attention"]["mixer"]["window"] is None
    assert cfgs["attention_window"]["mixer"]["window"] == 512
    assert cfgs["attention_window"]["mixer"]["n_sinks"] == 0
    assert cfgs["attention_sinks"]["mixer"]["n_sinks"] == 4
    assert cfgs["mag"]["mixer"]["window"] == 512
    assert cfgs["mac"]["mixer"]["segment_len"] == 128
    assert cfgs["based"]["mixer"]["feature_dim"] == 16
    assert cfgs["mom_gated_delta"]["mixer"]["cell"] == "gated_delta"
    assert cfgs["mom_linear"]["mixer"]["cell"] == "linear"
    assert cfgs["hmt_attention"]["hmt"]["segment_len"] == 512
    assert cfgs["hmt_attention"]["mixer"] == cfgs["attention"]["mixer"]
    full = bench_main.parse(["mixers"])[2]
    quick = bench_main.parse(["mixers", "--quick"])[2]
    assert sm.lengths_of(full) == list(sm.LENGTHS)
    assert set(sm.lengths_of(quick)) < set(sm.lengths_of(full))


def test_quick_is_a_subset_merged_into_the_full_run(fake_timers, tmp_path):
    blocks = "attention,linear_attention,hmt_attention"
    base = ["mixers", "--mixers-tiny", "--threads", "1", "--results", str(tmp_path),
            "--no-plots", "--mixers-blocks", blocks]
    assert bench_main.main(base) == 0
    full = json.loads((tmp_path / "mixers-cpu.json").read_text())
    assert bench_main.main(base + ["--quick"]) == 0
    merged = json.loads((tmp_path / "mixers-cpu.json").read_text())
    key = lambda r: common.row_key(r, sm.KEY)  # noqa: E731
    quick = [r for r in merged["rows"] if r["run"] == merged["meta"]["run"]]
    assert quick and {key(r) for r in quick} < {key(r) for r in full["rows"]}
    old = {key(r): r for r in full["rows"]}
    for r in quick:                                  # same settings: only the run differs
        drop = ("run", "wall_s")                 # measured: differs run to run
        assert {k: v for k, v in r.items() if k not in drop} == \
               {k: v for k, v in old[key(r)].items() if k not in drop}
    assert len(merged["rows"]) == len(full["rows"])  # the longer rows were kept
    assert len(merged["runs"]) == 2


def test_projection_and_stops(fake_timers):
    assert sm.project([], 4096) == 0
    assert sm.project([(1024, 1.0)], 4096) == pytest.approx(4.0)                # linear
    assert sm.project([(1024, 1.0), (4096, 8.0)], 16384) == pytest.approx(64)   # e = 1.5
    assert sm.project([(1024, 1.0), (4096, 64.0)], 16384) == pytest.approx(1024)  # e <= 2
    assert sm.project([(1024, 1.0), (4096, 1.0)], 16384, 0, 1) == pytest.approx(1.0)
    assert sm.n_calls("train", 1024, 16) == 4 and sm.n_calls("train", 4096, 16) == 2
    rows = sm.run(_args("--mixers-blocks", "linear_attention", "--mixers-lengths", "32,64,128",
                        "--mixers-cell-budget", "0"))
    first, second, third = rows
    assert "skipped" not in first
    assert set(second["skipped"]) == {"train", "prefill", "decode"}
    assert "budget per phase" in second["skipped"]["train"]
    assert second["skipped"]["decode"] == "needs the prefill"
    assert "train_tok_s" not in second and second["state_size"] == first["state_size"]
    assert third["skipped"]["train"].startswith("stopped at a shorter length")
    text = sm.render({"meta": common.meta("cpu", 1), "rows": rows})
    assert "Not measured: linear attention train from 64" in text
    assert "stopped at a shorter" not in text


def test_render_and_plot(fake_timers, tmp_path):
    rows = sm.run(_args("--mixers-blocks", "attention,mom_linear,hmt_attention"))
    data = {"meta": common.meta("cpu", 1), "rows": rows}
    text = sm.render(data)
    assert text == sm.render(json.loads(json.dumps(data)))          # a function of the JSON
    for label in ("attention (full)", "MoM, linear", "HMT around attention"):
        assert text.count(f"| {label} |") == len(sm.METRICS)
    assert "256·T" in text        # full attention: 2 layers x (K, V) x d_model 64 per token
    assert "| 64 | 128 |" in text
    paths = sm.plot(data, tmp_path / "mixers-cpu")
    assert paths == [tmp_path / "mixers-cpu.png"] and paths[0].stat().st_size > 10_000


def test_real_measurement_smoke():
    """One block, real timers and profiler: positive numbers, consistent with each other."""
    torch.set_num_threads(1)
    (row,) = sm.run(_args("--mixers-blocks", "linear_attention", "--mixers-lengths", "64"))
    assert row["train_tok_s"] == pytest.approx(64 / row["train_s"], rel=1e-3)
    assert row["prefill_tok_s"] == pytest.approx(64 / row["prefill_s"], rel=1e-3)
    assert row["decode_tok_s"] == pytest.approx(1e3 / row["decode_ms"], rel=1e-3)
    assert row["peak_bytes"] > 0 and row["train_reps"] == 3
