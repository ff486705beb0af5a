"""Synthetic long-context suites, generated locally (no download).

Every suite is ``run_<name>(model: EvalModel, out_dir, **settings) -> summary dict`` and
writes ``<task>.json`` (summary: score %, by_length, max_length_run, settings, environment),
``<task>.jsonl`` (one line per example) and ``<task>_by_length.png`` into ``out_dir``.
Lengths are in tokens of the model's tokenizer (MQAR: tokens of its own vocabulary).

``<name>_suite(model, **settings)`` (``PLANS``) checks the settings and returns a plan whose
``too_short()`` / ``check()`` look at every length before anything runs and whose
``run(out_dir)`` runs it; errors name the suite.

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
from .mqar import mqar_suite, run_mqar
from .needle import needle_suite, run_needle
from .passkey import passkey_suite, run_passkey
from .ruler import (
    ruler_cwe_suite,
    ruler_niah_multikey_suite,
    ruler_niah_multivalue_suite,
    ruler_vt_suite,
    run_ruler_cwe,
    run_ruler_niah_multikey,
    run_ruler_niah_multivalue,
    run_ruler_vt,
)

__all__ = [
    "PLANS",
    "SUITES",
    "TEXT_SUITES",
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

PLANS = {
    "passkey": passkey_suite,
    "needle": needle_suite,
    "mqar": mqar_suite,
    "ruler_niah_multikey": ruler_niah_multikey_suite,
    "ruler_niah_multivalue": ruler_niah_multivalue_suite,
    "ruler_vt": ruler_vt_suite,
    "ruler_cwe": ruler_cwe_suite,
}

# the suites that read text (the others read token ids: mqar)
TEXT_SUITES = ("passkey", "needle", "ruler_niah_multikey", "ruler_niah_multivalue", "ruler_vt",
               "ruler_cwe")
