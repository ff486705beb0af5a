"""Generation: bad arguments and bad logits raise a clear error that names
the parameter; the edge cases that have a right answer get it. Each docstring names its probe."""

from __future__ import annotations

import math

import pytest
import torch
from lm_helpers import hybrid_lm

from memarch.generation import generate, sample_next, stream

INF = float("inf")


class Scripted(torch.nn.Module):
    """A model without ``vocab_size``: the logits for the token after ``k`` consumed tokens
    are ``script(k)`` ([B, V]); the state counts the consumed tokens."""

    def __init__(self, script):
        super().__init__()
        self.script = script

    def forward(self, ids, state=None):
        k0 = 0 if state is None else state
        logits = torch.stack([self.script(k0 + t + 1) for t in range(ids.shape[1])], 1)
        return logits, k0 + ids.shape[1], None


def _uniformish(V=5, B=2):
    """Finite logits, token 1 the greedy choice."""
    return lambda k: torch.tensor([0.0, 1.0] + [0.0] * (V - 2)).repeat(B, 1)


def test_stop_tokens_and_pad_id_outside_vocabulary(checks):
    """Probe: stop_tokens / pad_id negative or >= V (model.vocab_size, and the logits' last
    dim for a model without vocab_size) -> ValueError naming the parameter, the ids and V."""
    m = hybrid_lm().eval()                       # V = 61
    ids = torch.randint(0, 61, (2, 4))
    for bad, shown in [([3, 61], r"\[61\]"), ([-1, 5], r"\[-1\]"), ([70, -2, 70], r"\[-2, 70\]")]:
        with pytest.raises(ValueError, match=rf"stop_tokens must be token ids in \[0, V=61\).*"
                                             rf"out-of-vocabulary ids {shown}"):
            stream(m, ids, stop_tokens=bad)      # raised at the call, before any decoding
        with pytest.raises(ValueError, match=r"stop_tokens.*V=61"):
            generate(m, ids, 3, stop_tokens=bad)
        checks.n += 1
    for pad in (61, -1):
        with pytest.raises(ValueError,
                           match=rf"pad_id must be a token id in \[0, V=61\).*got {pad}"):
            generate(m, ids, 3, stop_tokens=[5], pad_id=pad)
        checks.n += 1
    # no vocab_size attribute: V from the first logits, checked before the first token
    s = Scripted(_uniformish(V=5))
    it = stream(s, torch.zeros(2, 3, dtype=torch.long), stop_tokens=[5])
    with pytest.raises(ValueError, match=r"stop_tokens.*V=5.*last dimension of the model's "
                                         r"logits.*\[5\]"):
        next(it)
    with pytest.raises(ValueError, match=r"pad_id.*V=5.*got 9"):
        generate(s, torch.zeros(2, 3, dtype=torch.long), 2, pad_id=9)
    with pytest.raises(TypeError, match=r"stop_tokens must be a sequence of int token ids.*"
                                        r"pass \[7\]"):
        stream(m, ids, stop_tokens=7)
    with pytest.raises(TypeError, match=r"stop_tokens must be a sequence of int.*element 2.5"):
        stream(m, ids, stop_tokens=[1, 2.5])
    with pytest.raises(TypeError, match=r"pad_id must be an int or None"):
        stream(m, ids, stop_tokens=[1], pad_id=1.0)
    out = generate(m, ids, 4, stop_tokens=[0, 60], pad_id=60)      # the edges are valid
    checks.true(out.tokens.shape == (2, 4), "ids 0 and V-1 are accepted")


