"""Scores of the synthetic text suites, in % over a list of predictions.

``string_match_all`` and ``string_match_part`` are RULER's (Hsieh et al., "RULER: What's the
Real Context Size of Your Long-Context Language Models?", 2404.06654;
NVIDIA/RULER ``scripts/eval/synthetic/constants.py``), reproduced formula for formula.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["passkey_match", "string_match_all", "string_match_part"]


def _check(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(preds) != len(refs) or not preds:
        raise ValueError(f"expected as many predictions as reference lists (>= 1), got "
                         f"{len(preds)} and {len(refs)}")


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's ``string_match_all``: per example the fraction of its references found
    (case-insensitive substring) in the prediction, averaged over examples, x100, rounded to
    2 decimals. Used by RULER for niah, variable_tracking, common_words_extraction."""
    _check(preds, refs)
    score = sum([sum([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) / len(ref)
                 for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """RULER's ``string_match_part``: per example 1 if any of its references is found
    (case-insensitive substring) in the prediction, averaged over examples, x100, rounded to
    2 decimals. Used by RULER for qa."""
    _check(preds, refs)
    score = sum([max([1.0 if r.lower() in pred.lower() else 0.0 for r in ref])
                 for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


def passkey_match(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Passkey retrieval (Mohtashami & Jaggi, 2305.16300; landmark-attention's
    ``run_test.py``): the first run of digits in the prediction must equal the pass key
    exactly. % of examples, rounded to 2 decimals."""
    _check(preds, refs)
    hits = 0
    for pred, ref in zip(preds, refs):
        m = re.search(r"\d+", pred)
        hits += bool(m) and m.group() in ref
    return round(hits / len(preds) * 100, 2)
