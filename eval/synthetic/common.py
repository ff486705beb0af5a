"""Shared machinery of the text suites: haystacks, insertion at a depth, fitting a prompt to a
token budget, and the generate-score-write loop.

Lengths are in tokens of the model's tokenizer. A prompt is a function of a number of haystack
units (characters of filler, or list entries); ``fit_length`` binary-searches the largest
number whose prompt still fits the target, as RULER does (``scripts/data/synthetic/niah.py``,
``generate_samples``), so prompts land within one unit (a character: about one token) of it.
"""

from __future__ import annotations

import abc
import bisect
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memarch.data.synthetic import FILLER

from ..io import JsonlWriter, environment, progress, write_json

__all__ = [
    "NOISE",
    "Example",
    "Haystack",
    "LengthTooShortError",
    "Planned",
    "TextSuite",
    "check_lengths",
    "check_positive",
    "example_rng",
    "fit_length",
    "insert_at_depths",
    "postprocess_pred",
    "run_text_suite",
    "runner",
]

# Mohtashami & Jaggi (2023) / RULER's "noise" haystack sentences (the training Passkey's).
NOISE = FILLER.strip()


@dataclass
class Example:
    """One prompt: its target length, the prompt text and ids, the accepted answers."""
    length: int                     # target context length in tokens
    prompt: str
    ids: list[int]
    answers: list[str]
    depth: float | None = None      # needle depth in % of the haystack, where one exists
    meta: dict = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


