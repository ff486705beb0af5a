"""Suite ``mixers``: speed and memory of every block against sequence length.

    python -m benchmarks mixers [--quick] [--threads N] [--device cuda] [--dtype bfloat16]
    python -m benchmarks mixers --mixers-blocks attention,mom_linear --mixers-lengths 1024

The measured unit. Every block is the mixer of the same model, so that rows compare: a
2-layer ``MemLM`` (d_model 256, 4 heads, vocab 256, SwiGLU MLP of the default width, tied
embeddings) with the block in both layers. HMT is a model wrapper, not a mixer: its row is
``memarch.models.HMT`` around the full-attention MemLM of the first row, with HMT's settings
from ``configs/model/hmt.yaml`` (segment 512, sensory 32, 300 memories). Each block's
settings are those of its ``configs/model/mixer/*.yaml`` (read from the file, so the configs
and this suite cannot drift), with the heads set to 4 everywhere (what ``d_model // 64``
gives at 256, and BASED's 16 heads of 64 at d_model 1024 scaled to 256) and the windows of
the two sliding-window attention rows set to W = 512 (the last with StreamingLLM's 4 sinks
and the swa config's ``sink_positions: cache``). BASED's row is its Taylor linear attention
layer (``BasedLinearAttention``, feature_dim 16) as the mixer of both layers, not BASED's
interleaved stack of short convolutions and windowed attention. Every row records the
resolved mixer (and HMT) settings, the parameter count and the seed.

Per (block, T), batch 1 x T tokens, fp32 on CPU unless ``--dtype``:

* ``train_tok_s``: T / seconds of one training step, forward + cross-entropy (+ the block's
  aux loss) + ``loss.backward()``, gradients set to None before each step;
* ``peak_bytes``: ``common.peak_bytes`` of that step: what it allocates beyond what is live
  before it (activations, autograd buffers, the parameters' gradients; not the parameters);
* ``prefill_tok_s``: T / seconds of a ``torch.no_grad`` forward of the T tokens that returns
  the state;
* ``decode_tok_s``: 1 / median seconds of one greedy one-token step with the carried state,
  after that prefill (``--mixers-decode-steps`` steps after 2 warm-up steps);
* ``state_size``: ``model.state_size(T)``, in ELEMENTS (floating-point state scalars per
  sequence, summed over the layers; HMT's counts its memory cache, its prompt and the
  backbone's state); ``state_bytes``: the bytes of the floating-point tensors of the state
  the prefill actually returned (elements x their dtype's size: KV caches follow the model's
  dtype, recurrent states are fp32).

Times are medians (``common.time_s``) of ``reps`` calls: 3 at T <= 1k, after a warm-up call;
1 above, without one (the same code ran at 1k already). The training step's warm-up is the
peak-memory call, made first at every length. Decode: median of the steps after 2 warm-up
steps. Rounded to 4 significant figures.

Lengths: 1k, 4k, 16k, 64k (``--quick``: 1k and 4k, the same rows with the same settings).
The lengths are walked in order, every block at a length before the next length. A phase
(train + peak memory, prefill, decode) of a block stops (its rows say ``skipped`` and why)
once its projected time at the next length exceeds ``--mixers-cell-budget`` seconds
(projection: the last time per call scaled by the growth seen between the last two lengths,
clamped between linear and quadratic, times the calls the phase makes), once the projected
training memory exceeds ``--mixers-max-gb``, or once the whole suite has used
``--mixers-budget`` seconds. Decode needs its prefill.

GPU (``--device cuda``, ``--dtype bfloat16``): the same code, with CUDA synchronisation in
the timers and ``torch.cuda.max_memory_allocated`` for the peak; best effort, untested (no
GPU was lent while this suite was written).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from common import sig

KEY = ("block", "T", "dtype")

D_MODEL, N_HEADS, N_LAYERS, VOCAB = 256, 4, 2, 256
LENGTHS = (1024, 4096, 16384, 65536)
QUICK_LENGTHS = (1024, 4096)
SEED = 0
DECODE_WARMUP = 2
CONFIGS = common.ROOT / "configs" / "model"

METRICS = (("train_tok_s", "Training step (forward + backward), tokens/s"),
           ("prefill_tok_s", "Prefill (no-grad forward returning the state), tokens/s"),
           ("decode_tok_s", "Decode (one token with the carried state, after the prefill), "
                            "tokens/s"),
           ("peak_bytes", "Peak memory of the training step, bytes"))
PHASES = ("train", "prefill", "decode")


@dataclass(frozen=True)
class Block:
    name: str                    # the row's ``block``
    label: str                   # what tables show
    config: str                  # configs/model/mixer/<config>.yaml
    overrides: dict = field(default_factory=dict)
    hmt: bool = False            # HMT (configs/model/hmt.yaml) around the MemLM
    tiny: dict = field(default_factory=dict)   # extra overrides of the test's tiny setting


BLOCKS = (
    Block("attention", "attention (full)", "attention"),
    Block("attention_window", "attention, window 512", "swa", dict(window=512, n_sinks=0),
          tiny=dict(window=16)),
    Block("attention_sinks", "attention, window 512 + 4 sinks", "swa", dict(window=512),
          tiny=dict(window=16)),
    Block("linear_attention", "linear attention", "linear_attention"),
    Block("based", "BASED linear attention", "based_linear"),
    Block("neural_memory", "Titans NeuralMemory", "neural_memory", tiny=dict(chunk_size=8)),
    Block("mac", "Titans MAC", "titans_mac", tiny=dict(segment_len=16)),
    Block("mag", "Titans MAG", "titans_mag", tiny=dict(window=16, memory=dict(chunk_size=8))),
    Block("mom_gated_delta", "MoM, gated delta", "mom", dict(cell="gated_delta")),
    Block("mom_linear", "MoM, linear", "mom", dict(cell="linear")),
    Block("hmt_attention", "HMT around attention", "attention", hmt=True,
          tiny=dict(hmt=dict(segment_len=32, sensory_len=4, n_memories=8))),
)
BY_NAME = {b.name: b for b in BLOCKS}
TINY = dict(d_model=64, lengths=(64, 128), decode_steps=3)


# ----------------------------------------------------------------------------- options
def add_args(ap) -> None:
    g = ap.add_argument_group("mixers")
    g.add_argument("--mixers-blocks", default=",".join(b.name for b in BLOCKS),
                   help="comma-separated blocks (default: all): "
                        + ", ".join(b.name for b in BLOCKS))
    g.add_argument("--mixers-lengths", default=None,
                   help=f"comma-separated T (default {','.join(map(str, LENGTHS))}; "
                        f"--quick: {','.join(map(str, QUICK_LENGTHS))})")
    g.add_argument("--mixers-decode-steps", type=int, default=32,
                   help="one-token decode steps timed after the prefill (median)")
    g.add_argument("--mixers-cell-budget", type=float, default=60.0,
                   help="seconds a phase of one (block, T) may take (projected), else stop")
    g.add_argument("--mixers-budget", type=float, default=660.0,
                   help="seconds for the whole suite; later phases are skipped past it")
    g.add_argument("--mixers-max-gb", type=float, default=6.0,
                   help="projected peak memory of a training step (GB) past which it stops")
    g.add_argument("--mixers-tiny", action="store_true", help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- models
def mixer_config(block: Block, tiny: bool = False) -> dict:
    """The block's mixer settings: its config file, 4 heads, the block's overrides."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "mixer" / f"{block.config}.yaml"))
    cfg.pop("_partial_", None)
    if "n_heads" in cfg:
        cfg["n_heads"] = N_HEADS
    cfg.update(block.overrides)
    if tiny:
        extra = {k: v for k, v in block.tiny.items() if k != "hmt"}
        for k, v in extra.items():
            cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def hmt_config(block: Block, tiny: bool = False) -> dict | None:
    """HMT's constructor settings from configs/model/hmt.yaml (None for a plain MemLM)."""
    if not block.hmt:
        return None
    from omegaconf import OmegaConf
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "hmt.yaml"))
    for k in ("defaults", "_target_", "backbone", "d_model"):
        cfg.pop(k, None)
    if tiny:
        cfg.update(block.tiny.get("hmt", {}))
    return cfg


