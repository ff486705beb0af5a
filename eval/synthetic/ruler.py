"""RULER-style tasks (Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context
Language Models?", 2404.06654; NVIDIA/RULER ``scripts/data/synthetic``), generated locally.

- ``niah`` multi-key (RULER ``niah_multikey_1``: 4 keys, 1 value each, ask one) and
  multi-value (``niah_multivalue``: 1 key, 4 values, all must come back). Needles "One of the
  special magic numbers for {key} is: {value}." (keys "adjective-noun", values 7 digits) are
  shuffled and put at distinct depths drawn from RULER's 40-point grid; RULER's template and
  answer prefix (singular when one value is asked, as ``niah.py`` rewrites it).
- ``variable_tracking`` (``vt``: 1 chain, 4 hops): "VAR ABCDE = 12345", "VAR FGHIJ = VAR
  ABCDE", ... as lines among noise lines, in chain order; answer every variable of the first
  chain; one solved example first (RULER's ICL example: 3-letter names, its own value).
- ``common_words_extraction`` (``cwe``): a numbered word list where ``num_common`` words
  appear ``freq_common`` times and the others ``freq_uncommon`` times (RULER: 6 / 1 below
  4096 tokens, else 30 / 3), with one solved example first; answer the ``num_common`` words.

All are scored with RULER's ``string_match_all``. Lengths are in tokens of the model's
tokenizer, filled as in RULER by binary search on the haystack size (characters of filler
for niah / vt, uncommon words for cwe). Differences: built-in word lists (``words.py``)
instead of ``wonderwords``; needles go at sentence starts of the filler (also for RULER's
"noise" haystack, where RULER inserts whole lines), so lengths come within a character.
"""

from __future__ import annotations

import random
import string
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
from .words import distinct_words, key_words

__all__ = [
    "DEPTHS",
    "cwe_examples",
    "niah_examples",
    "ruler_cwe_suite",
    "ruler_niah_multikey_suite",
    "ruler_niah_multivalue_suite",
    "ruler_vt_suite",
    "run_ruler_cwe",
    "run_ruler_niah_multikey",
    "run_ruler_niah_multivalue",
    "run_ruler_vt",
    "vt_examples",
]

# RULER niah.py: DEPTHS = np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)
DEPTHS = [0, 3, 5, 8, 10, 13, 15, 18, 21, 23, 26, 28, 31, 33, 36, 38, 41, 44, 46, 49, 51, 54,
          56, 59, 62, 64, 67, 69, 72, 74, 77, 79, 82, 85, 87, 90, 92, 95, 97, 100]

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are "
    "all the special magic {type_needle_v} for {query} mentioned in the provided text? The "
    "special magic {type_needle_v} for {query} mentioned in the provided text are")
NIAH_NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
    "above. Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
    "variables are assigned the value {query}, they are: ")

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the {num_cw} most "
    "common words in the above list? Answer: The top {num_cw} words that appear most often in "
    "the list are:")


def _number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


# -- NIAH -------------------------------------------------------------------------------------
def niah_template(n_answers: int) -> str:
    """RULER's template; niah.py makes it singular when one value is asked."""
    if n_answers > 1:
        return NIAH_TEMPLATE.replace("{type_needle_v}", "numbers")
    t = NIAH_TEMPLATE.replace("Some", "A").replace("are all", "is").replace("are", "is")
    return t.replace("{type_needle_v}", "number")


def niah_examples(encode: Callable[[str], list[int]], *, task: str, lengths: list[int],
                  n_per_length: int, num_keys: int, num_values: int, seed: int = 0,
                  haystack_file: str | Path | None = None) -> Iterator[Example]:
    """``num_keys`` keys with ``num_values`` values each; one key is asked, all its values
    are the answer."""
    if num_keys * num_values > len(DEPTHS):
        raise ValueError(f"num_keys * num_values: at most {len(DEPTHS)} needles (RULER's depth "
                         f"grid), got {num_keys} * {num_values}")
    hay = Haystack(haystack_file)
    template = niah_template(num_values)
    for L in lengths:
        for i in range(n_per_length):
            rng = example_rng(task, seed, L, i)
            keys = key_words(num_keys, rng)
            values = [[_number(rng) for _ in range(num_values)] for _ in keys]
            needles = [NIAH_NEEDLE.format(type_needle_v="numbers", key=k, value=v)
                       for k, vs in zip(keys, values) for v in vs]
            rng.shuffle(needles)
            depths = sorted(rng.sample(DEPTHS, len(needles)))
            q = rng.randrange(num_keys)

            def build(n, needles=needles, depths=depths, query=keys[q]) -> str:
                context = insert_at_depths(hay.text(n), needles, depths)
                return template.format(context=context, query=query)

            prompt, ids, n = fit_length(build, L, encode)
            yield Example(L, prompt, ids, values[q],
                          meta={"query": keys[q], "needle_depths": depths,
                                "haystack_chars": n})


