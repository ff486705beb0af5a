"""Lower layers never import higher ones (docs/design.md#import-layering)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["lightning", "pytorch_lightning", "hydra", "omegaconf", "wandb", "triton"]


def _modules_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_imports_no_training_or_triton(checks):
    mods = _modules_after("import memarch, memarch.mixers, memarch.models, memarch.modules, "
                          "memarch.data, memarch.checkpoint, memarch.config, memarch.state, "
                          "memarch.generation")
    checks.true("memarch.mixers" in mods and "memarch.models" in mods, "modules were imported")
    bad = [m for m in mods if m.split(".")[0] in HEAVY]
    checks.true(not bad, f"core import pulled in {bad}")


def test_kernels_import_nothing_else_from_memarch(checks):
    mods = _modules_after("import memarch.kernels")
    checks.true("memarch.kernels" in mods, "memarch.kernels imported")
    bad = [m for m in mods if m.startswith("memarch.") and not m.startswith("memarch.kernels")]
    checks.true(not bad, f"memarch.kernels pulled in {bad}")
    # and statically: no file under kernels/ names another memarch module
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for n in names:
                checks.true(not (n == "memarch" or n.startswith("memarch.")) or
                            n.startswith("memarch.kernels"), f"{path.name} imports {n}")


def test_namespace_maps_repo_folders(checks):
    import memarch.eval
    import memarch.kernels
    checks.true(Path(memarch.kernels.__file__).parent == ROOT / "kernels", "kernels/ folder")
    checks.true(Path(memarch.eval.__file__).parent == ROOT / "eval", "eval/ folder")
    checks.true(Path(memarch.__file__).parent == ROOT / "memarch", "memarch/ folder")
