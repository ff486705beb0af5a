"""Run a list of evaluation tasks on one model and print a summary table.

Task names: the synthetic suites (``memarch.eval.synthetic.SUITES``: passkey, needle,
mqar, ruler_*), ``perplexity``, and the LongBench names (``longbench``, ``longbench_e``,
``longbench:<dataset>``, ``longbench_e:<dataset>``). Each suite's settings are the keyword
arguments of its function (``settings[<name>]``); LongBench's are ``run_longbench``'s.
Results: ``<out_dir>/<task>.json`` (+ ``.jsonl``, PNGs) and ``<out_dir>/summary.json`` (also
when a suite fails: the suites that finished, and ``failed``; the error is then re-raised).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from memarch.eval.io import environment, write_json
from memarch.eval.longbench import tasks as lb_tasks

__all__ = ["evaluate", "format_table", "known_tasks", "suites"]


def suites() -> dict[str, Callable]:
    """Non-LongBench suites by name: fn(model, out_dir, **settings) -> summary dict."""
    from memarch.eval.perplexity import run_perplexity
    from memarch.eval.synthetic import SUITES
    return {**SUITES, "perplexity": run_perplexity}


def known_tasks() -> list[str]:
    return sorted(suites()) + lb_tasks.known_names()


def check_settings(fn: Callable, settings: Mapping, where: str, exclude=()) -> dict:
    """``settings`` as kwargs of ``fn``; an unknown key raises naming it and the known ones."""
    params = inspect.signature(fn).parameters
    known = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in exclude]
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {known}")
    return dict(settings)


def validate_tasks(tasks: Sequence[str]) -> None:
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError(f"tasks: no task given; known tasks: {', '.join(known_tasks())}")
    known = set(known_tasks())
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ValueError(f"tasks: unknown task(s) {bad}; known tasks: {', '.join(known_tasks())}")


def evaluate(model, tasks: Sequence[str], out_dir: str | Path, *,
             settings: Mapping[str, Mapping] | None = None,
             longbench: Mapping | None = None, verbose: bool = True) -> dict:
    """Run ``tasks`` on ``model`` (an EvalModel); returns {task: summary} and writes
    ``summary.json``. All names and settings (and LongBench's prompts and data) are checked
    before anything runs. If a suite fails, ``summary.json`` is still written with the suites
    (and LongBench tasks) that finished and ``failed`` (task and error), and the error is
    re-raised."""
    from memarch.eval.longbench.run import prepare_longbench, run_longbench, run_prepared
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    validate_tasks(tasks)
    settings = dict(settings or {})
    table = suites()
    unknown = [k for k in settings if k not in table]
    if unknown:
        raise ValueError(f"settings: unknown suite(s) {unknown}; expected some of {sorted(table)}")
    runs = {t: check_settings(table[t], settings.get(t) or {}, f"settings.{t}")
            for t in tasks if t in table}
    lb = [t for t in tasks if lb_tasks.is_longbench(t)]
    lb_kw = check_settings(run_longbench, longbench or {}, "longbench", exclude=("tasks",))
    plan = prepare_longbench(model, tasks=lb, **lb_kw) if lb else None   # fail now, not later
    out_dir = Path(out_dir)
    results, t0 = {}, time.time()

    def summary(failed=None) -> dict:
        out = {"model": model.name, "tasks": tasks, "results": results,
               "environment": environment(model.device), "seconds": time.time() - t0}
        if failed is not None:
            out["failed"] = failed
        return out

    current, lb_out = None, {}
    try:
        for t in tasks:
            if t in runs:
                current = t
                results[t] = table[t](model, out_dir, **runs[t])
        if plan is not None:
            current = "longbench"
            results["longbench"] = run_prepared(model, out_dir, plan, into=lb_out)
    except BaseException as e:
        if lb_out.get("tasks"):                       # the LongBench tasks that finished
            results["longbench"] = lb_out
        failed = lb_out.get("failed") or {"task": current, "error": f"{type(e).__name__}: {e}"}
        write_json(out_dir / "summary.json", summary(failed))
        raise
    out = summary()
    write_json(out_dir / "summary.json", out)
    if verbose:
        print(format_table(results))
        print(f"results: {out_dir}")
    return out


def _rows(results: Mapping[str, dict]):
    for name, r in results.items():
        if name == "longbench":
            for tid, tr in r["tasks"].items():
                extra = (" ".join(f"{k}:{v}" for k, v in tr["by_length"].items())
                         if "by_length" in tr else "")
                yield tid, tr["metric"], tr["score"], r.get("max_length_run"), extra
        elif "ppl" in r:
            yield name, "ppl", r["ppl"], r.get("max_length_run"), ""
        else:
            by = r.get("by_length") or {}
            extra = " ".join(f"{k}:{v:.0f}" for k, v in by.items() if v is not None)
            yield name, "acc %", r.get("score"), r.get("max_length_run"), extra


def format_table(results: Mapping[str, dict]) -> str:
    """One line per task: name, metric, score, longest context run, per-length scores."""
    rows = [("task", "metric", "score", "max len", "by length")]
    for name, metric, score, mx, extra in _rows(results):
        s = "-" if score is None else f"{score:.2f}"
        rows.append((name, metric, s, "-" if mx is None else str(mx), extra))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}"
             for r in rows]
    lines.insert(1, "-" * max(len(x) for x in lines))
    return "\n".join(lines)
