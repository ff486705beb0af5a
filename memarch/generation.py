"""Generation with the model state: chunked prefill, then one token per step.

Any model with ``forward(ids [B, T], state) -> (logits [B, T, V], state, aux)`` works
(``MemLM`` and the wrappers of later issues). Prefill goes chunk by chunk through the
state, so a constant-state model takes prompts of any length in constant memory, and
``stream`` decodes without bound (it never keeps the tokens it yields).

Sampling: ``temperature=0`` is greedy (argmax); otherwise logits / temperature, then
top-k, then top-p (nucleus: the smallest set of most likely tokens whose mass reaches p;
the most likely token is always kept), then one multinomial draw.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import torch

__all__ = ["prefill", "sample_next", "stream", "generate", "DecodeStep", "GenerationOutput"]


class DecodeStep(NamedTuple):
    token: torch.Tensor  # [B] the sampled token (pad for finished rows)
    state: Any           # the model state after consuming everything before ``token``


class GenerationOutput(NamedTuple):
    tokens: torch.Tensor    # [B, n] generated tokens (after a stop token: pad)
    state: Any              # state after the prompt and all generated tokens but the last
    finished: torch.Tensor  # [B] bool: the row emitted a stop token


@torch.no_grad()
def prefill(model, ids: torch.Tensor, state: Any = None, *, chunk_size: int | None = 2048):
    """Run ``ids [B, T]`` through the model chunk by chunk; returns (last logits [B, V], state)."""
    if ids.dim() != 2 or ids.shape[1] < 1:
        raise ValueError(f"prefill: ids must be [B, T] with T >= 1, got shape {tuple(ids.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"prefill: chunk_size must be >= 1 or None, got {chunk_size}")
    step = chunk_size or ids.shape[1]
    logits = None
    for a in range(0, ids.shape[1], step):
        logits, state, _ = model(ids[:, a:a + step], state)
    return logits[:, -1], state


def sample_next(logits: torch.Tensor, *, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None):
    """logits [B, V] -> tokens [B] (int64)."""
    if temperature < 0:
        raise ValueError(f"sample_next: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"sample_next: top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"sample_next: top_p must be in (0, 1] or None, got {top_p}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
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


@torch.no_grad()
def stream(model, ids: torch.Tensor, *, state: Any = None, max_new_tokens: int | None = None,
           chunk_size: int | None = 2048, temperature: float = 0.0, top_k: int | None = None,
           top_p: float | None = None, stop_tokens: Sequence[int] = (), pad_id: int | None = None,
           min_new_tokens: int = 0,
           generator: torch.Generator | None = None) -> Iterator[DecodeStep]:
    """Yield one ``DecodeStep`` per generated token; unbounded when ``max_new_tokens`` is None.

    Stops early once every row has emitted one of ``stop_tokens``; rows that finished
    earlier get ``pad_id`` (default: the first stop token) from then on. The first
    ``min_new_tokens`` tokens are never stop tokens (their logits are set to -inf, as
    ``transformers``' ``min_length``).
    """
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=ids.device)
    if pad_id is None:
        pad_id = int(stop[0]) if len(stop) else 0
    logits, state = prefill(model, ids, state, chunk_size=chunk_size)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    n = 0
    while max_new_tokens is None or n < max_new_tokens:
        if n < min_new_tokens and len(stop):
            logits = logits.index_fill(-1, stop, float("-inf"))
        tok = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                          generator=generator)
        tok = torch.where(finished, torch.full_like(tok, pad_id), tok)
        yield DecodeStep(tok, state)
        n += 1
        if len(stop):
            finished = finished | torch.isin(tok, stop)
            if bool(finished.all()):
                return
        if max_new_tokens is not None and n >= max_new_tokens:
            return
        logits, state, _ = model(tok[:, None], state)
        logits = logits[:, -1]


def generate(model, ids: torch.Tensor, max_new_tokens: int, **kwargs) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens after ``ids [B, T]`` (see ``stream``)."""
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    toks, state = [], kwargs.pop("state", None)
    for step in stream(model, ids, state=state, max_new_tokens=max_new_tokens, **kwargs):
        toks.append(step.token)
        state = step.state
    tokens = torch.stack(toks, dim=1)
    stops = list(kwargs.get("stop_tokens", ()))
    finished = (torch.isin(tokens, torch.tensor(stops, device=tokens.device)).any(1) if stops
                else torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device))
    return GenerationOutput(tokens, state, finished)
