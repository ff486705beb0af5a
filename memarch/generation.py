"""Generation with the model state: chunked prefill, then one token per step.

Any model with ``forward(ids [B, T], state) -> (logits [B, T, V], state, aux)`` works
(``MemLM`` and the wrappers of later issues). Prefill goes chunk by chunk through the
state, so a constant-state model takes prompts of any length in constant memory, and
``stream`` decodes without bound (it never keeps the tokens it yields).

Per-token cost. A state is checked once, when it enters (the first prefill chunk); the
states the model returns are then trusted (``memarch.mixers.base.trusted_states``), so no
layer re-checks its state on every step. A model whose forward takes ``logits_to_keep``
(``MemLM``) computes the prefill's last-position logits only. ``compile=True`` runs the
decode steps through ``torch.compile`` (opt-in; the ``inference`` benchmark reports what it
gains and what it costs to compile).

Sampling: ``temperature=0`` is greedy (argmax); otherwise logits / temperature, then
top-k, then top-p (nucleus: the smallest set of most likely tokens whose mass reaches p;
the most likely token is always kept), then one multinomial draw. Logits that are +inf
take all the mass of their row (ties share it); a row with NaN or with no entry above
-inf is an error, never a silent token 0.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import weakref
from typing import Any, Iterator, NamedTuple, Sequence

import torch

from memarch.mixers.base import trusted_states
from memarch.state import fields_repr

__all__ = ["prefill", "sample_next", "stream", "generate", "DecodeStep", "GenerationOutput",
           "segment_aligned"]


class DecodeStep(NamedTuple):
    token: torch.Tensor  # [B] the sampled token (pad for finished rows)
    state: Any           # the model state after consuming everything before ``token``

    def __repr__(self) -> str:          # shapes and a state summary, not every tensor
        return fields_repr(self)


class GenerationOutput(NamedTuple):
    tokens: torch.Tensor    # [B, n] generated tokens (after a stop token: pad)
    state: Any              # state after the prompt and all generated tokens but the last
    finished: torch.Tensor  # [B] bool: the row emitted a stop token

    def __repr__(self) -> str:          # shapes and a state summary, not every tensor
        return fields_repr(self)


def _int(fn: str, name: str, value, *, minimum: int | None = None,
         allow_none: bool = False) -> int | None:
    """``value`` as a Python int (ints, numpy ints, 0-d integer tensors; not bools)."""
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        want = "an int or None" if allow_none else "an int"
        raise TypeError(f"{fn}: {name} must be {want}, got {value!r} "
                        f"({type(value).__name__})") from None
    if minimum is not None and out < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{fn}: {name} must be >= {minimum}{extra}, got {out}")
    return out


def _real(fn: str, name: str, value) -> float:
    try:
        if isinstance(value, (str, bytes, bool)):     # True is not temperature 1.0
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a real number, got {value!r}") from None


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            return next(iter(params())).device
        except StopIteration:
            pass
    return torch.device("cpu")


def _token(fn: str, value, where: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: ids given as a list must hold int token ids, got {value!r} "
                        f"({type(value).__name__}) at {where}") from None
    if not -2**63 <= out < 2**63:
        raise ValueError(f"{fn}: ids must be int64 token ids, got {out} at {where}")
    return out


def _as_ids(fn: str, model, ids):
    """A list of ints -> [1, T]; a list of equal-length lists of ints -> [B, T] (int64 on
    the model's device). Tensors (and anything else) are returned unchanged."""
    if not isinstance(ids, (list, tuple)):
        return ids
    kind = type(ids).__name__
    if len(ids) == 0:
        raise ValueError(f"{fn}: ids must be [B, T] with T >= 1, got an empty {kind}")
    nested = [isinstance(r, (list, tuple)) for r in ids]
    if all(nested):
        lengths = [len(r) for r in ids]
        if len(set(lengths)) > 1:
            shown = lengths if len(lengths) <= 16 else f"{lengths[:16]}... ({len(lengths)} rows)"
            raise ValueError(f"{fn}: ids given as a list of lists must have rows of equal "
                             f"length (pad them, or generate each row separately), got row "
                             f"lengths {shown}")
        if lengths[0] == 0:
            raise ValueError(f"{fn}: ids must be [B, T] with T >= 1, got {len(ids)} empty rows")
        rows = [[_token(fn, v, f"ids[{b}][{t}]") for t, v in enumerate(r)]
                for b, r in enumerate(ids)]
    elif any(nested):
        b = nested.index(not nested[0])
        raise TypeError(f"{fn}: ids must be a list of ints (one sequence) or a list of lists "
                        f"of ints (a batch), not a mix: ids[0] is {type(ids[0]).__name__}, "
                        f"ids[{b}] is {type(ids[b]).__name__}")
    else:
        rows = [[_token(fn, v, f"ids[{t}]") for t, v in enumerate(ids)]]
    return torch.tensor(rows, dtype=torch.long, device=_model_device(model))


def _check_sampling(fn: str, temperature, top_k, top_p) -> tuple[float, int | None, float | None]:
    t = _real(fn, "temperature", temperature)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"{fn}: temperature must be a finite number >= 0, got {temperature}")
    k = _int(fn, "top_k", top_k, minimum=1, allow_none=True)
    p = None if top_p is None else _real(fn, "top_p", top_p)
    if p is not None and not 0.0 < p <= 1.0:                 # also rejects NaN
        raise ValueError(f"{fn}: top_p must be in (0, 1] or None, got {top_p}")
    return t, k, p


