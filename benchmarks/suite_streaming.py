"""Suite ``streaming``: StreamingLLM's findings (2309.17453) on our own tiny models.

    python -m benchmarks streaming --threads 1            # (a) + (b): 11.4 CPU-min, 15 min wall
    python -m benchmarks streaming --quick --threads 1    # (b) at W = 256, 512 only (no training)

**(a) Perplexity by position over a 1M-token stream** (byte tokens, ``tokenizer: byte``).
Three tiny MemLMs (2 attention layers, d_model 128, 4 heads, RoPE) are trained in-process
through Hydra + ``memarch.lit.train.run`` on ``../shared/data/kjv.txt`` with
``data.dataset.val_fraction=0.1`` (so training reads the first 90% of the file); each row
records the exact ``python train.py ...`` command:

* ``dense``: full causal attention, sequences of W = 256 tokens;
* ``window``: sliding window W = 256, no sinks, sequences of 2W (the window evicts);
* ``window+sinks``: window W = 256 + 4 sinks at cache positions, sequences of 2W.

The evaluation text is the held-out tail of the file (from 91% of its characters on, past
the validation split whatever the sequence length), **wrapped around** (repeated, about 2.5
times) to reach 1M + 1 tokens; the repetition lies far outside any window, so no windowed
model can see it. Each model is evaluated, weights unchanged, with its mixers converted by
``memarch.checkpoint.load(path, overrides=...)`` (``memarch.overrides``):

* ``dense (W-token segments)``: the reference, the model as trained on 128 disjoint held-out
  segments of W + 1 tokens (within its training length; for the window models a window of
  W is the same function there);
* ``window``: window W, no sinks, streamed over the 1M tokens (``eval/perplexity.stream_nll``);
* ``window+sinks``: window W + 4 sinks at cache positions (StreamingLLM's "slot" RoPE);
* ``window+sinks (absolute)``: the same with absolute sink positions (dense model only).

Streamed evaluations (1M tokens each, the cost of the suite): the dense model with all three,
the window model as trained (window), the window+sinks model as trained and without its
sinks (window). ``val_loss`` in a row is the training run's loss on 8 held-out batches.

Reported: perplexity per log-spaced position bucket, ``ppl_in_window`` (positions
[W/2, W): full context, nothing evicted yet) and ``ppl_after_eviction`` (positions >= 2W).

**(b) Decode speed** of window + sinks (a rolling cache of S + W - 1 entries: O(W) per
token) against sliding window with re-computation (the paper's baseline: each new token
re-encodes the last W tokens from scratch with dense attention, O(W^2) per token), at
W = 256 ... 4096, for the same architecture (random weights: speed does not depend on them),
batch 1; tokens/s of each (median per-token time) and the ratio.

``--device cuda`` / ``--dtype bfloat16`` are accepted (best effort, untested: no GPU was lent
while this suite was written). ``--quick`` measures (b) at W = 256 and 512 only, with the
full run's settings. ``--streaming-tiny`` (hidden) is the test's setting.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from common import ROOT, fmt_num, sync, verdict

KEY = ("part", "model", "eval", "W", "dtype")
THREADS = 1                     # the published rows: 1 torch thread (python -m benchmarks)

KJV = "../shared/data/kjv.txt"         # relative to the repository root, as train.py reads it
N_SINKS = 4
EVAL_FROM = 0.91          # held-out tail: the last 10% is validation in training, 1% margin
N_REF_SEGMENTS = 128

# model name -> (window during training, sinks during training, sequence length factor)
MODELS = {"dense": (False, 0, 1), "window": (True, 0, 2), "window+sinks": (True, N_SINKS, 2)}
# model name -> evaluations streamed over max_tokens
EVALS = {"dense": ["window", "window+sinks", "window+sinks (absolute)"],
         "window": ["window"],
         "window+sinks": ["window+sinks", "window"]}
EVAL_MIXER = {"window": (0, "absolute"), "window+sinks": (N_SINKS, "cache"),
              "window+sinks (absolute)": (N_SINKS, "absolute")}


# ----------------------------------------------------------------------------- settings
def settings(args) -> dict:
    """Every number a row depends on (the tiny setting for the test, else the full run's)."""
    if getattr(args, "streaming_tiny", False):
        return dict(d_model=32, n_layers=2, n_heads=2, W=32, steps=2, batch=4,
                    max_tokens=2000, decode_windows=[32, 64], decode_steps=4,
                    recompute_steps=3, n_ref=8, seed=0)
    return dict(d_model=128, n_layers=2, n_heads=4, W=256, steps=args.streaming_steps,
                batch=16, max_tokens=args.streaming_tokens,
                decode_windows=[int(w) for w in args.streaming_decode_windows.split(",")],
                decode_steps=32, recompute_steps=8, n_ref=N_REF_SEGMENTS, seed=0)


def add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("streaming")
    g.add_argument("--streaming-text", default=KJV,
                   help="the text of part (a) (default ../shared/data/kjv.txt)")
    g.add_argument("--streaming-steps", type=int, default=300,
                   help="training steps per model in part (a)")
    g.add_argument("--streaming-tokens", type=int, default=1_000_000,
                   help="tokens streamed per evaluation in part (a)")
    g.add_argument("--streaming-decode-windows", default="256,512,1024,2048,4096",
                   help="windows W of part (b)")
    g.add_argument("--streaming-parts", default="ppl,decode",
                   help="parts to run: ppl (a), decode (b)")
    g.add_argument("--streaming-tiny", action="store_true", help=argparse.SUPPRESS)


def edges_for(W: int, max_tokens: int) -> list[int]:
    """Log-spaced bucket edges: 0, W/4, W, 4W, 16W, ... , max_tokens."""
    e, x = [0, max(1, W // 4)], W
    while x < max_tokens:
        e.append(x)
        x *= 4
    return sorted(set(e + [max_tokens]))


def ppl(nll: torch.Tensor) -> float:
    return round(math.exp(float(nll.double().mean())), 4)


def summarize(nll: torch.Tensor, W: int, edges: list[int]) -> dict:
    """Perplexities of a [S, T] NLL tensor (S streams or segments over the same positions)."""
    T = nll.shape[-1]
    out = dict(buckets=[dict(start=a, end=b, ppl=ppl(nll[:, a:b]))
                        for a, b in zip(edges, edges[1:]) if b <= T],
               ppl_overall=ppl(nll), ppl_in_window=ppl(nll[:, W // 2:W]))
    if T > 2 * W:
        out["ppl_after_eviction"] = ppl(nll[:, 2 * W:])
    return out


# ----------------------------------------------------------------------------- (a) training
def train_overrides(name: str, s: dict, text: str, device: str = "cpu") -> list[str]:
    windowed, sinks, factor = MODELS[name]
    over = ["experiment=transformer_tiny", "data=text", f"data.dataset.paths=[{text}]",
            f"data.dataset.seq_len={factor * s['W']}", "data.dataset.val_fraction=0.1",
            f"data.batch_size={s['batch'] // factor}", f"model.d_model={s['d_model']}",
            f"model.layer_pattern=[{','.join(['attn'] * s['n_layers'])}]",
            f"model.mixers.attn.n_heads={s['n_heads']}", f"trainer.max_steps={s['steps']}",
            f"trainer.val_check_interval={s['steps']}", f"seed={s['seed']}"]
    if windowed:
        over.append(f"model.mixers.attn.window={s['W']}")
    if sinks:
        over += [f"model.mixers.attn.n_sinks={sinks}", "model.mixers.attn.sink_positions=cache"]
    if device == "cuda":
        over.append("trainer=gpu")
    return over


def text_path(text: str) -> Path:
    """``text`` as given (absolute, or relative to the current folder), else relative to the
    repository root (where ``python train.py`` runs)."""
    p = Path(text).expanduser()
    return p if p.is_absolute() or p.exists() else ROOT / p


def train(name: str, s: dict, text: str, out_dir: str, device: str = "cpu") -> dict:
    """Train one model of part (a); the row's ``command`` names ``text`` as given."""
    from recipes import compose

    from memarch.lit.train import run as train_run
    over = train_overrides(name, s, text, device)
    run_over = train_overrides(name, s, str(text_path(text).resolve()), device)
    # validation: 8 batches of the held-out split (not all 10% of the file), at the end only
    extra = ["trainer.enable_progress_bar=false", "trainer.limit_val_batches=8",
             "checkpoint.every_n_steps=100000"]
    cfg = compose([*run_over, *extra], out_dir)
    t0 = time.perf_counter()
    res = train_run(cfg)
    command = "python train.py " + " ".join(f"'{o}'" if "[" in o else o for o in over)
    return dict(command=command, checkpoint=res["checkpoint"], steps=int(res["global_step"]),
                train_s=round(time.perf_counter() - t0, 1),
                val_loss=round(float(res["val/loss"]), 4),
                tokens_seen=int(res["global_step"]) * s["batch"] * s["W"])


def eval_text(path: str, n: int) -> tuple[list[int], int]:
    """The held-out tail of ``path`` as byte tokens, wrapped around to ``n`` tokens; and the
    tail's own length."""
    from memarch.data.tokenizers import load_tokenizer
    p = text_path(path)
    if not p.is_file():
        raise SystemExit(f"streaming: the text of part (a) is missing: {p} (the public-domain "
                         "KJV Bible, ../shared/data/kjv.txt; or pass --streaming-text FILE)")
    text = p.read_text(encoding="utf-8")
    ids = list(load_tokenizer("byte").encode(text[int(EVAL_FROM * len(text)):]))
    return (ids * -(-n // len(ids)))[:n], len(ids)


def run_ppl(args, s: dict) -> list[dict]:
    from memarch.eval.model import EvalModel
    from memarch.eval.perplexity import stream_nll

    from memarch.checkpoint import load
    W, T = s["W"], s["max_tokens"]
    ids, held = eval_text(args.streaming_text, T + 1)
    edges = edges_for(W, T)
    seg = torch.tensor(ids[:s["n_ref"] * (W + 1)]).view(s["n_ref"], W + 1)
    text_info = dict(text=Path(args.streaming_text).name, eval_from=EVAL_FROM,
                     held_out_tokens=held, wrapped=round(T / held, 2))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as tmp:
        for name in MODELS:
            tr = train(name, s, args.streaming_text, f"{tmp}/{name}", args.device)
            print(f"   trained {name}: {tr['steps']} steps, val loss {tr['val_loss']}, "
                  f"{tr['train_s']:.0f} s", flush=True)
            common = dict(part="ppl", model=name, W=W, n_sinks_trained=MODELS[name][1],
                          d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                          seed=s["seed"], **{k: v for k, v in tr.items() if k != "checkpoint"},
                          **text_info)
            em = EvalModel(load(tr["checkpoint"]).model, "byte", device=args.device,
                           dtype=args.dtype, chunk_size=2048)
            t0 = time.perf_counter()
            lp, _ = em.token_logprobs(seg)
            rows.append(dict(common, eval="dense (W-token segments)", window=None, n_sinks=0,
                             sink_positions=None, max_tokens=W, n_streams=s["n_ref"],
                             eval_s=round(time.perf_counter() - t0, 1),
                             **summarize(-lp.cpu(), W, edges_for(W, W))))
            for ev in EVALS[name]:
                n_sinks, where = EVAL_MIXER[ev]
                over = {"mixers.attn.window": W, "mixers.attn.n_sinks": n_sinks,
                        "mixers.attn.sink_positions": where}
                em = EvalModel(load(tr["checkpoint"], overrides=over).model, "byte",
                               device=args.device, dtype=args.dtype, chunk_size=2048)
                t0 = time.perf_counter()
                nll = stream_nll(em, ids, desc=None)[None]
                r = dict(common, eval=ev, window=W, n_sinks=n_sinks, sink_positions=where,
                         max_tokens=T, n_streams=1, eval_s=round(time.perf_counter() - t0, 1),
                         **summarize(nll, W, edges))
                print(f"   {name} / {ev}: in-window {r['ppl_in_window']}, after eviction "
                      f"{r.get('ppl_after_eviction')} ({r['eval_s']:.0f} s)", flush=True)
                rows.append(r)
    return rows


# ----------------------------------------------------------------------------- (b) decode
def build_lm(s: dict, window: int | None, n_sinks: int = 0):
    from memarch.mixers import Attention
    from memarch.models import MemLM
    mixer = partial(Attention, n_heads=s["n_heads"], window=window, n_sinks=n_sinks,
                    sink_positions="cache")
    return MemLM(vocab_size=257, d_model=s["d_model"], layer_pattern=["attn"] * s["n_layers"],
                 mixers={"attn": mixer})


@torch.no_grad()
def decode_rates(s: dict, W: int, device: str, dtype: str) -> dict:
    """Tokens/s (1 / median per-token seconds) of window + sinks decode (rolling cache)
    and of sliding window with re-computation (dense attention over the last W tokens,
    from scratch, per token), same weights, batch 1."""
    torch.manual_seed(s["seed"])
    dt = getattr(torch, dtype)
    roll = build_lm(s, W, N_SINKS).to(device=device, dtype=dt).eval()
    dense = build_lm(s, None).to(device=device, dtype=dt).eval()
    dense.load_state_dict(roll.state_dict())
    prompt = torch.randint(0, 256, (1, 2 * W), device=device)
    logits, state, _ = roll(prompt, None)           # a full cache: the window has rolled
    tok = logits[:, -1:].argmax(-1)
    times = []
    for _ in range(s["decode_steps"] + 2):
        sync(device)
        t0 = time.perf_counter()
        logits, state, _ = roll(tok, state)
        tok = logits[:, -1:].argmax(-1)
        sync(device)
        times.append(time.perf_counter() - t0)
    t_roll = sorted(times[2:])[len(times[2:]) // 2]
    ctx = prompt
    times = []
    for _ in range(s["recompute_steps"] + 1):
        sync(device)
        t0 = time.perf_counter()
        logits, _, _ = dense(ctx[:, -W:], None)       # re-encode the last W tokens
        ctx = torch.cat([ctx, logits[:, -1:].argmax(-1)], 1)
        sync(device)
        times.append(time.perf_counter() - t0)
    t_re = sorted(times[1:])[len(times[1:]) // 2]
    return dict(part="decode", model="random init", eval="decode", W=W, n_sinks=N_SINKS,
                d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"], batch=1,
                decode_steps=s["decode_steps"], recompute_steps=s["recompute_steps"],
                seed=s["seed"], device=device, dtype=dtype,
                sinks_tokens_per_s=float(f"{1 / t_roll:.4g}"),
                recompute_tokens_per_s=float(f"{1 / t_re:.4g}"),
                speedup=float(f"{t_re / t_roll:.4g}"))


def run(args) -> list[dict]:
    s = settings(args)
    parts = args.streaming_parts.split(",")
    rows = []
    if "decode" in parts:
        wins = s["decode_windows"][:2] if args.quick else s["decode_windows"]
        for W in wins:
            r = decode_rates(s, W, args.device, args.dtype)
            print(f"   decode W={W}: window+sinks {r['sinks_tokens_per_s']} tok/s, "
                  f"recompute {r['recompute_tokens_per_s']} tok/s, {r['speedup']}x", flush=True)
            rows.append(r)
    if "ppl" in parts and not args.quick:
        rows = run_ppl(args, s) + rows
    return rows


# ----------------------------------------------------------------------------- findings
def _ppl_rows(data) -> dict:
    return {(r["model"], r["eval"]): r for r in data["rows"] if r["part"] == "ppl"}


def _decode_rows(data) -> list[dict]:
    return sorted((r for r in data["rows"] if r["part"] == "decode"), key=lambda r: r["W"])


def finding_a(data) -> tuple[str, dict] | None:
    """Rule (dense-trained model): ref = its dense in-window ppl (positions [W/2, W) of
    W-token segments); win / sinks = ppl after eviction (positions >= 2W) with the window
    alone / with 4 cache-position sinks. Reproduced: win > 1.5 ref and sinks <= 1.1 ref.
    Partly: win > 1.1 ref and the sinks close at least half the gap (sinks - ref <=
    0.5 (win - ref)). Else not reproduced."""
    p = _ppl_rows(data)
    try:
        ref = p[("dense", "dense (W-token segments)")]["ppl_in_window"]
        win = p[("dense", "window")]["ppl_after_eviction"]
        snk = p[("dense", "window+sinks")]["ppl_after_eviction"]
    except KeyError:
        return None
    ok = win > 1.5 * ref and snk <= 1.1 * ref
    part = win > 1.1 * ref and snk - ref <= 0.5 * (win - ref)
    return verdict(ok, part), dict(ref=ref, win=win, sinks=snk)


def finding_b(data) -> tuple[str, dict] | None:
    """Rule: reproduced if the speed-up grows with W and reaches >= 10x at the largest W;
    partly if the largest speed-up is > 1.5x; else not reproduced."""
    d = _decode_rows(data)
    if not d:
        return None
    sp = [r["speedup"] for r in d]
    grows = all(b > a for a, b in zip(sp, sp[1:]))
    return verdict(grows and sp[-1] >= 10, max(sp) > 1.5), dict(
        lo=sp[0], hi=sp[-1], W0=d[0]["W"], W1=d[-1]["W"], best=max(sp))


def _trained_with_window(data) -> str:
    """A clause on the models trained with the window (their own evaluation, after eviction
    against their in-window perplexity), if measured."""
    p, parts = _ppl_rows(data), []
    for m, what in (("window", "without"), ("window+sinks", "with")):
        ref, own = p.get((m, "dense (W-token segments)")), p.get((m, m))
        if ref and own and "ppl_after_eviction" in own:
            parts.append(f"{own['ppl_after_eviction']:.3g} vs {ref['ppl_in_window']:.3g} "
                         f"{what} sinks")
    return ("; trained with the window itself: " + ", ".join(parts)) if parts else ""


def render_findings(data) -> str:
    out = []
    a = finding_a(data)
    if a:
        v, n = a
        r = _ppl_rows(data)[("dense", "window")]
        out.append(f"**StreamingLLM (a)** {v} at this scale (figure 3, perplexity by "
                   f"position over a long text): our dense-trained {r['n_layers']}-layer byte "
                   f"model, evaluated with a window alone (W = {r['W']}), has perplexity "
                   f"{n['win']:.3g} after the first tokens are evicted (positions 2W to "
                   f"{fmt_num(r['max_tokens'])}) against {n['ref']:.3g} within its training "
                   f"length, and {n['sinks']:.3g} with {N_SINKS} sinks"
                   + _trained_with_window(data)
                   + " (rule: reproduced if window > 1.5x and sinks <= 1.1x the in-window "
                   "perplexity).")
    b = finding_b(data)
    if b:
        v, n = b
        out.append(f"**StreamingLLM (b)** {v} at this scale (figure 10, up to 22.2x): decoding "
                   f"with window + sinks is {n['lo']:.3g}x as fast as sliding window with "
                   f"re-computation at W = {n['W0']} and {n['hi']:.3g}x at W = {n['W1']} "
                   f"(rule: reproduced if the ratio grows with W and reaches 10x).")
    return "\n\n".join(out)


# ----------------------------------------------------------------------------- render
def _span(a: int, b: int) -> str:
    def f(x):
        return (f"{x // 1048576}M" if x >= 1048576 and x % 1048576 == 0 else
                f"{x // 1_000_000}M" if x >= 1_000_000 and x % 1_000_000 == 0 else
                f"{x // 1024}k" if x >= 1024 and x % 1024 == 0 else str(x))
    return f"{f(a)}-{f(b)}"


def render(data) -> str:
    lines = []
    p = [r for r in data["rows"] if r["part"] == "ppl"]
    if p:
        r0 = next((r for r in p if r["n_streams"] == 1), p[0])
        edges = [(b["start"], b["end"]) for b in r0["buckets"]]
        lines += [f"Perplexity by position, byte-level, {r0['n_layers']}-layer d_model "
                  f"{r0['d_model']} MemLMs trained on the first 90% of {r0['text']}, streamed "
                  f"over {fmt_num(r0['max_tokens'])} tokens of the held-out tail (wrapped "
                  f"{r0['wrapped']}x), W = {r0['W']}, {N_SINKS} sinks; perplexity per position "
                  "bucket [start, end), in window = positions [W/2, W), after eviction = "
                  "positions >= 2W:", "",
                  "| trained | evaluated | " + " | ".join(_span(a, b) for a, b in edges)
                  + " | in window | after eviction |",
                  "|---|---|" + "---:|" * (len(edges) + 2)]
        for r in p:
            by = {(b["start"], b["end"]): b["ppl"] for b in r["buckets"]}
            cells = [f"{by[e]:.3g}" if e in by else "-" for e in edges]
            aft = r.get("ppl_after_eviction")
            lines.append(f"| {r['model']} | {r['eval']} | " + " | ".join(cells)
                         + f" | {r['ppl_in_window']:.3g} | "
                         + ("-" if aft is None else f"{aft:.3g}") + " |")
        lines += ["", "Training commands (`val_fraction=0.1`: the last 10% is held out): "
                  + "; ".join(f"{m}: `{c}`" for m, c in dict.fromkeys(
                      (r["model"], r["command"]) for r in p)) + "."]
    d = _decode_rows(data)
    if d:
        r0 = d[0]
        if lines:
            lines.append("")
        lines += [f"Decode speed, window + {N_SINKS} sinks (rolling cache) vs sliding window "
                  f"with re-computation, {r0['n_layers']}-layer d_model {r0['d_model']}, "
                  f"batch 1, {r0['device']} {r0['dtype']}:", "",
                  "| W | window + sinks tokens/s | re-computation tokens/s | speed-up |",
                  "|---:|---:|---:|---:|"]
        for r in d:
            lines.append(f"| {r['W']} | {fmt_num(r['sinks_tokens_per_s'])} | "
                         f"{fmt_num(r['recompute_tokens_per_s'])} | {r['speedup']:.3g}x |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot(data, stem: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    out = []
    p = [r for r in data["rows"] if r["part"] == "ppl"]
    if p:
        fig = Figure(figsize=(7.5, 4.5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for r in p:
            x = [math.sqrt(max(b["start"], 1) * b["end"]) for b in r["buckets"]]
            ax.plot(x, [b["ppl"] for b in r["buckets"]], marker="o", ms=3,
                    ls="--" if r["n_streams"] > 1 else "-",
                    label=f"{r['model']} / {r['eval']}")
        ax.axvline(p[0]["W"], color="gray", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("position in the stream (tokens)")
        ax.set_ylabel("perplexity (per bucket)")
        ax.set_title("StreamingLLM (a): perplexity by position (trained / evaluated)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(f"{stem}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        out.append(path)
    d = _decode_rows(data)
    if d:
        fig = Figure(figsize=(6, 4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        Ws = [r["W"] for r in d]
        ax.plot(Ws, [r["sinks_tokens_per_s"] for r in d], marker="o", label="window + sinks")
        ax.plot(Ws, [r["recompute_tokens_per_s"] for r in d], marker="s",
                label="sliding window, re-computation")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("window W (tokens)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title("StreamingLLM (b): decode speed")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(f"{stem}-decode.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        out.append(path)
    return out
