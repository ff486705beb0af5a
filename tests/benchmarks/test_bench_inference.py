"""The ``inference`` results suite's renderers (benchmarks/suite_inference.py) on synthetic
results: the targets are decided from the rows (met / missed / not measured), and every
renderer copes with missing parts (quick runs, skipped parts). No model is loaded."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
si = importlib.import_module("suite_inference")     # benchmarks/ is not a package

RUN = "2026-01-01T00:00:00"


def _row(part, metric, model, impl, T, threads, W=None, **kw):
    return {"part": part, "metric": metric, "model": model, "impl": impl, "W": W, "T": T,
            "threads": threads, "dtype": "float32", "run": RUN, **kw}


def rows_meeting_every_target(threads=(1, 2)) -> list[dict]:
    """A results file in which every target is met (a full run, both thread counts)."""
    rows = []
    for t in threads:
        rows.append(_row("real", "bandwidth", "-", "torch", None, t, read_Bps=2e10,
                         copy_Bps=1.8e10, reps=5))
        for metric in ("prefill", "decode"):
            for L in (512, 4096):
                m_tok, h_tok = (300.0, 250.0) if metric == "prefill" else (20.0, 16.0)
                rows.append(_row("real", metric, "dense", "memarch", L, t, tok_s=m_tok,
                                 ms=1e3 / m_tok, ratio=round(m_tok / h_tok, 3),
                                 tokens_agree=True, frac_of_bound=0.5, weight_bytes=538e6,
                                 rss_peak_mb=1600.0))
                rows.append(_row("real", metric, "dense", "transformers", L, t, tok_s=h_tok,
                                 ms=1e3 / h_tok, frac_of_bound=0.4, rss_peak_mb=1590.0))
        rows.append(_row("real", "decode_window", "dense", "memarch", 1024, t, ms=60.0,
                         tok_s=16.7, prefill_tok_s=250.0, frac_of_bound=0.4,
                         bound_kv_tok_s=36.0))
        for W in (256, 1024):
            for T, ms in ((1024, 50.0), (4096, 51.0), (16384, 52.0)):
                rows.append(_row("real", "decode_window", si.window_model(W), "memarch", T, t,
                                 W=W, ms=ms, tok_s=1e3 / ms, prefill_tok_s=240.0,
                                 frac_of_bound=0.45, bound_kv_tok_s=38.0))
        for n, tok in (("attention", 2000.0), ("attention_sinks", 2100.0),
                       ("linear_attention", 2200.0), ("based", 1900.0)):
            rows.append(_row("tiny", "decode", n, "memarch", 512, t, tok_s=tok, ms=1e3 / tok,
                             ratio=tok / 400.0))
        rows.append(_row("tiny", "decode", "llama", "transformers", 512, t, tok_s=400.0,
                         ms=2.5))
        for W, tok in ((256, 500.0), (1024, 480.0), (4096, 450.0)):
            rows.append(_row("tiny", "decode_window", "streaming window+sinks d128", "memarch",
                             W + 256, t, W=W, tok_s=tok, ms=1e3 / tok,
                             ratio_vs_W256=tok / 500.0))
        rows.append(_row("ops", "attention_vs_sdpa", "SDPA causal / Attention full", "memarch",
                         1024, t, memarch_ms=10.0, peer_ms=9.8, ratio=0.98))
        for T in (4096, 16384):
            rows.append(_row("ops", "window_vs_flex", "FlexAttention W=512+4 sinks / "
                             "sliding_window_attn", "memarch", T, t, memarch_ms=50.0,
                             peer_ms=60.0, ratio=1.2))
        rows.append(_row("ops", "train_peak_memory", "full attention", "memarch", 16384, t,
                         peak_bytes=300_000_000))
        rows.append(_row("ops", "train_peak_memory", "window 512 + 4 sinks", "memarch", 16384,
                         t, W=512, peak_bytes=200_000_000))
        for op in ("linear_attn", "delta_rule"):
            rows.append(_row("ops", "guard_share", op, "memarch", 4096, t, status="measured",
                             guarded_ms=10.0, unguarded_ms=9.8, guard_share=0.02))
    return rows


def _data(rows):
    return {"meta": {"device": "cpu", "cpu": "X", "torch": "t", "date": RUN,
                     "command": "python -m benchmarks inference"}, "runs": {}, "rows": rows}


def _results(data) -> dict[int, str]:
    """Target number -> its result word(s)."""
    return {int(name.split(".")[0]): result for name, _, result in si.targets(data)}


def test_every_target_met():
    res = _results(_data(rows_meeting_every_target()))
    assert sorted(res) == list(range(1, 10))
    assert set(res.values()) == {"met"}, res
    table = si.render_targets(_data(rows_meeting_every_target()))
    assert table.count("**met**") == 9 and "missed" not in table


def _set(rows, value_key, value, **match):
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            r[value_key] = value


@pytest.mark.parametrize("target, change", [
    (1, lambda rs: _set(rs, "ms", 70.0, metric="decode_window", model="window 256 + 4 sinks",
                        T=1024, threads=2)),
    (1, lambda rs: _set(rs, "ms", 0.4, metric="decode", model="attention", threads=1)),
    (2, lambda rs: _set(rs, "ms", 56.0, metric="decode_window", model="window 1024 + 4 sinks",
                        T=16384, threads=1)),
    (3, lambda rs: _set(rs, "tok_s", 390.0, metric="decode_window", W=4096, threads=2)),
    (4, lambda rs: _set(rs, "ratio", 0.99, metric="decode", impl="memarch", T=4096,
                        threads=2)),
    (5, lambda rs: _set(rs, "ratio", 3.9, metric="decode", model="attention", threads=1)),
    (6, lambda rs: _set(rs, "guard_share", 0.06, model="delta_rule", threads=1)),
    (7, lambda rs: _set(rs, "ratio", 0.94, metric="attention_vs_sdpa", threads=1)),
    (8, lambda rs: _set(rs, "ratio", 0.9, metric="window_vs_flex", T=16384, threads=2)),
    (9, lambda rs: _set(rs, "peak_bytes", 400_000_000, metric="train_peak_memory",
                        model="window 512 + 4 sinks", threads=1)),
])
def test_one_case_below_its_bound_misses_that_target_only(target, change):
    rows = rows_meeting_every_target()
    change(rows)
    res = _results(_data(rows))
    assert res[target] == "missed", res
    assert all(v == "met" for k, v in res.items() if k != target), res


def test_reported_numbers_that_do_not_decide():
    """Target 5 is decided by attention alone: slow linear attention / BASED are reported."""
    rows = rows_meeting_every_target()
    _set(rows, "ratio", 1.0, metric="decode", model="based")
    res = {int(n.split(".")[0]): (m, r) for n, m, r in si.targets(_data(rows))}
    assert res[5][1] == "met" and "BASED linear attention 1x" in res[5][0]


def test_quick_run_says_what_it_did_not_measure():
    """A quick run at one thread: no 16k window rows, no 2-thread rows."""
    rows = [r for r in rows_meeting_every_target(threads=(1,))
            if not (r["metric"] == "decode_window" and r["T"] == 16384)]
    res = _results(_data(rows))
    assert res[2].startswith("met (") and "16k" in res[2] and "not measured" in res[2]
    assert res[4].startswith("met (") and "2 thread(s)" in res[4]
    assert res[1] == res[3] == res[5] == res[9] == "met"
    table = si.render_targets(_data(rows))
    assert "**met** (" in table


def test_no_rows_at_all():
    data = _data([])
    assert set(_results(data).values()) == {"not measured"}
    assert "No rows yet" in si.render(data)
    assert si.plot(data, Path("/nonexistent/never-written")) == []


def test_skipped_parts_render_and_are_noted(tmp_path):
    rows = [r for r in rows_meeting_every_target(threads=(1,)) if r["part"] == "tiny"]
    rows += [_row("real", "status", "-", "-", None, None,
                  status="skipped: run `make real-model` (make real-model)"),
             _row("ops", "guard_share", "linear_attn", "memarch", 4096, 1,
                  status="skipped: no GUARD flag")]
    data = _data(rows)
    md = si.render(data)
    assert "Tiny models" in md and "SmolLM2" not in md and "Ops" not in md
    assert "make real-model" in md and "no GUARD flag" in md
    res = _results(data)
    assert res[4] == res[6] == res[7] == "not measured" and res[3] == "met"
    assert "no GUARD flag" in {n.split(".")[0]: m for n, m, _ in si.targets(data)}["6"]
    paths = si.plot(data, tmp_path / "inference-cpu")
    assert [p.name for p in paths] == ["inference-cpu.png"] and paths[0].stat().st_size > 0


def test_a_later_measurement_supersedes_an_old_skip():
    rows = rows_meeting_every_target(threads=(1,))
    old = _row("real", "status", "dense", "llama.cpp", None, None,
               status="skipped: llama_cpp does not import")
    new = [_row("real", m, "dense", "llama.cpp", 512, 1, tok_s=40.0, ms=25.0)
           for m in ("prefill", "decode")]
    for r in new:
        r["run"] = "2026-02-01T00:00:00"
    md = si.render(_data(rows + [old]))
    assert "llama_cpp does not import" in md and "**llama.cpp**" not in md
    md = si.render(_data(rows + [old] + new))
    assert "llama_cpp does not import" not in md and "**llama.cpp**" in md
    assert "reference, not a target" in md


def test_full_render_has_every_table(tmp_path):
    data = _data(rows_meeting_every_target())
    md = si.render(data)
    for heading in ("SmolLM2-135M-Instruct", "Memory bandwidth", "Decode against context",
                    "Tiny models", "Tiny window", "Ops", "Training (forward + backward)",
                    "Non-finite guard"):
        assert heading in md, heading
    assert "| 2 | decode | 4,096 | 20 | 16 | 1.25x |" in md
    assert si.plot(data, tmp_path / "x")[0].exists()
