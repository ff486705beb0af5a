"""Suite ``recall``: MQAR accuracy against recurrent state (BASED 2402.18668 figure 2,
zoology's MQAR sweeps).

    python -m benchmarks recall --threads 1                # the full sweep (all points)
    python -m benchmarks recall --quick                    # 3 points of the full sweep
    python -m benchmarks recall --recall-only based_f16    # one point, merged into the JSON
    python -m benchmarks recall --recall-jobs 2            # two trainings at once (1 thread each)
    python -m benchmarks recall --recall-only mom_m1 --recall-only mom_m4 --recall-seeds 1 2

Every point is a tiny model trained on the same MQAR task (``data=mqar`` as the tiny recipes
use it: 4 key-value pairs in 64 tokens, 32 keys, 32 values; seed 0 for the model and the
training data, a held-out set of 512 sequences with seed 1; with 8 pairs, full attention at
d_model 64 was still at 9 % after 500 steps, so the budget could not show the trade-off)
with the same optimiser, schedule (AdamW 3e-3, 50 warm-up
steps then cosine, ``configs/optim``, ``configs/sched``), batch (32), number of steps
(``STEPS``) and layer count: 4 blocks ``[conv, X, conv, X]`` (a short convolution, then
the mixer X, twice; each block has a SwiGLU MLP). Only X and its size change:

* ``attention``: full causal attention, 2 heads; knob d_model;
* ``sliding window``: attention over the last W tokens (no sinks), d_model 64; knob W;
* ``linear attention``: elu + 1 feature map, 2 heads, d_model; knob d_model;
* ``BASED``: ``[conv, based, conv, swa]``, Taylor linear attention (2 heads) with the
  feature dim F as knob, then window-8 attention, as BASED pairs them; d_model 64;
* ``Titans MAG``: memory-as-gate (window-8 attention gated with a linear NeuralMemory,
  the tiny recipes' memory settings); knob d_model;
* ``MoM``: Mixture-of-Memories (gated delta cells, 4 heads of 16 x 16 per memory, no shared
  memory, top-2 routing, top-1 with one memory); knob the number of memories.

Each point is trained exactly as the ``python train.py ...`` command in its row (Hydra
composes the same config in-process and ``memarch.lit.train.run`` trains it; checkpoints go
to a temporary directory). ``state_size`` is ``MemLM.state_size(64)``: the floating-point
state (elements) a sequence carries after its 64 tokens (KV cache, windows, memories,
convolution tails). Training is deterministic on a given machine and torch build; the
accuracy can move a few points between CPUs.

Seeds (``--recall-seeds``, default 0, the published rows): seed S trains with ``seed=S`` (the
model's initialisation) and, for S != 0, ``data.seed=100+S`` (its own training sequences: the
configs' ``data.seed`` is 0 whatever ``seed`` is, and ``data.seed=1`` would be the held-out
set, ``data.val_seed=1``, which stays the same for every seed). Rows are keyed by (name,
dtype, seed): a run replaces the rows of the seeds it trains and keeps the others; a row
without ``seed`` (older JSON) is seed 0. The findings are decided on every seed present (see
``findings``); the table gives each point's accuracy as mean (min–max) over its seeds.

``--device cuda`` (bf16-mixed with ``--dtype bfloat16``) is supported but untested: no GPU was
at hand when this suite was written; the published numbers are CPU, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

KEY = ("name", "dtype", "seed")
THREADS = 1                     # the published rows: 1 torch thread (python -m benchmarks)
SEQ_LEN, PAIRS = 64, 4
STEPS = 600
SEED = 0            # the default training seed (the published rows)
from common import DATA_SEED, data_seed, upgrade_old_rows  # noqa: E402  (seeds protocol)

HELD_OUT = (1,)     # ... never on the held-out set (data.val_seed)
NEAR = 0.9          # "near 100 %": held-out accuracy at least this
MARGIN = 0.05       # a difference in accuracy smaller than this is a tie (one seed)
QUICK = ("attention_d32", "based_f8", "linear_attention_d64")

FAMILIES = ("attention", "sliding window", "linear attention", "BASED", "Titans MAG", "MoM")

# overrides shared by every point (on top of train.py's defaults, experiment=hybrid_tiny)
TASK = [f"data.dataset.seq_len={SEQ_LEN}", f"data.dataset.num_kv_pairs={PAIRS}"]


def _pattern(x: str, y: str | None = None) -> str:
    return f"model.layer_pattern=[conv,{x},conv,{y or x}]"


def _attn(d: int) -> list[str]:
    return [f"model.d_model={d}", _pattern("attn"), "model.mixers.attn.n_heads=2"]


def _swa(w: int) -> list[str]:
    return ["model.d_model=64", _pattern("swa"), "model.mixers.swa.n_heads=2",
            f"model.mixers.swa.window={w}", "model.mixers.swa.n_sinks=0"]


def _la(d: int) -> list[str]:
    return [f"model.d_model={d}", _pattern("la"), "model.mixers.la.n_heads=2"]


def _based(f: int) -> list[str]:
    return ["+model/mixer@model.mixers.based=based_linear", "model.d_model=64",
            _pattern("based", "swa"), "model.mixers.based.n_heads=2",
            f"model.mixers.based.feature_dim={f}", "model.mixers.swa.n_heads=2",
            "model.mixers.swa.window=8", "model.mixers.swa.n_sinks=0"]


def _mag(d: int) -> list[str]:
    return ["+model/mixer@model.mixers.titans=titans_mag", f"model.d_model={d}",
            _pattern("titans"), "model.mixers.titans.n_heads=2", "model.mixers.titans.window=8",
            "+model.mixers.titans.memory={n_heads:2,depth:1,chunk_size:16,theta_init:0.05,"
            "eta_init:0.01}"]


def _mom(m: int) -> list[str]:
    return ["+model/mixer@model.mixers.mom=mom", "model.d_model=64", _pattern("mom"),
            "model.mixers.mom.n_heads=4", f"model.mixers.mom.n_memories={m}",
            f"model.mixers.mom.topk={min(m, 2)}", "model.mixers.mom.shared_memory=false"]


# name -> (family, knob, knob value, overrides)
POINTS: dict[str, tuple[str, str, int, list[str]]] = {
    **{f"attention_d{d}": ("attention", "d_model", d, _attn(d)) for d in (16, 32, 64)},
    **{f"swa_w{w}": ("sliding window", "window", w, _swa(w)) for w in (8, 16, 32)},
    **{f"linear_attention_d{d}": ("linear attention", "d_model", d, _la(d))
       for d in (32, 64, 128)},
    **{f"based_f{f}": ("BASED", "feature_dim", f, _based(f)) for f in (4, 8, 16)},
    **{f"titans_mag_d{d}": ("Titans MAG", "d_model", d, _mag(d)) for d in (32, 64)},
    **{f"mom_m{m}": ("MoM", "n_memories", m, _mom(m)) for m in (1, 4)},
}



def seed_arg(text: str) -> int:
    """``--recall-seeds`` values: seeds >= 0 (their training data is never the held-out set)."""
    seed = int(text)
    if seed < 0 or data_seed(seed) in HELD_OUT:
        raise argparse.ArgumentTypeError(f"seed {seed}: seeds are >= 0")
    return seed


def overrides(name: str, steps: int = STEPS, seed: int = SEED) -> list[str]:
    """The Hydra overrides of a point (what its ``python train.py`` command passes)."""
    return [*TASK, *POINTS[name][3], f"seed={seed}",
            *([f"data.seed={data_seed(seed)}"] if seed else []), f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}"]


def command(over: list[str]) -> str:
    def quote(o):
        return f"'{o}'" if any(c in o for c in "[]{},") else o
    return " ".join(["python train.py", *map(quote, over)])


def _device_overrides(device: str, dtype: str) -> list[str]:
    out = []
    if device == "cuda":
        out += ["trainer=gpu"]
    if dtype in ("bfloat16", "float16"):
        out += [f"trainer.precision={'bf16' if dtype == 'bfloat16' else '16'}-mixed"]
    return out


def train_point(name: str, device: str = "cpu", dtype: str = "float32", steps: int = STEPS,
                extra: tuple[str, ...] = (), threads: int | None = None, seed: int = SEED
                ) -> dict:
    """Train one point with one seed; returns its row."""
    import lightning.pytorch as pl
    import torch
    from recipes import compose

    from memarch.lit.train import run

    if threads:
        torch.set_num_threads(threads)
    family, knob, value, _ = POINTS[name]
    over = overrides(name, steps, seed)
    seen = {}

    class _Probe(pl.Callback):                       # the model's size, state and chance
        def on_fit_start(self, trainer, module):
            seen["chance"] = getattr(trainer.datamodule.val_ds, "chance", None)
            seen["params"] = sum(p.numel() for p in module.net.parameters())
            seen["state_size"] = int(module.net.state_size(SEQ_LEN))
            seen["d_model"] = module.net.d_model if hasattr(module.net, "d_model") else None

    with tempfile.TemporaryDirectory(prefix=f"recall_{name}_") as tmp:
        cfg = compose([*over, *_device_overrides(device, dtype), *extra,
                       "trainer.enable_progress_bar=false"], tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        res = run(cfg, extra_callbacks=[_Probe()])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"name": name, "family": family, "knob": knob, "value": value,
            "d_model": int(cfg.model.d_model), "layer_pattern": list(cfg.model.layer_pattern),
            "state_size": seen["state_size"], "params": seen["params"],
            "val_acc": round(float(res["val/acc"]), 4),
            "val_loss": round(float(res["val/loss"]), 4),
            "chance": None if seen.get("chance") is None else round(float(seen["chance"]), 4),
            "seed": seed, "steps": steps, "global_step": int(res["global_step"]),
            "task": {"seq_len": SEQ_LEN, "num_kv_pairs": PAIRS, "num_keys": 32,
                     "num_values": 32},
            "train_s": round(seconds, 1), "cpu_s": round(cpu, 1),
            "threads": torch.get_num_threads(),
            "device": device, "dtype": dtype, "command": command(over)}


def _worker(job):
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name, device, dtype, steps, extra, seed = job
    return train_point(name, device, dtype, steps, extra, threads=1, seed=seed)


# ----------------------------------------------------------------------------- suite API
def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--recall-only", action="append", choices=list(POINTS), default=None,
                    help="train only this point (repeatable); the other rows are kept")
    ap.add_argument("--recall-seeds", nargs="+", type=seed_arg, default=(SEED,), metavar="S",
                    help="train each point with these seeds (default: 0, the published rows; "
                         "seed S != 0 also trains on data.seed=100+S); the rows of other seeds "
                         "are kept and the findings are decided on all seeds present")
    ap.add_argument("--recall-jobs", type=int, default=1,
                    help="trainings at once, each in its own process with 1 torch thread")
    ap.add_argument("--recall-steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--recall-extra", action="append", default=[], help=argparse.SUPPRESS)


def selected(args) -> list[str]:
    if getattr(args, "recall_only", None):
        return list(args.recall_only)
    return list(QUICK) if args.quick else list(POINTS)


def seeds(args) -> list[int]:
    """The training seeds of this invocation (``--recall-seeds``; default: seed 0)."""
    return list(dict.fromkeys(getattr(args, "recall_seeds", None) or (SEED,)))



def run(args) -> list[dict]:
    names = selected(args)
    jobs_list = [(n, sd) for n in names for sd in seeds(args)]
    results = Path(getattr(args, "results", None) or common.RESULTS)
    upgrade_old_rows(common.results_path("recall", common.device_name(args.device), results))
    steps = getattr(args, "recall_steps", None) or STEPS
    extra = tuple(getattr(args, "recall_extra", None) or ())
    jobs = getattr(args, "recall_jobs", 1) or 1
    rows = []

    def report(row):
        print(f"   {row['name']} (seed {row['seed']}): accuracy {100 * row['val_acc']:.1f} % "
              f"at state "
              f"{row['state_size']}, {row['global_step']} steps, {row['train_s']:.0f} s",
              flush=True)

    if jobs > 1 and len(jobs_list) > 1:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"),
                                    max_tasks_per_child=1) as pool:
            futs = [pool.submit(_worker, (n, args.device, args.dtype, steps, extra, sd))
                    for n, sd in jobs_list]
            for f in futs:
                rows.append(f.result())
                report(rows[-1])
    else:
        for n, sd in jobs_list:
            rows.append(train_point(n, args.device, args.dtype, steps, extra, seed=sd))
            report(rows[-1])
    return rows


def seed_of(row: dict) -> int:
    """A row's training seed (a row without ``seed``, from older JSON, is seed 0)."""
    return row.get("seed", 0)


