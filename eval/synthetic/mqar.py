"""Multi-query associative recall (MQAR; Arora et al., "Zoology", 2312.04927), token level.

Examples come from the training dataset ``memarch.data.synthetic.MQAR`` (zoology's layout:
``k_1 v_1 ... k_N v_N`` then every key once more at a power-law gap; vocabulary 0 filler, keys
1..K, values K+1..K+V) with the seed ``EVAL_SEED_OFFSET + seed``, a stream disjoint from the
training (``data.seed=0``) and validation (``val_seed=1``) ones. As in zoology's evaluation,
the score is teacher forced: one forward pass per batch (chunk by chunk through the model
state), the argmax over the whole vocabulary at every query key must be that key's value;
accuracy is pooled over query positions.

``gap`` > 0 is the long-range variant (``configs/data/mqar_longrange.yaml``; the same
generator as training): ``gap`` filler tokens between the pairs and the queries, so a
window-only model whose receptive field (L x (W - 1) + sum(K - 1) tokens) is <= gap is at
chance (1 / num_values) by construction. ``python -m memarch.eval checkpoint=... tasks=[mqar]
settings.mqar.gap=72 settings.mqar.lengths=[128,256] settings.mqar.num_kv_pairs=4``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from memarch.data.synthetic import IGNORE_INDEX, MQAR

from ..io import JsonlWriter, environment, progress, write_json
from .common import FnSuite, check_lengths, check_positive, plot_name, runner

__all__ = ["EVAL_SEED_OFFSET", "MQARSuite", "mqar_dataset", "mqar_predictions", "mqar_suite",
           "run_mqar"]

EVAL_SEED_OFFSET = 1000


def _pairs(lengths: list[int], num_kv_pairs) -> list[int]:
    if num_kv_pairs is None:
        return [max(1, L // 16) for L in lengths]
    kv = [num_kv_pairs] * len(lengths) if isinstance(num_kv_pairs, int) else list(num_kv_pairs)
    if len(kv) != len(lengths) or any(not isinstance(n, int) or n < 1 for n in kv):
        raise ValueError(f"num_kv_pairs: expected None, an integer >= 1 or one per length "
                         f"({len(lengths)} for lengths={lengths}), got {num_kv_pairs!r}")
    return kv


def _too_short_message(L: int, n: int, gap: int) -> str:
    if gap == 0:
        return (f"lengths: {L} is too short for num_kv_pairs={n} (zoology's layout needs "
                f"seq_len >= 4 * num_kv_pairs = {4 * n})")
    return (f"lengths: {L} is too short for num_kv_pairs={n} and gap={gap} (the layout needs "
            f"seq_len >= 4 * num_kv_pairs + gap = {4 * n + gap})")


class MQARSuite(FnSuite):
    """The MQAR plan: ``too_short()`` gives the lengths below ``4 * num_kv_pairs + gap``
    (``tasks=auto`` drops them), ``check()`` raises for the shortest one with MQAR's reason."""

    def __init__(self, fn, lengths: list[int], kv: list[int], gap: int):
        super().__init__("mqar", fn, lengths)
        self.kv, self.gap = kv, gap

    def _too_short(self) -> dict[int, int]:
        return {L: 4 * n + self.gap for L, n in zip(self.lengths, self.kv)
                if L < 4 * n + self.gap}

    def _too_short_text(self, length: int, need: int) -> str:
        return _too_short_message(length, dict(zip(self.lengths, self.kv))[length], self.gap)


def mqar_dataset(seq_len: int, num_kv_pairs: int, *, num_keys: int, num_values: int,
                 power_a: float, seed: int, gap: int = 0) -> MQAR:
    """The evaluation stream for one (seq_len, num_kv_pairs) (seed offset by
    ``EVAL_SEED_OFFSET``), ``gap`` filler tokens between the pairs and the queries."""
    return MQAR(seq_len=seq_len, num_kv_pairs=num_kv_pairs, num_keys=num_keys,
                num_values=num_values, power_a=power_a, gap=gap, seed=EVAL_SEED_OFFSET + seed,
                split="test")


