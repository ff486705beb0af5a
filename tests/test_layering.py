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
    for path in sorted([*(ROOT / "kernels").rglob("*.py"),
                        *(ROOT / "memarch" / "kernels").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            for n in names:
                checks.true(not (n == "memarch" or n.startswith("memarch.")) or
                            n.startswith("memarch.kernels"), f"{path.name} imports {n}")


def test_namespace_maps_repo_folders(checks):
    import memarch.eval
    import memarch.kernels.linear_attention

    import memarch.kernels
    checks.true(Path(memarch.kernels.__file__).parent == ROOT / "memarch" / "kernels",
                "memarch/kernels/ folder")
    checks.true(Path(memarch.kernels.linear_attention.__file__).parent
                == ROOT / "kernels" / "linear_attention", "the ops in kernels/<package>/")
    checks.true(Path(memarch.eval.__file__).parent == ROOT / "eval", "eval/ folder")
    checks.true(Path(memarch.__file__).parent == ROOT / "memarch", "memarch/ folder")


# Every package of memarch in one layer; a module may import its own layer and the ones
# below, never one above (lazy imports inside functions included). A new package must be
# placed here, so the question "who may import it" is answered when it is added.
LAYERS = [
    {"memarch.kernels"},                                              # the ops
    {"memarch.state", "memarch.modules", "memarch.config", "memarch.data",
     "memarch.pretrained"},                                           # no mixers
    {"memarch.mixers"},
    {"memarch.models", "memarch.hub"},                                # models and their files
    {"memarch.checkpoint", "memarch.overrides", "memarch.generation"},
    {"memarch.convert", "memarch.generate"},                          # command lines
    {"memarch.lit", "memarch.eval"},                                  # training, evaluation
]
_RANK = {p: i for i, layer in enumerate(LAYERS) for p in layer}


def _source_modules():
    """(module name, path) of every file that installs under ``memarch``: memarch/, and the
    kernels/ and eval/ folders (memarch.kernels.*, memarch.eval.*)."""
    for folder, prefix in (("memarch", "memarch"), ("kernels", "memarch.kernels"),
                           ("eval", "memarch.eval")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = prefix.split(".") + [p for p in rel if p != "__init__"]
            yield ".".join(parts), path, path.name == "__init__.py"


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def _imports(mod: str, path: Path, is_pkg: bool):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")[:len(mod.split(".")) - node.level + is_pkg]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "memarch":              # from memarch import state, ...
                yield from (f"memarch.{a.name}" for a in node.names)
            else:
                yield target


def test_every_package_imports_only_its_layer_and_below():
    mods = list(_source_modules())
    unplaced = sorted({_package(m) for m, _, _ in mods} - set(_RANK) - {"memarch"})
    assert not unplaced, f"place these packages in LAYERS: {unplaced}"
    bad = []
    for mod, path, is_pkg in mods:
        own = _RANK.get(_package(mod), -1)
        for target in _imports(mod, path, is_pkg):
            if target.split(".")[0] != "memarch" or target == "memarch":
                continue
            if _RANK.get(_package(target), -1) > own:
                bad.append(f"{path.relative_to(ROOT)}: {mod} imports {target}")
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)