class Haystack:
    """Filler text, read from ``haystack_file`` (whitespace collapsed to single spaces, as
    RULER does with its essays) or, for None, :data:`NOISE` repeated. ``text(n)`` is the first
    ``n`` characters, the source repeated (joined by ``joiner``) as often as needed."""

    def __init__(self, haystack_file: str | Path | None = None, *, joiner: str = " ",
                 param: str = "haystack_file"):
        if haystack_file is None:
            self.source = NOISE
        else:
            p = Path(haystack_file).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"{param}: file not found: {p} (give a text file, "
                                        "e.g. memarch/data/corpora/kjv.txt.xz, or None for the "
                                        "generated filler)")
            from memarch.data.text import read_text  # plain, .xz or .gz
            self.source = re.sub(r"\s+", " ", read_text(p)).strip()
            if not self.source:
                raise ValueError(f"{param}: {p} holds no text")
        self.file = None if haystack_file is None else str(haystack_file)
        self.joiner, self._text = joiner, self.source

    def text(self, n: int) -> str:
        if len(self._text) < n:
            reps = 2 * (n // (len(self.source) + len(self.joiner)) + 1)
            self._text = self.joiner.join([self.source] * reps)
        return self._text[:n]


_SENTENCE_END = re.compile(r"[.!?]\s+")


def insert_at_depths(text: str, items: Sequence[str], depths: Sequence[float], *,
                     unit: str = "sentence") -> str:
    """Insert ``items`` (in order) into ``text`` at ``depths`` (% of ``len(text)``, sorted
    ascending). Each position snaps back to the start of its sentence (``unit="sentence"``,
    joined by a space; as Kamradt's needle-in-a-haystack, which backs up to the previous
    period) or of its line (``unit="line"``, joined by a newline); depth 100 is the very end.
    """
    if list(depths) != sorted(depths):
        raise ValueError(f"insert_at_depths: depths must be sorted, got {list(depths)}")
    sep, pat = (" ", _SENTENCE_END) if unit == "sentence" else ("\n", re.compile(r"\n"))
    starts = [0] + [m.end() for m in pat.finditer(text)]
    pos = []
    for d in depths:
        if not 0 <= d <= 100:
            raise ValueError(f"depths must be in [0, 100] (percent), got {d}")
        p = round(len(text) * d / 100)
        pos.append(len(text) if p >= len(text) else starts[bisect.bisect_right(starts, p) - 1])
    out, last = "", 0
    for item, p in zip(items, pos):
        out += text[last:p]
        if out and not out[-1].isspace():
            out += sep
        out += item
        if p < len(text):
            out += sep
        last = p
    return out + text[last:]


class LengthTooShortError(ValueError):
    """A target length below what the prompt without any haystack takes (``need`` tokens)."""

    def __init__(self, message: str, *, length: int, need: int):
        super().__init__(message)
        self.length, self.need = length, need


def fit_length(build: Callable[[int], str], target: int, encode: Callable[[str], list[int]],
               *, param: str = "lengths") -> tuple[str, list[int], int]:
    """The prompt ``build(n)`` for the largest ``n`` whose token count is <= ``target``
    (binary search; ``build`` must grow with ``n``). Returns (prompt, ids, n); a target below
    ``build(0)`` raises ValueError naming ``param``."""
    sizes: dict[int, tuple[str, list[int]]] = {}

    def fits(n: int) -> bool:
        if n not in sizes:
            text = build(n)
            sizes[n] = (text, encode(text))
        return len(sizes[n][1]) <= target

    if not fits(0):
        need = len(sizes[0][1])
        raise LengthTooShortError(
            f"a length of {target} tokens is too short for this task: the prompt without any "
            f"haystack already takes {need} tokens (expected {param} >= {need})",
            length=target, need=need)
    lo, hi = 0, max(1, target)
    while fits(hi):                                   # grow until it overflows
        lo, hi = hi, 2 * hi
        if hi > 2 ** 40:
            raise ValueError(f"{param}: the prompt does not grow with its haystack")
    while hi - lo > 1:                                # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    text, ids = sizes[lo]
    return text, ids, lo


def example_rng(task: str, seed: int, *key) -> random.Random:
    """A generator that depends only on (task, seed, key): examples are reproducible and
    independent of which other lengths or examples run (string seeds hash with SHA-512)."""
    return random.Random(":".join(str(x) for x in (task, seed, *key)))


def check_lengths(lengths: Iterable[int], *, param: str = "lengths") -> list[int]:
    ls = list(lengths) if not isinstance(lengths, int) else [lengths]
    if not ls or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in ls):
        raise ValueError(f"{param}: expected a non-empty list of positive token counts, "
                         f"got {lengths!r}")
    if len(set(ls)) != len(ls):
        raise ValueError(f"{param}: expected distinct lengths, got {ls}")
    return ls


