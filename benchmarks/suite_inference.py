"""Suite ``inference``: inference speed on CPU, against transformers, llama.cpp,
SDPA and FlexAttention, with the targets decided from the rows.

    python -m benchmarks inference                        # threads 1 and 2, every part
    python -m benchmarks inference --quick --threads 1 --thread-list 1
    python -m benchmarks inference --inference-parts tiny,ops --thread-list 1

CPU, float32, batch 1, under ``torch.no_grad``. ``--thread-list`` (default ``1,2``): the
suite calls ``torch.set_num_threads(n)`` for each n and every row records its ``threads``.
``--decode-steps`` (default 32; ``--quick`` 8): timed one-token decode steps per measurement.

**real** (SmolLM2-135M-Instruct, ``memarch.pretrained.real_model_path()``; without it
(``make real-model``) a ``status`` row says so and the part is skipped). The prompt is the
shipped KJV text from its first token (``memarch.data.text.KJV``), tokenised by the GGUF's own
tokenizer (``load_tokenizer(path)``).

* dense, memarch ``from_gguf(path)`` against transformers on the same GGUF
  (``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)``),
  both loaded in this process, calls alternated (memarch, transformers, memarch, ...), at
  512 and 4,096 tokens of context. One measurement = a prefill of the context, then
  ``--decode-steps`` greedy tokens. memarch: ``stream(model, ids, max_new_tokens=N + 1,
  temperature=0, chunk_size=None)`` (the public path), the prefill = the time to its first
  yield (``prefill(model, ids, chunk_size=None)``, one call, + the first argmax), each decode
  step = the time between consecutive yields. transformers: ``model(ids, use_cache=True,
  logits_to_keep=1)`` (its generate's prefill) + argmax, then the manual cached loop
  ``model(tok, cache=cache, use_cache=True)`` + argmax, timed per step. Prefill tok/s =
  context / median prefill seconds over the repetitions (3 at 512 and 2 at 4,096; ``--quick``
  2 and 1); decode tok/s = 1 / median step seconds (all steps of all repetitions); ``ratio``
  = memarch tok/s / transformers tok/s; ``tokens_agree``: the greedy tokens are identical.
* window W + 4 sinks at cache positions (``from_gguf(path, window=W, n_sinks=4,
  sink_positions="cache")``), W = 256 and 1,024, and the dense model for reference: decode
  at 1k, 4k, 16k of context (dense: 1k; ``--quick``: 1k and 4k), prefilled by
  ``stream(..., chunk_size=512)`` (its tok/s recorded too). memarch only.
* ``compile``: the dense decode at 512 with ``stream(..., compile=True)`` (an opt-in
  ``torch.compile`` of the decode step) when ``stream`` takes it; the first decode steps
  (the compile) are recorded apart.
* llama.cpp (llama-cpp-python from ``.bench-deps``; skipped with the reason when it does not
  import): ``Llama(model_path, n_ctx, n_threads=t, n_threads_batch=t, n_batch=512)``,
  prefill = ``llm.eval(tokens)`` after ``llm.reset()``, decode = ``llm.eval([tok])`` with the
  argmax of the last logits. Its native Q4_1 kernels read about 4.5 bits a weight where
  memarch and transformers read fp32: a reference, not a target.
* bandwidth: ``x.sum()`` over a 512 MB fp32 tensor (read) and ``y.copy_(x)`` (copy: read +
  write bytes), best of 5, per thread count. A decode row's ``bound_tok_s`` = read bandwidth
  / the bytes of weights a token reads (every parameter once: each Linear, the norms, the
  head, tied to the embedding, once, + one embedding row); ``frac_of_bound`` = tok/s /
  bound. ``kv_bytes`` (the cache a token reads at that context, ``model.state_size``) and
  ``bound_kv_tok_s`` (weights + cache) are recorded beside it.
* peak RSS of every measurement: ``/proc/self/clear_refs`` ``5`` resets the peak before it,
  ``VmHWM`` after (``rss_base_mb``: the RSS at the reset, both models loaded; the process
  holds every loaded model). Where clear_refs is not writable, ``ru_maxrss`` (the process's
  lifetime peak), and ``rss_source`` says so.

**tiny** (per-token overhead): the ``mixers`` suite's 2-layer d_model 256 models (4 heads,
vocabulary 256, SwiGLU 704, random init, ``suite_mixers.build``): full attention, window
512 + 4 sinks, linear attention, BASED; and transformers' ``LlamaForCausalLM`` of the same
size (2 layers, hidden 256, 4 heads, intermediate 704, vocabulary 256, tied embeddings,
random init) decoding with the manual cached loop; 512 tokens of context, alternated (3
repetitions of 4x ``--decode-steps`` steps: a step takes milliseconds), ``ratio`` = memarch
tok/s / Llama's. And the ``streaming`` suite's 2-layer d_model 128
window + 4 sinks model (``suite_streaming.build_lm``) at W = 256 ... 4,096 (``--quick``:
256, 1,024, 4,096), context W + 256 (the window is full); ``ratio_vs_W256``.

**ops** (reusing ``suite_peers``' cases, B=1, H=4, D=64, forward under no_grad, alternated,
median): ``Attention._full`` against SDPA causal at 1k; ``sliding_window_attn(window=512,
4 sinks, impl="torch")`` against compiled FlexAttention with the same block mask at 4k and
16k; ``ratio`` = peer ms / memarch ms (> 1: memarch faster). Training
peak memory (``common.peak_bytes`` of forward + backward) of ``Attention(256, n_heads=4,
window=512, n_sinks=4, sink_positions="cache")`` against ``Attention(256, n_heads=4)`` at
16k. The non-finite guard's share of ``linear_attn`` and ``delta_rule`` (``impl="torch"``,
B 1, T 4,096, H 4, K = V = 64): the op timed with ``memarch.kernels._common.GUARD`` True
and False, alternated, median of 11; ``guard_share`` = 1 - unguarded / guarded (no such
flag: a ``status`` row).

``render_targets`` decides the inference-speed targets from these rows (met / missed / not
measured); ``render`` shows the tables, ``plot`` one figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import common
import torch
from common import fmt_num, sig

KEY = ("part", "metric", "model", "impl", "W", "T", "threads", "dtype")
THREADS = 1                  # the entry point's default; the rows use --thread-list
PARTS = ("real", "tiny", "ops")
SEED = 0
N_SINKS = 4
REAL_LENGTHS = (512, 4096)
REAL_REPS = {512: (3, 2), 4096: (2, 1)}                     # (full, quick)
REAL_WINDOWS = (256, 1024)
WINDOW_CONTEXTS = ((1024, 4096, 16384), (1024, 4096))       # (full, quick)
DENSE_CHUNKED_CONTEXT = 1024
CHUNK = 512
COMPILE_T = 512
TINY_BLOCKS = ("attention", "attention_sinks", "linear_attention", "based")
TINY_LABELS = {"attention": "attention (full)", "attention_sinks": "window 512 + 4 sinks",
               "linear_attention": "linear attention", "based": "BASED linear attention",
               "llama": "transformers LlamaForCausalLM"}
TINY_T = 512
TINY_REPS = (3, 3)
TINY_STEPS_X = 4            # the tiny models' steps take milliseconds: 4x --decode-steps
TINY_WINDOWS = ((256, 512, 1024, 2048, 4096), (256, 1024, 4096))
TINY_WINDOW_EXTRA = 256
STREAM_TINY = {"d_model": 128, "n_layers": 2, "n_heads": 4}
ATT_T = 1024
SWA_LENGTHS = (4096, 16384)
MEM_T = 16384
GUARD_T = 4096
OPS_REPS = 5
GUARD_REPS = 11             # the guard's share is small: more repetitions against noise
BW_BYTES = 512 * 2**20
MB = 2**20
DENSE = "dense"
LLAMA_CPP_NOTE = "native Q4_1 kernels: reference, not a target"


def window_model(W: int) -> str:
    return f"window {W} + {N_SINKS} sinks"


# ----------------------------------------------------------------------------- options
def add_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("inference")
    g.add_argument("--thread-list", default="1,2",
                   help="torch thread counts to measure at (default 1,2)")
    g.add_argument("--decode-steps", type=int, default=None,
                   help="timed decode steps per measurement (default 32; --quick 8)")
    g.add_argument("--inference-parts", default=",".join(PARTS),
                   help="parts to run: real, tiny, ops (default: all)")


def _threads(args) -> list[int]:
    out = [int(x) for x in str(getattr(args, "thread_list", "1,2")).split(",") if x.strip()]
    if not out or min(out) < 1:
        raise SystemExit(f"--thread-list: positive integers, got {args.thread_list!r}")
    return out


def _parts(args) -> list[str]:
    parts = [p.strip() for p in str(getattr(args, "inference_parts", ",".join(PARTS)))
             .split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--inference-parts: unknown {bad}; known: {list(PARTS)}")
    return parts


# ----------------------------------------------------------------------------- helpers
def import_transformers():
    """``transformers`` with the repository root off ``sys.path`` (its top-level ``kernels/``
    shadows the PyPI package ``kernels`` that transformers imports), as
    tests/helpers/hf_helpers.py."""
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(common.ROOT)]
    try:
        import transformers
        for name in ("LlamaForCausalLM", "LlamaConfig", "AutoModelForCausalLM"):
            getattr(transformers, name)
        import transformers.generation.utils
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    finally:
        sys.path[:] = saved
    return transformers


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class PeakRSS:
    """Peak resident memory of a measurement: ``reset()`` before (``/proc/self/clear_refs``
    5 sets the peak to the current RSS), ``peak()`` after (``VmHWM``). Without a writable
    clear_refs: ``ru_maxrss``, the process's lifetime peak (``source`` says so)."""

    def __init__(self):
        self.ok = self._clear()
        self.source = ("VmHWM after clear_refs" if self.ok else
                       "ru_maxrss (process lifetime peak: /proc/self/clear_refs not writable)")

    @staticmethod
    def _clear() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def reset(self) -> int | None:
        if self.ok:
            self._clear()
        return self._status("VmRSS")

    def peak(self) -> int:
        if self.ok:
            v = self._status("VmHWM")
            if v is not None:
                return v
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _mb(b: int | None) -> float | None:
    return None if b is None else round(b / MB, 1)


