"""LongBench task facts (``tasks.yaml``) and task-name resolution.

Names: ``longbench`` (the 21 v1 tasks), ``longbench_e`` (the 13 LongBench-E tasks),
``longbench:<dataset>`` and ``longbench_e:<dataset>`` (one task).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

TASKS_YAML = Path(__file__).with_name("tasks.yaml")
_FIELDS = ("metric", "max_new_tokens", "language", "category", "first_line", "chat_template",
           "stop_at_newline", "longbench_e")


@dataclass(frozen=True)
class TaskSpec:
    name: str               # the LongBench dataset name, e.g. "qasper"
    metric: str             # function name in memarch.eval.longbench.metrics
    max_new_tokens: int
    language: str
    category: str
    first_line: bool
    chat_template: bool
    stop_at_newline: bool
    longbench_e: bool
    e: bool = False         # this run uses the LongBench-E data ("<name>_e")

    @property
    def data_name(self) -> str:
        return f"{self.name}_e" if self.e else self.name

    @property
    def task_id(self) -> str:
        return f"longbench_e:{self.name}" if self.e else f"longbench:{self.name}"


@cache
def task_table() -> dict[str, dict]:
    with TASKS_YAML.open(encoding="utf-8") as f:
        table = yaml.safe_load(f)
    for name, facts in table.items():
        if sorted(facts) != sorted(_FIELDS):
            raise ValueError(f"{TASKS_YAML}: task {name!r} must have exactly the fields "
                             f"{sorted(_FIELDS)}, got {sorted(facts)}")
    return table


def v1_names() -> list[str]:
    return list(task_table())


def e_names() -> list[str]:
    return [n for n, f in task_table().items() if f["longbench_e"]]


def known_names() -> list[str]:
    return (["longbench", "longbench_e"] + [f"longbench:{n}" for n in v1_names()]
            + [f"longbench_e:{n}" for n in e_names()])


def is_longbench(name: str) -> bool:
    return name in ("longbench", "longbench_e") or name.split(":")[0] in ("longbench",
                                                                          "longbench_e")


def resolve(name: str) -> list[TaskSpec]:
    """Task specs for one task name (see the module docstring)."""
    table = task_table()
    group, _, ds = name.partition(":")
    e = group == "longbench_e"
    if group not in ("longbench", "longbench_e") or (not ds and ":" in name):
        raise ValueError(f"unknown LongBench task {name!r}; known: {', '.join(known_names())}")
    names = [ds] if ds else (e_names() if e else v1_names())
    out = []
    for n in names:
        if n not in table or (e and not table[n]["longbench_e"]):
            raise ValueError(f"unknown LongBench task {name!r}; known: "
                             f"{', '.join(known_names())}")
        out.append(TaskSpec(name=n, e=e, **table[n]))
    return out