def _niah_suite(model, *, task, lengths, n_per_length, num_keys, num_values, seed,
                haystack_file, max_new_tokens) -> TextSuite:
    lengths = check_lengths(lengths)
    for name, v in (("n_per_length", n_per_length), ("num_keys", num_keys),
                    ("num_values", num_values)):
        check_positive(v, name)
    Haystack(haystack_file)                         # fail before anything runs
    settings = {"lengths": lengths, "n_per_length": n_per_length, "num_keys": num_keys,
                "num_values": num_values, "seed": seed, "haystack_file": haystack_file,
                "max_new_tokens": max_new_tokens}
    examples = partial(niah_examples, model.encode, task=task,
                       n_per_length=n_per_length, num_keys=num_keys,
                       num_values=num_values, seed=seed, haystack_file=haystack_file)
    return TextSuite(model, task=task, make_examples=examples, per_length=n_per_length,
                     metric=string_match_all, metric_name="string_match_all",
                     max_new_tokens=max_new_tokens, settings=settings, lengths=lengths)


def ruler_niah_multikey_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                              n_per_length: int = 10, num_keys: int = 4, seed: int = 0,
                              haystack_file: str | None = None,
                              max_new_tokens: int = 32) -> TextSuite:
    """RULER multi-key NIAH: ``num_keys`` needles with different keys, one key asked.
    Writes ``ruler_niah_multikey.{json,jsonl}`` and ``ruler_niah_multikey_by_length.png``.

    Args:
        lengths: prompt lengths in tokens; n_per_length: examples per length; seed: examples
            are a function of (seed, length, index); haystack_file: a text file for the
            haystack (RULER: essays) or None for the noise filler; max_new_tokens: greedy
            tokens generated (RULER: 128).
    """
    return _niah_suite(model, task="ruler_niah_multikey", lengths=lengths,
                       n_per_length=n_per_length, num_keys=num_keys, num_values=1, seed=seed,
                       haystack_file=haystack_file, max_new_tokens=max_new_tokens)


def ruler_niah_multivalue_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                                n_per_length: int = 10, num_values: int = 4, seed: int = 0,
                                haystack_file: str | None = None,
                                max_new_tokens: int = 64) -> TextSuite:
    """RULER multi-value NIAH: one key with ``num_values`` values, all must be returned
    (``string_match_all``). Writes ``ruler_niah_multivalue.{json,jsonl}`` and its plot.
    Arguments as :func:`run_ruler_niah_multikey`."""
    return _niah_suite(model, task="ruler_niah_multivalue", lengths=lengths,
                       n_per_length=n_per_length, num_keys=1, num_values=num_values, seed=seed,
                       haystack_file=haystack_file, max_new_tokens=max_new_tokens)


# -- variable tracking ------------------------------------------------------------------------
def _chains(rng: random.Random, num_chains: int, num_hops: int, letters: int
            ) -> tuple[list[list[str]], list[list[str]], str]:
    """RULER's generate_chains: distinct upper-case names; returns (names, statements, value
    of the first chain)."""
    names: list[str] = []
    while len(names) < num_chains * (num_hops + 1):
        v = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if v not in names:
            names.append(v)
    per = [names[c * (num_hops + 1):(c + 1) * (num_hops + 1)] for c in range(num_chains)]
    values: list[str] = []
    while len(values) < num_chains:                    # distinct, so one chain is the answer
        v = str(rng.randint(10000, 99999))
        if v not in values:
            values.append(v)
    chains = [[f"VAR {vs[0]} = {value}"] +
              [f"VAR {vs[j + 1]} = VAR {vs[j]}" for j in range(num_hops)]
              for vs, value in zip(per, values)]
    return per, chains, values[0]


