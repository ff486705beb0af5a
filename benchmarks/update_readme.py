"""Regenerate the tables of README.md and benchmarks/README.md from the JSON results.

    python benchmarks/update_readme.py           # rewrites the blocks, redraws the suites' PNGs
    python benchmarks/update_readme.py --check   # exit 1 if a block of either file differs
    python benchmarks/update_readme.py --no-plots   # the blocks only

A block may live in either file (``FILES``); in benchmarks/README.md its links are made
relative to that folder (``rebase_links``). Each block ``<!-- bench:NAME -->`` ...
``<!-- /bench:NAME -->`` gets the markdown table that the script owning
``results/NAME.json`` prints with ``--render`` (``decode.py`` for ``decode_*``,
``recipes.py`` for ``recipes_*``, ``peers_titans.py`` for ``titans_*``, ``aot_table.py`` for
``aot_*``, ``gpu_check/`` for ``gpu_check_*``, ``real_eval.py`` and ``hmt_real.py`` for
``real_eval-*`` and ``hmt_real-*``, ``suite_SUITE.py`` for the results suites'
``SUITE-DEVICE`` (``python -m benchmarks SUITE``), ``ops.py`` for ``ops_*``; the block
``suites`` is ``common.render_index``, the index of all suites' files; any other name is an
error naming the block, not a guess).
A block ``NAME__VIEW`` gets ``render_VIEW`` of the same script on ``results/NAME.json``
(``recipes_cpu__hmt``: HMT's table; ``recall-cpu__findings``: a suite's findings sentences).
The results suites' figures are redrawn from their JSON
(``plot(data, results/SUITE-DEVICE)``), so every README table and figure comes from JSON.
The renderers run in-process; tests/test_readme.py checks that both files match.
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
import common  # noqa: I001, E402
from common import SUITES  # noqa: E402
FILES = (ROOT / "README.md", BENCH / "README.md")      # the files whose blocks are generated
BLOCK = re.compile(r"<!-- bench:([\w-]+) -->\n(.*?)\n?<!-- /bench:\1 -->", re.DOTALL)


def script_for(name: str) -> str:
    """The benchmark module whose ``render`` turns results/NAME.json into the table."""
    if "-" in name and name.split("-", 1)[0] in SUITES:
        return "suite_" + name.split("-", 1)[0]
    if name.startswith("decode"):
        return "decode"
    if name.startswith("recipes"):
        return "recipes"
    if name.startswith("titans"):                  # the former titans.py's table (peers suite)
        return "peers_titans"
    if name.startswith("aot"):
        return "aot_table"
    if name.startswith("gpu_check"):
        return "gpu_check"
    if name.startswith(("real_eval", "hmt_real")):     # the real model's evaluation, HMT on it
        return name.split("-", 1)[0]
    if name.startswith("ops"):
        return "ops"
    raise ValueError(f"bench block {name!r}: no script renders it (known: a results suite's "
                     f"SUITE-DEVICE, decode*, recipes*, titans*, aot*, gpu_check*, real_eval*, "
                     f"hmt_real*, ops*, suites)")


def render_block(name: str) -> str:
    """The table for ``results/NAME.json`` (what ``SCRIPT.py --render`` prints), stripped."""
    if name == "suites":                  # the index of the results suites, from all their JSON
        return common.render_index(RESULTS).strip()
    base, _, view = name.partition("__")
    mod = importlib.import_module(script_for(base))
    data = json.loads((RESULTS / f"{base}.json").read_text())
    return (getattr(mod, f"render_{view}") if view else mod.render)(data).strip()


def rebase_links(table: str, file: Path | None) -> str:
    """The rendered ``table`` with its repo-relative links (``](benchmarks/results/x.png)``)
    made relative to ``file``'s folder, where the block lives (benchmarks/README.md:
    ``](results/x.png)``)."""
    if file is None or file.parent == ROOT:
        return table
    prefix = file.parent.relative_to(ROOT).as_posix() + "/"
    return table.replace("](" + prefix, "](")


def render_in(name: str, file: Path | None = None) -> str:
    """The block ``name`` as it reads in ``file`` (its links relative to that file)."""
    return rebase_links(render_block(name), file)


def update(text: str, file: Path | None = None) -> str:
    return BLOCK.sub(lambda m: f"<!-- bench:{m.group(1)} -->\n{render_in(m.group(1), file)}\n"
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
    texts = {path: path.read_text() for path in FILES}
    new = {path: update(text, path) for path, text in texts.items()}
    if "--check" not in argv and "--no-plots" not in argv:
        for p in redraw_plots():
            print(f"redrew {p.relative_to(ROOT)}")
    if "--check" in argv:
        stale = [str(p.relative_to(ROOT)) for p in FILES if new[p] != texts[p]]
        if stale:
            raise SystemExit(f"tables in {', '.join(stale)} differ from benchmarks/results: "
                             "run python benchmarks/update_readme.py")
        print("README.md and benchmarks/README.md tables match benchmarks/results")
        return
    for path in FILES:
        if new[path] != texts[path]:
            path.write_text(new[path])
        print(f"{path.relative_to(ROOT)}: tables "
              + ("updated" if new[path] != texts[path] else "unchanged"))


if __name__ == "__main__":
    main()
