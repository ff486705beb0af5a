"""Perplexity by position over one long text stream (StreamingLLM's evaluation, 2309.17453).

A local text file is tokenized once; each *stream* is ``max_tokens + 1`` consecutive tokens
of it, fed through the model chunk by chunk with its state (``EvalModel.chunks``), so a
constant-state model scores streams far longer than fit in memory. **Position t** (0 ..
``max_tokens - 1``) is the loss of predicting token ``t + 1`` from tokens ``0 .. t`` (``t + 1``
tokens of context); nothing is prepended, so every position is a real prediction.

Reported: perplexity per position bucket ``exp(mean NLL in the bucket)``, the cumulative
perplexity ``exp(mean NLL over positions [0, end))`` at each bucket end, and the overall
perplexity ``exp(mean NLL)``. With several streams (starting at different token offsets of
the text) every bucket pools the tokens of all streams (all streams have the same positions,
so this is also the mean over streams of the per-stream mean NLL).

Files in ``out_dir``: ``perplexity.json`` (summary), ``perplexity.jsonl`` (one line per
bucket) and ``perplexity_by_position.png`` (log-scale perplexity against position).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch
from memarch.eval.io import JsonlWriter, environment, write_json
from memarch.eval.synthetic.common import FnSuite, plot_name, runner

__all__ = ["bucket_edges", "perplexity_suite", "plot_by_position", "run_perplexity", "stream_nll"]


def bucket_edges(bucket: int | Sequence[int], max_tokens: int) -> list[int]:
    """Bucket edges ``[0, ..., max_tokens]``: bucket i covers positions ``[e_i, e_{i+1})``.

    ``bucket`` is a width (``[0, w, 2w, ..., max_tokens]``; the last bucket may be shorter)
    or a list of edges (strictly increasing, within ``[0, max_tokens]``; 0 and ``max_tokens``
    are added when missing)."""
    if isinstance(bucket, int) and not isinstance(bucket, bool) and bucket >= 1:
        return list(range(0, max_tokens, bucket)) + [max_tokens]
    edges = list(bucket) if isinstance(bucket, (list, tuple)) else []
    if (not edges or any(not isinstance(e, int) or isinstance(e, bool) for e in edges)
            or any(b <= a for a, b in pairwise(edges))
            or edges[0] < 0 or edges[-1] > max_tokens):
        raise ValueError(f"bucket: expected a width >= 1 or a list of edges (strictly "
                         f"increasing integers in [0, max_tokens={max_tokens}]), got {bucket!r}")
    if edges[0] != 0:
        edges = [0] + edges
    if edges[-1] != max_tokens:
        edges = edges + [max_tokens]
    return edges


@torch.no_grad()
def stream_nll(model, ids: Sequence[int], *, desc: str = "perplexity") -> torch.Tensor:
    """Per-position NLL (fp64, ``[len(ids) - 1]``) of one stream: position t is
    ``-log p(ids[t + 1] | ids[:t + 1])``, computed chunk by chunk through the model state."""
    if len(ids) < 2:
        raise ValueError(f"stream_nll: a stream needs at least 2 tokens, got {len(ids)}")
    lp, _ = model.token_logprobs(list(ids), start=1, desc=desc)
    return (-lp[0]).double().cpu()


def _labels(edges: list[int]) -> list[str]:
    return [f"{a}-{b - 1}" for a, b in pairwise(edges)]


def _offsets(offsets, n_streams: int, n_text: int, need: int, seed: int, text_file: str
             ) -> list[int]:
    if n_text < need:
        raise ValueError(f"text_file: {text_file} has {n_text} tokens, fewer than the "
                         f"{need} needed (max_tokens + 1); lower max_tokens or give a "
                         "longer text")
    last = n_text - need                               # the last possible start
    if isinstance(offsets, str):
        if not isinstance(n_streams, int) or isinstance(n_streams, bool) or n_streams < 1:
            raise ValueError(f"n_streams: expected an integer >= 1, got {n_streams!r}")
        if offsets == "even":
            return [0] if n_streams == 1 else [i * last // (n_streams - 1)
                                               for i in range(n_streams)]
        if offsets == "random":
            rng = random.Random(f"perplexity:{seed}")
            return sorted(rng.randint(0, last) for _ in range(n_streams))
        raise ValueError(f"offsets: expected 'even', 'random' or a list of token offsets, "
                         f"got {offsets!r}")
    offs = list(offsets)
    if not offs or any(not isinstance(o, int) or isinstance(o, bool) or o < 0 for o in offs):
        raise ValueError(f"offsets: expected a non-empty list of token offsets >= 0, "
                         f"got {offsets!r}")
    bad = [o for o in offs if o > last]
    if bad:
        raise ValueError(f"offsets: {bad} leave fewer than the {need} tokens needed "
                         f"(max_tokens + 1) in text_file {text_file} ({n_text} tokens; the "
                         f"last possible offset is {last})")
    return offs


def plot_by_position(rows: list[dict], path: str | Path, *, title: str) -> Path:
    """Per-bucket and cumulative perplexity against position (log y); PNG via Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mid = [(r["start"] + r["end"]) / 2 for r in rows]
    ends = [r["end"] for r in rows]
    ax.plot(mid, [r["ppl"] for r in rows], marker="o", ms=3, label="per bucket")
    ax.plot(ends, [r["cumulative_ppl"] for r in rows], ls="--", label="cumulative")
    ax.set_yscale("log")
    ax.set_xlabel("position in the stream (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def perplexity_suite(model, *, text_file: str | None = None,
                     max_tokens: int = 65536, bucket: int | Sequence[int] = 1024,
                     n_streams: int = 1, offsets: str | Sequence[int] = "even",
                     seed: int = 0) -> FnSuite:
    """Perplexity by position of ``model`` (an EvalModel) over streams of ``text_file``;
    writes ``perplexity.json``, ``perplexity.jsonl`` and ``perplexity_by_position.png``.

    Args:
        text_file: a local UTF-8 text, plain or ``.xz`` / ``.gz`` (e.g. the shipped
            ``memarch/data/corpora/kjv.txt.xz``).
        max_tokens: positions per stream (each stream takes ``max_tokens + 1`` tokens).
        bucket: a bucket width in positions, or a list of bucket edges.
        n_streams: streams to average over (ignored when ``offsets`` is a list).
        offsets: token offsets of the streams in the text: ``"even"`` (the first at 0, the
            rest spread evenly up to the end of the text), ``"random"`` (uniform, drawn
            from ``seed``) or an explicit list.
        seed: used by ``offsets="random"`` only.
    """
    if text_file is None:
        raise ValueError("text_file: required: a local long text file, e.g. "
                         "memarch/data/corpora/kjv.txt.xz")
    p = Path(text_file).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"text_file: file not found: {text_file}")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected an integer >= 1, got {max_tokens!r}")
    edges = bucket_edges(bucket, max_tokens)
    from memarch.data.text import read_text
    ids = model.encode(read_text(p))
    offs = _offsets(offsets, n_streams, len(ids), max_tokens + 1, seed, str(text_file))

    def run(out_dir: Path) -> dict:
        t0 = time.time()
        nll = torch.stack([stream_nll(model, ids[o:o + max_tokens + 1],
                                      desc=f"perplexity {i + 1}/{len(offs)}")
                           for i, o in enumerate(offs)])                   # [S, max_tokens] fp64
        csum = torch.cat([torch.zeros(1, dtype=torch.float64), nll.sum(0).cumsum(0)])
        n_s = len(offs)
        rows = []
        for label, a, b in zip(_labels(edges), edges, edges[1:]):
            mean = float(nll[:, a:b].mean())
            rows.append({"label": label, "start": a, "end": b, "n_tokens": n_s * (b - a),
                         "nll": mean, "ppl": math.exp(mean),
                         "cumulative_ppl": math.exp(float(csum[b]) / (n_s * b)),
                         "per_stream_ppl": [math.exp(float(x)) for x in nll[:, a:b].mean(1)]})
        overall = float(nll.mean())
        settings = {"text_file": str(text_file), "max_tokens": max_tokens, "bucket": bucket,
                    "bucket_edges": edges, "n_streams": n_s, "offsets": offs, "seed": seed,
                    "chunk_size": model.chunk_size, "text_tokens": len(ids)}
        summary = {
            "task": "perplexity", "model": model.name, "settings": settings,
            "ppl": math.exp(overall), "nll": overall,
            "by_position": {r["label"]: r["ppl"] for r in rows},
            "cumulative_by_position": {r["label"]: r["cumulative_ppl"] for r in rows},
            "buckets": [{k: r[k] for k in ("start", "end", "n_tokens", "ppl", "cumulative_ppl")}
                        for r in rows],
            "per_stream": [{"offset": o, "ppl": math.exp(float(nll[i].mean()))}
                           for i, o in enumerate(offs)],
            "n_tokens": int(nll.numel()), "max_length_run": max_tokens,
            "environment": environment(model.device)}
        with JsonlWriter(out_dir / "perplexity.jsonl") as w:
            for r in rows:
                w.write(r)
        plot_by_position(rows, out_dir / "perplexity_by_position.png",
                         title=f"perplexity by position: {plot_name(model)}")
        summary["seconds"] = time.time() - t0
        write_json(out_dir / "perplexity.json", summary)
        return summary

    return FnSuite("perplexity", run, [max_tokens])


run_perplexity = runner(perplexity_suite, "perplexity")