def _vt_prompt(hay: Haystack, n: int, chains: list[list[str]], depths: list[list[float]],
               value: str, num_hops: int) -> str:
    pairs = sorted((d, c, j) for c, ds in enumerate(depths) for j, d in enumerate(ds))
    items = [chains[c][j] for _, c, j in pairs]
    context = insert_at_depths(hay.text(n), items, [d for d, _, _ in pairs], unit="line")
    return VT_TEMPLATE.format(context=context, query=value, num_v=num_hops + 1)


def _vt_depths(rng: random.Random, chains: list[list[str]]) -> list[list[float]]:
    return [sorted(100 * rng.random() for _ in ch) for ch in chains]


def vt_examples(encode: Callable[[str], list[int]], *, lengths: list[int], n_per_length: int,
                num_chains: int = 1, num_hops: int = 4, seed: int = 0, fewshot: bool = True
                ) -> Iterator[Example]:
    """Chains of ``num_hops`` assignments among noise lines; the answer is every variable of
    the first chain. With ``fewshot`` a solved example (one noise line, 3-letter names) comes
    first, as RULER's ICL example."""
    hay = Haystack(None, joiner="\n")
    for L in lengths:
        for i in range(n_per_length):
            rng = example_rng("ruler_vt", seed, L, i)
            icl = ""
            if fewshot:
                names, chains, value = _chains(rng, num_chains, num_hops, 3)
                icl_text = _vt_prompt(hay, len(hay.source), chains,
                                      _vt_depths(rng, chains), value, num_hops)
                icl = icl_text + " ".join(names[0]) + "\n\n"
            names, chains, value = _chains(rng, num_chains, num_hops, 5)
            depths = _vt_depths(rng, chains)

            def build(n, chains=chains, depths=depths, value=value, icl=icl) -> str:
                return icl + _vt_prompt(hay, n, chains, depths, value, num_hops)

            prompt, ids, n = fit_length(build, L, encode)
            yield Example(L, prompt, ids, names[0], meta={"value": value, "noise_chars": n})


def ruler_vt_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                   n_per_length: int = 10, num_chains: int = 1, num_hops: int = 4,
                   fewshot: bool = True, seed: int = 0, max_new_tokens: int = 48) -> TextSuite:
    """RULER variable tracking: find every variable assigned the queried value through a
    chain ``VAR X1 = 12345, VAR X2 = VAR X1, ...`` (``string_match_all`` over the names).
    Writes ``ruler_vt.{json,jsonl}`` and ``ruler_vt_by_length.png``.

    Args:
        lengths, n_per_length, seed: as the other suites.
        num_chains, num_hops: chains inserted and assignments after the first in each
            (RULER vt: 1 and 4).
        fewshot: put one solved example first (RULER does).
        max_new_tokens: greedy tokens generated (RULER: 30 BPE tokens; bytes need more).
    """
    lengths = check_lengths(lengths)
    for name, v in (("n_per_length", n_per_length), ("num_chains", num_chains),
                    ("num_hops", num_hops)):
        check_positive(v, name)
    settings = {"lengths": lengths, "n_per_length": n_per_length, "num_chains": num_chains,
                "num_hops": num_hops, "fewshot": fewshot, "seed": seed,
                "max_new_tokens": max_new_tokens}
    examples = partial(vt_examples, model.encode, n_per_length=n_per_length,
                       num_chains=num_chains, num_hops=num_hops, seed=seed, fewshot=fewshot)
    return TextSuite(model, task="ruler_vt", make_examples=examples, per_length=n_per_length,
                     metric=string_match_all, metric_name="string_match_all",
                     max_new_tokens=max_new_tokens, settings=settings, lengths=lengths)


# -- common words extraction ------------------------------------------------------------------
def cwe_list(rng: random.Random, num_words: int, num_common: int, freq_common: int,
             freq_uncommon: int) -> tuple[str, list[str]]:
    """RULER's get_example: ``num_words`` distinct words, the first ``num_common`` repeated
    ``freq_common`` times, the rest ``freq_uncommon`` times, shuffled, numbered "1. w 2. w"."""
    words = distinct_words(num_words, rng)
    common, uncommon = words[:num_common], words[num_common:]
    entries = common * freq_common + uncommon * freq_uncommon
    rng.shuffle(entries)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(entries)), common


