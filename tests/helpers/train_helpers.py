"""Compose the Hydra config as train.py does, for in-process tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

# small, fast settings shared by the training tests
TINY = ["model.d_model=32", "data.batch_size=4", "data.val_size=8", "logger={}",
        "trainer.enable_progress_bar=false", "trainer.val_check_interval=1000",
        "trainer.log_every_n_steps=1"]


def compose_cfg(overrides: list[str], out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


def train_py_exit(args: list[str], out: Path, monkeypatch):
    """Run ``python train.py *args`` in-process (train.py's Hydra main, skipping a second
    interpreter's imports), with its outputs in ``out``; it must exit: returns the exit
    code / message (``SystemExit.code``)."""
    import importlib.util
    import sys

    import pytest
    monkeypatch.setattr(sys, "argv", [str(ROOT / "train.py"), *args, f"hydra.run.dir={out}",
                                      "hydra/job_logging=none", "hydra/hydra_logging=none"])
    GlobalHydra.instance().clear()
    spec = importlib.util.spec_from_file_location("__main__", ROOT / "train.py")
    with pytest.raises(SystemExit) as e:           # runs like ``python train.py ...``
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return e.value.code
