"""Needle in a haystack over a depth x length grid (Kamradt's "LLMTest_NeedleInAHaystack";
the single-needle NIAH of RULER, Hsieh et al. 2404.06654).

The haystack is the text of ``haystack_file`` (whitespace collapsed, repeated as needed) or,
with None, the passkey filler sentences. The needle "The special magic number is 7431925."
goes in at ``depth`` % of the haystack, backed up to the start of its sentence as Kamradt does
(depth 100: the very end). Prompt: RULER's single-needle instruction, the haystack, then
"What is the special magic number? The special magic number is". Score: RULER's
``string_match_all`` (the number appears in the greedy continuation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

from .common import (
    Example,
    Haystack,
    TextSuite,
    check_lengths,
    check_positive,
    example_rng,
    fit_length,
    insert_at_depths,
    runner,
)
from .metrics import string_match_all

__all__ = ["INSTRUCTION", "QUESTION", "needle_examples", "needle_suite", "run_needle"]

INSTRUCTION = ("A special magic number is hidden within the following text. Make sure to "
               "memorize it. I will quiz you about the number afterwards.")
QUESTION = "What is the special magic number? The special magic number is"


def needle_sentence(value: str) -> str:
    return f"The special magic number is {value}."


def check_depths(depths: list[float]) -> list[float]:
    ds = [depths] if isinstance(depths, (int, float)) else list(depths)
    if not ds or any(not isinstance(d, (int, float)) or not 0 <= d <= 100 for d in ds):
        raise ValueError(f"depths: expected a non-empty list of percentages in [0, 100], "
                         f"got {depths!r}")
    return ds


def needle_examples(encode: Callable[[str], list[int]], *, lengths: list[int],
                    depths: list[float], n_per_cell: int, seed: int = 0,
                    haystack_file: str | Path | None = None, n_digits: int = 7
                    ) -> Iterator[Example]:
    """``n_per_cell`` prompts per (depth, length) cell, the number drawn per (seed, cell, i)."""
    hay = Haystack(haystack_file)
    for L in lengths:
        for d in depths:
            for i in range(n_per_cell):
                rng = example_rng("needle", seed, L, d, i)
                value = str(rng.randint(10 ** (n_digits - 1), 10 ** n_digits - 1))

                def build(n: int, value=value, d=d) -> str:
                    context = insert_at_depths(hay.text(n), [needle_sentence(value)], [d])
                    return f"{INSTRUCTION}\n{context}\n{QUESTION}"

                prompt, ids, n = fit_length(build, L, encode)
                yield Example(L, prompt, ids, [value], depth=d, meta={"haystack_chars": n})


def needle_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                 depths: Sequence[float] = (0, 25, 50, 75, 100), n_per_cell: int = 1,
                 seed: int = 0, haystack_file: str | None = None, n_digits: int = 7,
                 max_new_tokens: int = 16) -> TextSuite:
    """Needle retrieval accuracy on a depth x length grid; writes ``needle.json`` (with
    ``by_depth_length[depth][length]``), ``needle.jsonl``, ``needle_by_length.png`` and
    ``needle_heatmap.png`` into ``out_dir``.

    Args:
        lengths: prompt lengths in tokens of the model's tokenizer.
        depths: needle depths in % of the haystack (0: first, 100: last).
        n_per_cell: examples per (depth, length) cell.
        seed: examples are a function of (seed, length, depth, index) only.
        haystack_file: a text file for the haystack (e.g. ../shared/data/kjv.txt), or None
            for the generated filler.
        n_digits: digits of the magic number (RULER: 7).
        max_new_tokens: greedy tokens generated after the prompt.
    """
    lengths, depths = check_lengths(lengths), check_depths(depths)
    check_positive(n_per_cell, "n_per_cell")
    check_positive(n_digits, "n_digits")
    Haystack(haystack_file)                         # fail before anything runs
    settings = {"lengths": lengths, "depths": depths, "n_per_cell": n_per_cell, "seed": seed,
                "haystack_file": haystack_file, "n_digits": n_digits,
                "max_new_tokens": max_new_tokens}
    examples = partial(needle_examples, model.encode, depths=depths,
                       n_per_cell=n_per_cell, seed=seed, haystack_file=haystack_file,
                       n_digits=n_digits)
    return TextSuite(model, task="needle", make_examples=examples,
                     per_length=len(depths) * n_per_cell, metric=string_match_all,
                     metric_name="string_match_all", max_new_tokens=max_new_tokens,
                     settings=settings, lengths=lengths, depths=depths)


run_needle = runner(needle_suite, "needle")
