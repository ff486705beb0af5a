"""Decode speed of full attention against context length: KV-cache appends in place
(amortised O(1) per token) vs a copy of the whole cache per token (the old behaviour).

    python benchmarks/decode.py                      # CPU -> results/decode_cpu.{json,md}
    python benchmarks/decode.py --device cuda        # -> results/decode_cuda.{json,md}
    python benchmarks/decode.py --render results/decode_cpu.json

One ``memarch.mixers.Attention`` layer (d_model 512, 8 heads, B=1) decodes ``steps`` tokens
after a cache of L tokens (L = 1k, 8k, 32k), under ``torch.no_grad``. "in place" is the
normal path; "copy" hands the layer a detached view of the state before each token, which
drops the buffer and so forces a copy of the cache each step; "attention math" times SDPA
of one query over the same cache alone. The target: time per token grows only as
attention's own O(L) work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import RESULTS, sync  # noqa: E402

from memarch import state as st  # noqa: E402
from memarch.mixers import Attention, KVCacheState  # noqa: E402
from memarch.mixers.attention import _append_kv  # noqa: E402


@torch.no_grad()
def decode_ms(layer, L, steps, mode, device):
    """Median ms per decoded token after a cache of L tokens."""
    H, D = layer.n_kv_heads, layer.head_dim
    k, v = (torch.randn(1, H, L, D, device=device) for _ in range(2))
    e = torch.empty(1, H, 0, D, device=device)
    K, V = _append_kv(e, e, k, v)                          # a buffered cache, as prefill makes
    state = KVCacheState(K, V, torch.full((1,), L, device=device))
    x = torch.randn(1, 1, layer.d_model, device=device)
    ts = []
    if mode == "attention math":            # the floor: SDPA of one query over the cache
        q = torch.randn(1, layer.n_heads, 1, D, device=device)
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(q, K, V, enable_gqa=True)
            sync(device)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts[2:]) * 1e3
    for _ in range(steps):
        if mode == "copy":
            state = st.detach(state)                        # a new view: no buffer, so a copy
        sync(device)
        t0 = time.perf_counter()
        state = layer(x, state).state
        sync(device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts[2:]) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="1024,8192,32768")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--render", help="print the markdown table of a results JSON")
    a = ap.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())))
        return
    torch.manual_seed(0)
    layer = Attention(512, n_heads=8).to(a.device).eval()
    rows = []
    for L in map(int, a.lengths.split(",")):
        for mode in ("in place", "copy", "attention math"):
            ms = decode_ms(layer, L, a.steps, mode, a.device)
            rows.append(dict(context=L, mode=mode, ms_per_token=ms, tokens_per_s=1e3 / ms))
            print(f"L={L:6d} {mode:8s} {ms:8.3f} ms/token  {1e3 / ms:8.1f} tokens/s")
    out = dict(meta=common.meta(a.device, torch.get_num_threads(),
                                command=common.script_command()),
               config=dict(d_model=512, n_heads=8, batch=1, steps=a.steps), rows=rows)
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"decode_{a.device}"
    base.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(out) + "\n")
    print(render(out))


def render(res) -> str:
    m = res["meta"]
    by = {(r["context"], r["mode"]): r for r in res["rows"]}
    lines = [f"Decode, full attention (d_model 512, 8 heads, B=1), {m['device']} "
             f"({m.get('gpu') or m.get('cpu')}, {m['threads']} threads, torch {m['torch']}):",
             "", "| context | in place: ms/token | tokens/s | copy per token: ms/token | "
                 "tokens/s | speed-up | attention math alone: ms |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for L in sorted({r["context"] for r in res["rows"]}):
        a, b = by[(L, "in place")], by[(L, "copy")]
        c = by.get((L, "attention math"))
        lines.append(f"| {L:,} | {a['ms_per_token']:.3f} | {a['tokens_per_s']:.0f} | "
                     f"{b['ms_per_token']:.3f} | {b['tokens_per_s']:.0f} | "
                     f"{b['ms_per_token'] / a['ms_per_token']:.1f}x | "
                     f"{c['ms_per_token']:.3f} |" if c else "| - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
