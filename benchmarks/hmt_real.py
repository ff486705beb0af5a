"""HMT (2405.06067) over the frozen real model, the paper's own setting at CPU scale.

    make real-model
    python benchmarks/hmt_real.py --train --threads 1   # train (500 steps), then evaluate
    python benchmarks/hmt_real.py --threads 1           # (re-)evaluate the saved checkpoint
    python benchmarks/hmt_real.py --render              # markdown table + verdict (README)
    python benchmarks/hmt_real.py --models full segment segment+sensory   # the baselines
                                                        # alone (no checkpoint needed)

Training is exactly ``python train.py experiment=hmt_smollm2 hydra.run.dir=outputs/hmt_smollm2``
(``--train`` runs it as a subprocess with ``OMP_NUM_THREADS=--threads`` and keeps its stdout in
``outputs/hmt_smollm2/stdout.log``): HMT (segments L = 128, k = 16 sensory tokens, N = 16
memories) around SmolLM2-135M-Instruct (the GGUF of ``make real-model``), frozen, trained for
500 steps on 512-token sequences of the King James Bible shipped in the repo.

The evaluation reads the checkpoint (``memarch.checkpoint.load``; the frozen backbone is in
it, and is checked bitwise against the GGUF) and scores the same held-out sequences, the
whole validation split of the training's data module (the end of the KJV: its last 3 % of
512-token chunks, never trained on), with

* ``full``: the backbone alone over the whole 512-token sequence (the ceiling);
* ``segment``: the backbone alone on independent 128-token segments (segment-limited
  context; HMT's ``n_memories=0`` is not this baseline: it keeps the learned ``m_init`` slot
  and the 16 sensory tokens);
* ``segment+sensory``: the backbone on each segment preceded by the previous segment's last
  16 tokens (what HMT sees of the past besides its memory embedding);
* ``hmt``: the trained HMT; ``hmt_init``: the same HMT with its memory parameters at
  initialisation (seed 0), i.e. before training.

Perplexity is exp(mean token NLL) over every position, and also over segment 0 (positions
0-127, where no model has more context than the others) and segments 1-3 (128-511). The
verdict's rules are fixed in ``RULE``, ``RULE_SENSORY`` and ``verdict`` below (written
before HMT's numbers were seen); a bootstrap over sequences gives a 95 % interval of the gap
fraction. Per-token NLLs are cached in ``outputs/hmt_smollm2/hmt_real_nll.pt``, keyed by the
sequences, the segment sizes and HMT's weights, so a model is scored once (the baselines can
be scored while HMT trains); ``--no-cache`` scores everything again.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import RESULTS, ROOT  # noqa: E402

OUT_JSON = RESULTS / "hmt_real-cpu.json"
EXPERIMENT = "hmt_smollm2"
RUN_DIR = "outputs/hmt_smollm2"                    # relative to the repository root
TRAIN_CMD = f"python train.py experiment={EXPERIMENT} hydra.run.dir={RUN_DIR}"

# The verdict's rule, fixed before any number was seen. gap = ppl_segment - ppl_full (what a
# full 512-token context gains over 128-token segments); closed = (ppl_segment - ppl_hmt) /
# gap. The paper's claim (HMT recovers long context a segment-limited backbone loses):
MIN_CLOSED = 0.10
RULE = (f"reproduced if HMT's held-out perplexity is below the segment-only backbone's by at "
        f"least {MIN_CLOSED:.0%} of the gap (ppl_segment - ppl_full); partly reproduced if "
        f"below it by less; not reproduced if not below it (or if there is no gap)")
# The same rule against the backbone given HMT's 16 sensory tokens (segment+sensory): what
# HMT's memory embeddings (recall, m_init, the summary prompt) add beyond the raw tokens of
# the previous segment that HMT also prepends.
RULE_SENSORY = (f"the same rule with the segment+sensory backbone in place of the "
                f"segment-only one (at least {MIN_CLOSED:.0%} of ppl_segment+sensory - "
                f"ppl_full)")

MODELS = ("full", "segment", "segment+sensory", "hmt_init", "hmt")


def describe(name: str, L: int, k: int, T: int, steps) -> tuple[str, str]:
    """(what the row is, the context each token sees) for model ``name``."""
    return {
        "full": ("backbone, full context (ceiling)", f"all earlier tokens of its {T}"),
        "segment": (f"backbone, {L}-token segments", "earlier tokens of its own segment"),
        "segment+sensory": (f"backbone, {L}-token segments + {k} sensory tokens",
                            f"its segment + the previous segment's last {k} tokens"),
        "hmt_init": ("HMT, untrained (memory parameters at init)",
                     f"its segment + {k} sensory tokens + recalled memory"),
        "hmt": (f"HMT, trained {steps} steps",
                f"its segment + {k} sensory tokens + recalled memory"),
    }[name]


# -- data and models ---------------------------------------------------------------------
def compose(overrides: list[str]):
    """The training's config, composed as train.py does (Hydra, from the repo's configs)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hcompose("train", overrides=[f"experiment={EXPERIMENT}", *overrides,
                                            "paths.output_dir=/tmp/hmt_real_unused"])


