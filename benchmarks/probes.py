"""Adversarial bad-input audit (issue 10): run a table of bad inputs against the current tree.

    TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
        .venv/bin/python benchmarks/probes.py [--only CATEGORY] [--skip-cli] [--jobs 1]

Each probe declares what a careful library should do with its input:

* ``error``: raise a normal exception (or SystemExit / non-zero exit for the CLIs) whose
  message contains every keyword (``"a|b"`` = either word), case-insensitive;
* ``ok``: return, and a check on the result (and the warnings raised) passes.

Outcomes: ``clear`` (as declared), ``unclear`` (raised, but a raw internal exception type such
as AttributeError/IndexError/KeyError/RuntimeError, an exception raised inside torch or
another library, a message without the keywords, a CLI that printed a Python traceback, or
an error where a result was expected), ``silent`` (no error where one was due, or a wrong
result), ``hang`` (past the per-probe timeout: signal.alarm in-process, subprocess timeout).
Writes ``benchmarks/results/probes.json`` (meta + one row per probe) and ``probes.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable
ENV = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
os.environ.update({k: ENV[k] for k in ("TRITON_INTERPRET", "HF_HUB_OFFLINE",
                                        "HF_DATASETS_OFFLINE", "WANDB_MODE")})

from memarch.kernels import linear_attn, sliding_window_attn

from memarch.generation import generate, sample_next, stream
from memarch.mixers import Attention, BaseConv, BasedLinearAttention, LinearAttention, ShortConv
from memarch.models import MemLM

RAW = (AttributeError, IndexError, KeyError, ZeroDivisionError, RuntimeError, AssertionError,
       NameError, UnboundLocalError, NotImplementedError, StopIteration, RecursionError)
REPO_DIRS = tuple(str(ROOT / d) for d in ("memarch", "eval", "kernels", "train.py"))
TMP = Path(tempfile.mkdtemp(prefix="memarch_probes_"))
SETUP_LOCK = threading.Lock()
D = 32


class CodeRan(Exception):
    """A malicious checkpoint ran code (the marker file exists): a silent failure."""


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that library `except Exception` cannot eat it."""


@dataclass
class Probe:
    cat: str
    name: str
    fn: object                      # in-process: a callable; CLI: a list of arguments
    kw: tuple | None = None         # expected error keywords; None: expect ok
    check: object = None            # ok probes: check(result, warnings) -> (bool, note)
    timeout: int = 30
    cli: bool = False
    setup: object = None            # CLI: callable run first (writes files), may return args


def P(cat, name, fn, kw=None, check=None, timeout=30):
    return Probe(cat, name, fn, tuple(kw.split(",")) if isinstance(kw, str) else kw, check,
                 timeout)


def has(msg: str, kw) -> bool:
    m = msg.lower()
    return all(any(a.strip().lower() in m for a in k.split("|")) for k in kw)


# -- running and classifying --------------------------------------------------------------
def _origin(e: BaseException):
    tb = traceback.extract_tb(e.__traceback__)
    return tb[-1] if tb else None


def classify_exc(p: Probe, e: BaseException) -> tuple[str, str]:
    """clear only for a deliberate ``raise`` (in the repo) or SystemExit, of a normal type,
    whose message has the keywords. An exception from a torch/library frame, or from a repo
    line that is not a ``raise`` (e.g. an op called on bad data), is raw: unclear."""
    msg = str(e.code) if isinstance(e, SystemExit) else str(e)
    text = f"{type(e).__name__}: {msg}".replace("\n", " ")[:300]
    if p.kw is None:
        return "unclear", f"expected a result, raised {text}"
    fr = _origin(e)
    where = f"{Path(fr.filename).name}:{fr.lineno}" if fr else "?"
    in_repo = bool(fr) and fr.filename.startswith(REPO_DIRS)
    deliberate = in_repo and (fr.line or "").lstrip().startswith("raise")
    if not isinstance(e, (SystemExit, OSError)):
        if not in_repo:
            lib = fr.filename.split("site-packages/")[-1] if fr else "?"
            return "unclear", f"raised inside {lib}: {text}"
        if not deliberate:
            return "unclear", f"raw {text} (from `{(fr.line or '').strip()[:60]}` at {where})"
        if isinstance(e, RAW) and type(e) is not RuntimeError:
            return "unclear", f"raw exception type {text} (at {where})"
    if not has(msg, p.kw):
        return "unclear", f"message lacks {list(p.kw)}: {text}"
    return "clear", text


def _alarm(signum, frame):
    raise Hang()


def run_inproc(p: Probe) -> tuple[str, str]:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(p.timeout)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            try:
                res = p.fn()
            except Hang:
                return "hang", f"no result after {p.timeout} s"
            except CodeRan as e:
                return "silent", str(e)
            except BaseException as e:      # noqa: BLE001 - SystemExit included on purpose
                return classify_exc(p, e)
        msgs = [str(w.message) for w in ws]
        if p.kw is not None:
            warned = [m for m in msgs if has(m, p.kw)]
            note = f"only a warning: {warned[0][:200]}" if warned else f"returned {_short(res)}"
            return "silent", note
        try:
            ok, note = p.check(res, msgs) if p.check else (True, "")
        except Exception as e:  # noqa: BLE001 - a result the check cannot even read is wrong
            ok, note = False, f"unexpected result {_short(res)} ({type(e).__name__}: {e})"
        return ("clear" if ok else "silent"), note
    except Hang:
        return "hang", f"no result after {p.timeout} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_cli(p: Probe) -> tuple[str, str]:
    try:
        args = p.setup() if p.setup else p.fn
    except Exception as e:  # noqa: BLE001 - reported, not counted as an outcome of the probe
        return "n/a", f"setup failed: {type(e).__name__}: {e}"
    cwd = TMP / ("cli_" + "".join(ch if ch.isalnum() else "_" for ch in p.name))
    cwd.mkdir(exist_ok=True)
    try:
        r = subprocess.run([PY, *args], check=False, cwd=cwd, env=ENV, capture_output=True,
                           text=True,
                           timeout=p.timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return "hang", f"no exit after {p.timeout} s"
    out = r.stdout + r.stderr
    last = " | ".join(ln for ln in out.strip().splitlines()[-3:])[-300:]
    if p.kw is None:                     # a control: must succeed
        return (("clear", "exit 0") if r.returncode == 0
                else ("unclear", f"exit {r.returncode}: {last}"))
    if r.returncode == 0:
        return "silent", f"exit 0: {last}"
    if "Traceback (most recent call last)" in out:
        return "unclear", f"exit {r.returncode} with a traceback: {last}"
    if not has(out, p.kw):
        return "unclear", f"exit {r.returncode}, message lacks {list(p.kw)}: {last}"
    return "clear", f"exit {r.returncode}: {last}"


def _short(x) -> str:
    if isinstance(x, torch.Tensor):
        bad = "" if bool(torch.isfinite(x).all()) else ", non-finite values"
        return f"tensor{tuple(x.shape)} {x.dtype}{bad}"
    if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor):
        return f"{type(x).__name__}(y={_short(x[0])})"
    if isinstance(x, torch.nn.Module):
        return f"a {type(x).__name__} (accepted)"
    return repr(x).replace("\n", " ")[:120]


