"""Adversarial bad-input audit: run a table of bad inputs against the current tree.

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

The hardening cases (round two) are in the table too (``*29_probes``, ``models``,
``hub``, ``convert``, ``overrides`` and the ``cli/*`` rows of ``cli29_probes``), set up as
tests/hardening/test_hardening_*.py set them up. ``all_probes()`` builds the whole table
(cheaply: the fixtures are made in TMP when a probe first needs them) and ``run_probe`` runs one:
tests/hardening/test_probes.py runs the table as tests.
"""

from __future__ import annotations

import argparse
import atexit
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

from memarch.generation import generate, sample_next, stream  # noqa: E402
from memarch.kernels import linear_attn, sliding_window_attn  # noqa: E402
from memarch.mixers import Attention, BaseConv, BasedLinearAttention, LinearAttention, ShortConv  # noqa: E402
from memarch.models import MemLM  # noqa: E402

RAW = (AttributeError, IndexError, KeyError, ZeroDivisionError, RuntimeError, AssertionError,
       NameError, UnboundLocalError, NotImplementedError, StopIteration, RecursionError)
REPO_DIRS = tuple(str(ROOT / d) for d in ("memarch", "eval", "kernels", "train.py"))
TMP = Path(tempfile.mkdtemp(prefix="memarch_probes_"))
# also when imported (tests/hardening/test_probes.py)
atexit.register(shutil.rmtree, TMP, True)
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


def run_probe(p: Probe) -> tuple[str, str]:
    """(outcome, note) of one probe: in-process, or a subprocess for a CLI probe."""
    return run_cli(p) if p.cli else run_inproc(p)


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
    return out + layer29_probes()


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
    return out + [P(c, n, f, kw) for n, f, kw in rows] + ctor29_probes()


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
    return out + kernel29_probes()


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
    ({"ids": torch.tensor([[1, 99]])}, "vocab"), ({"ids": [[1, 2], [3]]}, "ids,equal"),
    ({"ids": [["a", "b"]]}, "ids"), ({"ids": [[1.0, 2.0]]}, "ids")]


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
        ("ids as a list of lists (as the tensor)", lambda: (gen(ids=[[1, 2, 3, 4]]), gen()),
         lambda r, w: (torch.equal(r[0].tokens, r[1].tokens), f"{r[0].tokens.tolist()}")),
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
    return out + checkpoint29_probes()


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
    return out + cli29_probes()


# -- hardening, round two -------------------------------------------------------------------
# The second round of hardening (silent and unclear cases), set up as the hardening
# tests set them up (tests/hardening/test_hardening_{args,files,train}.py); the CLI cases are in
# ``cli_probes``. Fixtures (a saved Hugging Face folder, ...) are made on first use, in TMP.
INF, NAN = math.inf, math.nan
_CACHE: dict = {}


def _tests_path():
    """tests/helpers/ on sys.path (last), for the helpers the hardening tests use (hf_helpers,
    train_helpers)."""
    t = str(ROOT / "tests" / "helpers")
    if t not in sys.path:
        sys.path.append(t)


def _once(key, make):
    with SETUP_LOCK:
        if key not in _CACHE:
            _CACHE[key] = make()
        return _CACHE[key]


