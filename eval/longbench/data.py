"""LongBench data and prompts.

Examples come from local JSONL files in LongBench's format (one object per line with
``input, context, answers, length, dataset, language, all_classes, _id``), laid out as in
the official ``data.zip`` (``<data_dir>/<dataset>.jsonl``, LongBench-E as
``<dataset>_e.jsonl``), or, when ``data_dir`` is None and the hub is reachable, from that
same ``data.zip`` of the Hugging Face dataset ``THUDM/LongBench`` (downloaded once into the
HF cache; read without its loading script, which recent ``datasets`` no longer run).
Prompt templates come from the official ``dataset2prompt.json``, given by path.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from memarch.eval.io import read_jsonl

FIELDS = ("input", "context", "answers", "length", "dataset", "language", "all_classes", "_id")
PROMPTS_URL = ("https://github.com/THUDM/LongBench/blob/main/LongBench/config/"
               "dataset2prompt.json")
DATA_URL = "https://huggingface.co/datasets/THUDM/LongBench/resolve/main/data.zip"


def load_prompts(path: str | Path | None, names: list[str]) -> dict[str, str]:
    """The prompt template of each task in ``names`` from the official dataset2prompt.json."""
    if path is None:
        raise ValueError(
            "longbench.prompts is not set: LongBench needs the official prompt templates, "
            f"dataset2prompt.json (get it from {PROMPTS_URL}), passed as "
            "longbench.prompts=/path/to/dataset2prompt.json")
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"longbench.prompts: file not found: {p} (the official "
                                f"dataset2prompt.json, from {PROMPTS_URL})")
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"longbench.prompts: {p} is not valid JSON: line {e.lineno}: {e.msg}"
                         ) from None
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"longbench.prompts: {p} has no template for {missing}")
    return {n: table[n] for n in names}


def _hub_dir() -> Path:
    """Unzipped official data.zip from the hub (cached)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise FileNotFoundError(
            "LongBench data: longbench.data_dir is not set and the hub is offline "
            f"(HF_HUB_OFFLINE=1); download {DATA_URL}, unzip it and pass "
            "longbench.data_dir=<folder holding the .jsonl files>")
    from huggingface_hub import hf_hub_download
    zpath = Path(hf_hub_download("THUDM/LongBench", "data.zip", repo_type="dataset"))
    out = zpath.parent / "memarch_unzipped"
    if not (out / "data").is_dir():
        with zipfile.ZipFile(zpath) as z:
            z.extractall(out)
    return out / "data"


def data_file(data_name: str, data_dir: str | Path | None) -> Path:
    d = _hub_dir() if data_dir is None else Path(os.path.expanduser(str(data_dir)))
    p = d / f"{data_name}.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"longbench.data_dir: data file not found: {p} (expected "
                                f"LongBench's layout <data_dir>/{data_name}.jsonl, as in "
                                f"{DATA_URL})")
    return p


def check_limit(limit) -> None:
    """``longbench.limit``: None (every example) or a positive int."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"longbench.limit must be a positive int or null (all examples), got "
                         f"{limit!r}")


def _is_class_list(c) -> bool:
    return isinstance(c, list) and bool(c) and all(isinstance(x, str) for x in c)


def load_examples(data_name: str, data_dir: str | Path | None = None, *,
                  limit: int | None = None, metric: str | None = None) -> list[dict]:
    """The examples of one dataset (``limit``: the first n), checked field by field.

    ``metric``: the task's metric; ``classification_score`` (trec, lsht) needs every used
    example's ``all_classes`` to be a non-empty list of class labels (the official scorer
    iterates over it), else this raises naming the file and the line."""
    check_limit(limit)
    p = data_file(data_name, data_dir)
    rows = read_jsonl(p, required=FIELDS, what=f"LongBench {data_name}", line_numbers=True)
    for n, r in rows:
        if not isinstance(r["answers"], list) or not all(isinstance(a, str)
                                                         for a in r["answers"]):
            raise ValueError(f"{p}: line {n} (_id {r['_id']!r}): 'answers' must be a list "
                             f"of strings, got {r['answers']!r}")
    if not rows:
        raise ValueError(f"{p}: no examples")
    rows = rows[:limit] if limit is not None else rows
    if metric == "classification_score":
        for n, r in rows:
            if not _is_class_list(r["all_classes"]):
                raise ValueError(
                    f"{p}: line {n} (_id {r['_id']!r}): LongBench task {data_name!r} is scored "
                    f"by classification_score, which needs 'all_classes' (a non-empty list of "
                    f"the class labels, as in the official data), got {r['all_classes']!r}")
    return [r for _, r in rows]