def model_config(block: Block, tiny: bool = False) -> dict:
    """Everything that builds the row's model (recorded in the row)."""
    return dict(model="HMT(MemLM)" if block.hmt else "MemLM",
                d_model=TINY["d_model"] if tiny else D_MODEL, n_layers=N_LAYERS,
                vocab_size=VOCAB, d_hidden=None, tie_embeddings=True,
                mixer=mixer_config(block, tiny), hmt=hmt_config(block, tiny))


def build(cfg: dict, seed: int = SEED) -> torch.nn.Module:
    from hydra.utils import instantiate

    from memarch.models import HMT, MemLM
    torch.manual_seed(seed)
    factory = instantiate({**cfg["mixer"], "_partial_": True})
    model = MemLM(vocab_size=cfg["vocab_size"], d_model=cfg["d_model"],
                  mixers={"m": factory}, layer_pattern=["m"] * cfg["n_layers"],
                  d_hidden=cfg["d_hidden"], tie_embeddings=cfg["tie_embeddings"])
    if cfg["hmt"] is not None:
        model = HMT(model, **cfg["hmt"])
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())        # tied weights counted once


# ----------------------------------------------------------------------------- measuring
def reps_for(T: int) -> int:
    return 3 if T <= 1024 else 1


def warmup_for(T: int) -> int:
    return 1 if T <= 1024 else 0