# -- layers ---------------------------------------------------------------------------------
MIXERS = {   # name -> factory(d_model) ; the other config a "same type" state comes from
    "attn_full": partial(Attention, n_heads=4),
    "attn_gqa": partial(Attention, n_heads=4, n_kv_heads=2),
    "attn_win": partial(Attention, n_heads=4, window=8),
    "attn_sinks": partial(Attention, n_heads=4, window=8, n_sinks=2),
    "attn_sinks_cache": partial(Attention, n_heads=4, window=8, n_sinks=2, sink_positions="cache"),
    "attn_learned": partial(Attention, n_heads=4, n_kv_heads=2, learned_sink=True),
    "linattn": partial(LinearAttention, n_heads=2),
    "linattn_gated": partial(LinearAttention, n_heads=2, gated=True),
    "linattn_identity": partial(LinearAttention, n_heads=2, feature_map="identity",
                                normalize=False),
    "based": partial(BasedLinearAttention, n_heads=4, feature_dim=4),
    "shortconv": partial(ShortConv, kernel_size=4),
    "baseconv": partial(BaseConv, kernel_size=3),
}
REPRESENTATIVE = {"KVCacheState": "attn_full", "SinkWindowState": "attn_win",
                  "LinearAttentionState": "linattn", "ShortConvState": "shortconv"}
SAME_TYPE_OTHER = [   # (mixer, other factory, what differs)
    ("attn_full", partial(Attention, n_heads=4, n_kv_heads=2), "n_kv_heads"),
    ("attn_gqa", partial(Attention, n_heads=4), "n_kv_heads"),
    ("attn_gqa", partial(Attention, n_heads=2, n_kv_heads=2), "n_heads/head_dim"),
    ("attn_win", partial(Attention, n_heads=4, window=4), "window"),
    ("attn_win", partial(Attention, n_heads=4, window=8, n_sinks=2), "n_sinks"),
    ("attn_sinks", partial(Attention, n_heads=4, window=8, n_sinks=3), "n_sinks"),
    ("attn_sinks", partial(Attention, n_heads=4, window=16, n_sinks=2), "window"),
    ("linattn", partial(LinearAttention, n_heads=2, normalize=False), "normalize"),
    ("linattn", partial(LinearAttention, n_heads=2, feature_dim=8), "feature_dim"),
    ("linattn_identity", partial(LinearAttention, n_heads=2), "normalize"),
    ("based", partial(BasedLinearAttention, n_heads=4, feature_dim=8), "feature_dim"),
    ("shortconv", partial(ShortConv, kernel_size=3), "kernel_size"),
    ("baseconv", partial(BaseConv, kernel_size=4), "kernel_size"),
    ("shortconv", partial(BaseConv, kernel_size=4), "d_model (BaseConv's inner width)"),
]


def mk(name, **kw):
    torch.manual_seed(0)
    return MIXERS[name](D, **kw)


def x_(*shape, dtype=torch.float32):
    torch.manual_seed(1)
    return torch.randn(*shape, dtype=dtype)


def state_of(factory, B=2, d=D):
    torch.manual_seed(0)
    m = factory(d)
    return m(x_(B, 5, d)).state


def with_pos(state, pos):
    return state._replace(pos=pos)


def causal_check(name, val=float("nan"), prefix=0, t=5, T=12):
    """NaN/inf in row 0 at token t: outputs of row 0 before t and all of row 1 unchanged."""
    m = mk(name)
    x = x_(2, prefix + T, D)

    def run(xx):
        if prefix:
            return m(xx[:, prefix:], m(xx[:, :prefix]).state).y
        return m(xx).y
    with torch.no_grad():
        y0 = run(x)
        x2 = x.clone()
        x2[0, prefix + t] = val
        y1 = run(x2)
    return y0, y1, t


def causal_ok(res, _ws):
    y0, y1, t = res
    before = bool(torch.isfinite(y1[0, :t]).all()) and torch.allclose(y1[0, :t], y0[0, :t],
                                                                         atol=1e-5)
    other = bool(torch.isfinite(y1[1]).all()) and torch.allclose(y1[1], y0[1], atol=1e-5)
    if before and other:
        return True, "outputs before t and the other row unchanged"
    bad = (~torch.isfinite(y1[0, :t]).all(-1)).nonzero().flatten().tolist()
    row0 = "unchanged" if before else f"changed (non-finite at {bad})"
    return False, (f"row 0 before t={t}: {row0}"
                   f"; other row: {'unchanged' if other else 'changed'}")


