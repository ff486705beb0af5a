"""LongBench v1 metrics (memarch.eval.longbench.metrics): hand-worked examples of every metric,
property tests against plain independent implementations, and -- when installed -- exact
agreement with the official scorer's own dependencies (rouge==1.0.1, fuzzywuzzy==0.18.0 with
python-Levenshtein)."""

from __future__ import annotations

import random
import string
import threading
from collections import Counter
from itertools import groupby

import pytest
from memarch.eval.longbench import metrics as M


# 2 * P * R / (P + R + 1e-8), rouge 1.0.1's F.
def _f(p, r):
    return 2.0 * ((p * r) / (p + r + 1e-8))


def _eq(checks, actual, expected, msg="", tol=0.0):
    checks.true(abs(actual - expected) <= tol, f"{msg}: {actual!r} != {expected!r}")


# ------------------------------------------------------------------ hand-worked examples


def test_normalisation(checks):
    # lower -> drop punctuation -> articles -> whitespace:
    # "the cat sat on a mat" -> "cat sat on mat"
    checks.true(M.normalize_answer("The  Cat, sat on a mat!") == "cat sat on mat")
    # "An apple's (red)" -> "an apples red" -> "apples red"; "theatre"/"Anna" keep their letters
    checks.true(M.normalize_answer("An apple's (red)") == "apples red")
    checks.true(M.normalize_answer("theatre, Anna") == "theatre anna")
    # Chinese: ASCII + Chinese punctuation removed, all whitespace removed, lower-cased
    checks.true(M.normalize_zh_answer("你好，世界！ Hello. 『书』") == "你好世界hello书")


def test_qa_f1(checks):
    # ["eiffel", "tower", "paris"] vs ["eiffel", "tower"]: 2 shared, P = 2/3, R = 1 -> F = 0.8
    _eq(checks, M.qa_f1_score("The Eiffel Tower, Paris.", "eiffel tower"), 0.8, tol=1e-12)
    # multisets: ["cat"]*3 vs ["cat", "cat", "dog"]: 2 shared, P = R = 2/3 -> 2/3
    _eq(checks, M.qa_f1_score("the the cat cat cat", "cat cat dog"), 2 / 3, tol=1e-12)
    # nothing shared (including empty vs empty after normalisation) -> 0
    _eq(checks, M.qa_f1_score("", ""), 0.0)
    _eq(checks, M.qa_f1_score("The.", "a"), 0.0)
    # f1_score on tokens: 1 shared, P = 1/2, R = 1/3 -> 2 * (1/6) / (5/6) = 0.4
    _eq(checks, M.f1_score(["a", "b"], ["b", "c", "d"]), 0.4, tol=1e-12)


def test_score_example_max_over_answers_and_first_line(checks):
    # "barack obama" vs "obama": P = 1/2, R = 1 -> 2/3; vs "barack hussein obama": P = 1, R = 2/3
    # -> 0.8; vs "michelle": 0 -> max = 0.8
    s = M.score_example("qa_f1_score", "Barack Obama",
                        ["Obama", "Barack Hussein Obama", "Michelle"])
    _eq(checks, s, 0.8, tol=1e-12)
    # first_line: lstrip("\n") then line 0 -> "Paris" vs "London" = 0; all lines: 2/3
    _eq(checks, M.score_example("qa_f1_score", "\n\nParis\nLondon", ["London"], first_line=True), 0)
    _eq(checks, M.score_example(M.qa_f1_score, "\n\nParis\nLondon", ["London"]), 2 / 3, tol=1e-12)
    _eq(checks, M.score_example("qa_f1_score", "Paris", []), 0.0)  # no gold answer


def test_count_and_retrieval(checks):
    # digit runs 4, 4, 12: two equal the answer -> 2/3; "42" is one run, not "4"
    _eq(checks, M.count_score("There are 4 unique paragraphs, 4 of 12", "4"), 2 / 3)
    _eq(checks, M.count_score("42", "4"), 0.0)
    _eq(checks, M.count_score("no number", "4"), 0.0)
    # gold "Paragraph 12" -> id "12"; prediction runs 12, 2, 12 -> 2/3
    _eq(checks, M.retrieval_score("Paragraph 12 and Paragraph 2, maybe 12", "Paragraph 12"), 2 / 3)
    # gold "段落3" -> id "3"; runs 3, 13 -> 1/2
    _eq(checks, M.retrieval_zh_score("答案是段落3，不是段落13", "段落3"), 0.5)
    with pytest.raises(ValueError):
        M.retrieval_score("Paragraph 1", "no id here")
    checks.true(True)