def _tokenizer_json(d: Path) -> None:
    """tests/hardening/test_hardening_files.py's tokenizer: a tiny BPE trained on one phrase."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the face of the deep " * 20],
                            trainers.BpeTrainer(vocab_size=40, special_tokens=["</s>", "<unk>"]))
    tok.save(str(d / "tokenizer.json"))


def hf_dir(name="llama", **kw) -> Path:
    """A saved tiny random Llama (tests/helpers/hf_helpers.hf_model) with a tokenizer.json (the
    hardening tests' ``hf_dir``); made once. Do not write into it: copy it (``hf_copy``)."""
    def make():
        _tests_path()
        from hf_helpers import hf_model
        d = TMP / f"hf_{name}"
        hf_model("llama", **kw).save_pretrained(d)
        _tokenizer_json(d)
        return d
    return _once(("hf", name), make)


def hf_copy(tag) -> Path:
    d = TMP / f"hfcopy_{''.join(ch if ch.isalnum() else '_' for ch in tag)}_{time.time_ns()}"
    shutil.copytree(hf_dir(), d)
    return d


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _small_lm(**kw):
    return MemLM(**{"vocab_size": 11, "d_model": 16, "mixers": {"c": ShortConv},
                    "layer_pattern": ["c"], **kw})


def _hmt(**kw):
    from memarch.models import HMT
    torch.manual_seed(0)
    return HMT(_small_lm(), **{"segment_len": 8, "sensory_len": 2, "n_memories": 2, **kw})


def _mixers29():
    from memarch import mixers as mx
    return {   # tests/hardening/test_hardening_args.py's MIXERS, plus Attention and ShortConv
        "mom": lambda: mx.MoM(D, n_heads=2),
        "mom_linear": lambda: mx.MoM(D, n_heads=2, cell="linear"),
        "nm": lambda: mx.NeuralMemory(D, n_heads=2, chunk_size=4),
        "mac": lambda: mx.MemoryAsContext(D, n_heads=2, segment_len=4, memory={"n_heads": 2}),
        "mag": lambda: mx.MemoryAsGate(D, n_heads=2, window=4,
                                       memory={"n_heads": 2, "chunk_size": 4}),
        "linear": lambda: mx.LinearAttention(D, n_heads=2),
        "based": lambda: mx.BasedLinearAttention(D, n_heads=2, feature_dim=4),
        "baseconv": lambda: mx.BaseConv(D),
        "attn_win": lambda: Attention(D, n_heads=4, window=8, n_sinks=2),
        "attn_full": lambda: Attention(D, n_heads=4),
        "shortconv": lambda: ShortConv(D, kernel_size=4),
    }


def _bump(state, path):
    """state with the int64 field at ``path`` (e.g. ('memory', 'pos')) + 1."""
    if len(path) == 1:
        return state._replace(**{path[0]: getattr(state, path[0]) + 1})
    return state._replace(**{path[0]: _bump(getattr(state, path[0]), path[1:])})


def _seeded(build):
    torch.manual_seed(0)
    return build()


def _meta_state(build):
    from memarch import state as st
    m = _seeded(build)
    s = m(x_(1, 5, D)).state
    return m(x_(1, 3, D), st.to(s, "meta"))


def _big_keys_mom():
    """MoM with keys of norm ~50 before its normalisation (||k|| = 10
    grew the delta rule's state to NaN / 1e31 within 512 tokens): 512 tokens stay finite."""
    from memarch import mixers as mx
    m = _seeded(lambda: mx.MoM(D, n_heads=2))
    with torch.no_grad():
        m.qkv_proj.weight.mul_(50.0)
        return m(x_(1, 512, D)).y


def _dr_inputs(T=16, knorm=1.0):
    torch.manual_seed(2)
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, 2, 8), dim=-1) for _ in range(2))
    return q, k * knorm, torch.randn(1, T, 2, 4), torch.rand(1, T, 2)


def _dr(impl="torch", beta_at=None, **kw):
    from memarch.kernels import delta_rule
    q, k, v, beta = _dr_inputs()
    if beta_at is not None:
        beta[0, 3, 1] = beta_at
    return delta_rule(q, k, v, beta, impl=impl, **kw)


def ctor29_probes():
    from memarch import mixers as mx
    c = "constructors"
    ctor = [
        (mx.NeuralMemory, {"momentum": "false"}, "momentum"),
        (mx.MoM, {"shared_memory": "no"}, "shared_memory"),
        (mx.MoM, {"norm_eps": -1}, "norm_eps"),
        (mx.MoM, {"aux_loss_coef": INF}, "aux_loss_coef"),
        (mx.MoM, {"expand_v": True}, "expand_v"),
        (mx.NeuralMemory, {"max_grad_norm": True}, "max_grad_norm"),
        (mx.MoM, {"impl": "bogus"}, "impl,bogus"),
        (mx.MoM, {"cell": "linear", "impl": "bogus"}, "impl,bogus"),
        (Attention, {"n_heads": 4, "window": None, "impl": "bogus"}, "impl,bogus"),
        (mx.NeuralMemory, {"max_lr": INF}, "max_lr"),
        (mx.NeuralMemory, {"d_model": True}, "d_model"),
        (mx.MoM, {"n_heads": 2, "n_memories": 10 ** 8}, "n_memories"),
        (mx.MoM, {"n_heads": 2, "expand_v": 10 ** 9}, "expand_v"),
        (mx.NeuralMemory, {"n_heads": 2, "chunk_size": 10 ** 9}, "chunk_size"),
        (mx.NeuralMemory, {"n_heads": 2, "expansion": 10 ** 10}, "expansion"),
        (mx.MemoryAsContext, {"n_heads": 2, "segment_len": 10 ** 9}, "segment_len"),
        (mx.LinearAttention, {"n_heads": 2, "feature_map": "taylor", "feature_dim": 10 ** 6},
         "feature_dim"),
        (ShortConv, {"kernel_size": 10 ** 10}, "kernel_size"),
    ]
    out = [P(c, f"{cls.__name__}({_kw(kw)})", lambda cls=cls, kw=kw: _ctor(cls, kw), k)
           for cls, kw, k in ctor]
    out.append(P(c, "HMT(n_memories=1000000000)", lambda: _hmt(n_memories=10 ** 9),
                 "n_memories"))
    return out