def _order(r: dict) -> tuple:
    fam = {f: i for i, f in enumerate(FAMILIES)}
    return fam.get(r["family"], 99), r["state_size"], r["name"], r.get("dtype", "")


def _rows(data) -> list[dict]:
    """Rows in sweep order (family, then state size), then by seed."""
    return sorted(data["rows"], key=lambda r: (*_order(r), seed_of(r)))


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def points(data) -> list[dict]:
    """One entry per point (name and dtype) in sweep order: its first (lowest-seed) row with
    ``val_acc`` the mean over its seeds, ``accs`` {seed: accuracy} and ``rows`` (by seed)."""
    out: dict = {}
    for r in _rows(data):
        out.setdefault((r["name"], r.get("dtype", "")), []).append(r)
    return [{**rs[0], "val_acc": _mean(r["val_acc"] for r in rs),
             "accs": {seed_of(r): r["val_acc"] for r in rs}, "rows": rs}
            for rs in out.values()]


def all_seeds(data) -> list[int]:
    return sorted({seed_of(r) for r in data["rows"]})


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _acc(accs: dict, tag: bool = False) -> str:
    """An accuracy over seeds: "92.6 %" (one seed; "92.6 % (seed 1 only)" when ``tag``), or the
    mean with min–max: "92.6 % (90.1–95.0, 3 seeds)"."""
    xs = list(accs.values())
    out = _pct(_mean(xs))
    if len(xs) > 1:
        return out + f" ({100 * min(xs):.1f}–{100 * max(xs):.1f}, {len(xs)} seeds)"
    return out + (f" (seed {next(iter(accs))} only)" if tag else "")