def run_overrides(run_dir: Path) -> list[str]:
    """The run's own command-line overrides (``.hydra/overrides.yaml``), minus hydra.* and the
    experiment, so the evaluation's data config is the training's."""
    f = run_dir / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    from omegaconf import OmegaConf
    keep = []
    for o in OmegaConf.load(f) or []:
        key = str(o).split("=", 1)[0].lstrip("~+")
        if key != "experiment" and not key.startswith("hydra") and key != "ckpt_path":
            keep.append(str(o))
    return keep


def held_out(cfg, n_seqs: int | None):
    """(input_ids [n, T], labels [n, T], description) of the validation split."""
    from hydra.utils import instantiate
    dm = instantiate(cfg.data)
    dm.setup()
    ds = dm.val_ds
    n = len(ds) if n_seqs is None else min(n_seqs, len(ds))
    items = [ds[i] for i in range(n)]
    x = torch.stack([it["input_ids"] for it in items])
    y = torch.stack([it["labels"] for it in items])
    T, total = ds.seq_len, len(ds.tokens)
    lo, hi = ds.lo * T, (ds.lo + n) * T + 1
    from memarch.data.tokenizers import load_tokenizer
    tok = load_tokenizer(cfg.data.dataset.tokenizer)
    first = tok.decode(ds.tokens[lo:lo + 96].tolist()).splitlines()[1][:60]   # 1st whole line
    last = tok.decode(ds.tokens[hi - 48:hi].tolist()).strip().splitlines()[-1][-60:]
    desc = dict(n_sequences=n, seq_len=T, val_fraction=cfg.data.dataset.val_fraction,
                val_chunks=len(ds), train_chunks=ds.lo, tokens_total=total,
                token_range=[lo, hi], first_whole_line=first, text_last=last,
                where=f"the end of the KJV: tokens {lo:,}-{hi:,} of {total:,} "
                      f"(the last {len(ds)} of {ds.lo + len(ds)} chunks of {T})")
    return x, y, desc


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           reduction="none").view(labels.shape)


@torch.no_grad()
def score(name: str, bb, L: int, k: int, hmt, hmt_init, x: torch.Tensor, y: torch.Tensor,
          first=None) -> torch.Tensor:
    """Per-token NLL [n, T] of model ``name`` (one sequence at a time): ``bb`` the backbone,
    ``L``/``k`` HMT's segment and sensory lengths. ``first``: the full pass's NLL, whose
    segment 0 the segment baselines reuse (their first segment sees exactly what the full
    pass sees there)."""
    out = []
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], y[i:i + 1]
        T = xi.shape[1]
        if name == "full":
            lg = bb(xi).logits
        elif name in ("segment", "segment+sensory"):
            c = k if name == "segment+sensory" else 0
            parts = [] if first is not None else [bb(xi[:, :L]).logits]
            for a in range(L, T, L):
                parts.append(bb(xi[:, a - c:a + L]).logits[:, c:])
            if first is None:
                lg = torch.cat(parts, 1)
            else:
                rest = nll(torch.cat(parts, 1), yi[:, L:]) if parts else yi[:, :0].float()
                out.append(torch.cat([first[i:i + 1, :L], rest], 1))
                continue
        elif name == "hmt":
            lg = hmt(xi).logits
        elif name == "hmt_init":
            lg = hmt_init(xi).logits
        else:
            raise ValueError(name)
        out.append(nll(lg, yi))
    return torch.cat(out)


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def untrained_like(hmt):
    """The same HMT around the same (frozen) backbone, memory parameters freshly initialised
    (seed 0)."""
    from memarch.models import HMT
    kw = {k: v for k, v in hmt.init_kwargs.items() if k != "backbone"}
    torch.manual_seed(0)
    return HMT(hmt.backbone, **kw).eval()


