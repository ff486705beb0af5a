"""Synthetic long-context suites, generated locally (no download).

Every suite is ``run_<name>(model: EvalModel, out_dir, **settings) -> summary dict`` and
writes ``<task>.json`` (summary: score %, by_length, max_length_run, settings, environment),
``<task>.jsonl`` (one line per example) and ``<task>_by_length.png`` into ``out_dir``.
Lengths are in tokens of the model's tokenizer (MQAR: tokens of its own vocabulary).

``SUITES`` (the task names of ``python -m memarch.eval tasks=[...]``):

- ``passkey``: passkey retrieval (Mohtashami & Jaggi 2023), exact digits.
- ``needle``: needle in a haystack on a depth x length grid, + ``needle_heatmap.png``.
- ``mqar``: multi-query associative recall (zoology), teacher-forced accuracy.
- ``ruler_niah_multikey``: RULER multi-key NIAH (4 keys, ask one).
- ``ruler_niah_multivalue``: RULER multi-value NIAH (1 key, 4 values, all).
- ``ruler_vt``: RULER variable tracking (1 chain, 4 hops).
- ``ruler_cwe``: RULER common-words extraction (top 10).
"""

from .metrics import passkey_match, string_match_all, string_match_part
from .mqar import run_mqar
from .needle import run_needle
from .passkey import run_passkey
from .ruler import run_ruler_cwe, run_ruler_niah_multikey, run_ruler_niah_multivalue, run_ruler_vt

__all__ = [
    "SUITES",
    "passkey_match",
    "run_mqar",
    "run_needle",
    "run_passkey",
    "run_ruler_cwe",
    "run_ruler_niah_multikey",
    "run_ruler_niah_multivalue",
    "run_ruler_vt",
    "string_match_all",
    "string_match_part",
]

SUITES = {
    "passkey": run_passkey,
    "needle": run_needle,
    "mqar": run_mqar,
    "ruler_niah_multikey": run_ruler_niah_multikey,
    "ruler_niah_multivalue": run_ruler_niah_multivalue,
    "ruler_vt": run_ruler_vt,
    "ruler_cwe": run_ruler_cwe,
}