def render(data) -> str:
    """The sweep's table, a line per point; with several seeds, its held-out accuracy is the
    mean (min–max, n seeds) and its CPU time the mean over the seeds."""
    rows, pts = _rows(data), points(data)
    m = data["meta"]
    where = sorted({f"{data['runs'].get(r.get('run'), {}).get('cpu', m.get('cpu'))}, "
                    f"{r.get('threads')} thread(s)" for r in rows})
    steps = sorted({r["global_step"] for r in rows})
    seeds = all_seeds(data) or [SEED]
    seeds_txt = (f"seeds {', '.join(map(str, seeds))} (accuracy: mean (min–max) over the seeds)"
                 if len(seeds) > 1 else f"seed {seeds[0]}")
    lines = [f"MQAR recall against state ({PAIRS} key-value pairs in {SEQ_LEN} tokens, 32 "
             f"values: chance {_pct(rows[0]['chance']) if rows else '-'}), 4 blocks "
             f"`[conv, X, conv, X]`, {seeds_txt}, {'/'.join(map(str, steps))} steps, "
             f"{m.get('device')} ({'; '.join(where)}), torch {m.get('torch')}:", "",
             "| model | knob | state_size (elements) | params | held-out accuracy | steps | "
             "train CPU time |", "|---|---|---:|---:|---:|---:|---:|"]
    tag = seeds != [0]
    for r in pts:
        lines.append(f"| {r['family']} | {r['knob']} {r['value']} | {r['state_size']:,} | "
                     f"{common.fmt_num(r['params'])} | {_acc(r['accs'], tag and len(seeds) > 1)}"
                     f" | {r['global_step']} | {_mean(x['cpu_s'] for x in r['rows']):.0f} s |")
    lines += ["", "Train CPU time: the training process's CPU seconds (the host was shared, "
              "so wall times, also in the JSON as `train_s`, were longer). Each row's "
              "command is in `benchmarks/results/recall-cpu.json` (`command`), e.g. `"
              + (pts[-1]["command"] if pts else "") + "`."]
    if len(seeds) > 1:
        lines[-1] += (f" Seed S != 0: the same command with `seed=S data.seed={DATA_SEED}+S` "
                      "(its own training sequences; the held-out set is the same for every "
                      "seed).")
    return "\n".join(lines) + "\n"


