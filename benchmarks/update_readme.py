"""Regenerate the README's benchmark tables from the JSON results.

    python benchmarks/update_readme.py        # rewrites the blocks between the markers

Each block ``<!-- bench:NAME -->`` ... ``<!-- /bench:NAME -->`` gets the markdown table that
``benchmarks/ops.py --render results/NAME.json`` prints (``decode.py`` for ``decode_*``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()

    def render(m: re.Match) -> str:
        name = m.group(1)
        script = "decode.py" if name.startswith("decode") else "ops.py"
        table = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--render",
                                str(ROOT / "benchmarks" / "results" / f"{name}.json")],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"<!-- bench:{name} -->\n{table}\n<!-- /bench:{name} -->"

    new = re.sub(r"<!-- bench:(\w+) -->.*?<!-- /bench:\1 -->", render, text, flags=re.S)
    readme.write_text(new)
    print("README tables updated" if new != text else "README tables unchanged")


if __name__ == "__main__":
    main()
