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
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from memarch.eval.io import JsonlWriter, environment, progress, write_json
from memarch.eval.longbench import metrics
from memarch.eval.longbench.data import load_examples, load_prompts
from memarch.eval.longbench.tasks import TaskSpec, resolve

__all__ = ["build_prompt_ids", "run_longbench", "truncate_middle"]


def truncate_middle(ids: Sequence[int], max_length: int | None) -> list[int]:
    """Keep the first and last ``max_length // 2`` tokens when ``len(ids) > max_length``."""
    ids = list(ids)
    if max_length is None or len(ids) <= max_length:
        return ids
    if max_length < 2:
        raise ValueError(f"longbench.max_length must be >= 2 or None, got {max_length}")
    half = max_length // 2
    return ids[:half] + ids[len(ids) - half:]


def build_prompt_ids(model, spec: TaskSpec, template: str, example: dict, *,
                     max_length: int | None, chat_template: str | None = None
                     ) -> tuple[list[int], int]:
    """(prompt token ids, untruncated length in tokens)."""
    try:
        prompt = template.format(**example)
    except KeyError as e:
        raise ValueError(f"longbench.prompts: the template of {spec.name!r} uses the field "
                         f"{e.args[0]!r}, which example {example.get('_id')!r} lacks") from None
    ids = model.encode(prompt)
    n = len(ids)
    ids = truncate_middle(ids, max_length)
    if chat_template and spec.chat_template:
        text = model.decode(ids)           # pred.py too wraps the decoded, truncated prompt
        ids = model.encode(chat_template.format(prompt=text))
    return ids, n


def _score_task(spec: TaskSpec, rows: list[dict]) -> dict:
    """The official task score (eval.py's ``scorer`` / ``scorer_e``) of the rows' scores."""
    scores = [r["score"] for r in rows]
    out = {"score": metrics.task_score(scores), "n_examples": len(rows), "metric": spec.metric}
    if spec.e:
        out["by_length"] = metrics.bucket_scores(scores, [r["length"] for r in rows])
    return out


def run_longbench(model, out_dir: str | Path, *, tasks: Sequence[str] = ("longbench",),
                  prompts: str | None = None, data_dir: str | None = None,
                  max_length: int | None = 3500, chat_template: str | None = None,
                  limit: int | None = None) -> dict:
    """Run LongBench task names (``longbench``, ``longbench_e``, ``longbench:<dataset>``,
    ``longbench_e:<dataset>``) and write ``longbench/<dataset>[_e].jsonl`` (official
    prediction format plus score and token counts) and ``longbench.json``.

    Args:
        prompts: path to the official dataset2prompt.json (required).
        data_dir: folder of LongBench JSONL files; None: the hub's data.zip.
        max_length: prompt budget in tokens (pred.py's model2maxlen, 3500 for 4k models);
            None: no truncation (constant-state models take any length).
        chat_template: a format string with ``{prompt}`` for chat models, else None.
        limit: the first n examples of each task (smoke tests).
    """
    specs = [s for t in tasks for s in resolve(t)]
    templates = load_prompts(prompts, sorted({s.name for s in specs}))
    if chat_template is not None and "{prompt}" not in chat_template:
        raise ValueError(f"longbench.chat_template must contain '{{prompt}}', got "
                         f"{chat_template!r}")
    out_dir = Path(out_dir)
    t0, results, max_run = time.time(), {}, 0
    for spec in specs:
        examples = load_examples(spec.data_name, data_dir, limit=limit)
        rows = []
        with JsonlWriter(out_dir / "longbench" / f"{spec.data_name}.jsonl") as w:
            for ex in progress(examples, desc=spec.task_id):
                ids, n_tokens = build_prompt_ids(model, spec, templates[spec.name], ex,
                                                 max_length=max_length,
                                                 chat_template=chat_template)
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
        results[spec.task_id] = {"category": spec.category, **_score_task(spec, rows)}
    summary = {"task": "longbench", "model": model.name,
               "settings": {"tasks": list(tasks), "max_length": max_length,
                            "chat_template": chat_template, "limit": limit,
                            "prompts": str(prompts), "data_dir": data_dir},
               "tasks": results, "max_length_run": max_run,
               "environment": environment(model.device), "seconds": time.time() - t0}
    for group in ("longbench", "longbench_e"):
        scores = [r["score"] for k, r in results.items() if k.split(":")[0] == group]
        if scores:
            summary[f"{group}_avg"] = round(sum(scores) / len(scores), 2)
    write_json(out_dir / "longbench.json", summary)
    return summary