def test_code_sim(checks):
    # backtick, '#' and '//' lines are skipped -> "return x + 1" (12 chars) vs "return x+1" (10):
    # LCS 10, Indel similarity 20/22 = 0.909 -> round(90.9) = 91 -> 0.91
    pred = "\n\n```python\n# a comment\nx = 1  // js comment\nreturn x + 1\nfoo()"
    _eq(checks, M.code_sim_score(pred, "return x+1"), 0.91)
    _eq(checks, M.code_sim_score("# only\n// comments\n`x`", "x"), 0.0)  # no line left -> ""
    _eq(checks, M.code_sim_score("", ""), 1.0)  # fuzzywuzzy checks equality before emptiness
    _eq(checks, M.code_sim_score("\nabc\n", ""), 0.0)
    # "a" + 7x vs "a" + 7y: 2 * 1 / 16 = 12.5% -> banker's round -> 12
    _eq(checks, M.code_sim_score("a" + "x" * 7, "a" + "y" * 7), 0.12)
    # 2 * 1 / 80: 1 - 78/80 = 0.025000000000000022 -> 2.5000000000000022 -> 3 (difflib: 2)
    _eq(checks, M.code_sim_score("a" + "x" * 39, "a" + "y" * 39), 0.03)


def test_classification_remove_while_iterating(checks):
    classes = ["ball", "football", "football club", "rugby"]
    # hits = [ball, football, football club]; "ball" (a proper substring of the gold class) is
    # removed, which shifts "football" into its slot, so the iterator skips it; "football club"
    # is the gold class -> hits = [football, football club] -> 1/2 (a clean filter gives 1.0)
    _eq(checks, M.classification_score("football club", "football club", all_classes=classes), 0.5)
    # the class order decides: [ball, football club, football] -> ball removed, football club
    # skipped, football removed -> [football club] -> 1.0
    order = ["ball", "football club", "football"]
    _eq(checks, M.classification_score("football club", "football club", all_classes=order), 1.0)
    # two classes named, neither inside the gold class -> 1/2; gold not named -> 0
    trec = ["City", "Country", "State"]
    _eq(checks, M.classification_score("City or Country", "City", all_classes=trec), 0.5)
    _eq(checks, M.classification_score("Country", "City", all_classes=trec), 0.0)
    # lsht-like Chinese classes, first line only: "体育" is inside "体育产业" and dropped
    zh = ["体育", "体育产业", "财经"]
    s = M.score_example("classification_score", "\n类别：体育产业\n财经", ["体育产业"], zh, True)
    _eq(checks, s, 1.0)


def test_rouge_l(checks):
    # hyp {the, cat, sat, on, mat} n = 5, ref {the, cat, lay, on, mat} m = 5; LCS "the cat on the
    # mat" -> distinct words {the, cat, on, mat} = 4 -> P = R = 4/5
    _eq(checks, M.rouge_score("the cat sat on the mat", "the cat lay on the mat"), _f(0.8, 0.8))
    _eq(checks, M.rouge_score("The cat", "the cat"), _f(0.5, 0.5))  # no lower-casing
    # ref [a, b]; hyp "b a" + "a": pair 1 back-trace ties (table[1][2] = table[2][1] = 1) move
    # along the prediction -> LCS {b}; pair 2 -> {a}; union {a, b}: P = R = 1
    _eq(checks, M.rouge_score("b a. a", "a b"), _f(1.0, 1.0))
    # without the sentence break only {b} is found: P = R = 1/2
    _eq(checks, M.rouge_score("b a a", "a b"), _f(0.5, 0.5))
    # rouge raises on no sentence (empty, only dots) -> 0.0; a whitespace-only piece is the word
    # "" and matches itself
    _eq(checks, M.rouge_score("", "a b"), 0.0)
    _eq(checks, M.rouge_score("...", "a b"), 0.0)
    _eq(checks, M.rouge_score("a b", ""), 0.0)
    _eq(checks, M.rouge_score("  ", " \n"), _f(1.0, 1.0))


