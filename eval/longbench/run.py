"""Predict and score LongBench tasks with a memarch model (the official pred.py + eval.py).

Per example: ``prompt = template.format(**example)`` -> token ids -> middle truncation to
``max_length`` tokens (the first and last ``max_length // 2`` ids, cut at the token level
without re-tokenising) -> optional chat template (tasks with ``chat_template: true``) ->
greedy decoding of up to ``max_new_tokens`` (stop at end-of-text; samsum also stops at "\\n"
and may not stop at its first token) -> score = max over gold answers of the task's metric
(first line only for trec, triviaqa, samsum, lsht). Task score = 100 * mean, rounded to 2
decimals; LongBench-E scores each length bucket (0-4k, 4-8k, 8k+ by the ``length`` field).

Differences from pred.py, by design: truncation keeps token ids (pred.py decodes both halves
and re-encodes, which can merge tokens at the seam); the chat template is a format string
(``longbench.chat_template``, e.g. "[INST]{prompt}[/INST]"), None for base models.

Checked before any generation (:func:`prepare_longbench`): the settings, the prompt templates,
every task's data file (a classification task -- trec, lsht -- needs ``all_classes`` on every
row). Warnings, also before generation: rows with empty ``answers`` (they score 0 and count in
the task mean, as in eval.py, whose max over gold answers starts at 0), and a ``max_length``
whose halves cannot hold the template's text before / after ``{context}`` (instruction and
question), which middle truncation then cuts. If a task fails, ``longbench.json`` is still
written for the tasks that finished (with ``failed``) and the error is re-raised.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memarch.eval.io import JsonlWriter, environment, progress, write_json
from memarch.eval.longbench import metrics
from memarch.eval.longbench.data import check_limit, load_examples, load_prompts
from memarch.eval.longbench.tasks import TaskSpec, resolve

__all__ = ["LongBenchPlan", "build_prompt_ids", "prepare_longbench", "run_longbench",
           "run_prepared", "truncate_middle"]

_CONTEXT_MARK = "\x00memarch:context\x00"


def truncate_middle(ids: Sequence[int], max_length: int | None) -> list[int]:
    """Keep the first and last ``max_length // 2`` tokens when ``len(ids) > max_length``."""
    ids = list(ids)
    if max_length is None or len(ids) <= max_length:
        return ids
    if max_length < 2:
        raise ValueError(f"longbench.max_length must be >= 2 or None, got {max_length}")
    half = max_length // 2
    return ids[:half] + ids[len(ids) - half:]


def _format(spec: TaskSpec, template: str, example: dict) -> str:
    try:
        return template.format(**example)
    except KeyError as e:
        raise ValueError(f"longbench.prompts: the template of {spec.name!r} uses the field "
                         f"{e.args[0]!r}, which example {example.get('_id')!r} lacks") from None


def build_prompt_ids(model, spec: TaskSpec, template: str, example: dict, *,
                     max_length: int | None, chat_template: str | None = None
                     ) -> tuple[list[int], int]:
    """(prompt token ids, untruncated length in tokens)."""
    ids = model.encode(_format(spec, template, example))
    n = len(ids)
    ids = truncate_middle(ids, max_length)
    if chat_template and spec.chat_template:
        text = model.decode(ids)           # pred.py too wraps the decoded, truncated prompt
        ids = model.encode(chat_template.format(prompt=text))
    return ids, n


def check_settings(*, max_length, chat_template, limit) -> None:
    """``longbench.max_length``, ``longbench.chat_template`` and ``longbench.limit``."""
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                   or max_length < 2):
        raise ValueError(f"longbench.max_length must be an int >= 2 (prompt budget in tokens) "
                         f"or null (no truncation), got {max_length!r}")
    if chat_template is not None and (not isinstance(chat_template, str)
                                      or "{prompt}" not in chat_template):
        raise ValueError(f"longbench.chat_template must contain '{{prompt}}', got "
                         f"{chat_template!r}")
    check_limit(limit)