def _family(pts, family) -> list[dict]:
    return sorted((r for r in pts if r["family"] == family), key=lambda r: r["state_size"])


def judge(a: dict, b: dict, ok) -> tuple[bool, bool]:
    """Two points compared on the seeds both have (per seed: the same training data):
    (``ok(acc_a, acc_b)`` holds in the mean over the seeds AND in every seed, so in the worst
    one; it holds in some seed). With one seed: (it holds, it holds)."""
    ss = [s for s in a["accs"] if s in b["accs"]]
    each = [ok(a["accs"][s], b["accs"][s]) for s in ss]
    mean = bool(ss) and ok(_mean(a["accs"][s] for s in ss), _mean(b["accs"][s] for s in ss))
    return mean and all(each), any(each)


def _holds_all(p: dict, ok) -> bool:
    """``ok(acc)`` in the mean over a point's seeds and in every seed."""
    return ok(p["val_acc"]) and all(ok(x) for x in p["accs"].values())


def _seeds_of(pts) -> list[int]:
    """The seeds the points have between them (a finding is judged on these)."""
    return sorted({s for p in pts for s in p["accs"]})


def _where(seeds_by_family: dict) -> str:
    """", seeds 0, 1, 2" when every family has the same seeds, else which family has which:
    ", seeds 0, 1, 2 for MoM; seed 0 only for attention, BASED"."""
    groups: dict = {}
    for fam, ss in seeds_by_family.items():
        groups.setdefault(tuple(ss), []).append(fam)
    def seeds_txt(ss):
        return f"seeds {', '.join(map(str, ss))}" if len(ss) > 1 else f"seed {ss[0]} only"
    if len(groups) == 1:
        ss = next(iter(groups))
        return "" if list(ss) == [SEED] else f", {seeds_txt(ss)}"
    return ", " + "; ".join(f"{seeds_txt(ss)} for {', '.join(fs)}"
                            for ss, fs in sorted(groups.items(), key=lambda g: -len(g[0])))