def check_positive(value: int, param: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{param}: expected an integer >= 1, got {value!r}")
    return value


def postprocess_pred(pred: str) -> str:
    """RULER's ``postprocess_pred`` (scripts/eval/evaluate.py): strip, control characters to
    newlines, strip again."""
    return re.sub(r"[\x00-\x1f]", "\n", pred.strip()).strip()


def _grouped(rows: list[dict], key: Callable[[dict], str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return out


def named(task: str, e: Exception) -> Exception:
    """``e`` with its message prefixed by ``task: `` (unless it already names it); the same
    exception type where it can be rebuilt from a message, else a ValueError/OSError."""
    msg = str(e)
    if msg.startswith(f"{task}:"):
        return e
    msg = f"{task}: {msg}"
    if isinstance(e, LengthTooShortError):
        return LengthTooShortError(msg, length=e.length, need=e.need)
    if type(e) in (ValueError, OSError, FileNotFoundError, PermissionError, IsADirectoryError):
        return type(e)(msg)
    return OSError(msg) if isinstance(e, OSError) else ValueError(msg)


class Planned(abc.ABC):
    """A suite whose settings are checked: ``too_short()`` ({length: tokens needed} of the
    lengths the task cannot fit), ``check()`` (raise for those) and ``run(out_dir)``."""

    task: str = ""
    lengths: list[int] | None = None

    def too_short(self) -> dict[int, int]:
        """{length: tokens needed} of the lengths the task cannot fit; other problems found
        on the way (a model that cannot read text) raise, naming the suite."""
        try:
            return self._too_short()
        except (ValueError, OSError) as e:
            raise named(self.task, e) from e

    def _too_short(self) -> dict[int, int]:
        return {}

    def tokens_fed(self) -> int | None:
        """The most tokens one pass feeds the model (None: unknown): the longest length."""
        return max(self.lengths) if self.lengths else None

    def check(self) -> None:
        bad = self.too_short()
        if bad:
            L = min(bad)
            more = sorted(set(bad) - {L})
            also = f"; also too short: {more}" if more else ""
            raise LengthTooShortError(f"{self.task}: {self._too_short_text(L, bad[L])}{also}",
                                      length=L, need=bad[L])

    def _too_short_text(self, length: int, need: int) -> str:
        """Why ``length`` is too short (it needs ``need`` tokens); suites may say it better."""
        return (f"a length of {length} tokens is too short for this task: the prompt without "
                f"any haystack already takes {need} tokens (expected lengths >= {need})")

    @abc.abstractmethod
    def _run(self, out_dir: Path) -> dict:
        """Run the checked suite; returns its summary."""

    def run(self, out_dir: str | Path, *, checked: bool = False) -> dict:
        """Run the suite (``checked``: ``check()`` has passed already); an error names it."""
        try:
            if not checked:
                self.check()
            return self._run(Path(out_dir))
        except (ValueError, OSError) as e:
            raise named(self.task, e) from e


class FnSuite(Planned):
    """A suite whose checks are done when it is built: ``run`` calls ``fn(out_dir)``."""

    def __init__(self, task: str, fn: Callable[[Path], dict], lengths=None):
        self.task, self._fn, self.lengths = task, fn, lengths

    def _run(self, out_dir: Path) -> dict:
        return self._fn(out_dir)


def runner(plan: Callable[..., Planned], name: str) -> Callable[..., dict]:
    """``run_<suite>(model, out_dir, **settings)`` from ``<suite>_suite(model, **settings)``:
    the same keyword arguments (signature and docstring), building the plan and running it;
    a settings error names the suite."""
    import inspect

    def run(model, out_dir, **settings) -> dict:
        return build(plan, name, model, settings).run(out_dir)

    sig = inspect.signature(plan)
    params = list(sig.parameters.values())
    out = inspect.Parameter("out_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    run.__signature__ = sig.replace(parameters=[params[0], out, *params[1:]])
    run.__doc__, run.__name__, run.__qualname__ = plan.__doc__, f"run_{name}", f"run_{name}"
    run.__module__ = plan.__module__
    return run


def build(plan: Callable[..., Planned], task: str, model, settings) -> Planned:
    """``plan(model, **settings)``; a ValueError/OSError names ``task``."""
    try:
        return plan(model, **settings)
    except (ValueError, OSError) as e:
        raise named(task, e) from e


class TextSuite(Planned):
    """A generate-and-score text suite, built by the suite's ``<name>_suite`` function:
    ``make_examples(lengths=[...])`` yields its examples; see :meth:`_run`."""

    def __init__(self, model, *, task: str, make_examples: Callable[..., Iterator[Example]],
                 per_length: int, metric: Callable[[list[str], list[list[str]]], float],
                 metric_name: str, max_new_tokens: int, settings: dict, lengths: Sequence[int],
                 depths: Sequence[float] | None = None):
        check_positive(max_new_tokens, "max_new_tokens")
        self.model, self.task, self.make_examples = model, task, make_examples
        self.per_length, self.metric, self.metric_name = per_length, metric, metric_name
        self.max_new_tokens, self.settings = max_new_tokens, settings
        self.lengths, self.depths = list(lengths), depths

    def _too_short(self) -> dict[int, int]:
        """Builds the first prompt of every length (this also checks that the model reads
        text); {length: tokens needed} for those the task cannot fit."""
        bad = {}
        for L in self.lengths:
            try:
                next(self.make_examples(lengths=[L]))
            except LengthTooShortError as e:
                bad[L] = e.need
        return bad

    def tokens_fed(self) -> int | None:
        """The longest prompt and the generated tokens fed back (all but the last)."""
        return max(self.lengths) + self.max_new_tokens - 1 if self.lengths else None

    def _run(self, out_dir: Path) -> dict:
        """Greedy-generate every example (chunked prefill through the model state), score
        it, write ``<task>.jsonl``, ``<task>.json`` and the plots; returns the summary.

        ``metric(preds, refs)`` scores a list in % (RULER's convention): it gives each
        example's score, each length's and the overall one. With ``depths`` the summary also
        has ``by_depth_length`` and the needle heatmap is drawn."""
        from . import plots
        model, task, lengths, depths, metric = (self.model, self.task, self.lengths,
                                                self.depths, self.metric)
        t0 = time.time()
        rows = []
        with JsonlWriter(out_dir / f"{task}.jsonl") as w:
            for ex in progress(self.make_examples(lengths=list(lengths)), desc=task,
                               total=len(lengths) * self.per_length):
                pred = postprocess_pred(model.generate_text(ex.ids, self.max_new_tokens))
                row = {"length": ex.length, "depth": ex.depth,
                       "prompt_tokens": ex.prompt_tokens, "prediction": pred,
                       "answers": ex.answers, "score": metric([pred], [ex.answers]), **ex.meta}
                if ex.depth is None:
                    del row["depth"]
                w.write(row)
                rows.append(row)

        def score(rs):
            return (metric([r["prediction"] for r in rs], [r["answers"] for r in rs])
                    if rs else None)

        by_len = _grouped(rows, lambda r: str(r["length"]))
        summary = {"task": task, "model": model.name, "metric": self.metric_name,
                   "settings": self.settings, "score": score(rows),
                   "by_length": {str(L): score(by_len.get(str(L), [])) for L in lengths}}
        if depths is not None:
            cells = _grouped(rows, lambda r: f"{r['depth']:g}|{r['length']}")
            summary["by_depth_length"] = {
                f"{d:g}": {str(L): score(cells.get(f"{d:g}|{L}", [])) for L in lengths}
                for d in depths}
        summary.update({"max_length_run": max((r["prompt_tokens"] for r in rows), default=0),
                        "n_examples": len(rows), "environment": environment(model.device),
                        "seconds": time.time() - t0})
        title = f"{task}: {plot_name(model)}"
        plots.accuracy_by_length(summary["by_length"], out_dir / f"{task}_by_length.png",
                                 title=title, ylabel=f"{self.metric_name} (%)")
        if depths is not None:
            plots.needle_heatmap(summary["by_depth_length"], out_dir / "needle_heatmap.png",
                                 title=title)
        write_json(out_dir / f"{task}.json", summary)
        return summary


def plot_name(model) -> str:
    """The model's short name for plot titles (``EvalModel.title``; else its name)."""
    return str(getattr(model, "title", None) or model.name)


def run_text_suite(model, out_dir: Path, *, task: str,
                   make_examples: Callable[..., Iterator[Example]], total: int,
                   metric: Callable[[list[str], list[list[str]]], float], metric_name: str,
                   max_new_tokens: int, settings: dict, lengths: Sequence[int],
                   depths: Sequence[float] | None = None) -> dict:
    """:class:`TextSuite` in one call (``total``: examples in all, ``len(lengths)`` times
    the examples per length); every length is checked before anything runs."""
    per = total // max(1, len(lengths))
    return TextSuite(model, task=task, make_examples=make_examples, per_length=per,
                     metric=metric, metric_name=metric_name, max_new_tokens=max_new_tokens,
                     settings=settings, lengths=lengths, depths=depths).run(out_dir)
