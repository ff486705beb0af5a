"""Suite ``streaming`` (benchmarks/suite_streaming.py): the tiny end-to-end run, the verdict
rules on synthetic JSON, the perplexity summaries and the decode ratio's direction."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
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
    md = S.render(data)
    assert md == S.render(json.loads(json.dumps(data)))        # a function of the JSON
    assert "| dense | window+sinks |" in md and "| 32 |" in md
    assert (res / "streaming-cpu.png").exists() and (res / "streaming-cpu-decode.png").exists()
    # quick: only the decode rows at the first two windows, same settings, merged
    assert main(["streaming", "--quick", "--streaming-tiny", "--results", str(res),
                 "--threads", "1", "--no-plots"]) == 0
    data2 = json.loads((res / "streaming-cpu.json").read_text())
    assert len(data2["rows"]) == len(rows)