def layer_probes():
    out = []
    for n in MIXERS:  # noqa: PLC0206 - the factories are looked up by name in the lambdas
        c = f"layers/{n}"
        ps = [
            ("rank2", lambda n=n: mk(n)(x_(2, D)), "rank"),
            ("rank4", lambda n=n: mk(n)(x_(1, 2, 3, D)), "rank"),
            ("wrong_d_model", lambda n=n: mk(n)(x_(2, 3, D - 1)), "d_model"),
            ("T0", lambda n=n: mk(n)(x_(2, 0, D)), "T"),
            ("B0", lambda n=n: mk(n)(x_(0, 3, D)), "B=0|batch"),
            ("non_tensor", lambda n=n: mk(n)([[0.0] * D] * 3), "tensor"),
            ("int_dtype", lambda n=n: mk(n)(torch.ones(2, 3, D, dtype=torch.long)),
             "floating|dtype"),
            ("state_fp64_for_fp32_x",
             lambda n=n: mk(n)(x_(2, 3, D), _retype(state_of(MIXERS[n]))), "dtype"),
            ("state_batch_3_for_B2", lambda n=n: mk(n)(x_(2, 3, D), state_of(MIXERS[n], B=3)),
             "batch"),
            ("state_dict_not_state", lambda n=n: mk(n)(x_(2, 3, D), {"pos": torch.zeros(2)}),
             "state"),
            ("negative_pos", lambda n=n: mk(n)(x_(2, 3, D), with_pos(
                state_of(MIXERS[n]), torch.tensor([-1, 5]))), "pos"),
            ("float_pos", lambda n=n: mk(n)(x_(2, 3, D), with_pos(
                state_of(MIXERS[n]), torch.tensor([5.0, 5.0]))), "pos"),
        ]
        out += [P(c, f"{n}:{a}", f, kw) for a, f, kw in ps]
        for tname, rep in REPRESENTATIVE.items():
            if type(state_of(MIXERS[n])).__name__ != tname:
                out.append(P(c, f"{n}:state_from_{rep}",
                             lambda n=n, rep=rep: mk(n)(x_(2, 3, D), state_of(MIXERS[rep])),
                             "state"))
        out += [
            P(c, f"{n}:nan_at_t_causal", lambda n=n: causal_check(n), check=causal_ok),
            P(c, f"{n}:inf_at_t_causal", lambda n=n: causal_check(n, float("inf")),
              check=causal_ok),
            P(c, f"{n}:nan_at_t_after_prefix_causal", lambda n=n: causal_check(n, prefix=6),
              check=causal_ok),
        ]
    for n, other, what in SAME_TYPE_OTHER:
        out.append(P(f"layers/{n}", f"{n}:state_from_other_{what.split()[0]}",
                     lambda n=n, o=other: mk(n)(x_(2, 3, D), state_of(o)), "state"))
    return out


def _retype(s):
    return type(s)(*[t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in s])


def _kw(d) -> str:
    s = ", ".join(f"{k}={v!r}" for k, v in d.items() if k != "fwd")
    return s + (") + forward(x" if d.get("fwd") else "")


# (class, kwargs, keywords the message must name); "+fwd": the error may come at forward
CTOR = [(Attention, {"n_heads": 0}, "n_heads"), (Attention, {"n_heads": -1}, "n_heads"),
        (Attention, {"n_heads": 5}, "n_heads"), (Attention, {"n_heads": "a"}, "n_heads"),
        (Attention, {"n_heads": 4, "n_kv_heads": 0}, "n_kv_heads"),
        (Attention, {"n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
        (Attention, {"window": 0}, "window"), (Attention, {"window": -1}, "window"),
        (Attention, {"window": 1.5}, "window"), (Attention, {"window": True}, "window"),
        (Attention, {"window": 8, "n_sinks": -1}, "n_sinks"),
        (Attention, {"n_sinks": 2}, "window"),
        (Attention, {"window": 8, "sink_positions": "slot"}, "sink_positions"),
        (Attention, {"window": 8, "block_size": 0}, "block_size"),
        (Attention, {"window": 8, "impl": "cuda", "fwd": 1}, "impl"),
        (Attention, {"rope_base": 0.0, "fwd": 1}, "rope_base"),
        (LinearAttention, {"n_heads": 0}, "n_heads"), (LinearAttention, {"n_heads": 5}, "n_heads"),
        (LinearAttention, {"n_heads": "a"}, "n_heads"),
        (LinearAttention, {"feature_dim": 0}, "feature_dim"),
        (LinearAttention, {"feature_map": "tanh"}, "feature_map"),
        (LinearAttention, {"eps": -1.0}, "eps"), (LinearAttention, {"eps": math.nan}, "eps"),
        (LinearAttention, {"feature_map": "taylor", "taylor_form": "half"}, "form"),
        (LinearAttention, {"impl": "fast", "fwd": 1}, "impl"),
        (BasedLinearAttention, {"feature_dim": 0}, "feature_dim"),
        (BasedLinearAttention, {"n_heads": 0}, "n_heads"),
        (ShortConv, {"kernel_size": 0}, "kernel_size"),
        (ShortConv, {"kernel_size": -1}, "kernel_size"),
        (ShortConv, {"kernel_size": 1.5}, "kernel_size"),
        (ShortConv, {"kernel_size": "4"}, "kernel_size"),
        (ShortConv, {"activation": "gelu2"}, "activation"),
        (BaseConv, {"kernel_size": 0}, "kernel_size"),
        (BaseConv, {"expand_proj": 0}, "expand_proj"),
        (BaseConv, {"expand_proj": 1.5}, "expand_proj")]
CTOR += [(cls, {"d_model": bad}, "d_model") for cls in (
    Attention, LinearAttention, BasedLinearAttention, ShortConv, BaseConv)
    for bad in (0, -1, "a", 32.0)]
LM_BAD = [{"vocab_size": 0}, {"vocab_size": 16.0}, {"d_model": 0}, {"d_hidden": -1},
          {"norm_eps": -1.0}, {"layer_pattern": []}, {"layer_pattern": "conv"}, {"mixers": {}}]


def _ctor(cls, kw):
    kw = dict(kw)
    fwd, d = kw.pop("fwd", 0), kw.pop("d_model", D)
    m = cls(d, **kw)
    return m(x_(1, 3, D)) if fwd else m


def constructor_probes():
    c = "constructors"
    out = [P(c, f"{cls.__name__}({_kw(kw)})", lambda cls=cls, kw=kw: _ctor(cls, kw), k)
           for cls, kw, k in CTOR]
    lm = partial(MemLM, vocab_size=16, d_model=D, mixers={"conv": partial(ShortConv)},
                 layer_pattern=["conv"])
    out += [P(c, f"MemLM({_kw(kw)})", lambda kw=kw: lm(**kw), next(iter(kw))) for kw in LM_BAD]
    ids = torch.zeros(1, 4, dtype=torch.long)
    rows = [
        ("MemLM layer_pattern unknown slot", lambda: lm(layer_pattern=["conv", "atn"]), "atn,conv"),
        ("MemLM mixer factory builds nn.Linear", lambda: lm(
            mixers={"conv": lambda d_model, layer_idx: torch.nn.Linear(d_model, d_model)}),
         "mixer"),
        ("MemLM ids float", lambda: _lm()(ids.float()), "ids"),
        ("MemLM ids 1-d", lambda: _lm()(ids[0]), "ids"),
        ("MemLM ids >= vocab", lambda: _lm()(ids + 99), "vocab"),
        ("MemLM ids negative", lambda: _lm()(ids - 1), "vocab|[0"),
        ("MemLM ids T=0", lambda: _lm()(ids[:, :0]), "T"),
        ("MemLM state of wrong length", lambda: _lm()(ids, (None,)), "state"),
        ("MemLM state is a list", lambda: _lm()(ids, list(_lm().init_state(1))), "state|tuple"),
    ]
    return out + [P(c, n, f, kw) for n, f, kw in rows]


def _lm(vocab=16, nan=False):
    torch.manual_seed(0)
    m = MemLM(vocab_size=vocab, d_model=D, d_hidden=0,
              mixers={"conv": partial(ShortConv, kernel_size=4),
                      "swa": partial(Attention, n_heads=2, window=8, n_sinks=2)},
              layer_pattern=["conv", "swa"]).eval()
    if nan:
        with torch.no_grad():
            m.head.weight = torch.nn.Parameter(torch.full_like(m.head.weight, float("nan")))
    return m


# -- kernels --------------------------------------------------------------------------------
IMPLS = ("naive", "torch", "triton")


def la_inputs(B=2, T=40, H=2, K=8, V=8):
    torch.manual_seed(2)
    q = torch.nn.functional.elu(torch.randn(B, T, H, K)) + 1
    k = torch.nn.functional.elu(torch.randn(B, T, H, K)) + 1
    v = torch.randn(B, T, H, V)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H)) / 4
    return {"q": q, "k": k, "v": v, "g": g}