def test_nan_or_all_minus_inf_logits_raise_per_step(checks):
    """Probe: the model yields NaN (or a row of all -inf) logits at some step -> ValueError
    'model produced non-finite logits at step n for rows [...]', not a silent token 0."""
    def nan_at_3(k):
        x = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
        if k == 2 + 3:                           # prompt of 2, then steps 0, 1, 2, 3
            x[1, 0] = float("nan")
            x[2] = -INF
        return x
    ids = torch.zeros(3, 2, dtype=torch.long)
    for temperature in (0.0, 1.0):
        it = stream(Scripted(nan_at_3), ids, temperature=temperature)
        got = [next(it).token for _ in range(3)]
        checks.true(len(got) == 3, "valid steps before the bad one are yielded")
        with pytest.raises(ValueError, match=r"model produced non-finite logits at step 3 for "
                                             r"rows \[1, 2\].*NaN"):
            next(it)
    all_inf = Scripted(lambda k: torch.full((2, 4), -INF))
    with pytest.raises(ValueError,
                       match=r"non-finite logits at step 0 for rows \[0, 1\].*all -inf"):
        generate(all_inf, ids[:2], 3)
    for logits in (torch.tensor([[0.0, float("nan")]]), torch.tensor([[1.0, 2.0], [-INF, -INF]])):
        for t in (0.0, 1.0):
            with pytest.raises(ValueError, match=r"sample_next: model produced non-finite logits "
                                                 r"for rows \[0\]|for rows \[1\]"):
                sample_next(logits, temperature=t)
            checks.n += 1


def test_inf_entries_with_finite_ones_are_fine(checks):
    """Probe: -inf entries beside finite ones (masked tokens), +inf entries (overflow), and a
    tiny temperature that would overflow the division -> valid samples, no NaN softmax."""
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[0.0, -INF, 1.0, -INF]]).repeat(200, 1)
    s = sample_next(x, temperature=1.0, generator=g)
    checks.true(set(s.tolist()) == {0, 2}, "-inf tokens are never drawn")
    y = torch.tensor([[0.0, INF, 5.0, INF]]).repeat(200, 1)
    s = sample_next(y, temperature=1.0, top_k=3, top_p=0.9, generator=g)
    checks.true(set(s.tolist()) <= {1, 3} and len(set(s.tolist())) == 2,
                "+inf entries share the mass")
    checks.equal(sample_next(y[:2]), torch.ones(2, dtype=torch.long), "greedy takes the first +inf")
    z = torch.tensor([[3e38, 1e38, -3e38]]).repeat(50, 1)
    s = sample_next(z, temperature=1e-30, generator=g)
    checks.equal(s, torch.zeros(50, dtype=torch.long), "tiny temperature ~ argmax, no overflow")
    # a finished row's NaN logits are not an error: the row is padded anyway
    def nan_after_stop(k):
        x = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
        if k > 2:
            x[0] = float("nan")
        return x
    out = generate(Scripted(nan_after_stop), torch.zeros(2, 2, dtype=torch.long), 4,
                   stop_tokens=[1], pad_id=2)
    checks.equal(out.tokens[0], torch.tensor([1, 2, 2, 2]), "finished row padded")
    checks.equal(out.tokens[1], torch.zeros(4, dtype=torch.long), "other row decodes on")


def test_min_new_tokens_when_every_token_is_a_stop_token(checks):
    """Probe: min_new_tokens > 0 while every vocabulary token is a stop token (or a row has
    finite logits only on stop tokens) -> ValueError naming min_new_tokens, not a NaN softmax."""
    ids = torch.zeros(2, 3, dtype=torch.long)
    s = Scripted(_uniformish(V=3))
    with pytest.raises(ValueError, match=r"min_new_tokens=1 cannot be honoured: every token of "
                                         r"the vocabulary \(V=3\) is in stop_tokens"):
        generate(s, ids, 4, stop_tokens=[0, 2, 1, 2], min_new_tokens=1, temperature=1.0)
    out = generate(s, ids, 4, stop_tokens=[0, 1, 2])          # min_new_tokens=0: stops at once
    checks.true(out.tokens.shape == (2, 1) and bool(out.finished.all()), "stops at the first token")

    def only_stops_finite(k):
        return torch.tensor([[0.0, 1.0, 2.0], [-INF, 3.0, -INF]])
    with pytest.raises(ValueError, match=r"at step 0 rows \[1\] have no logit above -inf outside "
                                         r"stop_tokens, so min_new_tokens=2"):
        generate(Scripted(only_stops_finite), ids, 4, stop_tokens=[1], min_new_tokens=2)
    out = generate(Scripted(only_stops_finite), ids, 4, stop_tokens=[1], pad_id=0)
    checks.equal(out.tokens, torch.tensor([[2, 2, 2, 2], [1, 0, 0, 0]]),
                 "without min_new_tokens: row 1 stops at once")