def cwe_examples(encode: Callable[[str], list[int]], *, lengths: list[int], n_per_length: int,
                 num_common: int = 10, freq_common: int | None = None,
                 freq_uncommon: int | None = None, fewshot: bool = True, seed: int = 0
                 ) -> Iterator[Example]:
    """The list grows by uncommon words until the length is reached; with ``fewshot`` a
    solved example comes first (RULER: 20 words at 3 / 1 below 4096 tokens, else 40 at
    10 / 3)."""
    for L in lengths:
        short = L < 4096
        fc = freq_common or (6 if short else 30)
        fu = freq_uncommon or (1 if short else 3)
        if fc <= fu:
            raise ValueError(f"freq_common: must exceed freq_uncommon ({fu}) so that the "
                             f"common words are the most frequent, got {fc}")
        for i in range(n_per_length):
            rng = example_rng("ruler_cwe", seed, L, i)
            icl = ""
            if fewshot:
                n_fs, fs_c, fs_u = (20, 3, 1) if short else (40, 10, 3)
                ctx, ans = cwe_list(rng, max(n_fs, num_common + 1), num_common, fs_c, fs_u)
                icl = (CWE_TEMPLATE.format(context=ctx, num_cw=num_common) + " "
                       + " ".join(f"{k + 1}. {w}" for k, w in enumerate(ans)) + "\n")
            sub = rng.getrandbits(64)                 # the list's own seed, for every n

            def build(n, icl=icl, sub=sub, fc=fc, fu=fu) -> str:
                ctx, _ = cwe_list(random.Random(sub), num_common + n, num_common, fc, fu)
                return icl + CWE_TEMPLATE.format(context=ctx, num_cw=num_common)

            prompt, ids, n = fit_length(build, L, encode)
            _, common = cwe_list(random.Random(sub), num_common + n, num_common, fc, fu)
            yield Example(L, prompt, ids, common,
                          meta={"num_uncommon": n, "freq_common": fc, "freq_uncommon": fu})


def ruler_cwe_suite(model, *, lengths: Sequence[int] = (1024, 2048, 4096, 8192),
                    n_per_length: int = 10, num_common: int = 10,
                    freq_common: int | None = None, freq_uncommon: int | None = None,
                    fewshot: bool = True, seed: int = 0, max_new_tokens: int = 128) -> TextSuite:
    """RULER common-words extraction: name the ``num_common`` most frequent words of a
    numbered list (``string_match_all``). Writes ``ruler_cwe.{json,jsonl}`` and
    ``ruler_cwe_by_length.png``.

    Args:
        lengths, n_per_length, seed: as the other suites.
        num_common: words to name (RULER: 10).
        freq_common, freq_uncommon: repeats of common / other words; None: RULER's (6 / 1
            below 4096 tokens, 30 / 3 from 4096).
        fewshot: put one solved example first (RULER does).
        max_new_tokens: greedy tokens generated (RULER: 120).
    """
    lengths = check_lengths(lengths)
    check_positive(n_per_length, "n_per_length")
    check_positive(num_common, "num_common")
    for name, v in (("freq_common", freq_common), ("freq_uncommon", freq_uncommon)):
        if v is not None:
            check_positive(v, name)
    settings = {"lengths": lengths, "n_per_length": n_per_length, "num_common": num_common,
                "freq_common": freq_common, "freq_uncommon": freq_uncommon,
                "fewshot": fewshot, "seed": seed, "max_new_tokens": max_new_tokens}
    examples = partial(cwe_examples, model.encode, n_per_length=n_per_length,
                       num_common=num_common, freq_common=freq_common,
                       freq_uncommon=freq_uncommon, fewshot=fewshot, seed=seed)
    return TextSuite(model, task="ruler_cwe", make_examples=examples, per_length=n_per_length,
                     metric=string_match_all, metric_name="string_match_all",
                     max_new_tokens=max_new_tokens, settings=settings, lengths=lengths)


run_ruler_niah_multikey = runner(ruler_niah_multikey_suite, "ruler_niah_multikey")
run_ruler_niah_multivalue = runner(ruler_niah_multivalue_suite, "ruler_niah_multivalue")
run_ruler_vt = runner(ruler_vt_suite, "ruler_vt")
run_ruler_cwe = runner(ruler_cwe_suite, "ruler_cwe")
