"""Step 2 of the GPU check: the peers (flash-linear-attention, flash-attn, FlexAttention),
found or pip-installed, never fatal when missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

try:      # a missing torch is reported by preflight() with what to do
    import torch
except ImportError:
    torch = None

from .env import log, version_tuple

PEERS = {   # name -> import name, pip package (None: part of torch), what it is compared with
    "fla": dict(module="fla", pip="fla-core", dists=("flash-linear-attention",),
                ops="linear_attn (chunk_simple_gla), delta_rule (chunk_gated_delta_rule)"),
    "flash_attn": dict(module="flash_attn", pip="flash-attn", dists=("flash_attn",),
                       ops="sliding_window_attn (flash_attn_func, window_size=(W-1, 0), no sinks)"),
    "flex_attention": dict(module="torch.nn.attention.flex_attention", pip=None,
                           ops="sliding_window_attn (sliding-window + sinks block mask)"),
}
PEER_OPS = {"linear_attn": ("fla",), "delta_rule": ("fla",),
            "sliding_window_attn": ("flex_attention", "flash_attn")}
FLA_HOPPER_REASON = ("fla refuses its gated backward on Hopper with Triton < 3.7.1 (its gradients "
                     "come out wrong there, fla #640): fwd+bwd not timed; use Triton >= 3.7.1 "
                     "(torch 2.13) or --fla-bypass-hopper-check for timing only")


# ----------------------------------------------------------------------------- 2. peers
def pip_install(package: str, wheels: str | None, timeout: int = 300) -> tuple[bool, str]:
    """pip install one package (binary wheels only) into this Python, keeping its torch and
    triton (a constraints file pins them). Returns (ok, pip's last lines)."""
    import triton
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(f"torch=={torch.__version__}\ntriton=={triton.__version__}\n")
        constraints = f.name
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--retries", "0", "--timeout", "15", "--only-binary", ":all:", "-c", constraints]
    if wheels:
        cmd += ["--no-index", "--find-links", str(Path(wheels).resolve())]
    try:
        p = subprocess.run(cmd + [package], capture_output=True, text=True, timeout=timeout)
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-3:])
        return p.returncode == 0, tail
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        os.unlink(constraints)


def installed_version(name: str) -> str | None:
    """The peer's version, without importing it (importing fla runs its autotune decorators,
    which load_fla must see first); None when it is not installed."""
    spec = PEERS[name]
    try:
        if importlib.util.find_spec(spec["module"]) is None:
            return None
    except (ImportError, ValueError):
        return None
    if spec["pip"] is None:
        return torch.__version__
    for dist in (spec["pip"], *spec.get("dists", ())):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "unknown"


def prepare_peer(name: str, *, dry_run: bool, install: bool, wheels: str | None) -> dict:
    """Find a peer, pip-installing it when missing. Returns {status: ok|skipped, version,
    reason, installed}; never raises."""
    spec = PEERS[name]
    rec = dict(status="skipped", version=None, reason=None, installed=False, ops=spec["ops"])
    if dry_run and spec["pip"]:
        rec["reason"] = "dry run: a CUDA-only package, not installed or run on the CPU"
        return rec
    version = installed_version(name)
    if version is None:
        if spec["pip"] is None:
            rec["reason"] = f"not in this torch ({torch.__version__})"
            return rec
        if not install:
            rec["reason"] = f"not installed (--no-install): pip install {spec['pip']}"
            return rec
        log(f"peer {name}: not installed; pip install {spec['pip']}"
            + (f" from {wheels}" if wheels else " from PyPI"))
        ok, out = pip_install(spec["pip"], wheels)
        importlib.invalidate_caches()
        version = installed_version(name) if ok else None
        if version is None:
            rec["reason"] = (f"pip install {spec['pip']} failed: {out}" if not ok else
                             f"pip installed {spec['pip']} but {spec['module']} is not found")
            return rec
        rec["installed"] = True
    rec.update(status="ok", version=version)
    if name == "fla" and fla_backward_blocked():
        rec["note"] = FLA_HOPPER_REASON
    return rec


def prepare_peers(args) -> dict:
    peers = {}
    for name in PEERS:
        peers[name] = prepare_peer(name, dry_run=args.dry_run, install=not args.no_install,
                                   wheels=args.wheels)
        p = peers[name]
        log(f"peer {name}: {p['status']}"
            + (f" {p['version']}" if p["version"] else "")
            + (" (installed now)" if p["installed"] else "")
            + (f": {p['reason']}" if p["reason"] else "")
            + (f" [{p['note']}]" if p.get("note") else ""))
    return peers


def fla_backward_blocked() -> bool:
    """fla 0.6 raises in its gated backward on Hopper (sm_90) with 3.4 <= Triton < 3.7.1."""
    import triton
    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
            and (3, 4, 0) <= version_tuple(triton.__version__) < (3, 7, 1))


def load_fla(full_autotune: bool, bypass_hopper_check: bool) -> dict:
    """fla's two ops. Unless full_autotune, each fla kernel autotunes over its 2 configs
    closest to 4 warps / 2 stages (the full sweep costs minutes of compiles): fla's times are
    then untuned, but cheap to take."""
    import triton
    original = triton.autotune

    def cut_autotune(configs, key, *a, **kw):
        def distance(c):
            return abs(c.num_warps.bit_length() - 3), abs((c.num_stages or 2) - 2)
        return original(sorted(configs, key=distance)[:2], key, *a, **kw)

    if not full_autotune:
        triton.autotune = cut_autotune
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.simple_gla import chunk_simple_gla
    finally:
        triton.autotune = original
    if bypass_hopper_check:
        importlib.import_module("fla.ops.common.chunk_o").TRITON_ABOVE_3_7_1 = True
    return dict(chunk_simple_gla=chunk_simple_gla, chunk_gated_delta_rule=chunk_gated_delta_rule)