def train_step(model, ids) -> None:
    out = model(ids)
    loss = F.cross_entropy(out.logits[0, :-1].float(), ids[0, 1:])
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()


def measure_train(model, ids, device: str, T: int) -> dict:
    """Peak memory (first call, also the warm-up) and tokens/s of the training step."""
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        train_step(model, ids)
    model.zero_grad(set_to_none=True)
    peak = common.peak_bytes(lambda: train_step(model, ids), device)
    reps = reps_for(T)
    s = common.time_s(step, device, reps=reps, warmup=0)
    model.zero_grad(set_to_none=True)
    return dict(train_s=sig(s), train_tok_s=sig(T / s), peak_bytes=int(peak), train_reps=reps)


def measure_prefill(model, ids, device: str, T: int):
    """tokens/s of the no-grad forward; returns (fields, its output state)."""
    model.eval()
    out = {}

    def fwd():
        out["state"] = model(ids).state
    reps = reps_for(T)
    with torch.no_grad():
        s = common.time_s(fwd, device, reps=reps, warmup=warmup_for(T))
    state = out.pop("state")
    from memarch import state as st
    nbytes = sum(t.numel() // max(t.shape[0], 1) * t.element_size()
                 for t in st.tensors(state) if t.is_floating_point() and t.dim() > 0)
    return dict(prefill_s=sig(s), prefill_tok_s=sig(T / s), prefill_reps=reps,
                state_bytes=int(nbytes), state_numel=st.float_numel(state)), state


def measure_decode(model, ids, state, device: str, steps: int) -> dict:
    """1 / median seconds of a one-token greedy step with the carried state."""
    model.eval()
    cur = {"state": state, "tok": ids[:, -1:]}

    def one():
        out = model(cur["tok"], cur["state"])
        cur["state"], cur["tok"] = out.state, out.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        s = common.time_s(one, device, reps=steps, warmup=DECODE_WARMUP)
    return dict(decode_ms=sig(s * 1e3), decode_tok_s=sig(1.0 / s), decode_steps=steps)


def project(history: list[tuple[int, float]], T: int, lo: float = 1.0, hi: float = 2.0
            ) -> float:
    """Expected cost at T from the costs measured at shorter lengths: the last one scaled by
    (T / T_last)^e, e the growth exponent between the last two points clamped to [lo, hi]
    (lo with a single point). 0 with no history."""
    if not history:
        return 0.0
    T1, c1 = history[-1]
    e = lo
    if len(history) >= 2:
        T0, c0 = history[-2]
        if c0 > 0 and c1 > 0 and T1 > T0:
            e = min(hi, max(lo, math.log(c1 / c0) / math.log(T1 / T0)))
    return c1 * (T / T1) ** e


def n_calls(phase: str, T: int, steps: int) -> int:
    """Model calls a phase makes at T (the projection's unit is one call)."""
    if phase == "train":
        return 1 + reps_for(T)                  # the peak-memory call, then the timed ones
    if phase == "prefill":
        return warmup_for(T) + reps_for(T)
    return DECODE_WARMUP + steps


# ----------------------------------------------------------------------------- the run
def lengths_of(args) -> list[int]:
    """``--mixers-lengths``, else the full or quick lengths (the tiny setting's: the test's)."""
    if args.mixers_lengths:
        return [int(x) for x in args.mixers_lengths.split(",")]
    full, quick = ((TINY["lengths"], TINY["lengths"][:1]) if getattr(args, "mixers_tiny", False)
                   else (LENGTHS, QUICK_LENGTHS))
    return list(quick if args.quick else full)