def _stop_list(fn: str, stop_tokens) -> list[int]:
    if isinstance(stop_tokens, (str, bytes)) or not hasattr(stop_tokens, "__iter__"):
        raise TypeError(f"{fn}: stop_tokens must be a sequence of int token ids, got "
                        f"{stop_tokens!r} (for one stop token pass [{stop_tokens!r}])")
    out = []
    for s in stop_tokens:
        try:
            if isinstance(s, bool):
                raise TypeError
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"{fn}: stop_tokens must be a sequence of int token ids, got "
                            f"element {s!r} ({type(s).__name__})") from None
    return out


def _check_vocab(fn: str, stops: list[int], pad_id: int | None, vocab: int, what: str) -> None:
    bad = sorted({s for s in stops if not 0 <= s < vocab})
    if bad:
        raise ValueError(f"{fn}: stop_tokens must be token ids in [0, V={vocab}) ({what}), "
                         f"got out-of-vocabulary ids {bad}")
    if pad_id is not None and not 0 <= pad_id < vocab:
        raise ValueError(f"{fn}: pad_id must be a token id in [0, V={vocab}) ({what}), "
                         f"got {pad_id}")


def _rows(mask: torch.Tensor) -> str:
    rows = mask.nonzero().flatten().tolist()
    return str(rows) if len(rows) <= 16 else f"{rows[:16]}... ({len(rows)} rows)"


def _no_valid_logit(logits: torch.Tensor) -> torch.Tensor:
    """[B] bool: rows with a NaN or with no entry above -inf (nothing can be sampled)."""
    return logits.isnan().any(-1) | ~(logits > float("-inf")).any(-1)