def _template_parts(model, spec: TaskSpec, template: str, example: dict) -> tuple[int, int]:
    """Tokens of the template's text before and after ``{context}`` for one example (the
    instruction and the question); without ``{context}``, the whole prompt is "before"."""
    text = _format(spec, template, {**example, "context": _CONTEXT_MARK})
    head, _, tail = text.partition(_CONTEXT_MARK)
    return len(model.encode(head)) if head else 0, len(model.encode(tail)) if tail else 0


def _warn_template_too_long(model, spec: TaskSpec, template: str, examples: list[dict],
                            max_length: int) -> None:
    """Warn when middle truncation to ``max_length`` would cut into the instruction or
    the question (the template's text around ``{context}``) of some example."""
    half = max_length // 2
    worst, n_bad = None, 0
    for ex in examples:
        h, t = _template_parts(model, spec, template, ex)
        if h > half or t > half:
            n_bad += 1
            if worst is None or h + t > worst[0] + worst[1]:
                worst = (h, t, ex["_id"])
    if worst:
        h, t, _id = worst
        warnings.warn(
            f"{spec.task_id}: the prompt template without the context is up to {h + t} tokens "
            f"({h} before the context, {t} after; _id {_id!r}; {n_bad} of {len(examples)} "
            f"examples), but longbench.max_length={max_length} keeps only the first and last "
            f"{half} tokens of a longer prompt: middle truncation will cut the instruction or "
            f"the question; raise longbench.max_length (or set it to null: no truncation)",
            UserWarning, stacklevel=3)