def findings(data) -> dict:
    """The numbers and verdicts behind the findings sentences, decided on every seed present:
    a comparison of two points holds when it holds in the mean over the seeds both have AND in
    every one of them (the worst seed decides); a level (``NEAR``) when it holds in the mean
    and in every seed. With seed 0 alone, the rules are the single-seed ones.

    * BASED (figure 2): every linear-attention point is beaten (accuracy higher by more than
      ``MARGIN``) by a BASED point of equal or smaller state, and attention at its largest
      state reaches ``NEAR``: reproduced; at least one linear-attention point beaten that way
      in some seed: partly; else not.
    * Zoology / MQAR trade-off: a family "rises" when its accuracy at its largest state is
      above its accuracy at its smallest by more than ``MARGIN``, or is flat at >= ``NEAR``
      (saturated); reproduced when every family with 2+ points rises or saturates and one
      rises, partly when at least half do, else not.
    * MoM (table of memories): the most memories beat one memory (same per-memory size) by
      more than ``MARGIN``: reproduced; by less (but higher), or only 2 of 4 memories beat it,
      in some seed: partly; else not.
    """
    pts = points(data)
    out = {}
    la, based, attn = (_family(pts, f) for f in ("linear attention", "BASED", "attention"))
    if la and based and attn:
        def beats(x, y):
            return x > y + MARGIN
        res = [[judge(b, r, beats) for b in based if b["state_size"] <= r["state_size"]]
               for r in la]
        beaten = [r for r, js in zip(la, res) if any(j[0] for j in js)]
        some = [r for r, js in zip(la, res) if any(j[1] for j in js)]
        top = attn[-1]
        out["based"] = dict(beaten=len(beaten), some=len(some) - len(beaten), n_la=len(la),
                            seeds=_seeds_of([*la, *based, top]),
                            attn=top, best_la=max(la, key=lambda r: r["val_acc"]),
                            best_based=max(based, key=lambda r: r["val_acc"]),
                            verdict=common.verdict(
                                len(beaten) == len(la) and _holds_all(top, lambda x: x >= NEAR),
                                len(some) > 0))
    fams = [(f, _family(pts, f)) for f in FAMILIES]
    fams = [(f, rs) for f, rs in fams if len(rs) >= 2]
    if fams:
        rise = [f for f, rs in fams
                if judge(rs[-1], rs[0], lambda x, y: x > y + MARGIN)[0]]
        sat = [f for f, rs in fams
               if f not in rise and all(_holds_all(r, lambda x: x >= NEAR) for r in rs)]
        ok = len(rise) + len(sat)
        out["tradeoff"] = dict(rise=rise, sat=sat, n=len(fams),
                               seeds={f: _seeds_of(rs) for f, rs in fams},
                               other=[f for f, _ in fams if f not in rise and f not in sat],
                               verdict=common.verdict(ok == len(fams) and bool(rise),
                                                      2 * ok >= len(fams)))
    mom = sorted(_family(pts, "MoM"), key=lambda r: r["value"])
    if len(mom) >= 2 and mom[0]["value"] == 1:
        one, most = mom[0], mom[-1]
        any_more = any(judge(r, one, lambda x, y: x > y)[1] for r in mom[1:])
        seeds = [s for s in most["accs"] if s in one["accs"]]
        out["mom"] = dict(one=one, most=most, seeds=seeds, verdict=common.verdict(
            judge(most, one, lambda x, y: x > y + MARGIN)[0], any_more))
    return out