@torch.no_grad()
def mqar_predictions(model, ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced argmax ``[B, T]`` of ``ids [B, T]``: one pass, chunk by chunk."""
    return torch.cat([logits.argmax(-1).cpu() for _, logits, _ in model.chunks(ids)], 1)


def mqar_suite(model, *, lengths: Sequence[int] = (64, 128, 256, 512),
               num_kv_pairs: int | list[int] | None = None, num_keys: int = 32,
               num_values: int = 32, power_a: float = 0.01, gap: int = 0,
               n_per_length: int = 256, batch_size: int = 64, seed: int = 0) -> MQARSuite:
    """MQAR accuracy (%) over query positions by sequence length; writes ``mqar.json``,
    ``mqar.jsonl`` (one line per sequence) and ``mqar_by_length.png`` into ``out_dir``.

    Args:
        lengths: sequence lengths in tokens (distinct).
        num_kv_pairs: key-value pairs per sequence: one integer for every length, one per
            length, or None for ``length // 16`` (64 -> 4, the training default).
        num_keys, num_values, power_a: the vocabulary (1 + num_keys + num_values ids, at most
            the model's vocab_size) and gap power law, as in training (configs/data/mqar.yaml).
        gap: filler tokens between the key-value pairs and the query region, as in training
            (configs/data/mqar_longrange.yaml: 72); 0 is zoology's layout. Every length needs
            ``>= 4 * num_kv_pairs + gap`` tokens (``tasks=auto`` drops shorter ones).
        n_per_length: sequences per length.
        batch_size: sequences per forward pass.
        seed: the examples are ``MQAR(seed=1000 + seed)[0:n_per_length]`` per length.
    """
    lengths = check_lengths(lengths)
    kv = _pairs(lengths, num_kv_pairs)
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
        raise ValueError(f"gap: expected an integer >= 0, got {gap!r}")
    check_positive(n_per_length, "n_per_length")
    check_positive(batch_size, "batch_size")
    vocab = 1 + num_keys + num_values
    if vocab > model.vocab_size:
        raise ValueError(f"num_keys={num_keys}, num_values={num_values}: the MQAR vocabulary "
                         f"(1 + num_keys + num_values = {vocab} ids) exceeds the model's "
                         f"vocab_size {model.vocab_size}; use the num_keys/num_values the model "
                         "was trained with")
    if max(kv) > min(num_keys, num_values):
        raise ValueError(f"num_keys={num_keys}, num_values={num_values}: both must be >= "
                         f"num_kv_pairs (up to {max(kv)})")
    settings = {"lengths": lengths, "num_kv_pairs": kv, "num_keys": num_keys,
                "num_values": num_values, "power_a": power_a, "gap": gap,
                "n_per_length": n_per_length, "batch_size": batch_size, "seed": seed,
                "chunk_size": model.chunk_size}

    def run(out_dir: Path) -> dict:
        t0 = time.time()
        hits, counts = {}, {}
        batches = [(L, n, a) for L, n in zip(lengths, kv)
                   for a in range(0, n_per_length, batch_size)]
        with JsonlWriter(out_dir / "mqar.jsonl") as w:
            for L, n, a in progress(batches, desc="mqar", total=len(batches)):
                ds = mqar_dataset(L, n, num_keys=num_keys, num_values=num_values,
                                  power_a=power_a, seed=seed, gap=gap)
                items = [ds[i] for i in range(a, min(a + batch_size, n_per_length))]
                ids = torch.stack([x["input_ids"] for x in items])
                labels = torch.stack([x["labels"] for x in items])
                pred = mqar_predictions(model, ids)
                for p, y in zip(pred, labels):
                    q = y != IGNORE_INDEX
                    ok = int((p[q] == y[q]).sum())
                    hits[L], counts[L] = hits.get(L, 0) + ok, counts.get(L, 0) + int(q.sum())
                    w.write({"length": L, "num_kv_pairs": n, "prompt_tokens": L,
                             "prediction": p[q].tolist(), "answers": y[q].tolist(),
                             "correct": ok, "score": 100.0 * ok / int(q.sum())})
        by_length = {str(L): 100.0 * hits[L] / counts[L] for L in lengths}
        summary = {"task": "mqar", "model": model.name, "metric": "accuracy",
                   "settings": settings,
                   "score": 100.0 * sum(hits.values()) / sum(counts.values()),
                   "by_length": by_length, "max_length_run": max(lengths),
                   "n_examples": len(lengths) * n_per_length, "n_queries": sum(counts.values()),
                   "chance": 100.0 / num_values, "environment": environment(model.device),
                   "seconds": time.time() - t0}
        from . import plots
        plots.accuracy_by_length(by_length, out_dir / "mqar_by_length.png",
                                 title=f"mqar: {plot_name(model)}", ylabel="accuracy (%)",
                                 chance=100.0 / num_values)
        write_json(out_dir / "mqar.json", summary)
        return summary

    return MQARSuite(run, lengths, kv, gap)


run_mqar = runner(mqar_suite, "mqar")
