"""Regenerate the README's benchmark tables from the JSON results.

    python benchmarks/update_readme.py           # rewrites the blocks, redraws the suites' PNGs
    python benchmarks/update_readme.py --check   # exit 1 if a block differs from its JSON
    python benchmarks/update_readme.py --no-plots   # the blocks only

Each block ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` gets the markdown table that
the script owning ``results/NAME.json`` prints with ``--render`` (``decode.py`` for
``decode_*``, ``recipes.py`` for ``recipes_*``, ``titans.py`` for ``titans_*``,
``aot_table.py`` for ``aot_*``, ``gpu_check.py`` for ``gpu_check_*``, ``real_eval.py`` and
``hmt_real.py`` for ``real_eval-*`` and ``hmt_real-*``, ``suite_SUITE.py`` for
the results suites' ``SUITE-DEVICE`` (``python -m benchmarks SUITE``), ``ops.py``
otherwise; the block ``suites`` is ``common.render_index``, the index of all suites' files).
A block ``NAME__VIEW`` gets ``render_VIEW`` of the same script on ``results/NAME.json``
(``recipes_cpu__hmt``: HMT's table; ``recall-cpu__findings``: a suite's findings sentences).
The results suites' figures are redrawn from their JSON
(``plot(data, results/SUITE-DEVICE)``), so every README table and figure comes from JSON.
The renderers run in-process; tests/test_readme.py checks that the README
matches.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
import common  # noqa: E402, I001
from common import SUITES  # noqa: E402
BLOCK = re.compile(r"<!-- bench:([\w-]+) -->\n(.*?)\n?<!-- /bench:\1 -->", re.DOTALL)


def script_for(name: str) -> str:
    """The benchmark module whose ``render`` turns results/NAME.json into the table."""
    if "-" in name and name.split("-", 1)[0] in SUITES:
        return "suite_" + name.split("-", 1)[0]
    if name.startswith("decode"):
        return "decode"
    if name.startswith("recipes"):
        return "recipes"
    if name.startswith("titans"):
        return "titans"
    if name.startswith("aot"):
        return "aot_table"
    if name.startswith("gpu_check"):
        return "gpu_check"
    if name.startswith(("real_eval", "hmt_real")):     # the real model's evaluation, HMT on it
        return name.split("-", 1)[0]
    return "ops"


def render_block(name: str) -> str:
    """The table for ``results/NAME.json`` (what ``SCRIPT.py --render`` prints), stripped."""
    if name == "suites":                  # the index of the results suites, from all their JSON
        return common.render_index(RESULTS).strip()
    base, _, view = name.partition("__")
    mod = importlib.import_module(script_for(base))
    data = json.loads((RESULTS / f"{base}.json").read_text())
    return (getattr(mod, f"render_{view}") if view else mod.render)(data).strip()


def update(text: str) -> str:
    return BLOCK.sub(lambda m: f"<!-- bench:{m.group(1)} -->\n{render_block(m.group(1))}\n"
                               f"<!-- /bench:{m.group(1)} -->", text)


def redraw_plots() -> list[Path]:
    """Every results suite's PNGs, redrawn from its JSON files (``SUITE-DEVICE.json``)."""
    out = []
    for suite in SUITES:
        for path in sorted(RESULTS.glob(f"{suite}-*.json")):
            mod = importlib.import_module(f"suite_{suite}")
            if hasattr(mod, "plot"):
                out += mod.plot(json.loads(path.read_text()), path.with_suffix("")) or []
    return out


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = update(text)
    if "--check" not in argv and "--no-plots" not in argv:
        for p in redraw_plots():
            print(f"redrew {p.relative_to(ROOT)}")
    if "--check" in argv:
        if new != text:
            raise SystemExit("README tables differ from benchmarks/results: run "
                             "python benchmarks/update_readme.py")
        print("README tables match benchmarks/results")
        return
    readme.write_text(new)
    print("README tables updated" if new != text else "README tables unchanged")


if __name__ == "__main__":
    main()
