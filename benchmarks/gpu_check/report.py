"""Step 5 of the GPU check: the markdown tables (``render``, also the README's
``gpu_check_*`` blocks) and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from .env import log


# ----------------------------------------------------------------------------- 5. report
def render(report: dict) -> str:
    """Markdown tables of a report: correctness (worst relative error over T and tensors,
    triton / torch path, worst triton error over its tolerance) and the benchmark (x = time /
    triton's; diff = forward vs triton, relative). Printed by the check; the README's
    ``<!-- bench:gpu_check_* -->`` blocks are this of ``benchmarks/results/gpu_check_*.json``
    (``python benchmarks/update_readme.py``)."""
    meta, out = report.get("meta", {}), []
    if meta:
        out += [f"{meta.get('device', '?')}, torch {meta.get('torch')}, triton "
                f"{meta.get('triton')}, CUDA {meta.get('cuda')}, {meta.get('date')}", ""]
    corr = report.get("correctness")
    if corr:
        out += ["| op | dtype | D | cases | pass | outputs: triton / torch | "
                "gradients: triton / torch | worst / tol | decode kernel |",
                "|---|---|---:|---:|---:|---|---|---:|---|"]
        groups = {}
        for c in corr["cases"]:
            groups.setdefault((c["op"], c["dtype"], c["D"]), []).append(c)
        for (op, dt, D), cs in groups.items():
            cols = []
            for kind in ("out", "grad"):
                ts = [t for c in cs for n, t in c.get("tensors", {}).items()
                      if n.startswith(kind)]
                tr = max((t["triton"] for t in ts), default=None)
                to = max((t["torch"] for t in ts if t["torch"] is not None), default=None)
                cols.append(f"{fmt(tr)} / {fmt(to)}")
            ratio = max((t["triton"] / t["tol"] for c in cs
                         for t in c.get("tensors", {}).values()), default=float("nan"))
            dec = [c["decode_kernel"] for c in cs if c.get("decode_kernel") is not None]
            used = "used" if dec and all(dec) else ("NOT USED" if dec else "-")
            out.append(f"| {op} | {dt} | {D} | {len(cs)} | {sum(c['ok'] for c in cs)} | "
                       f"{cols[0]} | {cols[1]} | {ratio:.2f} | {used} |")
        s = corr["summary"]
        out += ["", f"correctness: {s['passed']}/{s['cases']} cases pass"]
        out += [f"- FAIL {f}" for f in s["failed"]] + [f"- NOT RUN {f}" for f in s["not_run"]]
    rows = report.get("benchmark", {}).get("rows")
    if rows:
        b = report["benchmark"]["config"]
        out += ["", f"Benchmark: {b['dtype']}, B={b['B']}, H={b['H']}, sliding window "
                f"W={b['W']} with {b['sinks']} sinks; median of {b['reps']} after "
                f"{b['warmup']} warm-up; x = time / triton's; diff = forward vs triton, "
                "relative.", "",
                "| op | D | T | impl | fwd ms | x | fwd+bwd ms | x | peak MiB | diff | note |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        base = {(r["op"], r["D"], r["T"]): r for r in rows if r["impl"] == "triton"}
        for r in rows:
            t = base.get((r["op"], r["D"], r["T"]), {})
            note = "; ".join(filter(None, [r.get("error"), r.get("bwd_skipped"), r.get("note")]))
            out.append(f"| {r['op']} | {r['D']} | {r['T']} | {r['impl']} | "
                       f"{fmt(r.get('fwd_ms'), '.3f')} | {ratio_str(r, t, 'fwd_ms').strip()} | "
                       f"{fmt(r.get('fwd_bwd_ms'), '.3f')} | "
                       f"{ratio_str(r, t, 'fwd_bwd_ms').strip()} | "
                       f"{fmt(r.get('peak_mb'), '.1f')} | "
                       f"{fmt(r.get('rel_diff_vs_triton'), '.1e')} | "
                       f"{note[:120].replace('|', '/')} |")
    skipped = [f"peer {n} skipped: {p['reason']}" for n, p in report.get("peers", {}).items()
               if p["status"] != "ok"]
    if skipped:
        out += [""] + [f"- {line}" for line in skipped]
    return "\n".join(out)


def print_tables(report: dict) -> None:
    log("\n" + render(report))


def fmt(x, spec: str = ".1e", width: int = 0) -> str:
    return (format(x, spec) if x is not None else "-").rjust(width)


def ratio_str(row: dict, triton_row: dict, key: str) -> str:
    a, b = row.get(key), triton_row.get(key)
    return f"{a / b:6.2f}" if a is not None and b else f"{'-':>6s}"


def write_report(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
    tmp.replace(path)
