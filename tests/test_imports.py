"""No import traps: nothing importable from the repository root shadows an installed
package, and no op function shadows its own module (docs/design.md#layout)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_at_root(code: str) -> str:
    """``python -c code`` with the repository root as the current directory (so first on
    sys.path, as for ``python -c`` or ``python -m pytest`` typed there)."""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def _importable_at_root() -> list[str]:
    """Top-level names a ``python`` started at the root can import from the root itself:
    regular packages (folders with ``__init__.py``) and modules (``*.py``)."""
    names = [p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    return sorted(names + [p.stem for p in ROOT.glob("*.py")])


def test_nothing_at_the_root_shadows_an_installed_package():
    """Each name importable from the root (``eval``, ``train``, ...) must not also be an
    installed package, other than memarch's own editable install of the same files:
    ``import kernels`` from the root used to load memarch's folder instead of the PyPI
    ``kernels`` that transformers imports."""
    names = _importable_at_root()
    code = ("import importlib.util, json, sys\n"
            "sys.path = [p for p in sys.path if p not in ('', '.', %r)]\n"
            "specs = {n: importlib.util.find_spec(n) for n in %r}\n"
            "print(json.dumps({n: s and (s.origin or 'namespace') for n, s in specs.items()}))"
            % (str(ROOT), names))
    installed = json.loads(_run_at_root(code))
    own = {n: str(ROOT / n / "__init__.py") if (ROOT / n).is_dir() else str(ROOT / f"{n}.py")
           for n in names}
    clash = sorted(n for n, origin in installed.items() if origin and origin != own[n])
    assert not clash, f"importable from the repo root and installed too: {clash}"


def test_kernels_folder_does_not_import_as_a_top_level_package():
    """The top-level ``kernels/`` folder (the ops, installed as ``memarch.kernels.*``) has no
    ``__init__.py``: from the root, ``import kernels`` gets the installed PyPI ``kernels``
    (transformers imports it) when there is one, and never a memarch module."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    origin = _run_at_root("import importlib.util\n"
                          "s = importlib.util.find_spec('kernels')\n"
                          "print('none' if s is None else (s.origin or 'namespace'))")
    assert origin in ("none", "namespace") or not origin.startswith(str(ROOT / "kernels")), origin


def test_transformers_imports_from_the_root():
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed (the dev extra)")
    assert _run_at_root("import transformers, transformers.models.llama; print('ok')") == "ok"


def test_op_functions_do_not_shadow_their_modules():
    """Each op's package (``naive``, ``torch_chunk``, ``triton_*``) and its function have
    different names, so ``import memarch.kernels.<package> as m`` gives the package and
    ``memarch.kernels.<op>`` the function."""
    import memarch.kernels
    for package, op in [("linear_attention", "linear_attn"), ("gated_delta_rule", "delta_rule"),
                        ("sliding_window", "sliding_window_attn")]:
        mod = importlib.import_module(f"memarch.kernels.{package}")
        assert getattr(memarch.kernels, package) is mod, package
        assert hasattr(mod, "naive") and hasattr(mod, "torch_chunk"), package
        fn = getattr(memarch.kernels, op)
        assert callable(fn) and fn is getattr(mod, op), op
        assert not isinstance(fn, type(mod)), op