def kernel_causal(op, which, impl, t=9, T=40, val=float("nan"), **kw):
    ins = la_inputs(T=T) if op == "la" else swa_inputs(T=T)
    ins.update(kw.pop("extra", {}))

    def call(d):
        if op == "la":
            return linear_attn(d["q"], d["k"], d["v"], g=d.get("g"), impl=impl, **kw)[0]
        return sliding_window_attn(d["q"], d["k"], d["v"], sink_k=d.get("sink_k"),
                                   sink_v=d.get("sink_v"), impl=impl, **kw)
    y0 = call(ins)
    bad = dict(ins)
    bad[which] = ins[which].clone()
    bad[which][0, t] = val
    return y0, call(bad), t


def _mixer_causal(factory, t=5, T=12):
    torch.manual_seed(0)
    m = factory(D)
    x = x_(2, T, D)
    with torch.no_grad():
        y0 = m(x).y
        x[0, t] = float("nan")
        return y0, m(x).y, t


def swa_inputs(B=2, T=40, H=4, Hkv=2, Dh=16):
    torch.manual_seed(3)
    return {"q": torch.randn(B, T, H, Dh), "k": torch.randn(B, T, Hkv, Dh),
            "v": torch.randn(B, T, Hkv, Dh)}


def kernel_probes():
    c = "kernels"
    out = []
    sinks = {"sink_k": torch.randn(2, 2, 2, 16), "sink_v": torch.randn(2, 2, 2, 16)}
    inf = {"val": math.inf}
    table = ([("la", w, {"normalize": True}, "normalize, NaN") for w in "qkvg"]
             + [("la", "k", {}, "NaN"), ("la", "k", {"normalize": True, **inf}, "normalize, +inf")]
             + [("la", w, {"normalize": True, "t": 100, "T": 150}, "NaN at t=100 of 150")
                for w in "qkv"]
             + [("swa", w, {"window": 8}, "NaN") for w in "qkv"]
             + [("swa", "k", {"window": 8, "extra": sinks}, "sinks, NaN"),
                ("swa", "k", {"window": 8, "t": 100, "T": 150}, "NaN at t=100 of 150"),
                ("swa", "k", {"window": 8, **inf}, "+inf")])
    mixers = {"Attention(window=8, n_sinks=2)": partial(Attention, n_heads=4, window=8, n_sinks=2),
              "LinearAttention(gated)": partial(LinearAttention, n_heads=2, gated=True),
              "BasedLinearAttention": partial(BasedLinearAttention, n_heads=4, feature_dim=4)}
    for impl in IMPLS:
        for op, w, kw, label in table:
            name = {"la": "linear_attn", "swa": "sliding_window_attn"}[op]
            out.append(P(c, f"{name}[{impl}] {label} in {w}: outputs before t unchanged",
                         lambda op=op, w=w, kw=kw, impl=impl: kernel_causal(op, w, impl, **kw),
                         check=causal_ok, timeout=90))
        for mname, fac in mixers.items():
            out.append(P(c, f"mixer {mname} impl={impl}: NaN at t causal",
                         lambda f=fac, impl=impl: _mixer_causal(partial(f, impl=impl)),
                         check=causal_ok, timeout=90))
        pos_g = {**la_inputs()}
        pos_g["g"] = pos_g["g"].abs() + 0.1
        out.append(P(c, f"linear_attn[{impl}] g>0", lambda impl=impl, d=pos_g: linear_attn(
            d["q"], d["k"], d["v"], g=d["g"], impl=impl), "g,<= 0|<=0"))
    d, s = la_inputs(), swa_inputs()
    q, k, v = s["q"], s["k"], s["v"]
    rows = [
        ("linear_attn eps=-1", lambda: linear_attn(d["q"], d["k"], d["v"], normalize=True,
                                                   eps=-1.0), "eps"),
        ("linear_attn impl='fast'", lambda: linear_attn(d["q"], d["k"], d["v"], impl="fast"),
         "impl"),
        ("linear_attn q 3-d", lambda: linear_attn(d["q"][0], d["k"], d["v"]), "q,4-d|rank"),
        ("linear_attn int q", lambda: linear_attn(d["q"].long(), d["k"].long(), d["v"].long()),
         "floating"),
        ("linear_attn k shape", lambda: linear_attn(d["q"], d["k"][:, :5], d["v"]), "k"),
        ("linear_attn state shape", lambda: linear_attn(
            d["q"], d["k"], d["v"], initial_state=torch.zeros(2, 2, 8, 9)), "initial_state"),
        ("linear_attn normalize without z", lambda: linear_attn(
            d["q"], d["k"], d["v"], normalize=True, initial_state=torch.zeros(2, 2, 8, 8)), "z"),
        ("linear_attn triton fp64", lambda: linear_attn(d["q"].double(), d["k"].double(),
                                                        d["v"].double(), impl="triton"),
         "triton"),
        ("sliding_window_attn window=0", lambda: sliding_window_attn(q, k, v, window=0),
         "window"),
        ("sliding_window_attn window=-1", lambda: sliding_window_attn(q, k, v, window=-1),
         "window"),
        ("sliding_window_attn window=1.5", lambda: sliding_window_attn(q, k, v, window=1.5),
         "window"),
        ("sliding_window_attn q_offset=-1", lambda: sliding_window_attn(q, k, v, window=4,
                                                                        q_offset=-1), "q_offset"),
        ("sliding_window_attn Tk > q_offset+Tq", lambda: sliding_window_attn(
            q[:, :5], k, v, window=4), "Tk"),
        ("sliding_window_attn Hkv=3 vs H=4", lambda: sliding_window_attn(
            q, torch.randn(2, 40, 3, 16), torch.randn(2, 40, 3, 16), window=4), "heads"),
        ("sliding_window_attn sink_k without sink_v", lambda: sliding_window_attn(
            q, k, v, window=4, sink_k=torch.randn(2, 2, 2, 16)), "sink_v"),
        ("sliding_window_attn mixed dtypes", lambda: sliding_window_attn(
            q, k.double(), v, window=4), "dtype"),
        ("sliding_window_attn T=0", lambda: sliding_window_attn(
            q[:, :0], k[:, :0], v[:, :0], window=4), "token|T"),
        ("sliding_window_attn triton fp64", lambda: sliding_window_attn(
            q.double(), k.double(), v.double(), window=4, impl="triton"), "triton"),
    ]
    out += [P(c, n, f, kw) for n, f, kw in rows]
    s0 = (torch.randn(2, 2, 8, 8), torch.rand(2, 2, 8))
    for impl in IMPLS:   # T=0 is a legitimate empty call: empty output, the state unchanged
        out.append(P(c, f"linear_attn[{impl}] T=0 returns empty o and the initial state",
                     lambda impl=impl: linear_attn(
                         d["q"][:, :0], d["k"][:, :0], d["v"][:, :0], normalize=True,
                         initial_state=s0, output_final_state=True, impl=impl),
                     check=lambda r, w: (r[0].shape == (2, 0, 2, 8) and torch.equal(
                         r[1].S, s0[0]) and torch.equal(r[1].z, s0[1]),
                         f"o {tuple(r[0].shape)}"), timeout=90))
    return out