def _median(xs):
    return statistics.median(xs) if xs else None


def bandwidth(threads: int, nbytes: int = BW_BYTES, reps: int = 5) -> dict:
    """Single-process memory bandwidth (bytes/s), best of ``reps``: ``x.sum()`` (read) and
    ``y.copy_(x)`` (copy: bytes read + written); ``common.memory_bandwidth``'s row."""
    read, copy = common.memory_bandwidth(nbytes, reps)
    return _base("real", "bandwidth", "-", "torch", None, threads, bytes=nbytes, reps=reps,
                 read_Bps=sig(read), copy_Bps=sig(copy),
                 how=("x.sum() (read) and y.copy_(x) (read + write) over 512 MB fp32, best "
                      f"of {reps}"))


def weight_bytes(model) -> int:
    """Bytes of weights one token reads: every parameter once (a tied head/embedding once)
    + one embedding row (the lookup; the head reads the whole matrix)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = getattr(model, "embed", None)
    if emb is not None:
        n += emb.weight.shape[1] * emb.weight.element_size()
    return int(n)


def _bound(row: dict, bw: dict | None, wbytes: int, kv_bytes: int | None) -> None:
    if not bw or not row.get("tok_s"):
        return
    row["weight_bytes"] = wbytes
    row["bound_tok_s"] = sig(bw["read_Bps"] / wbytes)
    row["frac_of_bound"] = sig(row["tok_s"] / row["bound_tok_s"], 3)
    if kv_bytes is not None:
        row["kv_bytes"] = int(kv_bytes)
        row["bound_kv_tok_s"] = sig(bw["read_Bps"] / (wbytes + kv_bytes))


def run_memarch(model, ids, steps: int, chunk_size=None, rss: PeakRSS | None = None,
                **kw) -> dict:
    """``stream`` greedy: [time to the first yield (prefill + first token), then the time
    between consecutive yields], the tokens, the peak RSS."""
    from memarch.generation import stream
    base = rss.reset() if rss else None
    times, toks = [], []
    t0 = time.perf_counter()
    for st in stream(model, ids, max_new_tokens=steps + 1, temperature=0,
                     chunk_size=chunk_size, **kw):
        t1 = time.perf_counter()
        times.append(t1 - t0)
        toks.append(st.token)
        t0 = t1
    return {"times": times, "tokens": [int(t[0]) for t in toks],
            "rss_base": base, "rss_peak": rss.peak() if rss else None}


def _cache_kw(model) -> str:
    import inspect
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def run_hf(model, ids, steps: int, rss: PeakRSS | None = None) -> dict:
    """transformers: ``model(ids, use_cache=True, logits_to_keep=1)`` + argmax (its
    generate's prefill), then ``model(tok, cache=cache, use_cache=True)`` + argmax per step."""
    kw = _cache_kw(model)
    base = rss.reset() if rss else None
    times, toks = [], []
    t0 = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    t1 = time.perf_counter()
    times.append(t1 - t0)
    toks.append(tok)
    for _ in range(steps):
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        out = model(tok, **{kw: cache}, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        times.append(t2 - t1)
        toks.append(tok)
        t1 = t2
    return {"times": times, "tokens": [int(t[0, 0]) for t in toks],
            "rss_base": base, "rss_peak": rss.peak() if rss else None}


def _base(part, metric, model, impl, T, threads, W=None, **kw) -> dict:
    return dict(part=part, metric=metric, model=model, impl=impl, W=W, T=T, threads=threads,
                **kw)


def _decode_fields(runs: list[dict], T: int) -> tuple[dict, dict]:
    """(prefill fields, decode fields) of the runs of one (impl, configuration)."""
    pre = [r["times"][0] for r in runs]
    steps = [t for r in runs for t in r["times"][1:]]
    peak = max((r["rss_peak"] for r in runs if r["rss_peak"] is not None), default=None)
    base = min((r["rss_base"] for r in runs if r["rss_base"] is not None), default=None)
    rss = {"rss_peak_mb": _mb(peak), "rss_base_mb": _mb(base)}
    p = dict(reps=len(runs), prefill_s_all=[sig(t, 3) for t in pre], **rss)
    p["ms"] = sig(_median(pre) * 1e3)
    p["tok_s"] = sig(T / _median(pre))
    d = dict(reps=len(runs), decode_steps=len(steps), **rss)
    if steps:
        med = _median(steps)
        d.update(ms=sig(med * 1e3), tok_s=sig(1 / med),
                 ms_min=sig(min(steps) * 1e3), ms_max=sig(max(steps) * 1e3))
    return p, d


# ----------------------------------------------------------------------------- part real
def real_ids(path, n: int) -> list[int]:
    """The first ``n`` tokens of the shipped KJV text, by the GGUF's own tokenizer."""
    from memarch.data.text import KJV, read_text
    from memarch.data.tokenizers import load_tokenizer
    tok = load_tokenizer(str(path))
    text = read_text(KJV)
    ids = list(tok.encode(text[:5 * n]))
    if len(ids) < n:
        ids = list(tok.encode(text))
    if len(ids) < n:
        raise SystemExit(f"inference: the KJV text has {len(ids)} tokens, fewer than {n}")
    return ids[:n]


def _real_info(path) -> dict:
    from memarch.pretrained import SMOLLM2
    return {"model_file": SMOLLM2.filename,
            "model_source": f"PyPI {SMOLLM2.package}=={SMOLLM2.version}",
            "text": "kjv.txt.xz, from its first token"}


def run_real(args, threads_list: list[int], steps: int) -> list[dict]:
    from memarch.models import from_gguf
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        path = real_model_path()
    except RealModelMissing as e:
        print(f"   real: skipped: {e}", flush=True)
        return [_base("real", "status", "-", "-", None, None,
                      status=f"skipped: {e} (make real-model)")]
    quick = args.quick
    contexts = WINDOW_CONTEXTS[1 if quick else 0]
    need = max(max(REAL_LENGTHS), max(contexts)) + steps + 8
    t0 = time.perf_counter()
    ids = torch.tensor([real_ids(path, need)])
    print(f"   real: {need} tokens of text ({time.perf_counter() - t0:.0f} s)", flush=True)
    info = _real_info(path)
    rss = PeakRSS()
    rows, bws = [], {}
    for t in threads_list:
        torch.set_num_threads(t)
        bws[t] = bandwidth(t)
        rows.append(bws[t])
        print(f"   bandwidth, {t} thread(s): read {fmt_num(bws[t]['read_Bps'])}B/s, copy "
              f"{fmt_num(bws[t]['copy_Bps'])}B/s", flush=True)
    t0 = time.perf_counter()
    mem = from_gguf(path).eval()
    tf = import_transformers()
    with common.quiet_c_stderr():               # transformers' GGUF reader's progress bar
        hf = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    print(f"   loaded memarch and transformers ({time.perf_counter() - t0:.0f} s)", flush=True)
    wbytes = weight_bytes(mem)
    common_info = dict(info, rss_source=rss.source, transformers=_version("transformers"),
                       memarch_call="stream(from_gguf(path), ids, max_new_tokens=N + 1, "
                                    "temperature=0, chunk_size=None)",
                       transformers_call="AutoModelForCausalLM.from_pretrained(folder, "
                                         "gguf_file=name, dtype=torch.float32): model(ids, "
                                         "use_cache=True, logits_to_keep=1), then model(tok, "
                                         "cache=cache, use_cache=True)")
    with torch.no_grad():
        for t in threads_list:
            torch.set_num_threads(t)
            run_memarch(mem, ids[:, :64], 2)                       # warm-up
            run_hf(hf, ids[:, :64], 2)
            for L in REAL_LENGTHS:
                reps = REAL_REPS[L][1 if quick else 0]
                runs = {"memarch": [], "transformers": []}
                for _ in range(reps):
                    runs["memarch"].append(run_memarch(mem, ids[:, :L], steps, rss=rss))
                    runs["transformers"].append(run_hf(hf, ids[:, :L], steps, rss=rss))
                agree = runs["memarch"][0]["tokens"] == runs["transformers"][0]["tokens"]
                fields = {k: _decode_fields(v, L) for k, v in runs.items()}
                kv = mem.state_size(L) * 4
                for i, metric in enumerate(("prefill", "decode")):
                    m, h = fields["memarch"][i], fields["transformers"][i]
                    for impl, f in (("memarch", m), ("transformers", h)):
                        r = _base("real", metric, DENSE, impl, L, t, **f, **common_info)
                        if metric == "decode":
                            r["tokens_agree"] = agree
                            r["tokens"] = runs[impl][0]["tokens"]
                            _bound(r, bws.get(t), wbytes, kv)
                        if impl == "memarch" and m.get("tok_s") and h.get("tok_s"):
                            r["ratio"] = sig(m["tok_s"] / h["tok_s"], 3)
                        rows.append(r)
                    print(f"   real {metric:7s} L={L:5d} t={t}: memarch {m.get('tok_s')} tok/s, "
                          f"transformers {h.get('tok_s')} tok/s"
                          + (f", tokens agree: {agree}" if metric == "decode" else ""),
                          flush=True)
            rows.append(compile_row(mem, ids[:, :COMPILE_T], steps, t, rss, bws.get(t),
                                    wbytes, info))
            # the dense model at 1k, prefilled in chunks, as the window rows
            rows += window_rows(mem, DENSE, None, [DENSE_CHUNKED_CONTEXT], ids, steps, t, rss,
                                bws.get(t), wbytes, info)
    del hf
    gc.collect()
    llama_ref = [r for r in rows if r["metric"] == "decode" and r["impl"] == "memarch"]
    for W in REAL_WINDOWS:
        mw = from_gguf(path, window=W, n_sinks=N_SINKS, sink_positions="cache").eval()
        for t in threads_list:
            torch.set_num_threads(t)
            run_memarch(mw, ids[:, :64], 2, chunk_size=CHUNK)       # warm-up
            rows += window_rows(mw, window_model(W), W, contexts, ids, steps, t, rss,
                                bws.get(t), wbytes, info)
        del mw
        gc.collect()
    rows += llama_cpp_rows(path, ids, steps, threads_list, quick, rss, llama_ref, info)
    return rows


def window_rows(model, name: str, W: int | None, contexts, ids, steps: int, t: int,
                rss: PeakRSS, bw: dict | None, wbytes: int, info: dict) -> list[dict]:
    """Decode per token after a prefill of each context by ``stream(..., chunk_size=512)``."""
    rows = []
    for T in contexts:
        r = run_memarch(model, ids[:, :T], steps, chunk_size=CHUNK, rss=rss)
        p, d = _decode_fields([r], T)
        row = _base("real", "decode_window", name, "memarch", T, t, W=W,
                    n_sinks=N_SINKS if W else 0, chunk_size=CHUNK, prefill_tok_s=p["tok_s"],
                    prefill_s=sig(r["times"][0], 3), **d, **info, rss_source=rss.source,
                    memarch_call=("stream(from_gguf(path" + (
                        f", window={W}, n_sinks={N_SINKS}, sink_positions='cache'" if W
                        else "") + f"), ids, max_new_tokens=N + 1, temperature=0, "
                        f"chunk_size={CHUNK})"))
        _bound(row, bw, wbytes, model.state_size(T) * 4)
        rows.append(row)
        print(f"   real {name} ctx={T} t={t}: decode {row.get('ms')} ms/token, prefill "
              f"{row['prefill_tok_s']} tok/s", flush=True)
    return rows


def compile_row(model, ids, steps: int, t: int, rss: PeakRSS, bw, wbytes: int,
                info: dict) -> dict:
    """Decode with ``stream(..., compile=True)`` when ``stream`` takes it."""
    T = ids.shape[1]
    base = _base("real", "decode_compile", DENSE, "memarch", T, t, **info,
                 memarch_call="stream(from_gguf(path), ids, max_new_tokens=N + 3, "
                              "temperature=0, chunk_size=None, compile=True)")
    import inspect

    from memarch.generation import stream
    if "compile" not in inspect.signature(stream).parameters:
        print(f"   real compile t={t}: skipped (stream() takes no compile argument)", flush=True)
        return {**base, "status": "skipped: memarch.generation.stream() takes no compile "
                                  "argument"}
    try:
        r = run_memarch(model, ids, steps + 2, rss=rss, compile=True)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(f"   real compile t={t}: failed ({msg})", flush=True)
        return {**base, "status": f"failed: {msg}"}
    ref = run_memarch(model, ids, steps + 2)
    warm = r["times"][3:]
    row = {**base, "status": "measured", "compile_s": sig(r["times"][1], 3),
           "first_steps_ms": [sig(x * 1e3, 3) for x in r["times"][1:3]],
           "decode_steps": len(warm), "tokens_agree": r["tokens"] == ref["tokens"],
           "rss_peak_mb": _mb(r["rss_peak"]), "rss_base_mb": _mb(r["rss_base"])}
    if warm:
        row.update(ms=sig(_median(warm) * 1e3), tok_s=sig(1 / _median(warm)))
        eager = _median(ref["times"][3:])
        row["eager_tok_s"] = sig(1 / eager)
        row["ratio_vs_eager"] = sig(row["tok_s"] / row["eager_tok_s"], 3)
        _bound(row, bw, wbytes, model.state_size(T) * 4)
    print(f"   real compile t={t}: {row.get('tok_s')} tok/s (eager {row.get('eager_tok_s')}), "
          f"compile {row['compile_s']} s", flush=True)
    return row


def _llama_argmax(llm, np) -> int:
    """The argmax of the last evaluated token's logits. llama-cpp-python fills ``scores``
    only with ``logits_all=True`` (which would compute the head at every prompt position);
    without it the context's logits buffer holds the last token's row."""
    ctx = getattr(llm, "_ctx", None)
    if ctx is not None and hasattr(ctx, "get_logits"):
        n = llm.n_vocab()
        ptr = ctx.get_logits()
        try:
            row = np.ctypeslib.as_array(ptr, shape=(n,))
        except (TypeError, ValueError, AttributeError):
            row = np.asarray(ptr[:n])
        return int(np.argmax(row))
    return int(np.argmax(llm.scores[llm.n_tokens - 1]))


def llama_cpp_rows(path, ids, steps: int, threads_list, quick: bool, rss: PeakRSS,
                   memarch_rows: list[dict], info: dict) -> list[dict]:
    """llama.cpp on the same GGUF (its native Q4_1 kernels): prefill and decode tok/s."""
    base = dict(info, note=LLAMA_CPP_NOTE, rss_source=rss.source)
    common.add_bench_deps()
    try:
        import llama_cpp
        import numpy as np
        from llama_cpp import Llama
    except Exception as e:  # noqa: BLE001
        why = f"skipped: llama_cpp does not import ({type(e).__name__}: {str(e)[:160]})"
        print(f"   llama.cpp: {why}", flush=True)
        return [_base("real", "status", DENSE, "llama.cpp", None, None, status=why, **base)]
    version = getattr(llama_cpp, "__version__", None) or _version("llama_cpp_python")
    ours = {(r["T"], r["threads"]): r for r in memarch_rows}
    rows = []
    flat = ids[0].tolist()
    for t in threads_list:
        try:
            llm = Llama(model_path=str(path), n_ctx=max(REAL_LENGTHS) + steps + 16,
                        n_threads=t, n_threads_batch=t, n_batch=512, verbose=False)
            llm.reset()
            llm.eval(flat[:32])                                      # warm-up
            for L in REAL_LENGTHS:
                pre, dec, toks = [], [], []
                reps = REAL_REPS[L][1 if quick else 0]
                rss_base = rss.reset()
                for rep in range(reps):
                    llm.reset()
                    t0 = time.perf_counter()
                    llm.eval(flat[:L])
                    tok = _llama_argmax(llm, np)
                    t1 = time.perf_counter()
                    pre.append(t1 - t0)
                    seq = [tok]
                    for _ in range(steps):
                        llm.eval([tok])
                        tok = _llama_argmax(llm, np)
                        t2 = time.perf_counter()
                        dec.append(t2 - t1)
                        t1 = t2
                        seq.append(tok)
                    if rep == 0:
                        toks = seq
                peak = rss.peak()
                call = (f"Llama(model_path, n_ctx={max(REAL_LENGTHS) + steps + 16}, "
                        f"n_threads={t}, n_threads_batch={t}, n_batch=512): eval(tokens) after "
                        "reset(), then eval([argmax(last logits)])")
                extra = dict(base, llama_cpp=version, call=call, reps=reps,
                             rss_peak_mb=_mb(peak), rss_base_mb=_mb(rss_base))
                m = ours.get((L, t))
                agree = m is not None and m.get("tokens") == toks
                r = _base("real", "prefill", DENSE, "llama.cpp", L, t, **extra,
                          ms=sig(_median(pre) * 1e3), tok_s=sig(L / _median(pre)),
                          prefill_s_all=[sig(x, 3) for x in pre])
                rows.append(r)
                r = _base("real", "decode", DENSE, "llama.cpp", L, t, **extra,
                          decode_steps=len(dec), ms=sig(_median(dec) * 1e3),
                          tok_s=sig(1 / _median(dec)), tokens=toks,
                          tokens_agree_with_memarch=agree if m else None,
                          weight_bytes=os.path.getsize(path))
                rows.append(r)
                print(f"   llama.cpp L={L} t={t}: prefill {rows[-2]['tok_s']} tok/s, decode "
                      f"{r['tok_s']} tok/s", flush=True)
            del llm
        except Exception as e:  # noqa: BLE001
            why = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            print(f"   llama.cpp t={t}: {why}", flush=True)
            rows.append(_base("real", "status", DENSE, "llama.cpp", None, t, status=why, **base))
    return rows


# ----------------------------------------------------------------------------- part tiny
def tiny_llama(d_hidden: int):
    tf = import_transformers()
    torch.manual_seed(SEED)
    cfg = tf.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=d_hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return tf.LlamaForCausalLM(cfg).eval()


def run_tiny(args, threads_list: list[int], steps: int) -> list[dict]:
    import suite_mixers as sm
    import suite_streaming as ss
    quick = args.quick
    steps = TINY_STEPS_X * steps
    cfgs = {n: sm.model_config(sm.BY_NAME[n]) for n in TINY_BLOCKS}
    models = {n: sm.build(c).eval() for n, c in cfgs.items()}
    d_hidden = models["attention"].blocks[0].mlp.w1.out_features
    llama = tiny_llama(d_hidden)
    ids = torch.randint(0, 256, (1, TINY_T), generator=torch.Generator().manual_seed(SEED))
    reps = TINY_REPS[1 if quick else 0]
    rows = []
    tf_version = _version("transformers")
    for t in threads_list:
        torch.set_num_threads(t)
        with torch.no_grad():
            for n, m in models.items():
                run_memarch(m, ids[:, :32], 2)
            run_hf(llama, ids[:, :32], 2)
            runs = {n: [] for n in [*models, "llama"]}
            for _ in range(reps):
                for n, m in models.items():
                    runs[n].append(run_memarch(m, ids, steps))
                runs["llama"].append(run_hf(llama, ids, steps))
        fields = {n: _decode_fields(v, TINY_T) for n, v in runs.items()}
        ref = fields["llama"][1].get("tok_s")
        for n in [*models, "llama"]:
            p, d = fields[n]
            impl = "transformers" if n == "llama" else "memarch"
            if n == "llama":
                extra = {"config": {"vocab_size": 256, "hidden_size": 256,
                                    "intermediate_size": d_hidden, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "tie_word_embeddings": True,
                                    "attn_implementation": getattr(
                                        llama.config, "_attn_implementation", None)},
                         "transformers": tf_version,
                         "call": ("model(ids, use_cache=True, logits_to_keep=1), then "
                                  "model(tok, cache=cache, use_cache=True)")}
            else:
                extra = {"config": cfgs[n], "params": sm.n_params(models[n]),
                         "call": ("stream(model, ids, max_new_tokens=N + 1, temperature=0, "
                                  "chunk_size=None)")}
            r = _base("tiny", "decode", n, impl, TINY_T, t, label=TINY_LABELS[n], **d,
                      prefill_tok_s=p["tok_s"], **extra)
            if n != "llama" and d.get("tok_s") and ref:
                r["ratio"] = sig(d["tok_s"] / ref, 3)
            rows.append(r)
            print(f"   tiny {n:17s} t={t}: decode {r.get('tok_s')} tok/s"
                  + (f" ({r['ratio']}x Llama)" if "ratio" in r else ""), flush=True)
    del models, llama
    # the streaming suite's window + sinks model against W (the windows' repetitions
    # interleaved, so that a burst of load elsewhere does not land on one W alone)
    wins = TINY_WINDOWS[1 if quick else 0]
    s = dict(STREAM_TINY, seed=SEED)
    lms, xs = {}, {}
    for W in wins:
        torch.manual_seed(SEED)
        lms[W] = ss.build_lm(s, W, N_SINKS).eval()
        xs[W] = torch.randint(0, 256, (1, W + TINY_WINDOW_EXTRA),
                              generator=torch.Generator().manual_seed(SEED))
    for t in threads_list:
        torch.set_num_threads(t)
        for W in wins:
            run_memarch(lms[W], xs[W][:, :32], 2)
        runs = {W: [] for W in wins}
        for _ in range(reps):
            for W in wins:
                runs[W].append(run_memarch(lms[W], xs[W], steps, chunk_size=CHUNK))
        first = None
        for W in wins:
            T = xs[W].shape[1]
            p, d = _decode_fields(runs[W], T)
            r = _base("tiny", "decode_window", "streaming window+sinks d128", "memarch", T, t,
                      W=W, n_sinks=N_SINKS, **d, prefill_tok_s=p["tok_s"],
                      config=dict(STREAM_TINY, vocab_size=257),
                      call=f"stream(suite_streaming.build_lm(s, W, {N_SINKS}), ids, "
                           f"max_new_tokens=N + 1, temperature=0, chunk_size={CHUNK})")
            if first is None:
                first = r
            if first.get("tok_s") and r.get("tok_s"):
                r["ratio_vs_W256" if first["W"] == 256 else "ratio_vs_first"] = sig(
                    r["tok_s"] / first["tok_s"], 3)
            rows.append(r)
            print(f"   tiny window W={W} t={t}: decode {r.get('tok_s')} tok/s", flush=True)
    return rows


# ----------------------------------------------------------------------------- part ops
def ops_pair_row(case, T: int, t: int, reps: int, op: str) -> dict:
    pair = case.make(T, "cpu", torch.float32)
    with torch.no_grad():
        r = common.alternate({"memarch": lambda: pair.memarch(*pair.inputs),
                        "peer": lambda: pair.peer(*pair.inputs)}, reps)
    m, p = r["median"]["memarch"], r["median"]["peer"]
    diff = float((r["first"]["memarch"][1].float() - r["first"]["peer"][1].float()).abs().max())
    row = _base("ops", op, case.case, "memarch", T, t, memarch_call=case.memarch_call,
                peer_call=case.peer_call, memarch_ms=sig(m * 1e3), peer_ms=sig(p * 1e3),
                ratio=sig(p / m, 3), max_abs_diff=sig(diff, 3), reps=reps,
                memarch_ms_all=[sig(x * 1e3, 3) for x in r["all"]["memarch"]],
                peer_ms_all=[sig(x * 1e3, 3) for x in r["all"]["peer"]],
                peer_first_call_s=sig(r["first"]["peer"][0], 3))
    print(f"   ops {op} T={T} t={t}: memarch {row['memarch_ms']} ms, peer {row['peer_ms']} ms, "
          f"ratio {row['ratio']}", flush=True)
    return row


def train_memory_rows(T: int, t: int) -> list[dict]:
    from memarch.mixers import Attention
    d = 256
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, T, d, generator=g)
    dy = torch.randn(1, T, d, generator=g)
    rows = []
    for name, kw in (("full attention", {}), ("window 512", {"window": 512}),
                     (f"window 512 + {N_SINKS} sinks",
                      {"window": 512, "n_sinks": N_SINKS, "sink_positions": "cache"})):
        torch.manual_seed(SEED)
        mix = Attention(d, n_heads=4, **kw).train()

        def step(mix=mix):
            mix.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_()
            mix(xi).y.backward(dy)
        t0 = time.perf_counter()
        peak = common.peak_bytes(step)
        dt = time.perf_counter() - t0
        args = "".join(f", {k}={v!r}" for k, v in kw.items())
        rows.append(_base("ops", "train_peak_memory", name, "memarch", T, t,
                          W=kw.get("window"), peak_bytes=int(peak), profiled_call_s=sig(dt, 3),
                          call=f"Attention(256, n_heads=4{args})(x).y.backward(dy), x [1, T, "
                               "256] requiring grad",
                          how="common.peak_bytes (the profiler's allocation trace)"))
        print(f"   ops train memory {name} T={T} t={t}: {fmt_num(peak)}B ({dt:.1f} s)",
              flush=True)
        del mix
    return rows


def guard_rows(t: int, reps: int) -> list[dict]:
    import suite_peers as sp

    from memarch.kernels import delta_rule, linear_attn
    cm = importlib.import_module("memarch.kernels._common")
    T = GUARD_T
    base = {"config": {"B": 1, "T": T, "H": 4, "K": 64, "V": 64}, "impl_arg": "torch"}
    ops = {"linear_attn": ("linear", lambda q, k, v: linear_attn(
               q, k, v, normalize=True, eps=1e-10, impl="torch")[0],
               "linear_attn(q, k, v, normalize=True, eps=1e-10, impl='torch')"),
           "delta_rule": ("delta", lambda q, k, v, b: delta_rule(q, k, v, b, impl="torch")[0],
                          "delta_rule(q, k, v, beta, impl='torch')")}
    rows = []
    for op, (kind, fn, call) in ops.items():
        row = _base("ops", "guard_share", op, "memarch", T, t, call=call, **base)
        if not hasattr(cm, "GUARD"):
            rows.append({**row, "status": "skipped: no GUARD flag (memarch.kernels._common."
                                          "GUARD does not exist)"})
            print(f"   ops guard {op}: skipped (no GUARD flag)", flush=True)
            continue
        inputs = sp._la_inputs(T, "cpu", torch.float32, kind)
        saved = cm.GUARD

        def guarded(fn=fn, inputs=inputs):
            cm.GUARD = True
            return fn(*inputs)

        def unguarded(fn=fn, inputs=inputs, saved=saved):
            cm.GUARD = False
            try:
                return fn(*inputs)
            finally:
                cm.GUARD = saved
        try:
            with torch.no_grad():
                r = common.alternate({"guarded": guarded, "unguarded": unguarded}, reps)
        finally:
            cm.GUARD = saved
        g_, u_ = r["median"]["guarded"], r["median"]["unguarded"]
        diff = float((r["first"]["guarded"][1] - r["first"]["unguarded"][1]).abs().max())
        rows.append({**row, "status": "measured", "guarded_ms": sig(g_ * 1e3),
                     "unguarded_ms": sig(u_ * 1e3), "guard_share": sig(1 - u_ / g_, 3),
                     "max_abs_diff": sig(diff, 3), "reps": reps,
                     "guarded_ms_all": [sig(x * 1e3, 3) for x in r["all"]["guarded"]],
                     "unguarded_ms_all": [sig(x * 1e3, 3) for x in r["all"]["unguarded"]]})
        print(f"   ops guard {op} t={t}: guarded {rows[-1]['guarded_ms']} ms, unguarded "
              f"{rows[-1]['unguarded_ms']} ms, share {rows[-1]['guard_share']}", flush=True)
    return rows


def run_ops(args, threads_list: list[int]) -> list[dict]:
    import suite_peers as sp
    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
    warnings.filterwarnings("ignore", message=".*Triton is not supported on current platform")
    cases = {c.case: c for c in sp.attention_cases("cpu")}
    full = cases["SDPA causal / Attention full"]
    flex = cases[f"FlexAttention W={sp.WINDOW}+{sp.SINKS} sinks / sliding_window_attn"]
    lengths = SWA_LENGTHS
    rows = []
    for t in threads_list:
        torch.set_num_threads(t)
        rows.append(ops_pair_row(full, ATT_T, t, OPS_REPS, "attention_vs_sdpa"))
        for T in lengths:
            rows.append(ops_pair_row(flex, T, t, 3, "window_vs_flex"))
        rows += train_memory_rows(MEM_T, t)
        rows += guard_rows(t, GUARD_REPS)
    return rows


# ----------------------------------------------------------------------------- run
def run(args) -> list[dict]:
    if args.device != "cpu" or args.dtype != "float32":
        why = "skipped: the inference suite measures CPU float32 only"
        print(f"   {why}", flush=True)
        return [_base("real", "status", "-", "-", None, None, status=why)]
    threads_list = _threads(args)
    steps = args.decode_steps or (8 if args.quick else 32)
    parts = _parts(args)
    rows = []
    try:
        for part in parts:
            t0 = time.perf_counter()
            if part == "real":
                rows += run_real(args, threads_list, steps)
            elif part == "tiny":
                rows += run_tiny(args, threads_list, steps)
            else:
                rows += run_ops(args, threads_list)
            print(f"   part {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        torch.set_num_threads(args.threads)
    return rows


# ----------------------------------------------------------------------------- reading rows
def _rows(data, part=None, metric=None, **eq) -> list[dict]:
    out = []
    for r in data.get("rows", []):
        if part is not None and r.get("part") != part:
            continue
        if metric is not None and r.get("metric") != metric:
            continue
        if all(r.get(k) == v for k, v in eq.items()):
            out.append(r)
    return out


def _one(data, **kw) -> dict | None:
    rs = [r for r in _rows(data, **kw) if r.get("status", "measured") == "measured"]
    return rs[-1] if rs else None


def _threads_in(data) -> list[int]:
    return sorted({r["threads"] for r in data.get("rows", []) if isinstance(r.get("threads"),
                                                                             int)})


def _len(T) -> str:
    if T is None:
        return "-"
    return f"{T // 1024}k" if T >= 1024 and T % 1024 == 0 else f"{T:,}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.3g}x"


def _mbs(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


# ----------------------------------------------------------------------------- targets
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


def _verdict(cases: list[bool], missing: list[str] = ()) -> str:
    """met / missed (every measured case meets the target / one does not); ``missing``:
    the cases the target names that no row measured (said after the word)."""
    if not cases:
        return NOT_MEASURED
    word = MET if all(cases) else MISSED
    if missing:
        return f"{word} ({', '.join(missing)}: not measured)"
    return word


def targets(data) -> list[tuple[str, str, str]]:
    """(target, the measured numbers, met / missed / not measured), decided from the rows."""
    out = []
    threads = _threads_in(data) or [1]

    # 1. window + sinks decode per token <= dense at 1k of context
    cases, parts = [], []
    for t in threads:
        dense = _one(data, part="real", metric="decode_window", model=DENSE, T=1024, threads=t)
        for W in REAL_WINDOWS:
            w = _one(data, part="real", metric="decode_window", model=window_model(W), T=1024,
                     threads=t)
            if dense and w and dense.get("ms") and w.get("ms"):
                cases.append(w["ms"] <= dense["ms"])
                parts.append(f"real W={W}: {w['ms']:.3g} vs dense {dense['ms']:.3g} ms ({t}t)")
        ta = _one(data, part="tiny", metric="decode", model="attention", threads=t)
        ts = _one(data, part="tiny", metric="decode", model="attention_sinks", threads=t)
        if ta and ts and ta.get("ms") and ts.get("ms"):
            cases.append(ts["ms"] <= ta["ms"])
            parts.append(f"tiny W=512 at {_len(ts['T'])}: {ts['ms']:.3g} vs full "
                         f"{ta['ms']:.3g} ms ({t}t)")
    out.append((("1. window + sinks decode per token <= dense decode at 1k of context (real "
                 "model W = 256, 1024; tiny model)"), "; ".join(parts) or "-", _verdict(cases)))

    # 2. flat: decode at 16k within 1.1x of 1k
    cases, parts, missing = [], [], []
    for t in threads:
        for W in REAL_WINDOWS:
            rs = {r["T"]: r for r in _rows(data, part="real", metric="decode_window",
                                           model=window_model(W), threads=t) if r.get("ms")}
            if 1024 not in rs or len(rs) < 2:
                continue
            far = 16384 if 16384 in rs else max(rs)
            if far != 16384:
                missing.append(f"16k (W={W}, {t}t)")
            cases.append(rs[far]["ms"] <= 1.1 * rs[1024]["ms"])
            parts.append(f"W={W}: {rs[far]['ms']:.3g} ms at {_len(far)} vs {rs[1024]['ms']:.3g} "
                         f"at 1k = {rs[far]['ms'] / rs[1024]['ms']:.3g}x ({t}t)")
    out.append(("2. window + sinks decode at 16k within 1.1x of its 1k figure (W = 256, 1024)",
                "; ".join(parts) or "-", _verdict(cases, missing)))

    # 3. tiny window model: W = 4096 >= 0.8x W = 256
    cases, parts = [], []
    for t in threads:
        rs = {r["W"]: r for r in _rows(data, part="tiny", metric="decode_window", threads=t)
              if r.get("tok_s")}
        if 256 in rs and 4096 in rs:
            q = rs[4096]["tok_s"] / rs[256]["tok_s"]
            cases.append(q >= 0.8)
            parts.append(f"{fmt_num(rs[4096]['tok_s'])} vs {fmt_num(rs[256]['tok_s'])} tok/s "
                         f"= {q:.3g}x ({t}t)")
    out.append(("3. tiny window + sinks model: decode at W = 4,096 >= 0.8x its W = 256 speed",
                "; ".join(parts) or "-", _verdict(cases)))

    # 4. real model vs transformers, prefill and decode, 512 and 4096, 1 and 2 threads
    cases, parts, missing = [], [], []
    for t in (1, 2):
        got = False
        for metric in ("prefill", "decode"):
            for L in REAL_LENGTHS:
                r = _one(data, part="real", metric=metric, model=DENSE, impl="memarch", T=L,
                         threads=t)
                if r and r.get("ratio") is not None:
                    got = True
                    cases.append(r["ratio"] >= 1.0)
                    parts.append(f"{metric} {_len(L)}: {r['ratio']:.3g}x ({t}t)")
        if not got:
            missing.append(f"{t} thread(s)")
    out.append((("4. real model vs transformers: prefill and decode >= 1.0x at 512 and 4,096 "
                 "tokens, 1 and 2 threads"), "; ".join(parts) or "-", _verdict(cases, missing)))

    # 5. tiny models: decode >= 4x transformers' Llama (attention decides)
    cases, parts = [], []
    for t in threads:
        for n in ("attention", "linear_attention", "based"):
            r = _one(data, part="tiny", metric="decode", model=n, threads=t)
            if r and r.get("ratio") is not None:
                if n == "attention":
                    cases.append(r["ratio"] >= 4.0)
                parts.append(f"{TINY_LABELS[n]} {r['ratio']:.3g}x ({t}t)")
    out.append((("5. tiny 2-layer d256 models: decode >= 4x transformers' Llama of the same size "
                 "(attention decides; linear attention and BASED reported)"),
                "; ".join(parts) or "-", _verdict(cases)))

    # 6. guard share <= 5%
    cases, parts, notes = [], [], []
    for t in threads:
        for op in ("linear_attn", "delta_rule"):
            rs = _rows(data, part="ops", metric="guard_share", model=op, threads=t)
            if not rs:
                continue
            r = rs[-1]
            if r.get("guard_share") is None:
                notes.append(f"{op}: {r.get('status', 'not measured')}")
                continue
            cases.append(r["guard_share"] <= 0.05)
            parts.append(f"{op} {_pct(r['guard_share'])} ({t}t)")
    out.append(("6. the non-finite guard's share of the linear_attn / delta_rule forward <= 5%",
                "; ".join(parts + notes) or "-", _verdict(cases)))

    # 7. full attention >= 0.95x SDPA at 1k
    cases, parts = [], []
    for t in threads:
        r = _one(data, part="ops", metric="attention_vs_sdpa", T=ATT_T, threads=t)
        if r and r.get("ratio") is not None:
            cases.append(r["ratio"] >= 0.95)
            parts.append(f"{r['ratio']:.3g}x ({r['memarch_ms']:.3g} vs SDPA {r['peer_ms']:.3g} "
                         f"ms, {t}t)")
    out.append(("7. full attention >= 0.95x SDPA causal at 1k", "; ".join(parts) or "-",
                _verdict(cases)))

    # 8. sliding window + sinks forward >= 1.0x compiled FlexAttention at 4k and 16k
    cases, parts, missing = [], [], []
    for t in threads:
        for T in SWA_LENGTHS:
            r = _one(data, part="ops", metric="window_vs_flex", T=T, threads=t)
            if r and r.get("ratio") is not None:
                cases.append(r["ratio"] >= 1.0)
                parts.append(f"{_len(T)}: {r['ratio']:.3g}x ({t}t)")
            else:
                missing.append(f"{_len(T)} ({t}t)")
    out.append((("8. sliding window + sinks forward >= 1.0x compiled FlexAttention at 4k and "
                 "16k"), "; ".join(parts) or "-", _verdict(cases, missing)))

    # 9. windowed training peak memory <= full attention's at 16k
    cases, parts, missing = [], [], []
    for t in threads:
        rs = _rows(data, part="ops", metric="train_peak_memory", threads=t)
        Ts = sorted({r["T"] for r in rs})
        if not Ts:
            continue
        T = MEM_T if MEM_T in Ts else Ts[-1]
        if T != MEM_T:
            missing.append(f"16k ({t}t)")
        by = {r["model"]: r for r in rs if r["T"] == T}
        f = by.get("full attention")
        for name in ("window 512", f"window 512 + {N_SINKS} sinks"):
            w = by.get(name)
            if f and w:
                cases.append(w["peak_bytes"] <= f["peak_bytes"])
                parts.append(f"{_len(T)}: {name} {fmt_num(w['peak_bytes'])}B vs full "
                             f"{fmt_num(f['peak_bytes'])}B ({t}t)")
    out.append((("9. windowed attention's training (fwd + bwd) peak memory <= full attention's "
                 "at 16k"), "; ".join(parts) or "-", _verdict(cases, missing)))
    return out


def render_targets(data) -> str:
    lines = [("The inference-speed targets, decided from `benchmarks/results/inference-cpu.json` "
              "(t = torch threads):"), "",
             "| target | measured | result |", "|---|---|---|"]
    for name, measured, result in targets(data):
        word, _, rest = result.partition(" ")
        bold = f"**{word}** {rest}".strip() if word in (MET, MISSED) else result
        lines.append(f"| {name} | {measured} | {bold} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- render
def _superseded(s: dict, data) -> bool:
    """A status row (skipped / failed) that a later run measured past: a measured row of
    the same part (and implementation, model, metric where the status row names them) from
    a later run."""
    for r in data.get("rows", []):
        if r.get("status", "measured") != "measured" or r.get("part") != s.get("part"):
            continue
        if str(r.get("run", "")) <= str(s.get("run", "")):
            continue
        if s.get("impl") not in (None, "-") and r.get("impl") != s["impl"]:
            continue
        if s.get("model") not in (None, "-") and r.get("model") != s["model"]:
            continue
        if s.get("metric") != "status" and r.get("metric") != s.get("metric"):
            continue
        return True
    return False


def _status_notes(data) -> list[str]:
    notes = []
    for r in data.get("rows", []):
        st = r.get("status")
        if st and st != "measured" and not _superseded(r, data):
            what = " / ".join(str(x) for x in (r.get("part"), r.get("metric"), r.get("model"),
                                                 r.get("impl")) if x not in (None, "-"))
            notes.append(f"- {what}" + (f" ({r['threads']} thread(s))" if r.get("threads")
                                        else "") + f": {st}")
    return list(dict.fromkeys(notes))


def _render_real(data) -> list[str]:
    out = []
    dense = [r for r in _rows(data, part="real", model=DENSE)
             if r["metric"] in ("prefill", "decode") and r["impl"] in ("memarch",
                                                                         "transformers")]
    if dense:
        r0 = dense[0]
        out += [(f"**SmolLM2-135M-Instruct** ({r0.get('model_file', '?')}, dequantised to "
                 "float32), memarch against transformers "
                 f"{r0.get('transformers') or ''} on the same GGUF, in one process, calls "
                 "alternated; prompt: the KJV text from its first token. Prefill tok/s = "
                 "context / median prefill time; decode = 1 / median time per token after a "
                 "prefill of the context; ratio = memarch / transformers (> 1: memarch "
                 "faster); bound = read bandwidth / weight bytes per token; RSS = peak "
                 "resident memory of the measurement (MB, the process with both models "
                 "loaded)."), "",
                ("| threads | phase | context | memarch tok/s | transformers tok/s | ratio | "
                 "memarch / bound | transformers / bound | same greedy tokens | RSS peak MB "
                 "(memarch / transformers) |"),
                "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        keys = sorted({(r["threads"], r["metric"], r["T"]) for r in dense},
                      key=lambda k: (k[0], k[1] != "prefill", k[2]))
        for t, metric, L in keys:
            m = _one(data, part="real", metric=metric, model=DENSE, impl="memarch", T=L,
                     threads=t) or {}
            h = _one(data, part="real", metric=metric, model=DENSE, impl="transformers", T=L,
                     threads=t) or {}
            agree = m.get("tokens_agree")
            out.append(
                f"| {t} | {metric} | {L:,} | {fmt_num(m.get('tok_s'))} | "
                f"{fmt_num(h.get('tok_s'))} | {_x(m.get('ratio'))} | "
                f"{_pct(m.get('frac_of_bound')) if metric == 'decode' else '-'} | "
                f"{_pct(h.get('frac_of_bound')) if metric == 'decode' else '-'} | "
                f"{'-' if agree is None else ('yes' if agree else 'no')} | "
                f"{_mbs(m.get('rss_peak_mb'))} / {_mbs(h.get('rss_peak_mb'))} |")
    bw = sorted(_rows(data, part="real", metric="bandwidth"), key=lambda r: r["threads"])
    if bw:
        wb = next((r.get("weight_bytes") for r in _rows(data, part="real")
                   if r.get("weight_bytes") and r.get("impl") == "memarch"), None)
        bws = "; ".join(f"{r['threads']} thread(s): read {fmt_num(r['read_Bps'])}B/s, copy "
                        f"{fmt_num(r['copy_Bps'])}B/s" for r in bw)
        bound = "" if not wb else (
            f" Weights read per token: {fmt_num(wb)}B (fp32), so the decode bound is "
            + ", ".join(f"{fmt_num(r['read_Bps'] / wb)} tok/s at {r['threads']} thread(s)"
                        for r in bw) + ".")
        out += ["", (f"Memory bandwidth, this process, best of {bw[0].get('reps', '?')} over "
                     "512 MB fp32 (read: `x.sum()`; copy: `y.copy_(x)`, bytes read + written): "
                     f"{bws}.{bound}")]
    win = [r for r in _rows(data, part="real", metric="decode_window") if r.get("ms")]
    if win:
        out += ["", (f"**Decode against context**, memarch, dense and window W + {N_SINKS} sinks "
                     f"(cache positions), prefilled by `stream(..., chunk_size={CHUNK})`; ms per "
                     "token = median of the decode steps; bound (weights) and bound with the KV "
                     "cache a token reads:"), "",
                ("| threads | model | context | decode ms/token | tok/s | / bound | / bound "
                 "with KV | prefill tok/s | RSS peak MB |"),
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        order = {DENSE: 0, **{window_model(W): i + 1 for i, W in enumerate(REAL_WINDOWS)}}
        for r in sorted(win, key=lambda r: (r["threads"], order.get(r["model"], 9), r["T"])):
            kvf = (r["tok_s"] / r["bound_kv_tok_s"]) if r.get("bound_kv_tok_s") else None
            out.append(f"| {r['threads']} | {r['model']} | {_len(r['T'])} | {r['ms']:.3g} | "
                       f"{fmt_num(r['tok_s'])} | {_pct(r.get('frac_of_bound'))} | "
                       f"{_pct(kvf)} | {fmt_num(r.get('prefill_tok_s'))} | "
                       f"{_mbs(r.get('rss_peak_mb'))} |")
    comp = _rows(data, part="real", metric="decode_compile")
    for r in sorted(comp, key=lambda r: r["threads"]):
        if r.get("status") != "measured":
            continue
        same = "yes" if r.get("tokens_agree") else "no"
        out += ["", (f"`stream(..., compile=True)`, dense, context {r['T']:,}, "
                     f"{r['threads']} thread(s): decode {fmt_num(r.get('tok_s'))} tok/s "
                     f"against {fmt_num(r.get('eager_tok_s'))} eager "
                     f"({_x(r.get('ratio_vs_eager'))}), first decode step (the compile) "
                     f"{r['compile_s']:.3g} s, same greedy tokens: {same}.")]
    lc = [r for r in _rows(data, part="real", impl="llama.cpp") if r.get("tok_s")]
    if lc:
        r0 = lc[0]
        out += ["", (f"**llama.cpp** (llama-cpp-python {r0.get('llama_cpp') or '?'}, "
                     f"{LLAMA_CPP_NOTE}; the same GGUF, its weights read as stored):"), "",
                ("| threads | phase | context | llama.cpp tok/s | memarch tok/s | memarch / "
                 "llama.cpp |"), "|---:|---|---:|---:|---:|---:|"]
        for r in sorted(lc, key=lambda r: (r["threads"], r["metric"] != "prefill", r["T"])):
            m = _one(data, part="real", metric=r["metric"], model=DENSE, impl="memarch",
                      T=r["T"], threads=r["threads"]) or {}
            q = m["tok_s"] / r["tok_s"] if m.get("tok_s") else None
            out.append(f"| {r['threads']} | {r['metric']} | {r['T']:,} | {fmt_num(r['tok_s'])} | "
                       f"{fmt_num(m.get('tok_s'))} | {_x(q)} |")
    return out


def _render_tiny(data) -> list[str]:
    out = []
    tiny = [r for r in _rows(data, part="tiny", metric="decode") if r.get("tok_s")]
    if tiny:
        order = [*TINY_BLOCKS, "llama"]
        out += [(f"**Tiny models** (2 layers, d_model 256, 4 heads, vocabulary 256, SwiGLU; "
                 f"random init): decode tok/s after {tiny[0]['T']} tokens, memarch via `stream`, "
                 "transformers' Llama via its cached loop, alternated; ratio = memarch / "
                 "Llama:"), "",
                "| threads | model | decode tok/s | ms/token | vs Llama |",
                "|---:|---|---:|---:|---:|"]
        for r in sorted(tiny, key=lambda r: (r["threads"], order.index(r["model"])
                                             if r["model"] in order else 9)):
            out.append(f"| {r['threads']} | {TINY_LABELS.get(r['model'], r['model'])} | "
                       f"{fmt_num(r['tok_s'])} | {r['ms']:.3g} | {_x(r.get('ratio'))} |")
    tw = [r for r in _rows(data, part="tiny", metric="decode_window") if r.get("tok_s")]
    if tw:
        out += ["", (f"**Tiny window + {N_SINKS} sinks model against W** (the `streaming` "
                     "suite's 2-layer d_model 128 model, context W + "
                     f"{TINY_WINDOW_EXTRA}: the window is full):"), "",
                "| threads | W | context | decode tok/s | ms/token | vs W = 256 |",
                "|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(tw, key=lambda r: (r["threads"], r["W"])):
            out.append(f"| {r['threads']} | {r['W']:,} | {r['T']:,} | {fmt_num(r['tok_s'])} | "
                       f"{r['ms']:.3g} | {_x(r.get('ratio_vs_W256'))} |")
    return out


def _render_ops(data) -> list[str]:
    out = []
    pairs = [r for r in _rows(data, part="ops") if r["metric"] in ("attention_vs_sdpa",
                                                                   "window_vs_flex")]
    if pairs:
        out += [("**Ops** (B=1, H=4, D=64, forward, no grad, alternated; ratio = peer ms / "
                 "memarch ms, > 1: memarch faster):"), "",
                "| threads | op (peer / memarch) | T | memarch ms | peer ms | ratio |",
                "|---:|---|---:|---:|---:|---:|"]
        for r in sorted(pairs, key=lambda r: (r["threads"], r["metric"], r["T"])):
            out.append(f"| {r['threads']} | {r['model']} | {_len(r['T'])} | "
                       f"{fmt_num(r['memarch_ms'])} | {fmt_num(r['peer_ms'])} | "
                       f"{_x(r['ratio'])} |")
    mem = _rows(data, part="ops", metric="train_peak_memory")
    if mem:
        out += [""] * bool(out) + [
                ("Training (forward + backward) peak memory of the "
                 "attention layer (d_model 256, 4 heads, B=1), `common.peak_bytes`:"), "",
                "| threads | layer | T | peak memory | fwd + bwd s (profiled) |",
                "|---:|---|---:|---:|---:|"]
        for r in sorted(mem, key=lambda r: (r["threads"], r["T"], r["model"])):
            out.append(f"| {r['threads']} | {r['model']} | {_len(r['T'])} | "
                       f"{fmt_num(r['peak_bytes'])}B | {r.get('profiled_call_s', '-')} |")
    guard = [r for r in _rows(data, part="ops", metric="guard_share")
             if r.get("guard_share") is not None]
    if guard:
        out += ["", ("Non-finite guard's share of the op's forward (`impl='torch'`, B 1, "
                     "H 4, K = V = 64; `memarch.kernels._common.GUARD` on / off):"), "",
                "| threads | op | T | guarded ms | unguarded ms | guard share |",
                "|---:|---|---:|---:|---:|---:|"]
        for r in sorted(guard, key=lambda r: (r["threads"], r["model"])):
            out.append(f"| {r['threads']} | {r['model']} | {_len(r['T'])} | "
                       f"{fmt_num(r['guarded_ms'])} | {fmt_num(r['unguarded_ms'])} | "
                       f"{_pct(r['guard_share'])} |")
    return out


def render(data) -> str:
    m = data.get("meta", {})
    lines = [(f"Inference, {m.get('device', 'cpu')} ({m.get('cpu', '?')}, torch "
              f"{m.get('torch', '?')}, {str(m.get('date', '?'))[:10]}), float32, batch 1; "
              f"`{m.get('command', 'python -m benchmarks inference')}`.")]
    for part in (_render_real(data), _render_tiny(data), _render_ops(data)):
        if part:
            lines += [""] + part
    notes = _status_notes(data)
    if notes:
        lines += ["", "Not measured:", ""] + notes
    if len(lines) == 1:
        lines += ["", "No rows yet."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot
def plot(data, stem: Path) -> list[Path]:
    """Decode ms/token against context (real model: dense, W = 256, W = 1024) and the tiny
    window model's tok/s against W, one panel each, per thread count."""
    real = [r for r in _rows(data, part="real") if r.get("ms") and r.get("impl") == "memarch"
            and r["metric"] in ("decode", "decode_window")]
    tw = [r for r in _rows(data, part="tiny", metric="decode_window") if r.get("tok_s")]
    if not real and not tw:
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    styles = ["-", "--", ":", "-."]
    threads = _threads_in(data)
    for i, t in enumerate(threads):
        ls = styles[i % len(styles)]
        for j, name in enumerate([DENSE, *map(window_model, REAL_WINDOWS)]):
            pts = {}
            for r in real:
                if r["threads"] == t and r["model"] == name:
                    pts.setdefault(r["T"], r["ms"])
            if pts:
                xs = sorted(pts)
                ax1.plot(xs, [pts[x] for x in xs], marker="o", ls=ls, color=f"C{j}",
                         label=f"{name}, {t} thread(s)")
        pts = sorted((r["W"], r["tok_s"]) for r in tw if r["threads"] == t)
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=ls, color="C3",
                     label=f"{t} thread(s)")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        xs = sorted({x for line in ax.lines for x in line.get_xdata()})
        if xs:
            ax.set_xticks(xs, [_len(int(x)) for x in xs])
            ax.minorticks_off()
        if ax.lines:
            ax.set_ylim(0, 1.1 * max(max(line.get_ydata()) for line in ax.lines))
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_xlabel("context (tokens)")
    ax1.set_ylabel("decode ms / token")
    ax1.set_title("SmolLM2-135M, memarch decode (fp32, CPU)")
    ax2.set_xlabel("window W (tokens; context W + 256)")
    ax2.set_ylabel("decode tokens/s")
    ax2.set_title(f"tiny window + {N_SINKS} sinks model (2 layers, d128)")
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(f"{stem}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return [path]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="suite inference: utilities (measure with "
                                             "python -m benchmarks inference)")
    ap.add_argument("--render", help="print the markdown of a results file")
    a = ap.parse_args()
    if a.render:
        import json
        d = json.loads(Path(a.render).read_text())
        print(render(d))
        print()
        print(render_targets(d))
