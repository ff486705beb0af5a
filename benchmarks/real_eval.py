"""The real pretrained model through ``python -m memarch.eval``: dense vs window 1024 + 4 sinks.

    make real-model
    python benchmarks/real_eval.py --run              # convert, run both evaluations, write JSON
    python benchmarks/real_eval.py --collect DIR      # the JSON from harness outputs in DIR
    python benchmarks/real_eval.py --render           # the README table from the JSON

SmolLM2-135M-Instruct (``make real-model``; 8k trained context) is converted to a memarch
checkpoint (``python -m memarch.convert gguf``, fp32) and evaluated twice with ``preset=real``
(passkey and needle at 1k, 2k, 4k and 8k tokens, a few examples per length; perplexity by
position over one 8192-token stream of the shipped KJV): as it is (dense attention), and with
StreamingLLM's window of 1024 tokens + 4 sinks at cache positions (``model_overrides``; no
weight changes). The two harness commands are in ``commands()``; ``--run`` runs them one after
the other at ``--threads`` torch threads (CPU), each into ``DIR/<model>`` (default
``/tmp/real_eval``), and ``--collect`` reads their ``summary.json`` into
``benchmarks/results/real_eval-cpu.json`` (meta: device, torch, date, commands, examples per
length, the GGUF's sha256; per model: scores by length and depth, every example's prediction,
perplexity per 1024-position bucket, seconds per suite).

The 8k prompts are 8176 tokens (``preset=real``): with the generated tokens no position goes
past the 8192 the model was trained on. Within its first 1024 positions the windowed model is
the dense one (same logits); past them it sees only the last 1024 tokens and the 4 sinks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import RESULTS, ROOT  # noqa: E402

OUT_JSON = RESULTS / "real_eval-cpu.json"
WINDOW, SINKS = 1024, 4
STREAM = (f"{{mixers.attn.window: {WINDOW}, mixers.attn.n_sinks: {SINKS}, "
          "mixers.attn.sink_positions: cache}")
MODELS = {"dense": ("dense", None),
          "sinks": (f"window {WINDOW} + {SINKS} sinks", STREAM)}
TASKS = ("passkey", "needle")
# perplexity columns of the table (positions [a, b)); the JSON keeps every 1024-token bucket
PPL_SPANS = ((0, 1024), (1024, 2048), (2048, 4096), (4096, 8192))


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv.relative_to(ROOT)) if venv.is_file() else sys.executable


def convert_command(gguf: str | Path, ckpt: str | Path) -> list[str]:
    return [python(), "-m", "memarch.convert", "gguf", str(gguf), str(ckpt)]


def commands(ckpt: str | Path, out_dir: str | Path) -> dict[str, list[str]]:
    """The harness command of each model (run from the repository root)."""
    out = {}
    for name, (_, overrides) in MODELS.items():
        cmd = [python(), "-m", "memarch.eval", f"checkpoint={ckpt}", "preset=real",
               f"out_dir={Path(out_dir) / name}"]
        if overrides:
            cmd.append(f"model_overrides={overrides}")
        out[name] = cmd
    return out


def _env(threads: int) -> dict:
    t = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TRITON_INTERPRET": "1"}


def run(out_dir: Path, threads: int) -> dict:
    """Convert the GGUF (if ``out_dir/smollm2.ckpt`` is missing), then run both evaluations;
    returns {"convert_s", "wall_s": {model: seconds}}."""
    from memarch.pretrained import real_model_path
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "smollm2.ckpt"
    timing: dict = {"convert_s": None, "wall_s": {}, "loadavg_at_start": os.getloadavg()[0]}
    if not ckpt.is_file():
        t0 = time.time()
        subprocess.run(convert_command(real_model_path(), ckpt), cwd=ROOT, env=_env(threads),
                       check=True)
        timing["convert_s"] = round(time.time() - t0, 1)
    for name, cmd in commands(ckpt, out_dir).items():
        print("$", shlex.join(cmd), flush=True)
        t0 = time.time()
        with open(out_dir / f"{name}.log", "w") as log:
            subprocess.run(cmd, cwd=ROOT, env=_env(threads), stdout=log,
                           stderr=subprocess.STDOUT, check=True)
        timing["wall_s"][name] = round(time.time() - t0, 1)
    return timing


# ------------------------------------------------------------------------------- collect
def _label(length: int) -> str:
    return f"{round(length / 1024)}k"


def _ppl_spans(ppl: dict) -> dict[str, float | None]:
    """Perplexity over each of ``PPL_SPANS`` from the harness's buckets: exp of the
    token-weighted mean NLL of the buckets inside the span (None if they do not tile it)."""
    out = {}
    for a, b in PPL_SPANS:
        inside = [x for x in ppl["buckets"] if a <= x["start"] and x["end"] <= b]
        if sum(x["end"] - x["start"] for x in inside) != b - a:
            out[f"{a}-{b - 1}"] = None
            continue
        n = sum(x["n_tokens"] for x in inside)
        nll = sum(math.log(x["ppl"]) * x["n_tokens"] for x in inside) / n
        out[f"{a}-{b - 1}"] = math.exp(nll)
    return out


def _examples(path: Path) -> list[dict]:
    keep = ("length", "depth", "prompt_tokens", "prediction", "answers", "score")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in keep if k in r} for r in rows]


def collect(out_dir: Path, timing: dict | None = None, threads: int = 1,
            ckpt: str | Path | None = None) -> dict:
    """``real_eval-cpu.json``'s content from the harness outputs in ``out_dir/<model>``
    (``ckpt``: the converted checkpoint the commands read, default ``out_dir/smollm2.ckpt``;
    ``timing``: kept in ``meta.timing``)."""
    from memarch.pretrained import SMOLLM2
    models, env = {}, None
    for name, (label, overrides) in MODELS.items():
        d = out_dir / name
        s = json.loads((d / "summary.json").read_text())
        res = s["results"]
        env = env or s["environment"]
        m = {"label": label, "model_overrides": overrides,
             "context_length": s.get("context_length"), "warnings": s.get("warnings", {}),
             "seconds": {t: round(r["seconds"], 1) for t, r in res.items()},
             "eval_seconds": round(s["seconds"], 1)}
        for t in TASKS:
            r = res[t]
            m[t] = {"score": r["score"], "by_length": r["by_length"], "metric": r["metric"],
                    "settings": r["settings"], "n_examples": r["n_examples"],
                    "max_length_run": r["max_length_run"],
                    "examples": _examples(d / f"{t}.jsonl")}
            if "by_depth_length" in r:
                m[t]["by_depth_length"] = r["by_depth_length"]
        p = res["perplexity"]
        m["perplexity"] = {"ppl": p["ppl"], "buckets": p["buckets"], "spans": _ppl_spans(p),
                           "settings": p["settings"]}
        models[name] = m
    d0 = models["dense"]
    n_per_length = {t: d0[t]["n_examples"] // len(d0[t]["by_length"]) for t in TASKS}
    ckpt = ckpt or out_dir / "smollm2.ckpt"
    cmds = commands(ckpt, out_dir)
    convert = f"{python()} -m memarch.convert gguf ~/.cache/memarch/{SMOLLM2.filename} {ckpt}"
    contexts = [m["context_length"] for m in models.values() if m["context_length"]]
    meta = {**common.meta(env["device"], threads, command=common.script_command()),
            "model": f"SmolLM2-135M-Instruct ({SMOLLM2.filename}, PyPI "
                     f"{SMOLLM2.package}=={SMOLLM2.version}, {SMOLLM2.license}), fp32",
            "model_sha256": SMOLLM2.sha256,
            "trained_context": contexts[0] if contexts else None,
            "commands": {"convert": convert, **{k: shlex.join(v) for k, v in cmds.items()}},
            "env": f"OMP_NUM_THREADS={threads} (torch threads {env.get('threads')})",
            "n_per_length": n_per_length,
            "needle_depths": d0["needle"]["settings"]["depths"]}
    if timing:
        meta["timing"] = timing
    return {"meta": meta, "models": models}


# -------------------------------------------------------------------------------- render
def _pct(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _span_label(key: str) -> str:
    a, b = (int(v) for v in key.split("-"))
    return f"{a // 1024}-{(b + 1) // 1024}k"


def _in_window(ex: dict) -> bool:
    """Whether the answer lies in the last ``WINDOW`` tokens of the prompt (estimated from
    its depth, in % of the haystack: ``(100 - depth) %`` of the prompt follows it)."""
    return (100 - ex["depth"]) / 100 * ex["prompt_tokens"] < WINDOW


def verdict(data: dict) -> str:
    """One sentence, by a fixed rule: *fluent* when the windowed model's perplexity past its
    window stays within 25 % of the dense model's in every span; its memory *not extended*
    when its retrieval (passkey and needle pooled) at lengths of at least twice the window is
    at least 40 points below the dense model's. It also counts how many of the windowed
    model's hits there had the answer inside its window."""
    d, s = data["models"]["dense"], data["models"]["sinks"]
    past = [k for k in s["perplexity"]["spans"] if int(k.split("-")[0]) >= WINDOW]
    ratios = [s["perplexity"]["spans"][k] / d["perplexity"]["spans"][k] for k in past
              if s["perplexity"]["spans"][k] and d["perplexity"]["spans"][k]]
    fluent = bool(ratios) and max(ratios) <= 1.25

    def far(m):
        return [e for t in TASKS for e in m[t]["examples"] if e["length"] >= 2 * WINDOW]

    fd = sum(e["score"] for e in far(d)) / max(1, len(far(d)))
    fs = sum(e["score"] for e in far(s)) / max(1, len(far(s)))
    no_memory = bool(far(d)) and fd - fs >= 40
    hits = [e for e in far(s) if e["score"] == 100]
    inside = sum(_in_window(e) for e in hits)
    if fluent and no_memory:
        lead = "Sinks keep the model fluent but do not extend its memory"
    elif fluent:
        lead = ("Sinks keep the model fluent, and its retrieval past twice the window is not "
                "clearly below the dense model's")
    elif no_memory:
        lead = "Past its window the windowed model is neither fluent nor does it remember"
    else:
        lead = "Past its window the windowed model is not fluent"
    spans = ", ".join(f"{_span_label(k)} {d['perplexity']['spans'][k]:.2f} vs "
                      f"{s['perplexity']['spans'][k]:.2f}" for k in past)
    return (f"{lead}: past the {WINDOW}-token window its perplexity is "
            f"{'close to' if fluent else 'far from'} the dense model's (dense vs window + "
            f"sinks: {spans}), while at {_label(2 * WINDOW)}-"
            f"{_label(max(e['length'] for e in far(d)))} "
            f"tokens it finds {fs:.0f} % of the pass keys and needles against {fd:.0f} % "
            f"for dense attention ({len(far(s))} prompts), and {inside} of its {len(hits)} "
            f"hits had the answer inside its last {WINDOW} tokens.")