def test_rouge_recursion_quirk(checks, monkeypatch):
    # ref [b, c], hyp [c, a x k]: the back-trace walks k cells along the prediction, matches c and
    # stops at (1, 0): k + 2 cells. eval.py (CPython 3.11) manages k = 989, fails from 990.
    # Both then score {c}: P = R = 1/2.
    _eq(checks, M.rouge_score("c" + " a" * 989, "b c"), _f(0.5, 0.5))
    _eq(checks, M.rouge_score("c" + " a" * 990, "b c"), 0.0)
    _eq(checks, M.rouge_zh_score("c" + " a" * 988, "b c"), _f(0.5, 0.5))  # one frame deeper
    _eq(checks, M.rouge_zh_score("c" + " a" * 989, "b c"), 0.0)
    monkeypatch.setattr(M, "ROUGE_RECURSION_LIMIT", None)
    _eq(checks, M.rouge_score("c" + " a" * 2000, "b c"), _f(0.5, 0.5))


def test_chinese_metrics(checks):
    # jieba (accurate mode): 我/来到/北京/清华大学/。 and 他/来到/了/网易/杭研/大厦
    checks.true(M._jieba_words("我来到北京清华大学。") == ["我", "来到", "北京", "清华大学", "。"])
    # "。" normalises to "" and is dropped: [我, 来到, 北京, 清华大学] vs [北京, 清华大学]:
    # P = 2/4, R = 1 -> 2/3
    _eq(checks, M.qa_f1_zh_score("我来到北京清华大学。", "北京清华大学"), 2 / 3, tol=1e-12)
    # n = 4 words, m = 6, LCS {来到}: P = 1/4, R = 1/6 -> ~0.2
    s = M.rouge_zh_score("我来到北京清华大学", "他来到了网易杭研大厦")
    _eq(checks, s, _f(1 / 4, 1 / 6))
    _eq(checks, s, 0.2, tol=1e-7)


def test_scorers(checks):
    preds, answers = ["Paris", "Rome", "x"], [["Paris"], ["paris", "Rome"], ["y"]]
    # per-example 1, 1, 0 -> 100 * 2/3 = 66.666... -> 66.67
    _eq(checks, M.scorer("qa_f1_score", preds, answers, None, False), 66.67)
    # buckets by length: < 4000, < 8000, else; empty bucket -> None
    e = M.scorer_e("qa_f1_score", preds, answers, [3999, 4000, 8000], None)
    checks.true(e == {"0-4k": 100.0, "4-8k": 100.0, "8k+": 0.0}, e)
    e = M.scorer_e("qa_f1_score", preds, answers, [0, 1, 2], None)
    checks.true(e == {"0-4k": 66.67, "4-8k": None, "8k+": None}, e)
    # eval.py rounds a Python float in scorer and a numpy float in scorer_e: 2.675 -> 2.67 / 2.68
    def const(p, g, **kw):
        return 0.02675

    _eq(checks, M.scorer(const, ["p"], [["g"]], None), 2.67)
    checks.true(M.scorer_e(const, ["p"], [["g"]], [0], None)["0-4k"] == 2.68)
    # classes as one list per example (rows of a prediction file) or one per task
    classes = ["City", "Country"]
    preds, answers = ["City", "Country and City"], [["City"], ["Country"]]
    _eq(checks, M.scorer("classification_score", preds, answers, classes), 75.0)
    _eq(checks, M.scorer("classification_score", preds, answers, [classes, classes]), 75.0)
    checks.true(set(M.METRICS) == {
        "qa_f1_score", "qa_f1_zh_score", "rouge_score", "rouge_zh_score", "classification_score",
        "retrieval_score", "retrieval_zh_score", "count_score", "code_sim_score"})


# ------------------------------------------------ properties vs independent implementations

_VOCAB = ["a", "an", "the", "The", "cat", "Cat", "dog", "x", "sat", "on", "42", "7"]
_SEPS = [" ", " ", " ", "  ", ". ", ".", ", ", "\n", "! ", "\t", "'", "..."]