def ppl(t: torch.Tensor) -> float:
    return math.exp(float(t.double().mean()))


def bootstrap_closed(nlls: dict, reps: int = 2000, seed: int = 0) -> list[float]:
    """95 % interval of the gap fraction closed, resampling whole sequences."""
    g = torch.Generator().manual_seed(seed)
    per = {m: nlls[m].double().mean(1) for m in ("full", "segment", "hmt")}
    n = per["full"].shape[0]
    vals = []
    for _ in range(reps):
        idx = torch.randint(n, (n,), generator=g)
        f, s, h = (math.exp(float(per[m][idx].mean())) for m in ("full", "segment", "hmt"))
        if s - f > 0:
            vals.append((s - h) / (s - f))
    vals.sort()
    if not vals:
        return [float("nan"), float("nan")]
    return [vals[int(0.025 * len(vals))], vals[min(len(vals) - 1, int(0.975 * len(vals)))]]


def verdict(rows: list[dict]) -> dict:
    """The rule in ``RULE``, applied to the rows (perplexity over all positions)."""
    p = {r["model"]: r["ppl"] for r in rows}

    def judge(base: str) -> tuple[float, float, str]:
        gap = p[base] - p["full"]
        closed = (p[base] - p["hmt"]) / gap if gap > 0 else float("nan")
        if gap > 0 and closed >= MIN_CLOSED:
            return gap, closed, "reproduced"
        if gap > 0 and closed > 0:
            return gap, closed, "partly reproduced"
        return gap, closed, "not reproduced"

    gap, closed, word = judge("segment")
    out = dict(rule=RULE, gap=gap, closed=closed, verdict=word)
    if "segment+sensory" in p:      # what the memory adds beyond HMT's 16 sensory tokens
        g2, c2, w2 = judge("segment+sensory")
        out.update(rule_beyond_sensory=RULE_SENSORY, gap_beyond_sensory=g2,
                   closed_beyond_sensory=c2, verdict_beyond_sensory=w2)
    return out


# -- training ----------------------------------------------------------------------------
_STEP = re.compile(r"step (\d+)/(\d+)\s.*?([0-9.e+-]+) steps/s")