def kernel29_probes():
    c = "kernels"
    out = [P(c, "delta_rule scale=nan", lambda: _dr(scale=NAN), "scale"),
            P(c, "delta_rule scale='a'", lambda: _dr(scale="a"), "scale"),
            P(c, "delta_rule g>0", lambda: _dr(g=torch.full((1, 16, 2), 0.5)), "g,<= 0|<=0")]
    for impl in IMPLS:
        for b in (5.0, -1.0):
            out.append(P(c, f"delta_rule[{impl}] beta={b:g}",
                         lambda impl=impl, b=b: _dr(impl, beta_at=b), "beta", timeout=90))
    out.append(P(c, "MoM keys of norm ~50 (normalised): 512 tokens stay finite", _big_keys_mom,
                 check=lambda r, w: (bool(torch.isfinite(r).all()), _short(r)), timeout=90))
    return out


def layer29_probes():
    """States that shapes cannot see; meta-device and fp16 input."""
    from memarch import mixers as mx
    out = []
    x = x_(2, 5, D)
    for a, b in (("linear", "gated_delta"), ("gated_delta", "linear")):
        out.append(P("layers/mom", f"mom cell={a} given a cell={b} state",
                     lambda a=a, b=b: _seeded(lambda: mx.MoM(D, layer_idx=0, n_heads=2, cell=a))(
                         x, _seeded(lambda: mx.MoM(D, layer_idx=0, n_heads=2, cell=b))(x).state),
                     "state"))
    titans = {
        "nm": (lambda: mx.NeuralMemory(D, layer_idx=0, n_heads=2, chunk_size=4), [("pos",)]),
        "mac": (lambda: mx.MemoryAsContext(D, layer_idx=0, n_heads=2, segment_len=4,
                                           memory={"n_heads": 2}),
                [("pos",), ("memory", "pos")]),
        "mag": (lambda: mx.MemoryAsGate(D, layer_idx=0, n_heads=2, window=4,
                                        memory={"n_heads": 2, "chunk_size": 4}),
                [("pos",), ("memory", "pos"), ("attn", "pos")]),
    }
    for n, (build, paths) in titans.items():
        for path in paths:
            def edited(build=build, path=path):
                m = _seeded(build)
                xx = x_(2, 6, D)
                return m(xx[:, :1], _bump(m(xx).state, path))
            out.append(P(f"layers/{n}", f"{n}:state {'.'.join(path)} + 1", edited, "pos"))
    for n, build in _mixers29().items():
        c = f"layers/{n}"
        out += [
            P(c, f"{n}:meta input", lambda b=build: _seeded(b)(torch.randn(1, 3, D,
                                                                          device="meta")),
              "meta"),
            P(c, f"{n}:meta input to a meta module", lambda b=build: _seeded(b).to("meta")(
                torch.randn(1, 3, D, device="meta")), "meta"),
            P(c, f"{n}:meta state", lambda b=build: _meta_state(b), "meta"),
        ]
        if n == "shortconv":      # documented: ShortConv's weights follow x's dtype
            out.append(P(c, f"{n}:fp16 input to an fp32 module (weights follow x)",
                         lambda b=build: _fp16_and_fp32(b), check=_fp16_close))
        else:
            out.append(P(c, f"{n}:fp16 input to an fp32 module", lambda b=build: _seeded(b)(
                x_(1, 3, D).half()), "float16,dtype"))
    return out


def _fp16_and_fp32(build):
    m = _seeded(build)
    with torch.no_grad():
        return m(x_(1, 3, D).half()).y, m(x_(1, 3, D)).y