def _raise_non_finite(fn: str, logits: torch.Tensor, bad: torch.Tensor, step: int | None):
    at = "" if step is None else f" at step {step}"
    nan = bool(logits[bad].isnan().any())
    kind = "NaN" if nan else "no finite (all -inf)"
    raise ValueError(f"{fn}: model produced non-finite logits{at} for rows {_rows(bad)} "
                     f"({kind} entries; nothing can be sampled)")


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> torch.Tensor:
    """``sample_next`` without the checks (every row has a valid entry and no NaN)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    # +inf entries take all the mass of their row (a NaN softmax otherwise); then shift so
    # every row's max is 0: the division by a small temperature cannot overflow a row to
    # all -inf or +inf (softmax, top-k and top-p are shift-invariant)
    pinf = logits == float("inf")
    logits = torch.where(pinf.any(-1, keepdim=True),
                         torch.where(pinf, 0.0, float("-inf")), logits)
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs               # mass of strictly likelier tokens
        drop = mass_before >= top_p                          # never drops the first token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def segment_aligned(model, chunk_size: int | None) -> int | None:
    """``chunk_size`` rounded up to a multiple of ``model.segment_len`` (models that work in
    segments, e.g. HMT: its ``recall_query="paper"`` is exact for calls cut on segment
    boundaries); unchanged for other models."""
    seg = getattr(model, "segment_len", None)
    if chunk_size is None or not isinstance(seg, int) or seg < 1:
        return chunk_size
    return -(-chunk_size // seg) * seg


@torch.no_grad()
def prefill(model, ids: torch.Tensor | Sequence, state: Any = None, *,
            chunk_size: int | None = 2048):
    """Run ``ids [B, T]`` through the model chunk by chunk; returns (last logits [B, V], state).

    ``ids`` may also be a list of ints (one sequence, [1, T]) or a list of equal-length lists
    of ints ([B, T]); they become int64 on the model's device (its first parameter's, else
    cpu). For a model with ``segment_len`` (HMT) the chunks are rounded up to a multiple of
    it (``segment_aligned``)."""
    ids = _as_ids("prefill", model, ids)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"prefill: ids must be [B, T] with T >= 1, got shape {shape}")
    chunk_size = _int("prefill", "chunk_size", chunk_size, minimum=1, allow_none=True)
    step = segment_aligned(model, chunk_size) or ids.shape[1]
    kw = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    logits = None
    for a in range(0, ids.shape[1], step):
        # the state is checked when it enters (the first chunk); the model's own, after
        with trusted_states() if a else contextlib.nullcontext():
            logits, state, _ = model(ids[:, a:a + step], state, **kw)
    return logits[:, -1], state


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model):
    """``torch.compile(model)``, made once per model (a new model compiles again)."""
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model)
    return fn


def _keeps_logits(model) -> bool:
    """The model's forward takes ``logits_to_keep`` (``MemLM``): prefill asks for the last
    position's logits only."""
    try:
        return "logits_to_keep" in inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        return False


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None):
    """logits [B, V] -> tokens [B] (int64). A row with NaN or without any entry above -inf
    raises ``ValueError`` (argmax / softmax would silently give token 0 or fail obscurely)."""
    temperature, top_k, top_p = _check_sampling("sample_next", temperature, top_k, top_p)
    if (not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[-1] < 1
            or not logits.is_floating_point()):
        desc = (f"{logits.dtype} tensor of shape {tuple(logits.shape)}"
                if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise ValueError(f"sample_next: logits must be a floating-point tensor [B, V] with "
                         f"V >= 1, got {desc}")
    bad = _no_valid_logit(logits)
    if bool(bad.any()):
        _raise_non_finite("sample_next", logits, bad, None)
    return _sample(logits, temperature, top_k, top_p, generator)


def stream(model, ids: torch.Tensor | Sequence, *, state: Any = None,
           max_new_tokens: int | None = None,
           chunk_size: int | None = 2048, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, stop_tokens: Sequence[int] = (), pad_id: int | None = None,
           min_new_tokens: int = 0, generator: torch.Generator | None = None,
           compile: bool = False) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per generated token; unbounded when ``max_new_tokens`` is None.

    ``ids`` is a tensor [B, T], a list of ints (one sequence) or a list of equal-length lists
    of ints (a batch), as for ``prefill``.

    Stops early once every row has emitted one of ``stop_tokens``; rows that finished
    earlier get ``pad_id`` (default: the first stop token) from then on. The first
    ``min_new_tokens`` tokens are never stop tokens (their logits are set to -inf, as
    ``transformers``' ``min_length``).

    The arguments are checked when ``stream`` is called; the token ids (``stop_tokens``,
    ``pad_id``: in [0, V)) against ``model.vocab_size`` when the model has one, and against
    V = the logits' last dimension after the prefill, before the first token. Each step
    raises ``ValueError`` when an unfinished row's logits have a NaN or no entry above -inf.

    ``compile=True`` (opt-in) runs the decode steps through ``torch.compile(model)`` (made
    once per model and kept; the prefill stays eager). What it gains depends on the device
    and the model: the ``inference`` benchmark measures it, with the compile time.
    """
    fn = "stream"
    if not isinstance(compile, bool):
        raise TypeError(f"{fn}: compile must be a bool, got {compile!r}")
    max_new_tokens = _int(fn, "max_new_tokens", max_new_tokens, minimum=0, allow_none=True)
    min_new_tokens = _int(fn, "min_new_tokens", min_new_tokens, minimum=0)
    temperature, top_k, top_p = _check_sampling(fn, temperature, top_k, top_p)
    stops = _stop_list(fn, stop_tokens)
    pad_id = _int(fn, "pad_id", pad_id, allow_none=True)
    ids = _as_ids(fn, model, ids)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{fn}: ids must be [B, T] with T >= 1, got shape {shape}")
    chunk_size = _int(fn, "chunk_size", chunk_size, minimum=1, allow_none=True)
    vocab = getattr(model, "vocab_size", None)
    if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 0:
        _check_vocab(fn, stops, pad_id, vocab, "model.vocab_size")
    return _stream(model, ids, state, max_new_tokens, chunk_size, temperature, top_k, top_p,
                   stops, pad_id, min_new_tokens, generator, compile)


@torch.no_grad()
def _stream(model, ids, state, max_new_tokens, chunk_size, temperature, top_k, top_p,
            stops, pad_id, min_new_tokens, generator, compile=False) -> Iterator[DecodeStep]:
    fn = "stream"
    stop = torch.tensor(stops, dtype=torch.long, device=ids.device)
    if pad_id is None:
        pad_id = stops[0] if stops else 0
    logits, state = prefill(model, ids, state, chunk_size=chunk_size)
    step = _compiled(model) if compile else model
    vocab = logits.shape[-1]
    _check_vocab(fn, stops, pad_id, vocab, "the last dimension of the model's logits")
    if min_new_tokens > 0 and max_new_tokens != 0 and len(set(stops)) == vocab:
        raise ValueError(f"{fn}: min_new_tokens={min_new_tokens} cannot be honoured: every "
                         f"token of the vocabulary (V={vocab}) is in stop_tokens, so no token "
                         f"could be sampled")
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    n = 0
    while max_new_tokens is None or n < max_new_tokens:
        invalid = _no_valid_logit(logits)
        bad = invalid & ~finished                     # finished rows are padded anyway
        if n < min_new_tokens and len(stop):
            logits = logits.index_fill(-1, stop, float("-inf"))
            empty = ~(logits > float("-inf")).any(-1)
            bad_m = empty & ~finished
            if bool((bad | bad_m).any()):
                if bool(bad.any()):
                    _raise_non_finite(fn, logits, bad, n)
                raise ValueError(
                    f"{fn}: at step {n} rows {_rows(bad_m)} have no logit above -inf outside "
                    f"stop_tokens, so min_new_tokens={min_new_tokens} cannot be honoured "
                    f"(no token could be sampled)")
            invalid = invalid | empty
        elif bool(bad.any()):
            _raise_non_finite(fn, logits, bad, n)
        if len(stop):                                 # a finished row's invalid logits: any token
            logits = logits.masked_fill((invalid & finished)[:, None], 0.0)
        tok = _sample(logits, temperature, top_k, top_p, generator)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        yield DecodeStep(tok, state)
        n += 1
        if len(stop):
            finished = finished | torch.isin(tok, stop)
            if bool(finished.all()):
                return
        if max_new_tokens is not None and n >= max_new_tokens:
            return
        with trusted_states():                     # the state the model itself returned
            logits, state, _ = step(tok[:, None], state)
        logits = logits[:, -1]


def generate(model, ids: torch.Tensor | Sequence, max_new_tokens: int,
             **kwargs) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens after ``ids [B, T]`` (see ``stream``; ``ids``
    may be a list of ints or a list of equal-length lists of ints)."""
    max_new_tokens = _int("generate", "max_new_tokens", max_new_tokens, minimum=1)
    toks, state = [], kwargs.pop("state", None)
    stops = _stop_list("generate", kwargs.pop("stop_tokens", ()))   # an iterator is read once
    for step in stream(model, ids, state=state, max_new_tokens=max_new_tokens,
                       stop_tokens=stops, **kwargs):
        toks.append(step.token)
        state = step.state
    tokens = torch.stack(toks, dim=1)
    finished = (torch.isin(tokens, torch.tensor(stops, device=tokens.device)).any(1) if stops
                else torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device))
    return GenerationOutput(tokens, state, finished)