def _text(rng, max_words=12):
    return "".join(rng.choice(_VOCAB) + rng.choice(_SEPS) for _ in range(rng.randint(0, max_words)))


def _ref_counter_f1(pred_tokens, gold_tokens):
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if not same:
        return 0.0
    p, r = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * p * r / (p + r)


def _ref_tokens(s):  # lower, strip ASCII punctuation, drop article tokens
    s = s.lower().translate(str.maketrans("", "", string.punctuation))
    return [t for t in s.split() if t not in ("a", "an", "the")]


def _ref_rouge_l(hyp, ref):
    """Summary-level ROUGE-L as in rouge 1.0.1: dict LCS table, recursive back-trace."""
    def sents(t):
        return [[w for w in " ".join(p.split()).split(" ")] for p in t.split(".") if len(p) > 0]

    def lcs_words(x, y):
        t = {}
        for i in range(len(x) + 1):
            for j in range(len(y) + 1):
                t[i, j] = 0 if i == 0 or j == 0 else (
                    t[i - 1, j - 1] + 1 if x[i - 1] == y[j - 1] else max(t[i - 1, j], t[i, j - 1]))

        def back(i, j):
            if i == 0 or j == 0:
                return set()
            if x[i - 1] == y[j - 1]:
                return back(i - 1, j - 1) | {x[i - 1]}
            return back(i - 1, j) if t[i - 1, j] > t[i, j - 1] else back(i, j - 1)

        return back(len(x), len(y))

    h, r = sents(hyp), sents(ref)
    if not h or not r:
        return 0.0
    union = set().union(*(lcs_words(rs, hs) for rs in r for hs in h))
    m, n = len({w for s in r for w in s}), len({w for s in h for w in s})
    return _f(len(union) / n, len(union) / m)


def _ref_fuzz_ratio(a, b):  # plain DP Indel distance; python-Levenshtein: 1 - dist / (len1 + len2)
    if a == b:
        return 100
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    dist = len(a) + len(b) - 2 * prev[-1]
    return round(100 * (1 - dist / (len(a) + len(b))))


def _ref_digit_share(pred, target):
    runs = ["".join(g) for k, g in groupby(pred, str.isdecimal) if k]
    return sum(r == target for r in runs) / len(runs) if runs else 0.0


def test_property_qa_f1_and_counts(checks):
    rng = random.Random(0)
    for _ in range(300):
        p, g = _text(rng), _text(rng)
        _eq(checks, M.qa_f1_score(p, g), _ref_counter_f1(_ref_tokens(p), _ref_tokens(g)), p, 1e-12)
        target = rng.choice(["4", "42", "7", "1"])
        _eq(checks, M.count_score(p, target), _ref_digit_share(p, target), p)
        gid = f"Paragraph {target}"
        _eq(checks, M.retrieval_score(p, gid), _ref_digit_share(p, target), p)


def test_property_rouge_l(checks):
    rng = random.Random(1)
    for _ in range(300):
        p, g = _text(rng), _text(rng)
        _eq(checks, M.rouge_score(p, g), _ref_rouge_l(p, g), f"{p!r} / {g!r}", 1e-12)


def test_property_code_sim(checks):
    rng = random.Random(2)
    for _ in range(300):
        a = "".join(rng.choice("ab c(x)=") for _ in range(rng.randint(0, 25)))
        b = "".join(rng.choice("ab c(x)=") for _ in range(rng.randint(0, 25)))
        _eq(checks, M.code_sim_score(a, b), _ref_fuzz_ratio(a, b) / 100, f"{a!r} / {b!r}")
        # the scored line: first one after lstrip("\n") with no backtick, '#' or '//'
        lines = [rng.choice(["# c", "// c", "`x`", "a/b", "", a]) for _ in range(rng.randint(0, 4))]
        pred = "\n".join(lines)
        kept = [ln for ln in pred.lstrip("\n").split("\n") if not any(t in ln for t in "`#")
                and "//" not in ln]
        _eq(checks, M.code_sim_score(pred, b), _ref_fuzz_ratio(kept[0] if kept else "", b) / 100)