def _fp16_close(r, _w):
    y16, y32 = r
    err = float((y16.float() - y32).abs().max())
    return y16.dtype == torch.float16 and err < 1e-2, f"{y16.dtype}, max |fp16 - fp32| {err:.2g}"


def _same_as_long(model, ids):
    with torch.no_grad():
        return model(ids.to(torch.int8)).logits, model(ids).logits


def _equal_pair(r, _w):
    return torch.equal(r[0], r[1]), "equal" if torch.equal(r[0], r[1]) else "differ"


def _hmt_recent_edited():
    m = _hmt()
    s = m(torch.randint(0, 11, (2, 10))).state
    return m(torch.randint(0, 11, (2, 1)), s._replace(recent=s.recent.fill_(11)))


def model_probes():
    c = "models"
    ids = torch.zeros(1, 4, dtype=torch.long)
    return [
        P(c, "MemLM ids on the meta device", lambda: _lm()(ids.to("meta")), "meta"),
        P(c, "MemLM int8 ids: the logits of int64 ids", lambda: _same_as_long(_lm(), ids),
          check=_equal_pair),
        P(c, "HMT int8 ids: the logits of int64 ids", lambda: _same_as_long(_hmt(), ids),
          check=_equal_pair),
        P(c, "MemLM bool ids", lambda: _lm()(ids.bool()), "ids,integer"),
        P(c, "HMT state.recent edited out of the vocabulary", _hmt_recent_edited,
          "recent,vocab"),
    ]


# -- hardening: Hugging Face folders (from_hf, save_pretrained) -------------------------------
def _tied_with_own_head():
    """tie_word_embeddings: true, but the file has its own lm_head.weight: from_hf's logits
    against transformers' (which keeps the separate head)."""
    _tests_path()
    from hf_helpers import hf_model, import_transformers

    from memarch.models import from_hf
    tf = import_transformers()
    d = TMP / f"hf_tied_{time.time_ns()}"
    hf_model("llama", tie_word_embeddings=False).save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    ref = tf.LlamaForCausalLM.from_pretrained(d).eval()
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        return ref(ids).logits, from_hf(d)(ids).logits


def _logits_close(r, _w):
    want, got = r
    err = float((got - want).abs().max())
    return err <= 1e-5 * float(want.abs().max()), f"max |logits - transformers| = {err:.3g}"


def _shard_outside(shard):
    from safetensors import safe_open

    from memarch.models import from_hf
    d = hf_copy("shard")
    outside = d.parent / f"{d.name}_outside.safetensors"
    shutil.copy(d / "model.safetensors", outside)
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    (d / "model.safetensors").unlink()
    name = str(outside) if shard == "ABSOLUTE" else shard.replace("X", outside.name)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: name for k in keys}}))
    return from_hf(d)


def _corrupt_pretrained(tensor):
    from memarch.hub import from_pretrained, save_pretrained
    torch.manual_seed(0)
    model = MemLM(vocab_size=37, d_model=16, mixers={"attn": partial(Attention, n_heads=2)},
                  layer_pattern=["attn", "attn"])
    d = TMP / f"pretrained_{time.time_ns()}"
    save_pretrained(model, d)
    _tests_path()
    from file_helpers import flip_safetensors  # tests/helpers
    flip_safetensors(d / "model.safetensors", tensor)
    return from_pretrained(d)


def _save_into_source(sub):
    from memarch.hub import save_pretrained
    from memarch.models import from_hf
    d = hf_copy("save_into")
    before = _snapshot(d)
    try:
        return save_pretrained(from_hf(d), d / sub if sub else d)
    finally:
        if _snapshot(d) != before:
            raise CodeRan(f"save_pretrained wrote over its source folder {d}")


