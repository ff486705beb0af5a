"""Passkey retrieval (Mohtashami & Jaggi, "Landmark Attention", 2305.16300).

The prompt is the landmark-attention layout (``run_test.py``, ``generate_prompt``), lines
joined by newlines: the task description, a prefix of the filler "The grass is green. ...
There and back again." repeated, "The pass key is 12345. Remember it. 12345 is the pass key.",
a second filler prefix, and "What is the pass key? The pass key is". The two filler parts
together take ``n`` characters, split at a random depth; ``n`` is the largest that keeps the
prompt within the target length in tokens. Score: the first run of digits in the greedy
continuation equals the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

from .common import (
    Example,
    Haystack,
    TextSuite,
    check_lengths,
    check_positive,
    example_rng,
    fit_length,
    runner,
)
from .metrics import passkey_match

__all__ = ["QUESTION", "TASK_DESCRIPTION", "passkey_examples", "passkey_suite", "run_passkey"]

TASK_DESCRIPTION = ("There is an important info hidden inside a lot of irrelevant text. Find it "
                    "and memorize them. I will quiz you about the important information there.")
QUESTION = "What is the pass key? The pass key is"


def info_line(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def passkey_examples(encode: Callable[[str], list[int]], *, lengths: list[int],
                     n_per_length: int, seed: int = 0, n_digits: int = 5) -> Iterator[Example]:
    """``n_per_length`` prompts per target length; key and depth drawn per (seed, L, i)."""
    filler = Haystack(None)
    for L in lengths:
        for i in range(n_per_length):
            rng = example_rng("passkey", seed, L, i)
            key = str(rng.randint(10 ** (n_digits - 1), 10 ** n_digits - 1))
            depth = rng.random()

            def build(n: int, key=key, depth=depth) -> str:
                k = int(n * depth)
                return "\n".join([TASK_DESCRIPTION, filler.text(k), info_line(key),
                                  filler.text(n - k), QUESTION])

            prompt, ids, n = fit_length(build, L, encode)
            yield Example(L, prompt, ids, [key], depth=round(100 * depth, 2),
                          meta={"filler_chars": n})


def passkey_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                  n_per_length: int = 10, seed: int = 0, n_digits: int = 5,
                  max_new_tokens: int = 12) -> TextSuite:
    """Passkey retrieval accuracy by context length; writes ``passkey.json``,
    ``passkey.jsonl`` and ``passkey_by_length.png`` into ``out_dir``.

    Args:
        lengths: prompt lengths in tokens of the model's tokenizer.
        n_per_length: examples per length (each a new key at a uniform random depth).
        seed: examples are a function of (seed, length, index) only.
        n_digits: digits of the pass key (landmark-attention: up to 5).
        max_new_tokens: greedy tokens generated after the prompt.
    """
    lengths = check_lengths(lengths)
    check_positive(n_per_length, "n_per_length")
    check_positive(n_digits, "n_digits")
    settings = {"lengths": lengths, "n_per_length": n_per_length, "seed": seed,
                "n_digits": n_digits, "max_new_tokens": max_new_tokens}
    examples = partial(passkey_examples, model.encode, n_per_length=n_per_length,
                       seed=seed, n_digits=n_digits)
    return TextSuite(model, task="passkey", make_examples=examples, per_length=n_per_length,
                     metric=passkey_match, metric_name="exact match",
                     max_new_tokens=max_new_tokens, settings=settings, lengths=lengths)


run_passkey = runner(passkey_suite, "passkey")
