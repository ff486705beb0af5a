"""The wheel: built without setuptools warnings (the install printed ~135 lines of them), and
holding every package and data file the code reads (Hydra configs, the corpus, the ops)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_quietly_and_ships_its_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Warning" not in out and "warning" not in out, out[-3000:]
    names = zipfile.ZipFile(next(tmp_path.glob("memarch-*.whl"))).namelist()
    for want in ["memarch/eval/configs/eval.yaml", "memarch/data/corpora/kjv.txt.xz",
                 "memarch/eval/longbench/tasks.yaml", "memarch/kernels/_common.py",
                 "memarch/kernels/linear_attention/naive.py",
                 "memarch/kernels/gated_delta_rule/torch_chunk.py",
                 "memarch/kernels/sliding_window/triton_swa.py"]:
        assert want in names, want
    assert not any(n.startswith("kernels/") for n in names), "no top-level kernels package"