def test_count_and_sampling_arguments(checks):
    """Probe: max_new_tokens not an int / negative (None: unbounded, 0: nothing), min_new_tokens
    < 0, temperature NaN / inf / negative, top_p NaN, top_k not an int, chunk_size 0 / 2.5."""
    m = hybrid_lm().eval()
    ids = torch.randint(0, 61, (1, 4))
    cases = [
        (dict(max_new_tokens=2.5), TypeError,
         r"stream: max_new_tokens must be an int or None, got 2.5"),
        (dict(max_new_tokens="3"), TypeError, r"max_new_tokens must be an int or None"),
        (dict(max_new_tokens=True), TypeError, r"max_new_tokens must be an int or None"),
        (dict(max_new_tokens=-1), ValueError, r"max_new_tokens must be >= 0 or None, got -1"),
        (dict(min_new_tokens=-1), ValueError, r"min_new_tokens must be >= 0, got -1"),
        (dict(min_new_tokens=None), TypeError, r"min_new_tokens must be an int"),
        (dict(temperature=math.nan), ValueError,
         r"temperature must be a finite number >= 0, got nan"),
        (dict(temperature=INF), ValueError, r"temperature must be a finite number >= 0, got inf"),
        (dict(temperature=-0.5), ValueError, r"temperature must be a finite number >= 0"),
        (dict(temperature="hot"), TypeError, r"temperature must be a real number"),
        (dict(top_p=math.nan), ValueError, r"top_p must be in \(0, 1\] or None, got nan"),
        (dict(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
        (dict(top_k=1.5), TypeError, r"top_k must be an int or None, got 1.5"),
        (dict(top_k=0), ValueError, r"top_k must be >= 1 or None, got 0"),
        (dict(chunk_size=0), ValueError, r"chunk_size must be >= 1 or None, got 0"),
        (dict(chunk_size=2.5), TypeError, r"chunk_size must be an int or None"),
    ]
    for kw, err, pat in cases:
        with pytest.raises(err, match=pat):
            stream(m, ids, **kw)
        checks.n += 1
    for kw, err, pat in [(dict(temperature=math.nan), ValueError, "sample_next: temperature"),
                         (dict(top_p=math.nan), ValueError, "sample_next: top_p"),
                         (dict(top_k=2.0), TypeError, "sample_next: top_k")]:
        with pytest.raises(err, match=pat):
            sample_next(torch.zeros(2, 5), **kw)
        checks.n += 1
    with pytest.raises(ValueError, match=r"sample_next: logits must be a floating-point tensor"):
        sample_next(torch.zeros(2, 5, dtype=torch.long))
    for bad, err in [(None, TypeError), (0, ValueError), (2.0, TypeError)]:
        with pytest.raises(err, match="generate: max_new_tokens"):
            generate(m, ids, bad)
        checks.n += 1
    checks.true(list(stream(m, ids, max_new_tokens=0)) == [], "max_new_tokens=0 yields nothing")
    it = stream(m, ids, max_new_tokens=None, temperature=0.7, top_k=5, top_p=0.9)
    checks.true(len([next(it) for _ in range(6)]) == 6, "None is unbounded")
    out = generate(m, ids, torch.tensor(3), chunk_size=torch.tensor(2))   # 0-d int tensors
    checks.true(out.tokens.shape == (1, 3), "integer-valued tensors are accepted")


def test_generate_reads_an_iterator_of_stop_tokens_once(checks):
    """Probe: stop_tokens given as a one-shot iterator -> ``finished`` still reports the stop
    (it used to read the exhausted iterator a second time and say False)."""
    m = hybrid_lm().eval()
    prompt = torch.randint(0, 61, (2, 5))
    free = generate(m, prompt, 8).tokens
    stop = int(free[0, 2])
    a = generate(m, prompt, 8, stop_tokens=[stop])
    b = generate(m, prompt, 8, stop_tokens=iter([stop]))
    checks.equal(a.tokens, b.tokens, "same tokens")
    checks.equal(a.finished, b.finished, "same finished")
    checks.true(bool(b.finished[0]), "row 0 finished")