def _warn_empty_answers(spec: TaskSpec, examples: list[dict]) -> None:
    empty = [ex["_id"] for ex in examples if not ex["answers"]]
    if empty:
        shown = ", ".join(repr(i) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.warn(
            f"{spec.task_id}: {len(empty)} of {len(examples)} examples have empty 'answers' "
            f"(_id {shown}); they score 0 and count in the task mean, as in the official "
            f"eval.py", UserWarning, stacklevel=3)


@dataclass
class LongBenchPlan:
    """Checked LongBench settings, task specs and prompt templates (:func:`prepare_longbench`)."""
    tasks: list[str]
    specs: list[TaskSpec]
    templates: dict[str, str]
    settings: dict = field(default_factory=dict)


def prepare_longbench(model, *, tasks: Sequence[str] = ("longbench",),
                      prompts: str | None = None, data_dir: str | None = None,
                      max_length: int | None = 3500, chat_template: str | None = None,
                      limit: int | None = None) -> LongBenchPlan:
    """Check everything :func:`run_longbench` needs before any generation: the settings,
    the prompt templates and every task's data (each file is read here and again when its
    task runs, so that all of them need not stay in memory); warns about empty answers and
    a ``max_length`` too small for the template around the context."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    check_settings(max_length=max_length, chat_template=chat_template, limit=limit)
    specs = [s for t in tasks for s in resolve(t)]
    templates = load_prompts(prompts, sorted({s.name for s in specs}))
    for spec in specs:
        examples = load_examples(spec.data_name, data_dir, limit=limit, metric=spec.metric)
        _warn_empty_answers(spec, examples)
        if max_length is not None:
            _warn_template_too_long(model, spec, templates[spec.name], examples, max_length)
    settings = {"tasks": tasks, "max_length": max_length, "chat_template": chat_template,
                "limit": limit, "prompts": None if prompts is None else str(prompts),
                "data_dir": data_dir}
    return LongBenchPlan(tasks, specs, templates, settings)


def _score_task(spec: TaskSpec, rows: list[dict]) -> dict:
    """The official task score (eval.py's ``scorer`` / ``scorer_e``) of the rows' scores."""
    scores = [r["score"] for r in rows]
    out = {"score": metrics.task_score(scores), "n_examples": len(rows), "metric": spec.metric}
    if spec.e:
        out["by_length"] = metrics.bucket_scores(scores, [r["length"] for r in rows])
    return out


def _run_task(model, out_dir: Path, plan: LongBenchPlan, spec: TaskSpec) -> tuple[dict, int]:
    s = plan.settings
    examples = load_examples(spec.data_name, s["data_dir"], limit=s["limit"], metric=spec.metric)
    rows, max_run = [], 0
    with JsonlWriter(out_dir / "longbench" / f"{spec.data_name}.jsonl") as w:
        for ex in progress(examples, desc=spec.task_id):
            ids, n_tokens = build_prompt_ids(model, spec, plan.templates[spec.name], ex,
                                             max_length=s["max_length"],
                                             chat_template=s["chat_template"])
            max_run = max(max_run, len(ids))
            pred = model.generate_text(ids, spec.max_new_tokens,
                                       stop_at_newline=spec.stop_at_newline,
                                       min_new_tokens=1 if spec.stop_at_newline else 0)
            score = metrics.score_example(spec.metric, pred, ex["answers"],
                                          all_classes=ex["all_classes"],
                                          first_line=spec.first_line)
            row = {"pred": pred, "answers": ex["answers"], "all_classes": ex["all_classes"],
                   "length": ex["length"], "_id": ex["_id"], "score": score,
                   "prompt_tokens": n_tokens, "input_tokens": len(ids)}
            w.write(row)
            rows.append(row)
    return {"category": spec.category, **_score_task(spec, rows)}, max_run


def run_prepared(model, out_dir: str | Path, plan: LongBenchPlan, *,
                 into: dict | None = None) -> dict:
    """Run a :func:`prepare_longbench` plan; write ``longbench.json``. ``into`` (a dict) is
    updated with the summary, also when a task fails: then ``longbench.json`` holds the
    tasks that finished and ``failed`` (task and error), and the error is re-raised."""
    out_dir = Path(out_dir)
    t0, results, max_run = time.time(), {}, 0

    def summary(failed=None) -> dict:
        out = {"task": "longbench", "model": model.name, "settings": plan.settings,
               "tasks": dict(results), "max_length_run": max_run,
               "environment": environment(model.device), "seconds": time.time() - t0}
        for group in ("longbench", "longbench_e"):
            scores = [r["score"] for k, r in results.items() if k.split(":")[0] == group]
            if scores:
                out[f"{group}_avg"] = round(sum(scores) / len(scores), 2)
        if failed is not None:
            out["failed"] = failed
        return out

    for spec in plan.specs:
        try:
            results[spec.task_id], n = _run_task(model, out_dir, plan, spec)
        except BaseException as e:
            out = summary({"task": spec.task_id, "error": f"{type(e).__name__}: {e}"})
            if into is not None:
                into.update(out)
            write_json(out_dir / "longbench.json", out)
            raise
        max_run = max(max_run, n)
    out = summary()
    if into is not None:
        into.update(out)
    write_json(out_dir / "longbench.json", out)
    return out


def run_longbench(model, out_dir: str | Path, *, tasks: Sequence[str] = ("longbench",),
                  prompts: str | None = None, data_dir: str | None = None,
                  max_length: int | None = 3500, chat_template: str | None = None,
                  limit: int | None = None) -> dict:
    """Run LongBench task names (``longbench``, ``longbench_e``, ``longbench:<dataset>``,
    ``longbench_e:<dataset>``) and write ``longbench/<dataset>[_e].jsonl`` (official
    prediction format plus score and token counts) and ``longbench.json``.

    Everything is checked before the first generation (:func:`prepare_longbench`); a task
    that fails leaves ``longbench.json`` with the tasks that finished, and re-raises.

    Args:
        prompts: path to the official dataset2prompt.json (required).
        data_dir: folder of LongBench JSONL files; None: the hub's data.zip.
        max_length: prompt budget in tokens (pred.py's model2maxlen, 3500 for 4k models);
            None: no truncation (constant-state models take any length).
        chat_template: a format string with ``{prompt}`` for chat models, else None.
        limit: the first n examples of each task (smoke tests); None: all.
    """
    plan = prepare_longbench(model, tasks=tasks, prompts=prompts, data_dir=data_dir,
                             max_length=max_length, chat_template=chat_template, limit=limit)
    return run_prepared(model, out_dir, plan)
