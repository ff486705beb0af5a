"""Splitting a parametrisation grid into the fast share (``make test``) and the rest
(``make test-slow``), keeping every case and its id."""

from __future__ import annotations

import pytest


def split_slow(cases, fast):
    """Every case of ``cases``; those not in ``fast`` are marked slow (same ids as before)."""
    return [c if c in fast else pytest.param(*c, marks=pytest.mark.slow) for c in cases]
