"""LongBench v1 metrics, reproducing the official scorer (``LongBench/metrics.py`` and
``LongBench/eval.py`` of THUDM/LongBench, last changed in commit c5ea10b, 2024-12-18) number for
number, without its ``rouge`` and ``fuzzywuzzy`` dependencies.

Every metric is ``fn(prediction, ground_truth, **kwargs) -> float`` with the official name;
a task score is the max over gold answers (:func:`score_example`), averaged, x100, rounded to
2 decimals (:func:`scorer`, :func:`scorer_e`). Behaviours of the official code kept on purpose:

* ROUGE-L (``rouge_score``, ``rouge_zh_score``) is the algorithm of PyPI ``rouge==1.0.1``
  (``Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]``, the newest release): text is
  cut into sentences at every ``"."`` (empty pieces dropped, whitespace-only ones kept as the
  word ``""``), each sentence is whitespace-normalised and split on ``" "``; no lower-casing or
  punctuation removal. Summary-level union LCS with set semantics (``exclusive=True``): words
  are counted once, m / n = distinct words of reference / prediction, the LCS union is the set
  of words on the LCS that the package's own back-trace picks for each (reference sentence,
  prediction sentence) pair (ties: ``table[i-1][j] > table[i][j-1]`` moves along the reference,
  else along the prediction). F = 2PR / (P + R + 1e-8). Where the package raises, the official
  ``except:`` gives 0.0: a prediction or reference with no sentence (empty, or only dots), and a
  back-trace deeper than the recursion limit -- ``rouge`` 1.0.1 back-traces recursively, so under
  CPython's default limit of 1000 a sentence pair whose trace visits more than 991 cells (990
  for ``rouge_zh_score``, one frame deeper) raises RecursionError (measured calling the official
  metrics.py as eval.py does, CPython 3.11; other versions may differ by a frame). A trace visits
  at most len(ref) + len(pred) cells, so only sentence pairs of ~1000 words in total are hit,
  e.g. vcsum, whose Chinese text has no ``"."``. ``ROUGE_RECURSION_LIMIT = None`` scores them.
* ``code_sim_score`` uses ``fuzzywuzzy.fuzz.ratio`` with ``python-Levenshtein`` installed (the
  ``fuzzywuzzy[speedup]`` setup; LongBench's requirements leave it open): ``100`` for equal
  strings, ``0`` if one is empty, else ``int(round(100 * Indel similarity))`` (banker's
  rounding), computed here with rapidfuzz, on which python-Levenshtein is built. We chose it
  over the pure-python fallback (``difflib.SequenceMatcher``, whose matching-block heuristic and
  auto-junk rule for strings of 200+ characters make it no exact edit-based ratio): it is what
  fuzzywuzzy asks for (it warns without it) and a well-defined metric. The scored line is the
  first line (after ``lstrip("\\n")``) with no backtick, ``#`` or ``//``; none -> ``""``.
* ``classification_score`` drops matched classes that are proper substrings of the gold class
  while iterating over that same list, so the class right after a dropped one is never checked.
* ``f1_score`` of two empty token lists is 0; ``count_score``/``retrieval*_score`` count every
  digit run of the prediction; ``scorer_e`` averages with ``numpy.mean`` and rounds a numpy float
  (``round(np.float64(2.675), 2) == 2.68`` where Python gives 2.67), as eval.py does.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import jieba
import numpy as np
from rapidfuzz.distance import Indel

jieba.setLogLevel(logging.WARNING)

_EN_PUNCT = frozenset(string.punctuation)
_ZH_PUNCT = _EN_PUNCT | frozenset(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛"
    "〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# rouge 1.0.1 recursion: CPython's default limit, and the frames under the back-trace in
# `python eval.py` (<module>, scorer, rouge_score, get_scores, _get_avg_scores, <lambda>,
# rouge_l_summary_level, _union_lcs, _recon_lcs; rouge_zh_score adds one).
ROUGE_RECURSION_LIMIT: int | None = 1000
_ROUGE_FRAMES = 9


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _EN_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def normalize_zh_answer(s: str) -> str:
    """Lower-case, drop ASCII and Chinese punctuation, remove all whitespace."""
    return "".join("".join(ch for ch in s.lower() if ch not in _ZH_PUNCT).split())


def _digit_share(prediction: str, target: str) -> float:
    """Fraction of the digit runs in ``prediction`` that equal ``target`` (0 if none)."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == target for n in numbers) / len(numbers) if numbers else 0.0