def blocks_of(args) -> list[Block]:
    names = [n.strip() for n in args.mixers_blocks.split(",") if n.strip()]
    bad = [n for n in names if n not in BY_NAME]
    if bad:
        raise SystemExit(f"--mixers-blocks: unknown {bad}; known: {list(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def _len(T: int) -> str:
    return f"{T // 1024}k" if T % 1024 == 0 else str(T)


def run(args) -> list[dict]:
    tiny = getattr(args, "mixers_tiny", False)
    device, dtype = args.device, getattr(torch, args.dtype)
    steps = TINY["decode_steps"] if tiny else args.mixers_decode_steps
    blocks, lengths = blocks_of(args), lengths_of(args)
    t_start = time.perf_counter()
    hist = {b.name: {p: [] for p in PHASES} for b in blocks}      # phase -> [(T, seconds)]
    mem = {b.name: [] for b in blocks}                            # [(T, peak bytes)]
    stopped = {b.name: {} for b in blocks}                        # phase -> reason
    models = {}
    rows = []
    for T in lengths:
        for b in blocks:
            cfg = model_config(b, tiny)
            if b.name not in models:
                models[b.name] = build(cfg).to(device=device, dtype=dtype)
            model = models[b.name]
            row = dict(block=b.name, T=T, dtype=args.dtype, label=b.label,
                       params=n_params(model), state_size=int(model.state_size(T)),
                       state_unit="elements", batch=1, seed=SEED, config=cfg,
                       reproduce=f"python -m benchmarks mixers --mixers-blocks {b.name} "
                                 f"--mixers-lengths {T}")
            skipped = {}
            gen = torch.Generator().manual_seed(SEED + T)
            ids = torch.randint(0, cfg["vocab_size"], (1, T), generator=gen).to(device)
            state = None
            for phase in PHASES:
                reason = stopped[b.name].get(phase)
                if reason is None:
                    proj = n_calls(phase, T, steps) * project(
                        hist[b.name][phase], T, *((0.0, 1.0) if phase == "decode" else (1, 2)))
                    used = time.perf_counter() - t_start
                    if phase == "decode" and state is None:
                        reason = "needs the prefill"
                    elif proj > args.mixers_cell_budget:
                        reason = (f"projected {proj:.0f} s at {_len(T)} > the "
                                  f"{args.mixers_cell_budget:.0f} s budget per phase")
                    elif used + proj > args.mixers_budget:
                        reason = (f"the suite's {args.mixers_budget:.0f} s budget was used "
                                  f"({used:.0f} s, next projected {proj:.0f} s)")
                    elif phase == "train" and project(mem[b.name], T) > args.mixers_max_gb * 1e9:
                        reason = (f"projected {project(mem[b.name], T) / 1e9:.1f} GB at "
                                  f"{_len(T)} > {args.mixers_max_gb:g} GB")
                    if reason is not None and phase != "decode":
                        stopped[b.name][phase] = reason       # longer T: stopped too
                else:
                    reason = f"stopped at a shorter length: {reason}"
                if reason is not None:
                    skipped[phase] = reason
                    continue
                t0 = time.perf_counter()
                if phase == "train":
                    row.update(measure_train(model, ids, device, T))
                    mem[b.name].append((T, row["peak_bytes"]))
                elif phase == "prefill":
                    fields, state = measure_prefill(model, ids, device, T)
                    row.update(fields)
                else:
                    row.update(measure_decode(model, ids, state, device, steps))
                hist[b.name][phase].append(
                    (T, (time.perf_counter() - t0) / n_calls(phase, T, steps)))
            state = None
            row["wall_s"] = sig(sum(c * n_calls(p, T, steps) for p in PHASES
                                    for t, c in hist[b.name][p] if t == T), 3)
            if skipped:
                row["skipped"] = skipped
            rows.append(row)
            print(f"   {b.name:17s} T={T:6d} " + "  ".join(
                f"{k}={common.fmt_num(row.get(k))}" for k, _ in METRICS)
                  + f"  ({row['wall_s']} s)"
                + (f"  skipped={sorted(skipped)}" if skipped else ""), flush=True)
    return rows


# ----------------------------------------------------------------------------- rendering
def _state_text(rows: list[dict]) -> str:
    """A block's state size over the measured lengths: one number if constant, ``c·T`` if
    proportional to T, else the range."""
    pts = sorted((r["T"], r["state_size"]) for r in rows)
    vals = {v for _, v in pts}
    if len(vals) == 1:
        return common.fmt_num(pts[0][1])
    per = {v / T for T, v in pts}
    if len(per) == 1:
        return f"{common.fmt_num(pts[0][1] / pts[0][0])}·T"
    return f"{common.fmt_num(min(vals))} to {common.fmt_num(max(vals))}"


def _order(rows):
    names = list(BY_NAME) + sorted({r["block"] for r in rows} - set(BY_NAME))
    return [n for n in names if any(r["block"] == n for r in rows)]


def render(data: dict) -> str:
    rows = data["rows"]
    m = data["meta"]
    out = []
    for dt in sorted({r["dtype"] for r in rows}):
        rs = [r for r in rows if r["dtype"] == dt]
        lengths = sorted({r["T"] for r in rs})
        by = {(r["block"], r["T"]): r for r in rs}
        cfg = rs[0]["config"]
        out.append(
            f"Every block as the mixer of the same {cfg['n_layers']}-layer MemLM (d_model "
            f"{cfg['d_model']}, {N_HEADS} heads, vocab {cfg['vocab_size']}, SwiGLU MLP); HMT "
            f"wraps the full-attention one. Batch 1 x T, {dt}, {m['device']} "
            f"({m.get('gpu') or m.get('cpu')}, threads: {m['threads']}, torch {m['torch']}, "
            f"load average {m.get('loadavg', '?')} at the start). State size in elements "
            f"(floating-point scalars per sequence). `-`: not measured (see below).")
        for key, title in METRICS:
            out += ["", f"**{title}**", "",
                    "| block | params | state | " + " | ".join(map(_len, lengths)) + " |",
                    "|---|---:|---:|" + "---:|" * len(lengths)]
            for name in _order(rs):
                brs = [r for r in rs if r["block"] == name]
                cells = []
                for T in lengths:
                    r = by.get((name, T))
                    v = None if r is None else r.get(key)
                    cells.append(common.fmt_num(v) + ("B" if v is not None and
                                                      key == "peak_bytes" else ""))
                out.append(f"| {brs[0]['label']} | {common.fmt_num(brs[0]['params'])} | "
                           f"{_state_text(brs)} | " + " | ".join(cells) + " |")
        skips = []
        for name in _order(rs):                  # each phase's first skip, with its reason
            brs = sorted((r for r in rs if r["block"] == name), key=lambda r: r["T"])
            for p in PHASES:
                first = next((r for r in brs if p in r.get("skipped", {})), None)
                if first is not None:
                    skips.append(f"{first['label']} {p} from {_len(first['T'])} "
                                 f"({first['skipped'][p]})")
        if skips:
            out += ["", "Not measured: " + "; ".join(skips) + "."]
        out.append("")
    return "\n".join(out).strip() + "\n"


def plot(data: dict, stem: Path) -> list[Path]:
    plt = common.pyplot()
    from matplotlib.ticker import NullLocator
    paths = []
    dtypes = sorted({r["dtype"] for r in data["rows"]})
    for dt in dtypes:
        rs = [r for r in data["rows"] if r["dtype"] == dt]
        fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
        names = _order(rs)
        colors = [plt.cm.tab20(i / 20) for i in range(0, 20, 2)] + ["black"] * len(names)
        lengths = sorted({r["T"] for r in rs})
        for ax, (key, title) in zip(axes.flat, METRICS):
            for i, name in enumerate(names):
                pts = sorted((r["T"], r[key]) for r in rs
                             if r["block"] == name and r.get(key) is not None)
                if pts:
                    label = next(r["label"] for r in rs if r["block"] == name)
                    ax.plot(*zip(*pts), marker="o", label=label, color=colors[i],
                            linestyle="--" if name == "hmt_attention" else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(lengths, [_len(T) for T in lengths])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("sequence length T (batch 1)")
            ax.set_title(title.replace(", tokens/s", "").replace(", bytes", ""), fontsize=9)
            ax.set_ylabel("bytes" if key == "peak_bytes" else "tokens/s")
            ax.grid(True, which="major", alpha=0.3)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
        m = data["meta"]
        fig.suptitle(f"memarch blocks, 2-layer MemLM d_model 256, batch 1, {dt}, "
                     f"{m['device']}, threads: {m['threads']}", fontsize=10)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        path = Path(f"{stem}.png") if len(dtypes) == 1 else Path(f"{stem}-{dt}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