# -- generation -----------------------------------------------------------------------------
GEN_BAD = [   # generate(model, ids, n, **kwargs) arguments -> keywords of the message
    ({"stop_tokens": [99]}, "stop_tokens"), ({"stop_tokens": [-1]}, "stop_tokens"),
    ({"stop_tokens": 5}, "stop_tokens"), ({"stop_tokens": ["a"]}, "stop_tokens"),
    ({"stop_tokens": [3], "pad_id": 99}, "pad_id"),
    ({"stop_tokens": list(range(16)), "min_new_tokens": 1}, "min_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"), ({"n": -1}, "max_new_tokens"),
    ({"n": 0}, "max_new_tokens"), ({"n": "a"}, "max_new_tokens"), ({"n": 2.5}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": math.inf}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": 1.0, "top_p": 0.0}, "top_p"), ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
    ({"temperature": 1.0, "top_p": math.nan}, "top_p"), ({"temperature": 1.0, "top_k": 0}, "top_k"),
    ({"temperature": 1.0, "top_k": -1}, "top_k"), ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
    ({"chunk_size": 0}, "chunk_size"), ({"nan": 1}, "non-finite|nan"),
    ({"nan": 1, "temperature": 1.0}, "non-finite|nan"),
    ({"ids": torch.tensor([[1.0, 2.0]])}, "ids"), ({"ids": torch.tensor([1, 2])}, "ids"),
    ({"ids": torch.zeros(1, 0, dtype=torch.long)}, "ids|T"),
    ({"ids": torch.tensor([[1, 99]])}, "vocab"), ({"ids": [[1, 2]]}, "ids")]


def gen(n=4, nan=0, ids=None, **kw):
    ids = torch.tensor([[1, 2, 3, 4]]) if ids is None else ids
    return generate(_lm(nan=bool(nan)), ids, n, **kw)


def generation_probes():
    c = "generation"
    out = [P(c, f"generate({_kw(kw)})", lambda kw=kw: gen(**kw), k) for kw, k in GEN_BAD]
    other = MemLM(vocab_size=16, d_model=D, mixers={"c": partial(ShortConv, kernel_size=2)},
                  layer_pattern=["c", "c"])
    out += [
        P(c, "sample_next logits 1-d", lambda: sample_next(torch.randn(16)), "logits"),
        P(c, "sample_next all -inf row", lambda: sample_next(torch.full((1, 4), -math.inf)),
          "non-finite|-inf"),
        P(c, "stream state from another model", lambda: list(stream(
            _lm(), torch.tensor([[1, 2]]), state=other.init_state(1), max_new_tokens=2)), "state")]
    shape_ok = lambda r, w: (r.tokens.shape == (1, 4), f"tokens {r.tokens.tolist()}")
    long = torch.arange(10)[None]
    oks = [
        ("top_k > vocab works", lambda: gen(temperature=1.0, top_k=1000), shape_ok),
        ("top_p=1.0 works", lambda: gen(temperature=1.0, top_p=1.0), shape_ok),
        ("greedy is deterministic", lambda: (gen(), gen()),
         lambda r, w: (torch.equal(r[0].tokens, r[1].tokens), "")),
        ("+inf logit is sampled", lambda: sample_next(torch.tensor([[0.0, math.inf, 1.0]]),
                                                      temperature=1.0),
         lambda r, w: (r.tolist() == [1], f"token {r.tolist()}")),
        ("min_new_tokens honoured", lambda: gen(stop_tokens=list(range(15)), min_new_tokens=3, n=3),
         lambda r, w: (r.tokens[0].tolist() == [15] * 3, f"{r.tokens.tolist()}")),
        ("stream unbounded stops when the consumer stops", lambda: [
            s for _, s in zip(range(50), stream(_lm(), long, max_new_tokens=None))],
         lambda r, w: (len(r) == 50, f"{len(r)} steps")),
        ("prompt longer than chunk_size", lambda: (gen(chunk_size=3, ids=long),
                                                   gen(chunk_size=None, ids=long)),
         lambda r, w: (torch.equal(r[0].tokens, r[1].tokens), "chunked == one call")),
    ]
    return out + [P(c, n, f, check=k) for n, f, k in oks]


