"""Console output of a training run.

* Lightning's INFO lines once: the ``lightning`` package adds its own console handler at
  import and still propagates to the root logger, so under Hydra (whose handlers sit on the
  root logger) each line printed twice. ``setup_logging`` removes Lightning's handlers when
  the root logger has its own (keeping them otherwise, e.g. a plain ``python -c`` session).
* No advertisement lines ("💡 Tip: ... litlogger / litmodels") and no deprecation warning
  from Lightning's own code about torch's pytree API.
* ``StepPrinter``: a plain line every ``trainer.log_every_n_steps`` optimizer steps and one
  per validation, used when the progress bar is off (always when stdout is not a terminal,
  where a progress bar only garbles log files).
* ``command`` renders a ``python train.py ...`` hint that runs as printed from the current
  directory (the interpreter as ``.venv/bin/python`` and not a bare ``python`` when the run
  used a virtual environment that is not activated).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl

_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric",
                      "pytorch_lightning", "lightning_fabric")


class _NoTips(logging.Filter):
    """Drops Lightning's advertisement lines (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("💡 Tip") or "litmodels" in msg or "litlogger" in msg)


_FILTER = _NoTips()


def setup_logging() -> None:
    """Idempotent; see the module docstring."""
    root = logging.getLogger()
    for name in _LIGHTNING_LOGGERS:
        lg = logging.getLogger(name)
        if root.handlers and lg.propagate:
            for h in list(lg.handlers):
                if type(h) is logging.StreamHandler:     # Lightning's own console handler
                    lg.removeHandler(h)
        for h in lg.handlers:                            # kept handlers: no tips either
            if _FILTER not in h.filters:
                h.addFilter(_FILTER)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "pytorch_lightning.utilities.rank_zero"):
        lg = logging.getLogger(name)                     # where rank_zero_info logs
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # memarch's data position is a function of the global step (memarch.lit.data): a resume
    # mid-"epoch" is exact, so Lightning's warning that it may not be is wrong here
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended "
                                              r"before the epoch ended")
    # a resumed run writes to its own run directory by design (outputs/DATE/TIME)
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")


def _rel(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it lies under it."""
    p = Path(os.path.abspath(path))
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def python_command() -> str:
    """How to call this interpreter from the current directory: its path relative to it
    when it lies under it (``.venv/bin/python``: works without an activated venv), else
    ``python`` when that is what ``python`` on PATH runs, else its absolute path."""
    exe = sys.executable or "python"
    rel = _rel(exe)
    if not os.path.isabs(rel):
        return rel
    on_path = shutil.which("python")
    if on_path and (os.path.abspath(on_path) == os.path.abspath(exe) or (
            sys.prefix == sys.base_prefix          # not a venv: symlinks are the same python
            and os.path.realpath(on_path) == os.path.realpath(exe))):
        return "python"
    return rel


def command(*args: str) -> str:
    """``<python> <train.py> args...`` as a shell line that works from the current
    directory."""
    script = _rel(Path(__file__).resolve().parents[2] / "train.py")
    return shlex.join([python_command(), script, *args])


def _fmt(v) -> str:
    return f"{float(v):.4g}"


class StepPrinter(pl.Callback):
    """One plain line every ``every`` optimizer steps (``step 100/600 loss 0.123 lr ...``)
    and one after each validation; rank zero only."""

    def __init__(self, every: int, stream=None):
        self.every = max(1, int(every))
        self.stream = stream
        self._last = -1
        self._t0: float | None = None
        self._s0 = 0

    def _print(self, trainer, line: str) -> None:
        if trainer.is_global_zero:
            print(line, file=self.stream or sys.stdout, flush=True)

    def on_train_start(self, trainer, pl_module):
        self._t0, self._s0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, total = trainer.global_step, trainer.max_steps
        if step == self._last or not (step % self.every == 0 or step == total):
            return
        self._last = step
        m = trainer.callback_metrics
        loss = m.get("train/loss")
        if loss is None and isinstance(outputs, dict) and "loss" in outputs:
            loss = outputs["loss"]
        parts = [f"step {step}/{total}" if total and total > 0 else f"step {step}"]
        if loss is not None:
            parts.append(f"loss {_fmt(loss)}")
        if "train/acc" in m:
            parts.append(f"acc {100 * float(m['train/acc']):.1f}%")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if self._t0 is not None and step > self._s0:
            dt = time.perf_counter() - self._t0
            rate = (step - self._s0) / max(dt, 1e-9)
            parts.append(f"{rate:.3g} steps/s")
            if total and total > step:
                left = int((total - step) / rate)
                parts.append(f"~{left // 60}:{left % 60:02d} left")
        self._print(trainer, "  ".join(parts))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit":   # the final validate is
            return                                                # summed up by train.py
        m = trainer.callback_metrics
        parts = [f"validation at step {trainer.global_step}:"]
        if "val/loss" in m:
            parts.append(f"loss {_fmt(m['val/loss'])}")
        if "val/acc" in m:
            parts.append(f"acc {100 * float(m['val/acc']):.1f}%")
        if len(parts) > 1:
            self._print(trainer, "  ".join(parts))
