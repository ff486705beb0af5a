"""Run a list of evaluation tasks on one model and print a summary table.

Task names: the synthetic suites (``memarch.eval.synthetic.SUITES``: passkey, needle,
mqar, ruler_*), ``perplexity``, and the LongBench names (``longbench``, ``longbench_e``,
``longbench:<dataset>``, ``longbench_e:<dataset>``). Each suite's settings are the keyword
arguments of its function (``settings[<name>]``); LongBench's are ``run_longbench``'s.
Results: ``<out_dir>/<task>.json`` (+ ``.jsonl``, PNGs) and ``<out_dir>/summary.json`` (also
when a suite fails: the suites that finished, and ``failed``; the error is then re-raised).
Every suite's settings and lengths are checked before the first suite runs, and every error
names its suite; ``out_dir`` is only created when a file is written.

``tasks="auto"`` (``preset=auto``, the default of ``python -m memarch.eval``) runs the suites
that fit the model (:func:`auto_tasks`): the text suites for a model that reads text (a
tokenizer whose ids fit its vocabulary), MQAR for a token-level model (its vocabulary holds
MQAR's ids); lengths too short for a suite are dropped; what is skipped and why is printed and
kept in ``summary.json`` (``skipped``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from memarch.eval.io import environment, write_json
from memarch.eval.longbench import tasks as lb_tasks

__all__ = ["AUTO", "auto_tasks", "evaluate", "format_table", "known_tasks", "planners", "suites"]

AUTO = "auto"


def suites() -> dict[str, Callable]:
    """Non-LongBench suites by name: fn(model, out_dir, **settings) -> summary dict."""
    from memarch.eval.perplexity import run_perplexity
    from memarch.eval.synthetic import SUITES
    return {**SUITES, "perplexity": run_perplexity}


def planners() -> dict[str, Callable]:
    """Non-LongBench suites by name: fn(model, **settings) -> a plan (check(), run(out_dir))."""
    from memarch.eval.perplexity import perplexity_suite
    from memarch.eval.synthetic import PLANS
    return {**PLANS, "perplexity": perplexity_suite}


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


def _is_auto(tasks) -> bool:
    return tasks == AUTO or (not isinstance(tasks, str) and list(tasks) == [AUTO])


def validate_tasks(tasks: Sequence[str]) -> None:
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ValueError(f"tasks: no task given; known tasks: {', '.join(known_tasks())} "
                         f"(or tasks={AUTO}: the suites that fit the model)")
    if AUTO in tasks:
        if len(tasks) == 1:
            return
        raise ValueError(f"tasks: '{AUTO}' picks the suites itself and cannot be combined with "
                         f"other tasks, got {list(tasks)}")
    known = set(known_tasks())
    bad = [t for t in tasks if t not in known]
    if bad:
        raise ValueError(f"tasks: unknown task(s) {bad}; known tasks: {', '.join(known_tasks())}")


def auto_tasks(model, settings: Mapping[str, Mapping] | None = None
               ) -> tuple[list[str], dict[str, str]]:
    """The suites of ``tasks=auto`` for ``model``: (task names, {skipped task: why}).

    Text suites (passkey, needle, ruler_*) run when the model reads text (``model.reads`` is
    not ``"tokens"`` and its tokenizer's ids fit its vocabulary); ``mqar`` when it does not
    (``reads`` is ``"tokens"``, or unknown and the tokenizer's ids do not fit: e.g. ``make
    train``'s model, vocabulary 65, no tokenizer) and its vocabulary holds MQAR's
    ``1 + num_keys + num_values`` ids; ``perplexity`` when a text model has
    ``settings.perplexity.text_file``. LongBench needs its prompts and data and never runs
    here (``preset=longbench``)."""
    from memarch.eval.synthetic import SUITES, TEXT_SUITES
    settings = settings or {}
    text_problem = model.text_problem()
    # unknown (a checkpoint without a tokenizer: bytes or MQAR-like ids): a model whose
    # vocabulary holds the byte tokenizer's ids is taken to read text
    reads = model.reads or ("text" if text_problem is None else "tokens")
    run, skipped = [], {}
    for t in SUITES:
        if t in TEXT_SUITES:
            if text_problem is None:
                run.append(t)
            else:
                skipped[t] = f"a text suite; {text_problem}"
            continue
        kw = settings.get(t) or {}                                  # mqar
        need = 1 + int(kw.get("num_keys", 32)) + int(kw.get("num_values", 32))
        if reads == "text":
            skipped[t] = (f"a token-level task (ids 0..{need - 1}); the model reads text "
                          f"(tokenizer {model.tokenizer_name or 'given'}); run it with "
                          f"tasks=[{t}]")
        elif model.vocab_size < need:
            skipped[t] = (f"its vocabulary (1 + num_keys + num_values = {need} ids) exceeds the "
                          f"model's vocab_size {model.vocab_size}; set settings.{t}.num_keys / "
                          "num_values to the model's")
        else:
            run.append(t)
    text_file = (settings.get("perplexity") or {}).get("text_file")
    if text_problem is not None:
        skipped["perplexity"] = f"a text suite; {text_problem}"
    elif text_file is None:
        skipped["perplexity"] = ("needs a long local text: settings.perplexity.text_file=PATH "
                                 "(e.g. ../shared/data/kjv.txt)")
    else:
        run.append("perplexity")
    skipped["longbench"] = ("needs LongBench's prompts and data: preset=longbench "
                            "longbench.prompts=... longbench.data_dir=...")
    return run, skipped


def context_warnings(model, plans: Mapping[str, object]) -> dict[str, str]:
    """{task: why} for the planned suites whose longest pass goes past the context the model
    was trained on (``EvalModel.context_problem``; none when the context is unknown). They
    still run: past its trained context a dense model measures length extrapolation."""
    problem = getattr(model, "context_problem", None)
    out = {}
    for t, p in plans.items():
        n = p.tokens_fed() if problem is not None and hasattr(p, "tokens_fed") else None
        why = problem(n) if n is not None else None
        if why:
            out[t] = f"its longest pass feeds {why}"
    return out


def _by_reason(skipped: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t, why in skipped.items():
        out.setdefault(why, []).append(t)
    return out


def _drop_short(plan, kw: dict, build_plan) -> tuple[object | None, str | None]:
    """Auto mode: the plan without the lengths too short for the task (None if none is
    left) and a note of what was dropped."""
    bad = plan.too_short()
    if not bad:
        return plan, None
    keep = [L for L in plan.lengths if L not in bad]
    need = max(bad.values())
    why = (f"the prompt without any haystack takes up to {need} tokens" if len(set(bad.values()))
           > 1 else f"the prompt without any haystack takes {need} tokens")
    if not keep:
        return None, f"every length {sorted(bad)} is too short: {why}"
    return build_plan({**kw, "lengths": keep}), f"lengths {sorted(bad)} skipped: {why}"


def evaluate(model, tasks: Sequence[str], out_dir: str | Path, *,
             settings: Mapping[str, Mapping] | None = None,
             longbench: Mapping | None = None, verbose: bool = True) -> dict:
    """Run ``tasks`` on ``model`` (an EvalModel); returns {task: summary} and writes
    ``summary.json``. All names and settings (and LongBench's prompts and data) are checked
    before anything runs. If a suite fails, ``summary.json`` is still written with the suites
    (and LongBench tasks) that finished and ``failed`` (task and error), and the error is
    re-raised."""
    from memarch.eval.longbench.run import prepare_longbench, run_longbench, run_prepared
    from memarch.eval.synthetic.common import LengthTooShortError, build
    validate_tasks(tasks)
    auto = _is_auto(tasks)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    settings = dict(settings or {})
    table = planners()
    unknown = [k for k in settings if k not in table]
    if unknown:
        raise ValueError(f"settings: unknown suite(s) {unknown}; expected some of {sorted(table)}")
    skipped: dict[str, str] = {}
    if auto:
        tasks, skipped = auto_tasks(model, settings)
    runs = {t: check_settings(table[t], settings.get(t) or {}, f"settings.{t}")
            for t in tasks if t in table}
    # every suite's settings and lengths, before the first one runs
    plans, notes = {}, {}
    for t, kw in runs.items():
        p = build(table[t], t, model, kw)
        if auto:
            p, notes[t] = _drop_short(p, kw, lambda k, t=t: build(table[t], t, model, k))
            if p is None:
                skipped[t] = notes.pop(t)
                continue
        else:
            try:
                p.check()
            except LengthTooShortError as e:
                raise LengthTooShortError(
                    f"{e}; set settings.{t}.lengths, or use tasks=auto (preset=auto), which "
                    "drops the lengths too short for a suite", length=e.length,
                    need=e.need) from None
        plans[t] = p
    if auto:
        tasks = [t for t in tasks if t in plans]
        notes = {t: n for t, n in notes.items() if n}
        if verbose:
            for t, n in notes.items():
                print(f"auto: {t}: {n}")
            for why, ts in _by_reason(skipped).items():
                print(f"auto: skipped {', '.join(ts)}: {why}")
        if not tasks:
            raise ValueError("tasks=auto: no suite fits this model: " + "; ".join(
                f"{t}: {why}" for t, why in skipped.items()))
        if verbose:
            print(f"auto: running {', '.join(tasks)}")
    warnings = context_warnings(model, plans)
    if verbose:
        for t, why in warnings.items():
            print(f"warning: {t}: {why}")
    lb = [t for t in tasks if lb_tasks.is_longbench(t)]
    lb_kw = check_settings(run_longbench, longbench or {}, "longbench", exclude=("tasks",))
    plan = prepare_longbench(model, tasks=lb, **lb_kw) if lb else None   # fail now, not later
    out_dir = Path(out_dir)
    results, t0 = {}, time.time()

    def summary(failed=None) -> dict:
        out = {"model": model.name, "tasks": tasks, "results": results,
               "environment": environment(model.device), "seconds": time.time() - t0,
               "context_length": getattr(model, "context_length", None)}
        if warnings:
            out["warnings"] = warnings
        if auto:
            out["skipped"], out["notes"] = skipped, notes
        if failed is not None:
            out["failed"] = failed
        return out

    current, lb_out = None, {}
    try:
        for t in tasks:
            if t in plans:
                current = t
                results[t] = plans[t].run(out_dir, checked=True)
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
        if skipped:
            print(f"skipped (why: above, and summary.json): {', '.join(skipped)}")
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
            # MQAR's pairs grow with the length (training reports one length's accuracy)
            kv = (r.get("settings") or {}).get("num_kv_pairs")
            kv = dict(zip(map(str, r["settings"]["lengths"]), kv)) if isinstance(kv, list) else {}
            extra = " ".join(f"{k}{f'[{kv[k]} pairs]' if k in kv else ''}:{v:.0f}"
                             for k, v in by.items() if v is not None)
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