def hub_probes():
    from memarch.models import from_hf
    c = "hub"
    return [
        P(c, "from_hf tie_word_embeddings=true with its own lm_head: logits as transformers",
          _tied_with_own_head, check=_logits_close, timeout=120),
        P(c, "from_hf impl='bogus'", lambda: from_hf(hf_dir(), impl="bogus"), "impl,bogus",
          timeout=120),
        P(c, "from_hf impl=3", lambda: from_hf(hf_dir(), impl=3), "impl", timeout=120),
        P(c, "shard index entry ../outside.safetensors", lambda: _shard_outside("../X"),
          "outside", timeout=120),
        P(c, "shard index entry an absolute path", lambda: _shard_outside("ABSOLUTE"),
          "outside", timeout=120),
        P(c, "save_pretrained folder with flipped bytes in embed.weight",
          lambda: _corrupt_pretrained("embed.weight"), "embed.weight,sha256"),
        P(c, "save_pretrained folder with flipped bytes in blocks.1.mlp.w2.weight",
          lambda: _corrupt_pretrained("blocks.1.mlp.w2.weight"), "w2.weight,sha256"),
        P(c, "save_pretrained into the folder from_hf read", lambda: _save_into_source(""),
          "read from", timeout=120),
        P(c, "save_pretrained into a subfolder of the folder from_hf read",
          lambda: _save_into_source("sub"), "read from", timeout=120),
    ]


# -- hardening: the converter, in-process (the CLI cases are in cli_probes) -------------------
class _Stderr:
    def __enter__(self):
        import io
        self.old, sys.stderr = sys.stderr, io.StringIO()
        return self

    def __exit__(self, *exc):
        self.text, sys.stderr = sys.stderr.getvalue(), self.old


def _convert(args):
    """memarch.convert.main(args) as the CLI runs it: a non-zero exit is SystemExit(stderr)."""
    from memarch.convert import main as convert_main
    with _Stderr() as err:
        rc = convert_main([str(a) for a in args])
    if rc:
        raise SystemExit(err.text.strip() or rc)
    return rc


