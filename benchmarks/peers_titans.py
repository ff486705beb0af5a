"""The peers suite's Titans group (``python -m benchmarks peers --peers-groups titans``):
memarch's ``NeuralMemory`` and titans-pytorch's, built at matched settings, and the renderer
of ``results/titans_cpu.json``, the table of the standalone script this module replaces.

The peer, titans-pytorch, is NOT a memarch dependency. It goes into a folder of its own,
``.bench-deps/`` at the repository root (git-ignored by the ``.gitignore`` inside it), with
``--no-deps`` so that pip never touches the venv's torch (an unpinned ``torch>=2.8`` would
pull a multi-GB CUDA wheel); the rest of its dependencies (einops, numpy, sympy,
cloudpickle, packaging, tqdm) are already in memarch's venv (``make bench-deps`` runs this)::

    .venv/bin/python -m pip install --no-deps --target .bench-deps \\
        titans-pytorch==0.5.5 assoc-scan==0.0.6 axial-positional-embedding==0.3.12 \\
        einx==0.4.3 hyper-connections==0.4.11 rotary-embedding-torch==0.9.1 \\
        tensordict==0.15.3 x-transformers==2.31.10 torch-einops-utils==0.2.0 \\
        frozendict==2.5.1 pyvers==0.2.3 loguru==0.7.3
    echo '*' > .bench-deps/.gitignore

(``ninja`` and ``accelerated-scan``, also in its metadata, are only used on GPU and not
installed.) ``import_peer`` appends ``.bench-deps`` to ``sys.path`` (after the venv, so the
venv's torch and einops win) and returns every version it imported.

Settings (all sides): d_model 256, 4 heads of 64, memory = 2-layer MLP with expansion 4,
chunk 64, momentum on, forgetting (weight decay) on; batch 1, fp32. titans-pytorch:
``NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=64, momentum=True,
default_model_kwargs=dict(depth=2, expansion_factor=4.))``, everything else at its defaults
(the headline peer), and once more with ``batch_size=64``: its default takes every chunk's
gradient at the weights the call started with, while memarch (as the paper) takes chunk j's
gradient at the weights after chunk j-1; ``batch_size=64`` makes titans-pytorch compute that
same recurrence. ``make_memarch`` / ``make_peer`` return what each side computes and which
defaults differ (``MEMARCH_NOTES``, ``PEER_NOTES``).

``results/titans_cpu.json`` was measured by the former ``benchmarks/titans.py`` (sides
alternated call by call, fwd and fwd+bwd, T = 1k and 4k, 2 threads, matmul FLOPs from
``torch.utils.flop_counter``); ``render`` still turns it into the README's ``titans_cpu``
table. New measurements of the same pairs are the peers suite's ``titans`` rows.
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PEER_PINS = {   # what the install command above puts in .bench-deps (recorded in the JSON)
    "titans-pytorch": "0.5.5", "assoc-scan": "0.0.6", "axial-positional-embedding": "0.3.12",
    "einx": "0.4.3", "hyper-connections": "0.4.11", "rotary-embedding-torch": "0.9.1",
    "tensordict": "0.15.3", "x-transformers": "2.31.10", "torch-einops-utils": "0.2.0",
    "frozendict": "2.5.1", "pyvers": "0.2.3", "loguru": "0.7.3",
}
CONFIG = {"d_model": 256, "n_heads": 4, "head_dim": 64, "depth": 2, "expansion": 4,
          "chunk_size": 64, "momentum": True, "forgetting": True, "batch": 1, "dtype": "float32"}


# ----------------------------------------------------------------------------- the sides
def make_memarch(c=CONFIG):
    """memarch's NeuralMemory at the benchmark's settings: (module, run, description)."""
    from memarch.mixers import NeuralMemory
    m = NeuralMemory(c["d_model"], n_heads=c["n_heads"], head_dim=c["head_dim"],
                     depth=c["depth"], expansion=c["expansion"], chunk_size=c["chunk_size"],
                     momentum=c["momentum"], forgetting=c["forgetting"])
    kwargs = (f"NeuralMemory({c['d_model']}, n_heads={c['n_heads']}, head_dim={c['head_dim']}, "
              f"depth={c['depth']}, expansion={c['expansion']}, chunk_size={c['chunk_size']}, "
              f"momentum={c['momentum']}, forgetting={c['forgetting']})")
    return m, (lambda x: m(x).y), {"constructor": f"memarch.mixers.{kwargs}",
                                   "notes": MEMARCH_NOTES}


def import_peer():
    """Import titans_pytorch from the venv or from .bench-deps; its package versions."""
    common.add_bench_deps()                # after the venv: the venv's torch/einops win
    import titans_pytorch  # noqa: F401
    versions = {}
    for name in PEER_PINS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


MEMARCH_NOTES = [
    ("memarch.mixers.NeuralMemory at its defaults otherwise: q, k, v = SiLU(x W) then a "
     "depthwise causal conv of width 4, q and k L2-normalised; per-token gates theta (max_lr "
     "0.1), eta (momentum), alpha (forgetting) (gates='token'); memory MLP 64->256->64 per "
     "head with SiLU, no residual norm; loss ||M(k) - v||^2 (sum over the head dim)"),
    ("chunks are sequential: the gradients of chunk j are taken at the weights after chunk "
     "j-1 (the paper's chunked training), in closed form (no autograd inside); the read of a "
     "token uses the weights after the previous complete chunk; output W_o (RMSNorm(y) * "
     "SiLU(x W_g))"),
]

PEER_NOTES = [
    ("settings mapped: dim=256, heads=4, dim_head=64, chunk_size=64, momentum=True (first "
     "order), default_model_kwargs=dict(depth=2, expansion_factor=4.) (its MemoryMLP "
     "64->256->64 per head, GELU, no biases); forgetting is always on in titans-pytorch "
     "(to_decay_factor)"),
    ("defaults kept: per-token adaptive learning rate (sigmoid * max_lr 1, as a loss weight), "
     "per-chunk momentum and decay gates from the chunk's mean input (AveragePool), loss "
     "mean over the head dim of (M(k) - v)^2"),
    ("defaults kept: pre_rmsnorm=True (RMSNorm before retrieve and store), "
     "mem_model_norm_add_residual=True (memory output = LayerNorm(MLP(k)) + k), "
     "per_head_learned_parameters=True, qk_rmsnorm=False, post_rmsnorm=False, no short conv, "
     "no q/k L2 norm, a sigmoid retrieve gate per head, output projection (combine_heads), "
     "max_grad_norm=None, use_accelerated_scan=False (its accelerated scan is GPU-only), no "
     "torch.compile"),
    ("per-token gradients with torch.func (vmap of grad over the chunks), momentum and decay "
     "as two associative scans over chunks; output used: retrieved (first element of its "
     "(retrieved, state) return)"),
]
PEER_BATCH_NOTES = {
    None: "batch_size=None (its default, the fastest): every chunk's gradient is taken at the "
          "weights the call started with (all chunks in one vmap); the weights the gradients "
          "see never change within a call, unlike memarch's",
    64: "batch_size=64 (= chunk_size): the weights are updated after every chunk, so each "
        "chunk's gradient is taken at the weights after the previous chunk, the same "
        "recurrence memarch computes; titans-pytorch then loops over chunks in Python",
}


def make_peer(c=CONFIG, batch_size=None):
    """titans-pytorch's NeuralMemory at the benchmark's settings: (module, run, description).
    ``batch_size`` is its TTT batch (None: its default; 64: update every chunk, as memarch)."""
    from titans_pytorch import NeuralMemory
    m = NeuralMemory(dim=c["d_model"], heads=c["n_heads"], dim_head=c["head_dim"],
                     chunk_size=c["chunk_size"], momentum=c["momentum"], batch_size=batch_size,
                     default_model_kwargs={"depth": c["depth"],
                                           "expansion_factor": float(c["expansion"])})
    constructor = (f"titans_pytorch.NeuralMemory(dim={c['d_model']}, heads={c['n_heads']}, "
                   f"dim_head={c['head_dim']}, chunk_size={c['chunk_size']}, "
                   f"momentum={c['momentum']}, batch_size={batch_size}, "
                   f"default_model_kwargs=dict(depth={c['depth']}, "
                   f"expansion_factor={float(c['expansion'])}))")
    return m, (lambda x: m(x)[0]), {"constructor": constructor,
                                    "notes": [PEER_BATCH_NOTES[batch_size], *PEER_NOTES]}


PEER = "titans-pytorch"                  # the headline peer: its defaults
PEER_MATCHED = "titans-pytorch batch_size=64"


# ----------------------------------------------------------------------------- titans_cpu.json
def render(data) -> str:
    """Markdown table from a results dict or JSON path."""
    if isinstance(data, (str, Path)):
        data = json.loads(Path(data).read_text())
    m, c = data["meta"], data["config"]
    peer = data["sides"].get(PEER, {}).get("version")
    src = m.get("memarch_titans_py") or {}
    commit = str(m.get("commit"))
    if src.get("modified_vs_head"):
        commit += f" with uncommitted {src['path']} (blob {src['blob'][:7]})"
    head = (f"Titans neural memory, tokens/s, {m['device']} ({m.get('cpu')}, {m['threads']} "
            f"threads, torch {m['torch']}, commit {commit}, {m['date'][:10]}): "
            f"d_model {c['d_model']}, {c['n_heads']} heads x {c['head_dim']}, "
            f"depth-{c['depth']} MLP memory (expansion {c['expansion']}), chunk "
            f"{c['chunk_size']}, momentum, forgetting, B={c['batch']}, {c['dtype']}; "
            f"median of {data['reps']} calls, sides interleaved; titans-pytorch {peer} "
            f"(`batch_size=64`: weights updated every chunk, the recurrence memarch "
            f"computes; default: all gradients at the starting weights):")
    flops = all("matmul_gflop_fwd_bwd" in r for r in data["rows"])
    cols = ("| T | implementation | fwd+bwd tokens/s | fwd tokens/s | memarch speed-up, "
            "fwd+bwd | memarch speed-up, fwd |")
    lines = [head, "", cols + (" matmul GFLOP per fwd+bwd | GFLOP/s, fwd+bwd |" if flops
                               else ""),
             "|---:|---|---:|---:|---:|---:|" + ("---:|---:|" if flops else "")]
    for r in data["rows"]:
        rr = data["ratios"].get(str(r["T"]), {}).get(r["side"])
        name = {PEER: f"titans-pytorch {peer} (defaults)",
                PEER_MATCHED: f"titans-pytorch {peer}, `batch_size=64`"}.get(r["side"], r["side"])
        lines.append(f"| {r['T']:,} | {name} | {r['fwd_bwd_tokens_per_s']:,.0f} | "
                     f"{r['fwd_tokens_per_s']:,.0f} | "
                     + (f"{rr['fwd_bwd']:.1f}x | {rr['fwd']:.1f}x |" if rr else "— | — |")
                     + (f" {r['matmul_gflop_fwd_bwd']:.1f} | "
                        f"{r['matmul_gflop_per_s_fwd_bwd']:.1f} |" if flops else ""))
    t = data["target"]
    met = {True: "met", False: "not met", None: "not measured"}[t.get("met")]
    lines += ["", (f"Target: memarch fwd+bwd >= {t['fwd_bwd_ratio']:g}x titans-pytorch "
                   f"(defaults): {met}.")
              + (" Matmul FLOPs are torch.utils.flop_counter's count (matmuls and "
                 "convolutions) of one call; GFLOP/s divides it by the median time." if flops
                 else "")]
    for name, s in data["sides"].items():
        if s.get("status") not in (None, "measured"):
            lines += ["", f"{name}: {s['status']}"]
    return "\n".join(lines) + "\n"

