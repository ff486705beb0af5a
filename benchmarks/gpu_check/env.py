"""Step 1 of the GPU check: the grids, the log, where it runs (``dev()``) and
``preflight`` (TRITON_INTERPRET, CUDA, triton and memarch.kernels, the run's ``meta``)."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import sys
import threading
from pathlib import Path

try:      # a missing torch is reported by preflight() with what to do; triton is not imported here
    import torch
except ImportError:
    torch = None

BENCH = Path(__file__).resolve().parents[1]
OPS = ("linear_attn", "sliding_window_attn", "delta_rule")
DTYPES = ("fp32", "fp16", "bf16")
INSTALL_HINT = "python3 -m pip install --no-deps --no-build-isolation -e ."

GRIDS = {
    "quick": dict(Ds=(64, 128), Ts=(1, 65, 1000), B=2, H=2, W=100, sinks=3, variants=False,
                  bench=dict(B=4, H=8, Ds=(64, 128), Ts=(16384,), W=512, sinks=4,
                             dtype="bf16", reps=5, warmup=2)),
    "full": dict(Ds=(32, 64, 128, 256), Ts=(1, 63, 64, 65, 1000), B=2, H=2, W=100, sinks=3,
                 variants=True,
                 bench=dict(B=4, H=8, Ds=(64, 128), Ts=(4096, 16384, 65536), W=512, sinks=4,
                            dtype="bf16", reps=5, warmup=2)),
    "dry-run": dict(Ds=(16,), Ts=(1, 40), B=1, H=2, W=8, sinks=2, variants=False,
                    bench=dict(B=1, H=2, Ds=(16,), Ts=(64,), W=16, sinks=2, dtype="fp32",
                               reps=1, warmup=1)),
}


_LOG = None   # the log file beside the JSON, opened by main()
_LOG_LOCK = threading.Lock()
_DEVICE = "cpu"


def log(*parts):
    """Print to stdout and to the log file."""
    line = " ".join(str(p) for p in parts)
    with _LOG_LOCK:                        # worker threads report their tasks
        print(line, flush=True)
        if _LOG is not None:
            _LOG.write(line + "\n")
            _LOG.flush()


def version_tuple(v: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def dev() -> str:
    """Where the check runs: "cuda", or "cpu" for --dry-run (set by preflight)."""
    return _DEVICE


# ----------------------------------------------------------------------------- 1. preflight
class CannotRun(Exception):
    """The check cannot start here; the message says what to do."""


def preflight(dry_run: bool) -> dict:
    """Sets TRITON_INTERPRET, checks CUDA, imports triton and memarch.kernels. Returns meta."""
    global _DEVICE
    if dry_run:
        os.environ["TRITON_INTERPRET"] = "1"          # before memarch.kernels / triton import
    elif os.environ.pop("TRITON_INTERPRET", None) is not None:
        log("note: TRITON_INTERPRET was set; unset it so the kernels compile for the GPU")
    if "triton" in sys.modules and not dry_run:
        raise CannotRun("triton was imported before TRITON_INTERPRET could be unset")
    if torch is None:
        raise CannotRun(
            f"{sys.executable} cannot import torch. Run the check with a Python that has a "
            "CUDA build of torch and triton (GPU machines: torch 2.11 + triton 3.6, or torch "
            "2.13 + triton 3.7.1), e.g. `make gpu-check GPU_PY=/path/to/python`, after "
            f"`{INSTALL_HINT}` with that Python.")
    if not dry_run and not torch.cuda.is_available():
        raise CannotRun(
            f"no CUDA device found (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}). This check runs the Triton kernels on an NVIDIA GPU: run "
            f"`{INSTALL_HINT} && make gpu-check` on a machine with one. Here, `make gpu-check "
            "GPU_PY=.venv/bin/python ARGS=--dry-run` runs its steps on the CPU with tiny sizes "
            "(Triton interpreter), and `make test` runs the kernel tests.")
    _DEVICE = "cpu" if dry_run else "cuda"
    try:
        import triton
    except ImportError as e:
        raise CannotRun(f"cannot import triton ({e}): install the triton that matches torch "
                        "(torch 2.11 + triton 3.6, or torch 2.13 + triton 3.7.1)") from e
    try:
        import memarch.kernels  # noqa: F401
    except ImportError as e:
        raise CannotRun(f"cannot import memarch.kernels ({e}): run `{INSTALL_HINT}` in the "
                        "repository first") from e
    meta = shared().meta("cpu" if dry_run else "cuda", torch.get_num_threads(), command=command())
    meta.update(device=torch.cuda.get_device_name() if not dry_run else "cpu (dry run)",
                capability=list(torch.cuda.get_device_capability()) if not dry_run else None,
                memory_gib=(round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
                            if not dry_run else None),
                triton=triton.__version__, cuda=torch.version.cuda,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                triton_interpret=os.environ.get("TRITON_INTERPRET"))
    meta["commit"] = meta.get("commit") or None
    return meta


def shared():
    """``benchmarks/common.py``, the benchmarks' shared ``meta`` and ``RESULTS`` (imported only
    once preflight knows that torch imports: common imports it)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import common
    return common


def command() -> str:
    """This run's command line, as typed from the repository root."""
    return shlex.join([sys.executable, "-m", "benchmarks.gpu_check", *sys.argv[1:]])


def device_slug(meta: dict) -> str:
    if meta["capability"] is None:
        return "cpu-dry-run"
    return re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-") or "cuda"