def render_findings(data) -> str:
    """The findings sentences (``findings``). Accuracies read "92.6 %" with seed 0 alone,
    else mean (min–max, n seeds), or "(seed S only)" for a single seed."""
    f = findings(data)
    tag = (all_seeds(data) or [SEED]) != [0]
    every = " in the mean over the seeds and in every seed"
    lines = []
    if "based" in f:
        b = f["based"]
        rule = every if len(b["seeds"]) > 1 else ""
        a, bl, bb = b["attn"], b["best_la"], b["best_based"]
        lines.append(
            f"**BASED** (2402.18668, figure 2: recall against state): {b['verdict']} at this "
            "scale: "
            f"{b['beaten']} of {b['n_la']} linear-attention points are beaten by a BASED point "
            f"of equal or smaller state{rule}"
            + (f" ({b['some']} more in some seeds only)" if b["some"] else "")
            + f" (best BASED {_acc(bb['accs'], tag)} at state "
            f"{bb['state_size']:,}, best linear attention {_acc(bl['accs'], tag)} at "
            f"{bl['state_size']:,}), and attention at its largest state ({a['state_size']:,}) "
            f"reaches {_acc(a['accs'], tag)} (near 100 % means >= {_pct(NEAR)}{rule}).")
    if "tradeoff" in f:
        t = f["tradeoff"]
        parts = [f"rises in {', '.join(t['rise']) or 'none'}"]
        if t["sat"]:
            parts.append(f"is saturated (>= {_pct(NEAR)}) in {', '.join(t['sat'])}")
        if t["other"]:
            parts.append(f"does not rise in {', '.join(t['other'])}")
        rule = every if any(len(ss) > 1 for ss in t["seeds"].values()) else ""
        where = _where(t["seeds"])
        lines.append(
            f"**Zoology / MQAR** (2312.04927, the MQAR sweeps: recall against model size): "
            f"{t['verdict']} at this scale: from the smallest to the largest state of each "
            f"family, accuracy {'; '.join(parts)} (a rise is more than {100 * MARGIN:.0f} "
            f"points{rule}; {t['n']} families{where}).")
    if "mom" in f:
        m = f["mom"]
        ss = m["seeds"]
        most = {s: m["most"]["accs"][s] for s in ss}
        one = {s: m["one"]["accs"][s] for s in ss}
        if len(ss) > 1:
            tail = (f"per seed {', '.join(f'{100 * (most[s] - one[s]):+.1f}' for s in ss)} "
                    f"points, seeds {', '.join(map(str, ss))}")
        else:
            tail = f"seed {ss[0] if ss else SEED} only"
        lines.append(
            f"**MoM** (2502.13685, the ablation on the number of memories): {m['verdict']} "
            f"at this scale: {m['most']['value']} memories reach {_acc(most)} "
            f"against {_acc(one)} for one memory of the same size (state "
            f"{m['most']['state_size']:,} against {m['one']['state_size']:,}; {tail}).")
    return "\n\n".join(lines) + ("\n" if lines else "")


def plot(data, stem: Path) -> list[Path]:
    """Accuracy against state, a line per family; with several seeds, the mean over each
    point's seeds with min–max bars."""
    plt = common.pyplot()
    rows, pts = _rows(data), points(data)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osv^Dp"
    for i, fam in enumerate(FAMILIES):
        rs = _family(pts, fam)
        if rs:
            ax.plot([r["state_size"] for r in rs], [100 * r["val_acc"] for r in rs],
                    marker=markers[i % len(markers)], color=f"C{i}", label=fam)
            if any(len(r["accs"]) > 1 for r in rs):
                ax.errorbar([r["state_size"] for r in rs], [100 * r["val_acc"] for r in rs],
                            yerr=[[100 * (r["val_acc"] - min(r["accs"].values())) for r in rs],
                                  [100 * (max(r["accs"].values()) - r["val_acc"]) for r in rs]],
                            fmt="none", ecolor=f"C{i}", capsize=3, lw=1)
    if rows and rows[0].get("chance"):
        ax.axhline(100 * rows[0]["chance"], color="gray", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_ylim(0, 102)
    ax.set_xlabel(f"state_size at {SEQ_LEN} tokens (elements, log)")
    ax.set_ylabel("held-out accuracy (%)")
    seeds = all_seeds(data)
    ax.set_title(f"MQAR ({PAIRS} pairs in {SEQ_LEN} tokens): recall against state"
                 + (f"\n(mean of seeds {', '.join(map(str, seeds))}, bars: min–max)"
                    if len(seeds) > 1 else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(f"{stem}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


if __name__ == "__main__":          # python benchmarks/suite_recall.py --render FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", required=True)
    print(render(json.loads(Path(ap.parse_args().render).read_text())), end="")
