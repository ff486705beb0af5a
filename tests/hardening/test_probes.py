"""The bad-input probe table (``benchmarks/probes.py``) as tests: one case per probe (id =
the probe's name), which must come out ``clear`` (the declared error, with a message naming
the keywords, or the right result). A failure prints the outcome and its note.

The in-process probes that take under ~1 s run by default; the CLI probes (a subprocess of
train.py / ``python -m memarch.convert`` / ``python -m memarch.eval`` each) and the slower
in-process ones are ``slow`` (``pytest -m slow``). A probe known not to be clear yet is an
``xfail(strict=True)`` naming the finding, so that its fix shows up as an XPASS to remove."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from benchmarks import probes  # noqa: E402

# in-process probes measured over ~1 s on one thread (pytest --durations): a transformers
# reference model. (The first probe that imports Lightning, "flipped bytes in embed.weight",
# takes ~3 s for that one-time import; marking it slow would move the import to the next
# one, so it stays: the default share takes ~20 s.)
SLOW = {
    "from_hf tie_word_embeddings=true with its own lm_head: logits as transformers",
}

# probes that are not clear on the current tree: findings, name -> what happens
XFAIL: dict[str, str] = {
}

PROBES = probes.all_probes()


def _param(p: probes.Probe):
    marks = []
    if p.cli or p.name in SLOW:
        marks.append(pytest.mark.slow)
    if p.name in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[p.name]))
    return pytest.param(p, id=p.name, marks=marks)


@pytest.mark.parametrize("probe", [_param(p) for p in PROBES])
def test_probe(probe):
    outcome, note = probes.run_probe(probe)
    assert outcome == "clear", f"[{probe.cat}] {probe.name}: {outcome}: {note}"


def test_probe_table_is_well_formed():
    """Unique names (they are the test ids), and the marks above name existing probes."""
    names = Counter(p.name for p in PROBES)
    assert not [n for n, k in names.items() if k > 1], "duplicate probe names"
    assert not (SLOW | set(XFAIL)) - set(names), "SLOW / XFAIL name probes that do not exist"