def test_property_classification(checks):
    rng = random.Random(3)
    pool = ["a", "ab", "abc", "b", "bc", "c", "abcd", "cd"]
    for _ in range(300):
        classes = rng.sample(pool, rng.randint(1, len(pool)))
        pred, gold = ("".join(rng.choice("abcd ") for _ in range(rng.randint(0, 8))),
                      rng.choice(classes))
        hits = [c for c in classes if c in pred]
        for c in hits:  # the official loop: removes from the list it iterates over
            if c in gold and c != gold:
                hits.remove(c)
        expected = 1.0 / len(hits) if gold in hits else 0.0
        _eq(checks, M.classification_score(pred, gold, all_classes=classes), expected)


def test_property_chinese(checks):
    import jieba

    rng = random.Random(4)
    pieces = ["我们", "今天", "去", "北京", "。", "，", "天气", "很好", "的", "学习",
              " ", ".", "AI"]

    def zh():
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))

    def tokens(t):
        out = []
        for w in jieba.cut(t, cut_all=False):
            w = "".join(ch for ch in w.lower() if ch not in M._ZH_PUNCT and not ch.isspace())
            if w:
                out.append(w)
        return out

    for _ in range(150):
        p, g = zh(), zh()
        _eq(checks, M.qa_f1_zh_score(p, g), _ref_counter_f1(tokens(p), tokens(g)), p, 1e-12)
        joined = [" ".join(jieba.cut(t, cut_all=False)) for t in (p, g)]
        _eq(checks, M.rouge_zh_score(p, g), _ref_rouge_l(*joined), f"{p!r} / {g!r}", 1e-12)
        n = rng.randint(0, 3)
        _eq(checks, M.retrieval_zh_score(p + "段落3", f"段落{n}"),
            _ref_digit_share(p + "3", str(n)))


# ------------------------------------------------ the official scorer's own dependencies


def _official_rouge(hyp, ref):
    from rouge import Rouge

    try:
        return Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"]
    except (ValueError, RecursionError):  # what the package raises; eval.py catches all
        return 0.0


def test_matches_rouge_package(checks):
    pytest.importorskip("rouge")
    import jieba

    rng = random.Random(5)
    for _ in range(300):
        p, g = _text(rng, 20), _text(rng, 20)
        checks.true(M.rouge_score(p, g) == _official_rouge(p, g), f"{p!r} / {g!r}")
    zh = "我来到北京清华大学。他来到了网易杭研大厦，今天天气很好. "
    for _ in range(50):
        p, g = (zh[rng.randint(0, 20):rng.randint(20, len(zh))] for _ in range(2))
        joined = [" ".join(jieba.cut(t, cut_all=False)) for t in (p, g)]
        checks.true(M.rouge_zh_score(p, g) == _official_rouge(*joined), f"{p!r} / {g!r}")


def test_recursion_quirk_matches_rouge_package(checks):
    pytest.importorskip("rouge")
    from rouge import Rouge

    results = {}

    def run():  # a fresh thread: a call stack about as shallow as eval.py's
        for k in (900, 1100):
            try:
                results[k] = Rouge().get_scores(["c" + " a" * k], ["b c"], avg=True)["rouge-l"]["f"]
            except RecursionError:
                results[k] = 0.0

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    for k in (900, 1100):
        checks.true(M.rouge_score("c" + " a" * k, "b c") == results[k], f"k={k}: {results}")
    checks.true(results[900] > 0 and results[1100] == 0.0, results)


def test_matches_fuzzywuzzy_levenshtein(checks):
    pytest.importorskip("Levenshtein")
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    checks.true(fuzz.SequenceMatcher.__module__ == "fuzzywuzzy.StringMatcher")

    def official(pred, gold):
        lines = pred.lstrip("\n").split("\n")
        line = next((ln for ln in lines if "`" not in ln and "#" not in ln and "//" not in ln), "")
        return fuzz.ratio(line, gold) / 100

    rng = random.Random(6)
    cases = [("a" + "x" * 7, "a" + "y" * 7), ("a" + "x" * 39, "a" + "y" * 39), ("", ""), ("", "a")]
    for _ in range(300):
        a = "".join(rng.choice("ab c#/`\n") for _ in range(rng.randint(0, 30)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 30)))
        cases.append((a, b))
    for a, b in cases:
        checks.true(M.code_sim_score(a, b) == official(a, b), f"{a!r} / {b!r}")