def count_score(prediction, ground_truth, **kwargs) -> float:
    return _digit_share(prediction, str(ground_truth))


def _paragraph_id(pattern: str, ground_truth: str) -> str:
    ids = re.findall(pattern, ground_truth)
    if not ids:
        raise ValueError(f"no {pattern!r} in gold answer {ground_truth!r}")
    return ids[0]


def retrieval_score(prediction, ground_truth, **kwargs) -> float:
    return _digit_share(prediction, _paragraph_id(r"Paragraph (\d+)", ground_truth))


def retrieval_zh_score(prediction, ground_truth, **kwargs) -> float:
    return _digit_share(prediction, _paragraph_id(r"段落(\d+)", ground_truth))


def _fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy 0.18 ``fuzz.ratio`` with python-Levenshtein (see the module docstring)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return round(100 * Indel.normalized_similarity(a, b))  # round half to even, as int(round())


def code_sim_score(prediction, ground_truth, **kwargs) -> float:
    lines = prediction.lstrip("\n").split("\n")
    line = next((ln for ln in lines if not any(t in ln for t in ("`", "#", "//"))), "")
    return _fuzz_ratio(line, ground_truth) / 100


def classification_score(prediction, ground_truth, **kwargs) -> float:
    hits = [c for c in kwargs["all_classes"] if c in prediction]
    i = 0  # a list iterator: removing hits[i] shifts the next class into slot i, then i += 1
    while i < len(hits):
        if hits[i] in ground_truth and hits[i] != ground_truth:
            hits.remove(hits[i])
        i += 1
    return 1.0 / len(hits) if ground_truth in hits else 0.0


def _lcs_trace(ref: list[str], hyp: list[str]) -> tuple[set[str], int]:
    """Words on rouge 1.0.1's LCS back-trace of (ref, hyp), and the cells it visits."""
    table = [[0] * (len(hyp) + 1)]
    for r in ref:
        prev, row = table[-1], [0]
        for j, h in enumerate(hyp):
            row.append(prev[j] + 1 if r == h else max(prev[j + 1], row[j]))
        table.append(row)
    words, cells, i, j = set(), 1, len(ref), len(hyp)
    while i and j:
        cells += 1
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words, cells


def _rouge_l(prediction: str, ground_truth: str, frames: int) -> float:
    def sentences(text):
        return [" ".join(p.split()).split(" ") for p in text.split(".") if p]

    hyp, ref = sentences(prediction), sentences(ground_truth)
    if not hyp or not ref:
        return 0.0  # rouge: ValueError("Collections must contain at least 1 sentence.")
    budget = None if ROUGE_RECURSION_LIMIT is None else ROUGE_RECURSION_LIMIT - frames
    union: set[str] = set()
    for r in ref:
        for h in hyp:
            words, cells = _lcs_trace(r, h)
            if budget is not None and cells > budget:
                return 0.0  # rouge: RecursionError in the recursive back-trace
            union |= words
    r_lcs = len(union) / len({w for s in ref for w in s})
    p_lcs = len(union) / len({w for s in hyp for w in s})
    return 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))


def rouge_score(prediction, ground_truth, **kwargs) -> float:
    return _rouge_l(prediction, ground_truth, _ROUGE_FRAMES)


def _jieba_words(text: str) -> list[str]:
    return list(jieba.cut(text, cut_all=False))


def rouge_zh_score(prediction, ground_truth, **kwargs) -> float:
    return _rouge_l(" ".join(_jieba_words(prediction)), " ".join(_jieba_words(ground_truth)),
                    _ROUGE_FRAMES + 1)