def render(data: dict) -> str:
    """Markdown: one row per model; passkey and needle accuracy (%) by length, perplexity
    by position span; a caption with the examples per length and the verdict sentence."""
    d = data["models"]["dense"]
    lengths = list(d["passkey"]["by_length"])
    nlengths = list(d["needle"]["by_length"])
    spans = list(d["perplexity"]["spans"])
    head = (["model"] + [f"passkey@{_label(int(L))}" for L in lengths]
            + [f"needle@{_label(int(L))}" for L in nlengths]
            + [f"ppl {_span_label(k)}" for k in spans])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in data["models"].values():
        cells = ([m["label"]] + [_pct(m["passkey"]["by_length"][L]) for L in lengths]
                 + [_pct(m["needle"]["by_length"][L]) for L in nlengths]
                 + [_num(m["perplexity"]["spans"][k]) for k in spans])
        lines.append("| " + " | ".join(cells) + " |")
    meta = data["meta"]
    n = meta["n_per_length"]
    caption = (f"SmolLM2-135M-Instruct (fp32, CPU {meta['cpu']}, {meta['threads']} torch "
               f"thread{'s' if meta['threads'] != 1 else ''}), "
               f"`python -m memarch.eval preset=real`; passkey / needle: % of "
               f"{n['passkey']} / {n['needle']} examples per length (needle depths "
               f"{', '.join(f'{x:g}' for x in meta['needle_depths'])} %; 8k = 8176-token "
               f"prompts); ppl: perplexity of one 8192-token KJV stream by position; window "
               f"+ sinks = `model_overrides='{STREAM}'` on the same weights.")
    return "\n".join(lines) + "\n\n" + caption + "\n\n" + verdict(data) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", action="store_true", help="convert, evaluate both, write the JSON")
    g.add_argument("--collect", metavar="DIR", help="write the JSON from DIR/dense, DIR/sinks")
    g.add_argument("--render", action="store_true", help="print the README markdown of --out")
    ap.add_argument("--dir", default="/tmp/real_eval", help="--run's work folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", default=None,
                    help="--collect: the checkpoint the commands read (default DIR/smollm2.ckpt)")
    ap.add_argument("--timing", default=None,
                    help="--collect: a JSON object of timings to keep in meta")
    ap.add_argument("--out", default=str(OUT_JSON))
    args = ap.parse_args(argv)
    os.chdir(ROOT)                       # preset=real's KJV path is relative to the repo root
    if args.render:
        print(render(json.loads(Path(args.out).read_text())), end="")
        return 0
    if args.run:
        timing = run(Path(args.dir), args.threads)
        data = collect(Path(args.dir), timing, args.threads)
    else:
        data = collect(Path(args.collect), json.loads(args.timing) if args.timing else None,
                       args.threads, args.ckpt)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print(render(data), end="")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