def train(threads: int, extra: list[str]) -> dict:
    """Run the training command as a subprocess; its stdout goes to RUN_DIR/stdout.log."""
    run_dir = ROOT / RUN_DIR
    if (run_dir / "checkpoints").exists():
        raise SystemExit(f"{run_dir}/checkpoints exists: move it away to train again")
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "train.py", f"experiment={EXPERIMENT}", f"hydra.run.dir={RUN_DIR}",
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(run_dir / "stdout.log", "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
            log.flush()
        if p.wait() != 0:
            raise SystemExit(f"training failed (exit {p.returncode}); see {run_dir}/stdout.log")
    return dict(train_wall_s=round(time.time() - t0, 1))


def training_record(run_dir: Path, log: Path | None) -> dict:
    """Steps/s (StepPrinter's rate over the whole run, validation included), the validation
    losses the run logged and its command, from its output folder (and stdout log)."""
    rec: dict = {}
    for f in [log, run_dir / "stdout.log"]:
        if f is not None and Path(f).is_file():
            m = None
            for line in Path(f).read_text(errors="replace").splitlines():
                m = _STEP.search(line) or m
            if m:
                rec.update(steps=int(m.group(1)), train_steps_per_s=float(m.group(3)))
                rec["train_log"] = str(f)
                break
    log_f = run_dir / "train.log"                # Hydra's job log: timestamped lines
    if log_f.is_file():
        stamps = []                              # (time, the line says fit stopped)
        for line in log_f.read_text(errors="replace").splitlines():
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
            if m:
                stamps.append((m.group(1), "`Trainer.fit` stopped" in line))
        ends = [t for t, stop in stamps if stop]
        if ends:
            t0, t1 = (datetime.datetime.fromisoformat(t) for t in (stamps[0][0], ends[-1]))
            rec["train_fit_wall_s"] = round((t1 - t0).total_seconds())
            rec["train_started"] = stamps[0][0]
    vals = []
    for f in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(f) as fh:
            for r in csv.DictReader(fh):
                if r.get("val/loss"):
                    vals.append([int(r["step"]), round(float(r["val/loss"]), 4)])
    if vals:
        rec["val_loss_during_training"] = vals
    ov = run_dir / ".hydra" / "overrides.yaml"
    if ov.is_file():
        from omegaconf import OmegaConf
        rec["train_overrides"] = [str(o) for o in OmegaConf.load(ov) or []]
    return rec


# -- evaluation --------------------------------------------------------------------------
def _without_note(argv: list[str]) -> list[str]:
    """The command line minus ``--note TEXT`` (kept in meta.note instead)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--note":
            skip = True
        elif not a.startswith("--note="):
            out.append(a)
    return out


def evaluate(args) -> dict | None:
    """Score ``args.models`` (reusing the per-token NLLs cached in ``args.nll_cache`` for the
    same sequences, backbone and HMT weights) and return the results file's dict, or None
    while full, segment or hmt has no score yet (a partial run: the baselines need no
    checkpoint, so they can be scored while HMT trains)."""
    from memarch.checkpoint import load
    from memarch.models import from_gguf
    from memarch.pretrained import SMOLLM2, real_model_path
    torch.set_num_threads(args.threads)
    t0 = time.time()
    ckpt = Path(args.ckpt)
    run_dir = ckpt.parent.parent
    cfg = compose(run_overrides(run_dir))
    L, k = int(cfg.model.segment_len), int(cfg.model.sensory_len)
    x, y, where = held_out(cfg, args.n_seqs)
    gguf = real_model_path(verify=True)
    bb = from_gguf(gguf, dtype=torch.float32).eval()
    data_key = f"{digest(x, y)}/L{L}/k{k}"
    keys = {m: data_key for m in ("full", "segment", "segment+sensory")}
    hmt = hmt_init = None
    info: dict = {}
    if ckpt.is_file():
        loaded = load(ckpt)
        hmt = loaded.model.eval()
        if (hmt.segment_len, hmt.sensory_len) != (L, k):
            raise SystemExit(f"{ckpt}: segment_len/sensory_len {hmt.segment_len}/"
                             f"{hmt.sensory_len} differ from the run config's {L}/{k}")
        ref, mine = bb.state_dict(), hmt.backbone.state_dict()
        info["backbone_bitwise_equal_to_gguf"] = set(ref) == set(mine) and all(
            torch.equal(ref[n], mine[n]) for n in ref)
        hmt_init = untrained_like(hmt)
        with torch.no_grad():         # the scales the frozen backbone gets at HMT's P_n slot
            m = hmt(x[:1]).state.cache[0, -(x.shape[1] // L):]      # m_n of one sequence
            info["input_norms"] = dict(
                token_embedding=round(float(bb.embed.weight.norm(dim=-1).mean()), 3),
                memory_embedding=round(float(m.norm(dim=-1).mean()), 3),
                m_init_trained=round(float(hmt.init_memory.norm()), 3),
                m_init_untrained=round(float(hmt_init.init_memory.norm()), 3))
        keys["hmt"] = f"{data_key}/{digest(*hmt.extra_parameters())}"
        keys["hmt_init"] = f"{data_key}/{digest(*hmt_init.extra_parameters())}"
        n_extra = sum(p.numel() for p in hmt.extra_parameters())
        n_bb = sum(p.numel() for p in hmt.backbone.parameters())
        info.update(checkpoint=str(ckpt), steps=loaded.checkpoint.get("global_step"),
                    hmt=dict(segment_len=L, sensory_len=k, n_memories=hmt.n_memories,
                             summary_len=hmt.summary_len, recall_query=hmt.recall_query),
                    extra_params=n_extra, backbone_params=n_bb,
                    extra_params_pct=round(100 * n_extra / n_bb, 3))
    cache_f = Path(args.nll_cache)
    cache = torch.load(cache_f) if cache_f.is_file() and not args.no_cache else {}
    for name in [m for m in MODELS if m in args.models]:      # full first: segment 0 reuse
        if name not in keys:
            raise SystemExit(f"--models {name}: needs the checkpoint {ckpt} (not found)")
        if cache.get(name, {}).get("key") == keys[name]:
            print(f"{name:16s} cached ({cache[name]['threads']} thread(s), "
                  f"{cache[name]['wall_s']} s)", flush=True)
            continue
        first = cache["full"]["nll"] if cache.get("full", {}).get("key") == data_key else None
        t = time.time()
        v = score(name, bb, L, k, hmt, hmt_init, x, y, first=first)
        cache[name] = dict(key=keys[name], nll=v, wall_s=round(time.time() - t, 1),
                           threads=args.threads,
                           date=datetime.datetime.now().isoformat(timespec="seconds"))
        cache_f.parent.mkdir(parents=True, exist_ok=True)
        torch.save(cache, cache_f)
        print(f"{name:16s} ppl {ppl(v):8.3f}  ({cache[name]['wall_s']} s)", flush=True)
    nlls = {m: cache[m]["nll"] for m in MODELS
            if m in keys and cache.get(m, {}).get("key") == keys[m]}
    if not all(m in nlls for m in ("full", "segment", "hmt")):
        print(f"scored so far: {sorted(nlls)}; the results need full, segment and hmt "
              f"(cached in {cache_f})")
        return None
    rows = []
    for name, v in nlls.items():
        what, context = describe(name, L, k, x.shape[1], info["steps"])
        rows.append(dict(model=name, what=what, context=context,
                         ppl=round(ppl(v), 4), ppl_seg0=round(ppl(v[:, :L]), 4),
                         ppl_seg1_3=round(ppl(v[:, L:]), 4),
                         nll=round(float(v.double().mean()), 5), n_tokens=int(v.numel()),
                         eval_wall_s=cache[name]["wall_s"],
                         eval_threads=cache[name]["threads"], eval_date=cache[name]["date"]))
    v = verdict(rows)
    v["closed_ci95"] = bootstrap_closed(nlls)
    rec = training_record(run_dir, Path(args.train_log) if args.train_log else None)
    rec.setdefault("steps", info["steps"])
    if args.train_record:
        rec.update(args.train_record)
    evaluate = shlex.join(["python", "benchmarks/hmt_real.py", *_without_note(sys.argv[1:])])
    meta = dict(
        common.meta("cpu", args.threads, command=evaluate),
        commands=dict(train=f"OMP_NUM_THREADS={args.threads} {TRAIN_CMD}",
                      evaluate=evaluate),
        model=dict(file=SMOLLM2.filename, package=f"{SMOLLM2.package}=={SMOLLM2.version}",
                   sha256=SMOLLM2.sha256, license=SMOLLM2.license),
        **info, held_out=where, eval_wall_s=round(time.time() - t0, 1), training=rec)
    if args.note:
        meta["note"] = args.note
    return dict(meta=meta, rows=rows, verdict=v)


# -- rendering ---------------------------------------------------------------------------
def render(data: dict) -> str:
    m, h = data["meta"], data["meta"]["hmt"]
    L, T = h["segment_len"], m["held_out"]["seq_len"]
    lines = [
        (f"HMT (L = {h['segment_len']}, k = {h['sensory_len']}, N = {h['n_memories']}) over "
         f"the frozen SmolLM2-135M-Instruct (Q4_1 GGUF), trained "
         f"{m['training'].get('steps', '?')} steps on the KJV; held-out perplexity on "
         f"{m['held_out']['n_sequences']} sequences of {m['held_out']['seq_len']} tokens "
         f"({m['held_out']['where']})."),
        "",
        f"| model | context of each token | held-out ppl | tokens 0-{L - 1} | tokens {L}-{T - 1} |",
        "|---|---|---:|---:|---:|"]
    for r in data["rows"]:
        lines.append(f"| {r['what']} | {r['context']} | {r['ppl']:.3f} | {r['ppl_seg0']:.3f} "
                     f"| {r['ppl_seg1_3']:.3f} |")
    tr = m["training"]
    wall = tr.get("train_fit_wall_s")
    lines += ["",
              (f"HMT adds {m['extra_params']:,} parameters ({m['extra_params_pct']:.2f} % "
               f"of the backbone's {m['backbone_params']:,}); training: "
               + (f"{wall / 60:.0f} min, " if wall else "")
               + f"{tr.get('train_steps_per_s', float('nan')):.3g} steps/s (validation "
               f"included) at {m['threads']} thread(s) on {m['cpus']} CPU cores (torch "
               f"{m['torch']}). Commands: `{m['commands']['train']}`, "
               f"`{m['commands']['evaluate']}`.")]
    if "input_norms" in m:
        n = m["input_norms"]
        lines += ["", (f"The memory embeddings HMT puts at the frozen backbone's first "
                       f"position (its final-norm hidden states) have norm "
                       f"{n['memory_embedding']:.1f}; its token embeddings "
                       f"{n['token_embedding']:.1f} (m_init: {n['m_init_trained']:.1f}).")]
    lines += ["", render_findings(data)]
    return "\n".join(lines)


def render_findings(data: dict) -> str:
    v = data["verdict"]
    lo, hi = v.get("closed_ci95", [float("nan")] * 2)
    s = (f"**{v['verdict']}**: HMT closes {100 * v['closed']:.1f} % of the gap between the "
         f"segment-only backbone and its full context (gap {v['gap']:.3f} perplexity; 95 % "
         f"bootstrap interval over sequences {100 * lo:.1f} to {100 * hi:.1f} %). Rule: "
         f"{v['rule']}.")
    if "closed_beyond_sensory" in v:
        k = data["meta"]["hmt"]["sensory_len"]
        s += (f" HMT's memory beyond its {k} sensory tokens, **{v['verdict_beyond_sensory']}**: "
              f"against the backbone given the same {k} previous tokens (no memory "
              f"embedding), HMT closes {100 * v['closed_beyond_sensory']:.1f} % of the "
              f"remaining gap ({v['gap_beyond_sensory']:.3f}); rule: "
              f"{v['rule_beyond_sensory']}.")
    return s


# -- main --------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", action="store_true",
                    help=f"run the training first ({TRAIN_CMD})")
    ap.add_argument("--train-args", default="",
                    help="extra Hydra overrides for --train (quoted, space-separated)")
    ap.add_argument("--train-log", default=None,
                    help="stdout of a training run started by hand (steps/s is read from it; "
                         "default: RUN_DIR/stdout.log, which --train writes)")
    ap.add_argument("--ckpt", default=f"{RUN_DIR}/checkpoints/last.ckpt")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-seqs", type=int, default=None,
                    help="held-out sequences to score (default: the whole validation split)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--out", default=str(OUT_JSON))
    ap.add_argument("--nll-cache", default=f"{RUN_DIR}/hmt_real_nll.pt",
                    help="per-token NLLs of each model, reused when the sequences, backbone "
                         "and HMT weights are the same (score the baselines while HMT trains)")
    ap.add_argument("--no-cache", action="store_true", help="score every model again")
    ap.add_argument("--note", default=None, help="a sentence kept in the results' meta "
                    "(e.g. what else ran on the machine)")
    ap.add_argument("--render", action="store_true", help="print the markdown of --out")
    args = ap.parse_args(argv)
    os.chdir(ROOT)                       # the configs' relative paths are the repo root's
    if args.render:
        print(render(json.loads(Path(args.out).read_text())))
        return 0
    args.train_record = train(args.threads, shlex.split(args.train_args)) if args.train else None
    data = evaluate(args)
    if data is None:
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(render(data))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
