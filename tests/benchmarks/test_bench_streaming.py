"""Suite ``streaming`` (benchmarks/suite_streaming.py): the tiny end-to-end run (part (c) with a
tiny random MemLM standing in for the real model), the verdict rules on synthetic JSON, the
perplexity summaries, the decode ratio's direction, and part (c) without the real model."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite_streaming as S  # noqa: E402


def _ppl_row(model, ev, in_win, after=None, T=1000, W=8):
    r = dict(part="ppl", model=model, eval=ev, W=W, max_tokens=T, ppl_in_window=in_win, n_layers=2,
             n_streams=1, buckets=[])
    if after is not None:
        r["ppl_after_eviction"] = after
    return r


def _data(ref, win, sinks):
    return {"rows": [_ppl_row("dense", "dense (W-token segments)", ref),
                     _ppl_row("dense", "window", ref, win),
                     _ppl_row("dense", "window+sinks", ref, sinks)]}


def test_rule_a():
    assert S.finding_a(_data(4.0, 7.0, 4.2))[0] == "reproduced"
    assert S.finding_a(_data(4.0, 7.0, 4.5))[0] == "partly reproduced"    # > 1.1x, half the gap
    assert S.finding_a(_data(4.0, 5.0, 4.4))[0] == "partly reproduced"
    assert S.finding_a(_data(4.0, 5.0, 4.8))[0] == "not reproduced"       # closes < half
    assert S.finding_a(_data(4.0, 4.2, 4.0))[0] == "not reproduced"       # window never breaks
    assert S.finding_a({"rows": []}) is None
    text = S.render_findings(_data(4.0, 7.0, 4.2))
    assert text.startswith("**StreamingLLM (a)** reproduced")
    assert "7 " in text and "4.2 " in text and "figure 3" in text


def _dec(W, sinks, re):
    return dict(part="decode", model="random init", eval="decode", W=W,
                sinks_tokens_per_s=sinks, recompute_tokens_per_s=re, speedup=sinks / re,
                n_layers=2, d_model=8, device="cpu", dtype="float32")


def test_rule_b():
    grows = {"rows": [_dec(256, 100, 50), _dec(512, 100, 20), _dec(1024, 100, 8)]}
    assert S.finding_b(grows)[0] == "reproduced"                 # 2x, 5x, 12.5x
    flat = {"rows": [_dec(256, 100, 50), _dec(512, 100, 40)]}
    assert S.finding_b(flat)[0] == "partly reproduced"
    assert S.finding_b({"rows": [_dec(256, 100, 90)]})[0] == "not reproduced"
    assert "12.5x at W = 1024" in S.render_findings(grows)


def _real_row(ev, W=1024, T=20480, in_win=10.0, after=None, at=None, every=96, n=187):
    return dict(part="real", model="SmolLM2-135M-Instruct", eval=ev, W=W, max_tokens=T,
                text="kjv.txt.xz", dtype="float32", ppl_in_window=in_win,
                ppl_after_eviction=after, ppl_at_oracle=at, n_at_oracle=n,
                oracle_every=every, n_positions=n)


def _real(win_after, sinks_at, oracle, W=1024, T=20480):
    return {"rows": [_real_row("dense", W, T, 10.0, 9.0, 9.5),
                     _real_row("window", W, T, 10.0, win_after, win_after),
                     _real_row("window+sinks", W, T, 10.0, sinks_at * 0.99, sinks_at),
                     _real_row(S.ORACLE, W, T, None, oracle, oracle)]}


def test_rule_c():
    assert S.finding_c(_real(300.0, 10.5, 10.0))[0] == "reproduced"      # 30x; 1.05x
    assert S.finding_c(_real(300.0, 12.0, 10.0))[0] == "partly reproduced"  # sinks 1.2x
    assert S.finding_c(_real(12.0, 10.5, 10.0))[0] == "partly reproduced"   # 1.2x: no collapse
    assert S.finding_c(_real(12.0, 12.0, 10.0))[0] == "not reproduced"
    assert S.finding_c({"rows": []}) is None
    # a --quick run (W = 256) beside the full run: the full run decides
    quick = _real(12.0, 12.0, 10.0, W=256, T=4096)
    both = {"rows": _real(300.0, 10.5, 10.0)["rows"] + quick["rows"]}
    assert S.finding_c(both)[0] == "reproduced"
    text = S.render_findings({"rows": both["rows"] + _data(4.0, 4.2, 4.2)["rows"]})
    assert text.startswith("**StreamingLLM (c)** reproduced on a real pretrained model")
    assert "**StreamingLLM (a)** not reproduced at this scale (tiny models" in text
    assert "300 after" in text and "10.5 against 10 " in text and "every 96th" in text


def test_real_edges_and_summary():
    assert S.real_edges(1024, 20480) == [0, 1024, 2048, 4096, 8192, 16384, 20480]
    assert S.real_edges(256, 4096) == [0, 256, 512, 1024, 2048, 4096]
    W, T = 8, 64
    pos = torch.arange(T)
    nll = torch.zeros(T, dtype=torch.float64)
    nll[W // 2:W] = math.log(3.0)
    nll[2 * W:] = math.log(5.0)
    nll[2 * W::8] = math.log(7.0)             # the oracle's positions past 2W
    s = S.summarize_real(pos, nll, W, S.real_edges(W, T), torch.arange(W, T, 8))
    assert s["ppl_in_window"] == pytest.approx(3.0, rel=1e-4)
    assert s["ppl_at_oracle"] == pytest.approx(7.0, rel=1e-4) and s["n_at_oracle"] == 6
    assert [(b["start"], b["end"]) for b in s["buckets"]] == [(0, 8), (8, 16), (16, 32),
                                                              (32, 64)]
    assert [c[:2] for c in s["curve"]][:2] == [[0, 8], [8, 16]] and len(s["curve"]) == 8
    # the oracle's own positions: no in-window value, buckets only where it has positions
    o = S.summarize_real(torch.arange(W, T, 8), nll[W::8], W, S.real_edges(W, T),
                         torch.arange(W, T, 8))
    assert o["ppl_in_window"] is None and o["buckets"][0]["start"] == 8
    assert o["ppl_after_eviction"] == o["ppl_at_oracle"] == pytest.approx(7.0, rel=1e-4)


def _real_args(**kw):
    a = dict(quick=False, streaming_tiny=True, device="cpu", dtype="float32", threads=1,
             streaming_real_tokens=None, streaming_real_window=None,
             streaming_oracle_every=None, streaming_real_chunk=None, streaming_parts="real")
    a.update(kw)
    return argparse.Namespace(**a)


def test_real_rows_do_not_depend_on_the_chunk():
    # memarch streams exactly: one call over everything = 48-token chunks (the default tiny
    # chunk, which does not divide W = 32 or the positions)
    a = {r["eval"]: r for r in S.run_real(_real_args())}
    b = {r["eval"]: r for r in S.run_real(_real_args(streaming_real_chunk=320))}
    assert set(a) == set(S.REAL_EVALS)
    for ev in S.REAL_EVALS:
        for k in ("ppl_overall", "ppl_in_window", "ppl_after_eviction", "ppl_at_oracle"):
            if a[ev][k] is not None:
                assert a[ev][k] == pytest.approx(b[ev][k], rel=1e-4), (ev, k)
    assert b["window"]["command"].endswith("--streaming-real-chunk 320")


def test_real_part_skipped_without_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMARCH_CACHE", str(tmp_path))
    assert S.run_real(_real_args(streaming_tiny=False)) == []
    out = capsys.readouterr().out
    assert "streaming (c) skipped" in out and "make real-model" in out


def test_summarize_buckets_and_windows():
    W, T = 8, 100
    nll = torch.zeros(2, T, dtype=torch.float64)
    nll[:, W // 2:W] = math.log(3.0)            # in-window positions [W/2, W): ppl 3
    nll[:, 2 * W:] = math.log(5.0)              # after eviction: ppl 5
    s = S.summarize(nll, W, S.edges_for(W, T))
    assert s["ppl_in_window"] == pytest.approx(3.0, rel=1e-4)
    assert s["ppl_after_eviction"] == pytest.approx(5.0, rel=1e-4)
    assert [(b["start"], b["end"]) for b in s["buckets"]] == [(0, 2), (2, 8), (8, 32),
                                                              (32, 100)]
    assert s["buckets"][-1]["ppl"] == pytest.approx(5.0, rel=1e-4)
    assert S.edges_for(256, 1_000_000)[-2:] == [262144, 1_000_000]


def test_missing_text_names_the_path(tmp_path):
    with pytest.raises(SystemExit, match="nothere.txt"):
        S.eval_text(str(tmp_path / "nothere.txt"), 10)


def test_eval_text_is_the_held_out_tail_wrapped(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("a" * 91 + "bcdefghij")                    # the tail after 91%: b..j
    ids, held = S.eval_text(str(p), 25)
    assert held == 9 and len(ids) == 25
    assert bytes(ids[:9]) == b"bcdefghij" and bytes(ids[9:18]) == b"bcdefghij"


@pytest.mark.slow
def test_tiny_run(tmp_path):
    # a synthetic text in place of ../shared/data/kjv.txt: runs on a fresh clone
    from benchmarks.__main__ import main
    text = tmp_path / "tiny.txt"
    text.write_text("In the beginning God created the heaven and the earth.\n"
                    "And the earth was without form, and void.\n" * 300)
    res = tmp_path / "res"
    assert main(["streaming", "--streaming-tiny", "--streaming-text", str(text), "--results",
                 str(res), "--threads", "1"]) == 0
    data = json.loads((res / "streaming-cpu.json").read_text())
    rows = data["rows"]
    ppl = {(r["model"], r["eval"]): r for r in rows if r["part"] == "ppl"}
    assert set(ppl) == {(m, "dense (W-token segments)") for m in S.MODELS} | {
        (m, e) for m, evs in S.EVALS.items() for e in evs}
    r = ppl[("dense", "window+sinks")]
    assert (r["window"], r["n_sinks"], r["sink_positions"]) == (32, 4, "cache")
    assert r["max_tokens"] == 2000 and r["buckets"][-1]["end"] == 2000
    # the first W positions see every token with or without sinks: the same numbers
    assert r["buckets"][0]["ppl"] == pytest.approx(ppl[("dense", "window")]["buckets"][0]["ppl"],
                                                   rel=1e-3)
    assert "python train.py" in r["command"] and "trainer.max_steps=2" in r["command"]
    dec = [x for x in rows if x["part"] == "decode"]
    assert [x["W"] for x in dec] == [32, 64]
    for x in dec:      # speed-up = window+sinks tokens/s over re-computation tokens/s
        assert x["speedup"] == pytest.approx(
            x["sinks_tokens_per_s"] / x["recompute_tokens_per_s"], rel=2e-3)
    # (c): a tiny random MemLM stands in for the real model (byte tokens of the shipped KJV)
    real = {x["eval"]: x for x in rows if x["part"] == "real"}
    assert set(real) == set(S.REAL_EVALS)
    assert (real["window+sinks"]["n_sinks"], real["window+sinks"]["sink_positions"]) == (
        4, "cache")
    assert real["window"]["n_sinks"] == 0 and real["window"]["max_tokens"] == 320
    # where they must agree with dense (positions < W; the oracle at W - 1): they do
    for ev in ("window", "window+sinks", S.ORACLE):
        assert real[ev]["check_vs_dense"] < 1e-4, ev
    o = real[S.ORACLE]
    assert o["n_positions"] == len(range(32, 320, 8)) and o["n_at_oracle"] == len(
        range(64, 320, 8)) == real["window"]["n_at_oracle"]
    assert real["window"]["buckets"][0]["ppl"] == pytest.approx(
        real["dense"]["buckets"][0]["ppl"], rel=1e-4)
    assert real["dense"]["command"] == "python -m benchmarks streaming --streaming-parts real " \
        "--threads 1"
    md = S.render(data)
    assert md == S.render(json.loads(json.dumps(data)))        # a function of the JSON
    assert "| dense | window+sinks |" in md and "| 32 |" in md
    assert "| sliding window + re-computation | - |" in md and "streaming-cpu-real.png" in md
    assert "**StreamingLLM (c)**" in S.render_findings(data)
    assert (res / "streaming-cpu.png").exists() and (res / "streaming-cpu-decode.png").exists()
    assert (res / "streaming-cpu-real.png").exists()
    # quick: the decode rows at the first two windows and (c) (the tiny setting), merged
    assert main(["streaming", "--quick", "--streaming-tiny", "--results", str(res),
                 "--threads", "1", "--no-plots"]) == 0
    data2 = json.loads((res / "streaming-cpu.json").read_text())
    assert len(data2["rows"]) == len(rows)