# -- checkpoints ----------------------------------------------------------------------------
MARKER = TMP / "PWNED"
LM_CFG = {"_target_": "memarch.models.MemLM", "vocab_size": 16, "d_model": D,
          "mixers": {"conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True,
                              "kernel_size": 4}}, "layer_pattern": ["conv"]}


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def good_ckpt(cfg=LM_CFG, name="good.ckpt", **extra) -> Path:
    from memarch.checkpoint import CONFIG_KEY
    from memarch.config import instantiate
    p = TMP / name
    net = instantiate(LM_CFG)
    torch.save({CONFIG_KEY: cfg, "state_dict": {f"net.{k}": v for k, v in
                                                 net.state_dict().items()}, **extra}, p)
    return p


def write(name, data: bytes) -> Path:
    p = TMP / name
    p.write_bytes(data)
    return p


def no_marker(fn):
    def run():
        MARKER.unlink(missing_ok=True)
        try:
            return fn()
        finally:
            if MARKER.exists():
                raise CodeRan("SECURITY: loading created the marker file (code ran)")
    return run


def checkpoint_probes():
    from memarch.checkpoint import load
    c = "checkpoints"
    g = good_ckpt()
    raw = g.read_bytes()
    evil_cfg = lambda t, **kw: {**LM_CFG, "_target_": t, **kw}
    rows = [
        ("random bytes", lambda: load(write("rand.ckpt", os.urandom(4096))), "checkpoint"),
        ("0-byte file", lambda: load(write("empty.ckpt", b"")), "checkpoint,empty"),
        ("truncated file", lambda: load(write("trunc.ckpt", raw[:len(raw) // 2])),
         "checkpoint,truncated"),
        ("missing file", lambda: load(TMP / "nope.ckpt"), "not found"),
        ("directory", lambda: load(TMP), "checkpoint,directory|not a file"),
        ("text file", lambda: load(write("text.ckpt", b"hello world\n" * 20)), "checkpoint"),
        ("malicious pickle (torch.save)", no_marker(lambda: load(
            (torch.save({"x": Evil()}, TMP / "evil.ckpt"), TMP / "evil.ckpt")[1])),
         "refused|not allowed"),
        ("malicious pickle (plain pickle)", no_marker(lambda: load(write(
            "evil2.ckpt", pickle.dumps({"x": Evil()})))),
         "refused|not allowed|not a memarch checkpoint"),
        ("_target_ os.system", no_marker(lambda: load(good_ckpt(
            {"_target_": "os.system", "command": f"touch {MARKER}"}, "t1.ckpt"))), "os.system"),
        ("_target_ builtins.eval", no_marker(lambda: load(good_ckpt(
            {"_target_": "builtins.eval", "source": "1"}, "t2.ckpt"))), "builtins.eval"),
        ("_target_ via re-export memarch.config.importlib", no_marker(lambda: load(good_ckpt(
            {"_target_": "memarch.config.importlib.import_module", "name": "os"}, "t3.ckpt"))),
         "not allowed"),
        ("_target_ nested in mixers", no_marker(lambda: load(good_ckpt(
            {**LM_CFG, "mixers": {"conv": {"_target_": "subprocess.getoutput",
                                           "_partial_": True, "cmd": f"touch {MARKER}"}}},
            "t4.ckpt"))), "subprocess"),
        ("_target_ not a string", lambda: load(good_ckpt(evil_cfg(5), "t5.ckpt")), "_target_"),
        ("_target_ memarch.NoSuch", lambda: load(good_ckpt(evil_cfg("memarch.models.NoSuch"),
                                                           "t6.ckpt")), "NoSuch"),
        ("config missing", lambda: load(write("nocfg.ckpt", _saved({"state_dict": {}}))),
         "memarch_model_config"),
        ("config is a string", lambda: load(good_ckpt("MemLM", "t7.ckpt")), "config"),
        ("config with unknown kwarg", lambda: load(good_ckpt({**LM_CFG, "d_modle": 3},
                                                             "t8.ckpt")), "d_modle"),
        ("state_dict missing", lambda: load(write("nosd.ckpt", _saved(
            {"memarch_model_config": LM_CFG}))), "state_dict"),
        ("state_dict wrong shapes", lambda: load(good_ckpt({**LM_CFG, "d_model": 16},
                                                           "t9.ckpt")), "size|shape"),
        ("checkpoint is a tensor", lambda: load(write("tensor.ckpt", _saved(torch.zeros(3)))),
         "dict|checkpoint"),
    ]
    out = [P(c, n, f, kw) for n, f, kw in rows]
    out.append(P(c, "valid checkpoint loads (control)", lambda: load(g),
                 check=lambda r, w: (r.model.vocab_size == 16, "loaded")))
    return out


def _saved(obj) -> bytes:
    p = TMP / f"tmp_{time.time_ns()}.pt"
    torch.save(obj, p)
    return p.read_bytes()


# -- evaluation (in-process) -----------------------------------------------------------------
def eval_probes():
    import memarch.eval.model as em
    from memarch.eval.longbench.run import run_longbench
    from memarch.eval.run import evaluate

    class Scripted(em.EvalModel):
        def __init__(self):
            torch.manual_seed(0)
            super().__init__(_lm(vocab=257), "byte", chunk_size=64)

        def generate_text(self, prompt_ids, max_new_tokens, **kw):
            return "Paris"

    c = "eval"
    prompts = TMP / "dataset2prompt.json"
    prompts.write_text(json.dumps({"triviaqa": "{context}\n{input}", "trec": "{context}{input}",
                                   "qasper": "{context}\n{input}"}))

    def ex(i, **kw):
        return {"input": f"q{i}", "context": "ctx " * 5, "answers": ["Paris"], "length": 10,
                "dataset": "x", "language": "en", "all_classes": None, "_id": f"id{i}", **kw}

    def lb(task, rows, **kw):
        d = TMP / f"lb_{task}_{time.time_ns()}"
        d.mkdir()
        (d / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return run_longbench(Scripted(), d / "out", tasks=[f"longbench:{task}"],
                             prompts=str(prompts), data_dir=str(d), **kw)
    out_d = TMP / "eval_out"
    rows = [
        ("LongBench trec all_classes null", lambda: lb("trec", [ex(0)]), "all_classes"),
        ("LongBench trec all_classes []", lambda: lb("trec", [ex(0, all_classes=[])]),
         "all_classes"),
        ("longbench.limit=0", lambda: lb("triviaqa", [ex(0)], limit=0), "limit"),
        ("longbench.limit=-1", lambda: lb("triviaqa", [ex(0)], limit=-1), "limit"),
        ("longbench.max_length=1", lambda: lb("triviaqa", [ex(0)], max_length=1), "max_length"),
        ("longbench.max_length='a'", lambda: lb("triviaqa", [ex(0)], max_length="a"),
         "max_length"),
        ("chat_template without {prompt}", lambda: lb("triviaqa", [ex(0)],
                                                      chat_template="[INST]"), "chat_template"),
        ("answers is a string", lambda: lb("triviaqa", [ex(0, answers="Paris")]), "answers"),
        ("answers null", lambda: lb("triviaqa", [ex(0, answers=None)]), "answers"),
        ("empty data file", lambda: lb("triviaqa", []), "no examples|empty"),
        ("row missing 'context'", lambda: lb("triviaqa", [{k: v for k, v in ex(0).items()
                                                            if k != "context"}]), "context"),
        ("prompts file not JSON", lambda: (prompts.with_name("bad.json").write_text("{"),
                                           run_longbench(Scripted(), out_d, tasks=[
                                               "longbench:triviaqa"], prompts=str(
                                                   prompts.with_name("bad.json")),
                                               data_dir=str(TMP)))[1], "JSON"),
        ("tasks unknown", lambda: evaluate(Scripted(), ["pasky"], out_d, verbose=False),
         "unknown task"),
        ("tasks empty", lambda: evaluate(Scripted(), [], out_d, verbose=False), "task"),
        ("settings unknown suite", lambda: evaluate(Scripted(), ["passkey"], out_d, settings={
            "paskey": {}}, verbose=False), "paskey"),
        ("settings unknown key", lambda: evaluate(Scripted(), ["passkey"], out_d, settings={
            "passkey": {"lenghts": [64]}}, verbose=False), "lenghts"),
        ("longbench unknown key", lambda: evaluate(Scripted(), ["longbench"], out_d,
                                                   longbench={"max_len": 5}, verbose=False),
         "max_len"),
        ("EvalModel chunk_size=0", lambda: em.EvalModel(_lm(257), "byte", chunk_size=0),
         "chunk_size"),
        ("EvalModel dtype='floaty'", lambda: em.EvalModel(_lm(257), "byte", dtype="floaty"),
         "dtype"),
        ("EvalModel.generate max_new_tokens=0", lambda: em.EvalModel(_lm(257)).generate(
            [1, 2], 0), "max_new_tokens"),
        ("EvalModel tokenizer larger than vocab", lambda: em.EvalModel(_lm(16)).generate_text(
            [1, 2], 2), "vocab"),
    ]
    out = [P(c, n, f, kw) for n, f, kw in rows]
    out += [
        P(c, "LongBench empty answers (warning, scores 0)", lambda: lb("triviaqa", [
            ex(0), ex(1, answers=[])]), check=lambda r, w: (
                any("empty 'answers'" in m for m in w), f"warnings: {[m[:60] for m in w]}")),
        P(c, "LongBench tiny max_length=4 (warning)", lambda: lb("triviaqa", [ex(0)],
                                                                 max_length=4),
          check=lambda r, w: (any("max_length" in m for m in w), f"{[m[:60] for m in w]}")),
    ]
    return out


# -- CLI (subprocess) ----------------------------------------------------------------------
def cli_probes():
    c_t, c_e = "cli/train", "cli/eval"
    train = [str(ROOT / "train.py"), "debug=tiny", "hydra.run.dir=."]
    d = TMP / "data"
    d.mkdir(exist_ok=True)
    (d / "ok.txt").write_text("hello world, some text to pack. " * 200)
    (d / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 500)
    (d / "empty.txt").write_text("")
    jl = {"null": {"text": None}, "number": {"text": 5}, "missing": {"body": "x"}}
    for k, row in jl.items():
        (d / f"{k}.jsonl").write_text(json.dumps({"text": "good line " * 50}) + "\n"
                                      + json.dumps(row) + "\n")
    text = lambda p, *o: [*train, "data=text", f"data.dataset.paths=[{d / p}]", *o]
    ckpt_dir = TMP / "setup_run"
    last = ckpt_dir / "checkpoints" / "last.ckpt"

    def setup_ckpt():
        with SETUP_LOCK:
            if last.exists():
                return last
            subprocess.run([PY, str(ROOT / "train.py"), "trainer.max_steps=2",
                            "validate_at_end=false", "checkpoint.every_n_steps=1",
                            "data.val_size=32", "trainer.enable_progress_bar=false",
                            "logger={}", f"hydra.run.dir={ckpt_dir}"], cwd=TMP, env=ENV,
                           capture_output=True, timeout=300, check=False)
            if not last.exists():
                raise RuntimeError("the 2-step training run wrote no checkpoints/last.ckpt")
            return last
    rows = [
        (c_t, "model.d_model=abc", [*train, "model.d_model=abc"], "d_model"),
        (c_t, "model.d_model=0", [*train, "model.d_model=0"], "d_model"),
        (c_t, "optim.lr=abc", [*train, "optim.lr=abc"], "lr"),
        (c_t, "trainer.max_steps=-1", [*train, "trainer.max_steps=-1"], "max_steps"),
        (c_t, "data.batch_size=0", [*train, "data.batch_size=0"], "batch_size"),
        (c_t, "+model.foo=1", [*train, "+model.foo=1"], "foo"),
        (c_t, "model.layer_pattern=[conv,nope]", [*train, "model.layer_pattern=[conv,nope]"],
         "nope"),
        (c_t, "data.dataset.seq_len=0", text("ok.txt", "data.dataset.seq_len=0"), "seq_len"),
        (c_t, "data.dataset.val_fraction=1.5", text("ok.txt", "data.dataset.val_fraction=1.5"),
         "val_fraction"),
        (c_t, "non-UTF-8 text file", text("latin1.txt"), "latin1.txt,utf-8"),
        (c_t, "empty text file", text("empty.txt"), "empty.txt"),
        (c_t, "missing data file", text("missing.txt"), "missing.txt"),
        (c_t, "JSONL null field", text("null.jsonl"), "null.jsonl,text"),
        (c_t, "JSONL number field", text("number.jsonl"), "number.jsonl,text"),
        (c_t, "JSONL missing field", text("missing.jsonl"), "missing.jsonl,text"),
        (c_t, "ckpt_path missing", [*train, f"ckpt_path={TMP / 'nope.ckpt'}"],
         "ckpt_path|not found"),
        (c_t, "ckpt_path random bytes",
         [*train, f"ckpt_path={write('cli_rand.ckpt', os.urandom(2048))}"], "checkpoint"),
    ]
    out = [Probe(cat, n, a, tuple(kw.split(",")), cli=True, timeout=120)
           for cat, n, a, kw in rows]
    out.append(Probe(c_t, "control: debug=tiny runs (exit 0)", train, None, cli=True,
                     timeout=120))
    out.append(Probe(c_t, "resume with different model config", None, ("d_model",), cli=True,
                     timeout=420, setup=lambda: (setup_ckpt(), [
                         str(ROOT / "train.py"), "trainer.max_steps=3", "model.d_model=32",
                         f"ckpt_path={last}", "logger={}", "hydra.run.dir=."])[1]))
    ev = ["-m", "memarch.eval", "out_dir=."]
    out += [
        Probe(c_e, "eval unknown key +foo=1", None, ("foo",), cli=True, timeout=420,
              setup=lambda: [*ev, f"checkpoint={setup_ckpt()}", "+foo=1", "tasks=[mqar]"]),
        Probe(c_e, "eval tasks=[pasky]", None, ("pasky",), cli=True, timeout=420,
              setup=lambda: [*ev, f"checkpoint={setup_ckpt()}", "tasks=[pasky]"]),
        Probe(c_e, "eval settings.mqar bad key", None, ("lenghts",), cli=True, timeout=420,
              setup=lambda: [*ev, f"checkpoint={setup_ckpt()}", "tasks=[mqar]",
                             "+settings.mqar.lenghts=[64]"]),
        Probe(c_e, "eval checkpoint missing", [*ev, f"checkpoint={TMP / 'nope.ckpt'}",
                                               "tasks=[mqar]"], ("not found",), cli=True,
              timeout=120),
        Probe(c_e, "eval checkpoint random bytes", [*ev, f"checkpoint={TMP / 'cli_rand.ckpt'}",
                                                    "tasks=[mqar]"], ("checkpoint",), cli=True,
              timeout=120),
    ]
    return out


# -- main -----------------------------------------------------------------------------------
GROUPS = {"layers": layer_probes, "constructors": constructor_probes, "kernels": kernel_probes,
          "generation": generation_probes, "checkpoints": checkpoint_probes, "eval": eval_probes,
          "cli": cli_probes}
OUTCOMES = ("clear", "unclear", "silent", "hang")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(GROUPS), help="one category")
    ap.add_argument("--skip-cli", action="store_true", help="skip the subprocess probes")
    ap.add_argument("--jobs", type=int, default=1, help="CLI probes run in parallel")
    ap.add_argument("--out", default=str(RESULTS / "probes.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    names = [a.only] if a.only else [g for g in GROUPS if not (a.skip_cli and g == "cli")]
    rows, t0 = [], time.time()
    for g in names:
        probes = GROUPS[g]()
        inproc = [p for p in probes if not p.cli]
        for p in inproc:
            t = time.time()
            outcome, note = run_inproc(p)
            rows.append(_row(p, outcome, note, time.time() - t))
        cli = [p for p in probes if p.cli]
        if cli:
            ordered = sorted(cli, key=lambda p: p.setup is not None)   # setup ones last
            with cf.ThreadPoolExecutor(max(1, a.jobs)) as ex:
                futs = {ex.submit(_timed, run_cli, p): p for p in ordered}
                for f in cf.as_completed(futs):
                    (outcome, note), dt = f.result()
                    rows.append(_row(futs[f], outcome, note, dt))
                    print(f"  [{rows[-1]['outcome']}] {futs[f].name} ({dt:.0f} s)", flush=True)
        print(f"{g}: {len([r for r in rows if r['group'] == g])} probes "
              f"({time.time() - t0:.0f} s)", flush=True)
    report(rows, a.out, time.time() - t0, a)
    shutil.rmtree(TMP, ignore_errors=True)


def _timed(fn, p):
    t = time.time()
    return fn(p), time.time() - t


def _row(p: Probe, outcome, note, dt):
    return {"group": p.cat.split("/")[0], "category": p.cat, "name": p.name,
            "expect": "error" if p.kw is not None else "ok",
            "keywords": list(p.kw or ()), "cli": p.cli, "outcome": outcome, "note": note,
            "seconds": round(dt, 2)}


def report(rows, out, seconds, a):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=ROOT, capture_output=True, text=True,
                                check=False).stdout.strip())
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": sys.version.split()[0],
            "commit": commit + ("+dirty" if dirty else ""), "argv": sys.argv[1:],
            "seconds": round(seconds, 1), "n_probes": len(rows)}
    global OUTCOMES
    OUTCOMES += tuple(o for o in dict.fromkeys(r["outcome"] for r in rows) if o not in OUTCOMES)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    counts = {g: {o: sum(r["group"] == g and r["outcome"] == o for r in rows)
                  for o in OUTCOMES} for g in groups}
    totals = {o: sum(c[o] for c in counts.values()) for o in OUTCOMES}
    head = f"| category | {' | '.join(OUTCOMES)} | total |\n|---|" + "---:|" * (len(OUTCOMES) + 1)
    lines = [f"| {g} | " + " | ".join(str(counts[g][o]) for o in OUTCOMES)
             + f" | {sum(counts[g].values())} |" for g in groups]
    lines.append("| **all** | " + " | ".join(f"**{totals[o]}**" for o in OUTCOMES)
                 + f" | **{len(rows)}** |")
    table = head + "\n" + "\n".join(lines)
    print("\n" + table)
    bad = [r for r in rows if r["outcome"] != "clear"]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"meta": meta, "counts": counts, "totals": totals,
                                     "probes": rows}, indent=1) + "\n")
    cmd = " ".join(["python benchmarks/probes.py", *sys.argv[1:]])
    md = [f"# Bad-input probes ({meta['date']})", "",
          (f"`{cmd}`: commit {meta['commit']}, "
          f"torch {meta['torch']}, {len(rows)} probes in {seconds:.0f} s."), "",
          ("clear: the declared error with a message naming the keywords (or the right result); "
          "unclear: raw/internal exception, message without the keywords, CLI traceback, or "
          "an error where a result was due; silent: no error where one was due, or a wrong "
          "result; hang: past the timeout."), "", table, "", "## Not clear", ""]
    md += [f"- **{r['outcome']}** `{r['category']}` {r['name']}: {r['note'][:240]}"
           for r in bad] or ["(none)"]
    Path(out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"\n{len(bad)} not clear; wrote {out} and {Path(out).with_suffix('.md')}")
    for r in bad:
        print(f"  {r['outcome']:8s} {r['category']}: {r['name']}: {r['note'][:160]}")


if __name__ == "__main__":
    main()