def f1_score(prediction, ground_truth, **kwargs) -> float:
    """Token-multiset F1 of two token lists; 0 when nothing is shared (also both empty)."""
    num_same = sum((Counter(prediction) & Counter(ground_truth)).values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction)
    recall = 1.0 * num_same / len(ground_truth)
    return (2 * precision * recall) / (precision + recall)


def qa_f1_score(prediction, ground_truth, **kwargs) -> float:
    return f1_score(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction, ground_truth, **kwargs) -> float:
    def tokens(text):
        return [t for t in map(normalize_zh_answer, _jieba_words(text)) if t]

    return f1_score(tokens(prediction), tokens(ground_truth))


METRICS: dict[str, Callable[..., float]] = {fn.__name__: fn for fn in (
    qa_f1_score, qa_f1_zh_score, rouge_score, rouge_zh_score, classification_score,
    retrieval_score, retrieval_zh_score, count_score, code_sim_score)}

Metric = str | Callable[..., float]


def score_example(metric_name_or_fn: Metric, prediction: str, answers: Sequence[str],
                  all_classes=None, first_line: bool = False) -> float:
    """Max over gold ``answers`` of the metric (0 if none), as in eval.py; ``first_line``
    scores only ``prediction.lstrip("\\n").split("\\n")[0]`` (trec, triviaqa, samsum, lsht)."""
    fn = METRICS[metric_name_or_fn] if isinstance(metric_name_or_fn, str) else metric_name_or_fn
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    score = 0.0
    for gold in answers:
        score = max(score, fn(prediction, gold, all_classes=all_classes))
    return score


def _classes(all_classes, n: int) -> list:
    """eval.py passes one class list per task; also accept one list (or None) per example."""
    if (isinstance(all_classes, (list, tuple)) and all_classes
            and all(c is None or isinstance(c, (list, tuple)) for c in all_classes)):
        if len(all_classes) != n:
            raise ValueError(f"{len(all_classes)} class lists for {n} predictions")
        return list(all_classes)
    return [all_classes] * n


def task_score(scores: Sequence[float]) -> float:
    """eval.py's task score of per-example scores: 100 * mean, rounded to 2 decimals."""
    total = 0.0  # summed in order (not sum(), which compensates on Python >= 3.12)
    for x in scores:
        total += x
    return round(100 * total / len(scores), 2)


def bucket_scores(scores: Sequence[float], lengths: Sequence[int]) -> dict[str, float | None]:
    """LongBench-E score per length bucket (``length`` < 4000, < 8000, else); None if empty."""
    buckets: dict[str, list[float]] = {"0-4k": [], "4-8k": [], "8k+": []}
    for x, length in zip(scores, lengths):
        buckets["0-4k" if length < 4000 else "4-8k" if length < 8000 else "8k+"].append(x)
    return {k: float(round(100 * np.mean(v), 2)) if v else None for k, v in buckets.items()}


def _example_scores(task_metric, predictions, answers, all_classes, first_line) -> list[float]:
    classes = _classes(all_classes, len(predictions))
    return [score_example(task_metric, p, g, c, first_line)
            for p, g, c in zip(predictions, answers, classes)]


def scorer(task_metric: Metric, predictions: Sequence[str], answers: Sequence[Sequence[str]],
           all_classes=None, first_line: bool = False) -> float:
    """Task score of eval.py: 100 * mean of :func:`score_example`, rounded to 2 decimals."""
    return task_score(_example_scores(task_metric, predictions, answers, all_classes,
                                      first_line))


def scorer_e(task_metric: Metric, predictions: Sequence[str], answers: Sequence[Sequence[str]],
             lengths: Sequence[int], all_classes=None,
             first_line: bool = False) -> dict[str, float | None]:
    """eval.py's ``scorer_e``: :func:`bucket_scores` of :func:`score_example`."""
    return bucket_scores(_example_scores(task_metric, predictions, answers, all_classes,
                                         first_line), lengths)