def _disk_full_convert():
    """torch.save fails as a full disk makes it fail ("[enforce fail at
    inline_container.cc:672] unexpected pos"); the old output must be kept and named."""
    out = TMP / f"convert_full_{time.time_ns()}.ckpt"
    out.write_bytes(b"old")
    real = torch.save

    def full(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")
    torch.save = full
    try:
        return _convert(["hf", hf_dir(), out])
    finally:
        torch.save = real
        if out.read_bytes() != b"old" or out.with_name(out.name + ".tmp").exists():
            raise CodeRan("a failed convert lost the old output or left a .tmp")


def convert_probes():
    c = "convert"
    return [P(c, "convert: disk full while writing (torch 'unexpected pos')", _disk_full_convert,
              "cannot write,disk full", timeout=120)]


# -- hardening: training checkpoints (digests, disk full) -------------------------------------
def _digest_ckpt() -> Path:
    """A training-like checkpoint (config, weights, an Adam state) written by the training
    run's writer (AtomicCheckpointIO: it records the digest)."""
    def make():
        from memarch.checkpoint import CONFIG_KEY
        from memarch.config import instantiate
        from memarch.lit.io import AtomicCheckpointIO
        torch.manual_seed(0)
        net = instantiate(LM_CFG)
        opt = torch.optim.AdamW(net.parameters())
        net(torch.zeros(1, 4, dtype=torch.long)).logits.sum().backward()
        opt.step()
        p = TMP / "digest.ckpt"
        AtomicCheckpointIO().save_checkpoint(
            {CONFIG_KEY: LM_CFG, "state_dict": {f"net.{k}": v for k, v in
                                                net.state_dict().items()},
             "optimizer_states": [opt.state_dict()], "global_step": 1}, p)
        return p
    return _once("digest_ckpt", make)


def _flipped(where):
    """A copy of the digest checkpoint with one byte of a tensor flipped."""
    from memarch.checkpoint import load
    good = _digest_ckpt()
    ck = torch.load(good, weights_only=True)
    t = (ck["state_dict"]["net.embed.weight"] if where == "embed" else
         ck["optimizer_states"][0]["state"][0]["exp_avg"])
    data = bytearray(good.read_bytes())
    raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    if at < 0:
        raise RuntimeError("setup: the tensor's bytes are not in the file")
    data[at + len(raw) // 2] ^= 0x10
    p = TMP / f"flipped_{where}.ckpt"
    p.write_bytes(bytes(data))
    return load(p)


def _disk_full_save(exc):
    """AtomicCheckpointIO (the training run's writer) when torch.save fails as on a full
    disk: the previous file kept, and the error must say what happened."""
    from memarch.lit.io import AtomicCheckpointIO
    path = TMP / f"full_{time.time_ns()}" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    old = path.read_bytes()
    real = torch.save

    def full(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial" * 100)
        raise exc
    torch.save = full
    try:
        return io.save_checkpoint({"step": torch.tensor(2)}, path)
    finally:
        torch.save = real
        if path.read_bytes() != old or len(list(path.parent.iterdir())) != 1:
            raise CodeRan("a failed save lost the previous checkpoint or left a .tmp")


def checkpoint29_probes():
    import errno
    c = "checkpoints"
    return [
        P(c, "flipped bytes in embed.weight", lambda: _flipped("embed"), "embed.weight"),
        P(c, "flipped bytes in the optimizer state", lambda: _flipped("opt"),
          "optimizer_states,exp_avg"),
        P(c, "disk full while saving (torch 'unexpected pos')", lambda: _disk_full_save(
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")),
          "cannot save,full disk|disk full|no space"),
        P(c, "disk full while saving (ENOSPC)", lambda: _disk_full_save(
            OSError(errno.ENOSPC, "No space left on device")), "cannot save,no space"),
    ]


# -- hardening: overrides (train.py's config check, eval's model_overrides) -------------------
MAG = ["experiment=titans_mag_tiny", "model.d_model=32", "data.batch_size=2",
       "data.val_size=4", "logger={}", "trainer.enable_progress_bar=false",
       "trainer.max_steps=1", "validate_at_end=false"]


def _check_overrides(*overrides):
    _tests_path()
    from train_helpers import compose_cfg

    from memarch.lit.train import check_config
    return check_config(compose_cfg([*MAG, *overrides], TMP / "overrides_run"))


def _apply(key, value):
    from memarch.overrides import apply_overrides
    cfg = {"_target_": "memarch.models.MemLM", "vocab_size": 17, "d_model": 16,
           "mixers": {"attn": {"_target_": "memarch.mixers.Attention", "_partial_": True,
                               "n_heads": 2}},
           "layer_pattern": ["attn"]}
    return apply_overrides(cfg, {key: value})


def override_probes():
    c = "overrides"
    mem = "model.mixers.titans.memory"
    rows = [
        (f"+{mem}.residual_norm=no", "residual_norm,bool"),
        (f"+{mem}.momentum=maybe", "momentum,bool"),
        (f"+{mem}.forgetting=1", "forgetting,bool"),
        (f"{mem}.chunk_size=true", "chunk_size,int"),
        ("model.mixers.titans.window=true", "window,int"),
        (f"+{mem}.bogus=1", "bogus,unknown"),
    ]
    out = [P(c, f"train config {o}", lambda o=o: _check_overrides(o), kw, timeout=60)
           for o, kw in rows]
    out += [P(c, f"model_overrides {k}={v!r}", lambda k=k, v=v: _apply(k, v), kw) for k, v, kw in (
        ("mixers.attn.window", True, "window,int"), ("mixers.attn.window", "8", "window,int"),
        ("mixers.attn.block_size", 2.5, "block_size,int"))]
    return out


def cli29_probes():
    """The CLI hardening cases: train.py, python -m memarch.convert, python -m memarch.eval."""
    from memarch.checkpoint import TOKENIZER_KEY
    c_t, c_c, c_e = "cli/train", "cli/convert", "cli/eval"
    train = [str(ROOT / "train.py"), "debug=tiny", "hydra.run.dir=."]
    d = TMP / "data"
    d.mkdir(exist_ok=True)
    (d / "adir").mkdir(exist_ok=True)
    (d / "adir" / "a.txt").write_text("some text " * 200)
    mem = "+model.mixers.titans.memory"
    rows = [
        (c_t, "titans_mag +memory.residual_norm=no", [*train, "experiment=titans_mag_tiny",
                                                      f"{mem}.residual_norm=no"],
         "residual_norm,bool"),
        (c_t, "titans_mag +memory.momentum=maybe", [*train, "experiment=titans_mag_tiny",
                                                    f"{mem}.momentum=maybe"], "momentum,bool"),
        (c_t, "titans_mal chunk_size=100000 over seq_len=128", [
            *train, "experiment=titans_mal_tiny", "model.mixers.mem.chunk_size=100000"],
         "chunk_size=100000,seq_len=128"),
        (c_t, "hmt segment_len=256 over seq_len=128", [
            *train, "experiment=hmt_attention_tiny", "model.segment_len=256"],
         "segment_len=256,seq_len=128"),
        (c_t, "mom_gdn mixers.mom.norm_eps=-1", [*train, "experiment=mom_gdn_tiny",
                                                  "model.mixers.mom.norm_eps=-1"], "norm_eps"),
        (c_t, "mom_gdn mixers.mom.impl=bogus", [*train, "experiment=mom_gdn_tiny",
                                                 "model.mixers.mom.impl=bogus"], "impl,bogus"),
        (c_t, "optim.lr=-1", [*train, "optim.lr=-1"], "lr,-1"),
        (c_t, "data.dataset.seq_len=0 (default data)", [*train, "data.dataset.seq_len=0"],
         "seq_len"),
        (c_t, "data.vocab_size=10 smaller than the data's", [*train, "data.vocab_size=10"],
         "vocab_size"),
        (c_t, "data path is a directory", [*train, "data=text",
                                           f"data.dataset.paths=[{d / 'adir'}]"],
         "adir,directory"),
        (c_t, "optim.lr=1e3: the stop names no checkpoint as intact", [
            str(ROOT / "train.py"), "hydra.run.dir=.", "model.d_model=32", "data.batch_size=4",
            "data.val_size=8", "logger={}", "trainer.enable_progress_bar=false",
            "trainer.val_check_interval=1000", "optim.lr=1e3", "checkpoint.every_n_steps=2",
            "trainer.max_steps=80", "validate_at_end=false"], "saved before,step"),
    ]
    out = [Probe(cat, n, a, tuple(kw.split(",")), cli=True, timeout=300)
           for cat, n, a, kw in rows]
    conv = ["-m", "memarch.convert", "hf"]

    def conv_setup(out_of, *extra):
        def setup():
            src = hf_copy("cli")
            return [*conv, str(src), str(out_of(src)), *[str(e(src)) for e in extra]]
        return setup
    out += [
        Probe(c_c, "convert hf DIR DIR/model.safetensors", None, ("source",), cli=True,
              timeout=300, setup=conv_setup(lambda s: s / "model.safetensors")),
        Probe(c_c, "convert hf DIR DIR/config.json", None, ("source",), cli=True, timeout=300,
              setup=conv_setup(lambda s: s / "config.json")),
        Probe(c_c, "convert hf DIR DIR", None, ("source",), cli=True, timeout=300,
              setup=conv_setup(lambda s: s)),
        Probe(c_c, "convert --tokenizer config.json", None, ("config.json", "not a tokenizer"),
              cli=True, timeout=300, setup=conv_setup(lambda s: s.parent / f"{s.name}.ckpt",
                                                      lambda s: "--tokenizer",
                                                      lambda s: s / "config.json")),
        Probe(c_c, "convert output path is a directory", None, ("directory",), cli=True,
              timeout=300, setup=conv_setup(lambda s: (s.parent / f"{s.name}_out").mkdir()
                                            or s.parent / f"{s.name}_out")),
    ]
    ev = ["-m", "memarch.eval", "out_dir=."]
    tok_cfg = {"tokenizer.json": json.dumps({"architectures": ["LlamaForCausalLM"],
                                             "model_type": "llama", "vocab_size": 16}),
               "eos_id": None, "source": "config.json"}
    out += [
        Probe(c_e, "eval without checkpoint=", [*ev, "tasks=[mqar]"],
              ("checkpoint", "not set|no checkpoint|required|missing|checkpoint="), cli=True,
              timeout=120),
        Probe(c_e, "eval checkpoint whose embedded tokenizer is a config", None,
              ("not a tokenizer",), cli=True, timeout=120, setup=lambda: [
                  *ev, f"checkpoint={good_ckpt(name='tokcfg.ckpt', **{TOKENIZER_KEY: tok_cfg})}",
                  "tasks=[mqar]"]),
    ]
    return out


# -- main -----------------------------------------------------------------------------------
GROUPS = {"layers": layer_probes, "constructors": constructor_probes, "kernels": kernel_probes,
          "generation": generation_probes, "checkpoints": checkpoint_probes, "eval": eval_probes,
          "models": model_probes, "hub": hub_probes, "convert": convert_probes,
          "overrides": override_probes, "cli": cli_probes}


def all_probes(groups=None) -> list[Probe]:
    """Every probe of the table (or of ``groups``), in table order; building the table is
    cheap: the fixtures (files, a Hugging Face folder, ...) are made when a probe runs."""
    return [p for g in (groups or GROUPS) for p in GROUPS[g]()]
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
        cli = [p for p in probes if p.cli and not a.skip_cli]
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
