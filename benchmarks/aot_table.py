"""README table of ``results/aot_resources.json`` (``python -m memarch.kernels.aot --json``):
per kernel, the builds the dispatcher can launch, their tiles, and the worst registers,
spills and shared memory over sm_80 and sm_90.

    python benchmarks/aot_table.py --render    # the markdown table
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402

RESULTS_JSON = RESULTS / "aot_resources.json"


def render(data: dict) -> str:
    rows, meta = data["rows"], data["meta"]
    groups = defaultdict(list)
    for r in rows:
        groups[r["kernel"].split(" ")[0]].append(r)
    lines = [f"Ahead-of-time builds for sm_80 and sm_90 (`{meta['command']}`, triton "
             f"{meta['triton']}, {meta['date']}): {meta['builds']} builds, "
             f"{meta['spilling']} spill registers, {meta['over_shared_memory']} exceed shared "
             "memory.", "",
             "| kernel | builds | tiles (warps) | max registers | spill bytes | max shared KiB |",
             "|---|---:|---|---:|---:|---:|"]
    for name, rs in groups.items():
        shapes = sorted({" ".join(f"{k}{v}" for k, v in r["tiles"].items())
                         + f" ({r['num_warps']}w)" for r in rs})
        shown = ", ".join(shapes[:4]) + (f", +{len(shapes) - 4}" if len(shapes) > 4 else "")
        spill = max(r["STACK"] + r["LOCAL"] for r in rs)
        lines.append(f"| `{name}` | {len(rs)} | {shown} | {max(r['REG'] for r in rs)} | "
                     f"{spill} | {max(r['SHARED'] for r in rs) / 1024:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--render" in sys.argv:
        print(render(json.loads(RESULTS_JSON.read_text())))
