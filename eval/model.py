"""EvalModel: the small interface every evaluation suite uses.

Any network with ``forward(ids [B, T], state) -> (logits [B, T, V], state, aux)`` (``MemLM``
and later models) plus a tokenizer with ``encode(str) -> list[int]``, ``decode(ids) -> str``,
``vocab_size`` and ``eos_id``. Every pass over a long input goes chunk by chunk through the
model state (``chunk_size`` tokens at a time), so a constant-state model evaluates contexts
far longer than fit in memory; attention models grow their KV cache as usual.

    m = EvalModel.from_checkpoint("outputs/.../last.ckpt")        # or EvalModel(net, "byte")
    m.generate(m.encode("The pass key is"), max_new_tokens=8)     # greedy token ids
    m.token_logprobs(ids)                                         # log p(ids[t] | ids[:t])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from memarch.eval.io import progress

from memarch import generation
from memarch.data.tokenizers import load_tokenizer

__all__ = ["EvalModel", "load_model", "run_name", "short_name"]


def short_name(name: str, width: int = 48) -> str:
    """``name`` cut in the middle (``...``) to at most ``width`` characters."""
    name = str(name)
    if len(name) <= width:
        return name
    keep = width - 3
    return name[:keep // 2] + "..." + name[len(name) - (keep - keep // 2):]


def run_name(path: str | Path, width: int = 48) -> str:
    """A checkpoint's short name for titles: its training run and file stem, e.g.
    ``outputs/2026-12-02/03-16-46/checkpoints/last.ckpt`` -> ``2026-12-02/03-16-46 last``
    (the run folder is the one above ``checkpoints/``; a Hydra ``DATE/TIME`` run keeps its
    date), cut to ``width`` characters."""
    import re
    p = Path(path)
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    name = run.name
    if re.fullmatch(r"\d{2}-\d{2}-\d{2}", name) and re.fullmatch(r"\d{4}-\d{2}-\d{2}",
                                                                  run.parent.name):
        name = f"{run.parent.name}/{name}"
    return short_name(f"{name} {p.stem}" if name else p.stem, width)


class EvalModel:
    """A network + tokenizer on one device, evaluated chunk by chunk with its state.

    Args:
        net: the network (put in eval mode).
        tokenizer: a tokenizer object, or a name/path for ``load_tokenizer`` ("byte", a
            ``tokenizer.json``, a tokenizer folder), or None for token-level suites only.
        device, dtype: where and in which dtype to run (dtype None keeps the weights').
        chunk_size: tokens per forward call during prefill and scoring.
        name: shown in result files (a checkpoint's path).
        title: the short name in plot titles (default: :func:`short_name` of ``name``).
        reads: ``"text"`` (trained on text), ``"tokens"`` (trained on a token-level task
            such as MQAR) or None (unknown: ``preset=auto`` takes a model whose tokenizer's
            ids fit its vocabulary for a text model); ``from_checkpoint`` sets ``"text"``
            when the checkpoint names a tokenizer or one is given.
        context_length: the context the model was trained on, in tokens (a converted
            pretrained model's; ``from_checkpoint`` reads it), or None when unknown. Only
            reported and checked (:meth:`context_problem`): nothing is cut to it.
    """

    def __init__(self, net: torch.nn.Module, tokenizer: Any = "byte", *, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, chunk_size: int = 2048,
                 name: str = "model", title: str | None = None, reads: str | None = None,
                 context_length: int | None = None):
        if chunk_size < 1:
            raise ValueError(f"EvalModel: chunk_size must be >= 1, got {chunk_size}")
        if context_length is not None:
            from memarch.mixers.base import check_positive_int
            check_positive_int("EvalModel", "context_length", context_length)
        self.context_length = context_length
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"EvalModel: dtype must be a torch dtype name such as "
                                 f"'float32' or 'bfloat16', got {dtype!r}")
            dtype = getattr(torch, dtype)
        self.net = net.to(device=device, dtype=dtype).eval()
        # a model that works in segments (HMT) gets calls cut on segment boundaries
        chunk_size = generation.segment_aligned(net, chunk_size)
        self.device, self.chunk_size, self.name = torch.device(device), chunk_size, name
        self.title = title or short_name(name)
        if reads not in (None, "text", "tokens"):
            raise ValueError(f"EvalModel: reads must be 'text', 'tokens' or None, got {reads!r}")
        self.reads = "tokens" if tokenizer is None else reads
        self.tokenizer_name = tokenizer if isinstance(tokenizer, (str, type(None))) else None
        if isinstance(tokenizer, dict):      # a checkpoint's embedded tokenizer.json
            self.tokenizer_name = f"tokenizer.json of {tokenizer.get('source')}"
        self.tokenizer = (load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path, dict))
                          else tokenizer)
        self.vocab_size = int(getattr(net, "vocab_size", 0) or net.head.out_features)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, tokenizer: str | None = None,
                        device: str = "cpu", dtype: str | torch.dtype | None = None,
                        chunk_size: int = 2048, overrides: Any = None) -> EvalModel:
        """Rebuild a training checkpoint (``memarch.checkpoint.load``). The tokenizer is
        ``tokenizer`` if given, else the one the training data used, else bytes. Loading runs
        no code from the file: a corrupt, truncated or unsafe file raises
        ``memarch.checkpoint.CheckpointError`` and a config naming a target outside the
        allow-list ``memarch.config.TargetNotAllowedError`` (both ValueErrors).
        ``overrides``: shape-free constructor arguments changed before the model is built,
        e.g. ``{"mixers.attn.window": 256, "mixers.attn.n_sinks": 4}`` (``memarch.overrides``:
        a dense-trained model evaluated with a window and sinks)."""
        from memarch.checkpoint import TOKENIZER_KEY, load
        from memarch.generate import context_length
        loaded = load(path, overrides=overrides)
        trained = loaded.checkpoint.get(TOKENIZER_KEY)
        tok = tokenizer or trained or "byte"
        # no tokenizer in the checkpoint: a byte-level text task or a token-level one (MQAR);
        # unknown here (``preset=auto`` then asks whether bytes fit the vocabulary)
        reads = "text" if tokenizer or trained else None
        return cls(loaded.model, tok, device=device, dtype=dtype, chunk_size=chunk_size,
                   name=str(path), title=run_name(path), reads=reads,
                   context_length=context_length(loaded.checkpoint, loaded.model))

    # -- the trained context -------------------------------------------------------------
    def attention_reach(self) -> int | None:
        """The most tokens one query's attention spans in positions: None when unbounded
        (full attention, or sinks at their absolute positions, see every distance up to the
        sequence's length), else the largest window (+ its sinks at cache positions, whose
        RoPE distance is at most ``window + n_sinks - 1``); 0 for a model without
        attention (a recurrent state has no position limit)."""
        from memarch.mixers.attention import Attention
        reach = 0
        for m in self.net.modules():
            if not isinstance(m, Attention):
                continue
            if m.window is None or (m.n_sinks and m.sink_positions != "cache"):
                return None
            reach = max(reach, m.window + (m.n_sinks if m.sink_positions == "cache" else 0))
        return reach

    def context_problem(self, n_tokens: int) -> str | None:
        """Why feeding ``n_tokens`` tokens goes past the context the model was trained on
        (None: it does not, or the context is unknown). A window (+ sinks at cache
        positions) within the trained context never does, however long the input."""
        ctx = self.context_length
        if ctx is None:
            return None
        reach = self.attention_reach()
        if reach is None and n_tokens > ctx:
            return (f"{n_tokens} tokens are more than the {ctx} the model was trained on, and "
                    "its attention sees every distance (full attention, or sinks at absolute "
                    f"positions): past position {ctx} this measures length extrapolation")
        if reach is not None and reach > ctx and n_tokens > ctx:
            return (f"its attention window spans {reach} positions, more than the {ctx} "
                    "the model was trained on")
        return None

    # -- text --------------------------------------------------------------------------
    def _tok(self):
        if self.tokenizer is None:
            raise ValueError("EvalModel: this suite needs text, but no tokenizer was given "
                             "(pass tokenizer='byte' or a tokenizer path)")
        tv = int(self.tokenizer.vocab_size)
        if getattr(self.tokenizer, "eos_id", None) == tv - 1:
            tv -= 1                         # an end-of-text id above the text ids may be absent
        if tv > self.vocab_size:
            raise ValueError(
                f"EvalModel: the tokenizer {self.tokenizer_name or type(self.tokenizer).__name__}"
                f" has {tv} text token ids but the model's vocab_size is {self.vocab_size}; the "
                "model was trained on a token-level task (e.g. MQAR): run only token-level "
                "suites (mqar), or pass the tokenizer it was trained with (tokenizer=...)")
        return self.tokenizer

    def text_problem(self) -> str | None:
        """Why the text suites cannot run on this model (None: they can)."""
        if self.reads == "tokens" and self.tokenizer is not None:
            return (f"the model reads token ids (a token-level task such as MQAR; vocab_size "
                    f"{self.vocab_size}), not text")
        try:
            self._tok()
        except ValueError as e:
            return str(e).removeprefix("EvalModel: ")
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tok().encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        eos = self.eos_id
        return self._tok().decode([int(i) for i in ids if eos is None or int(i) != eos])

    @property
    def eos_id(self) -> int | None:
        """The tokenizer's end-of-text id, or None when the model cannot emit it."""
        eos = getattr(self.tokenizer, "eos_id", None) if self.tokenizer is not None else None
        return eos if eos is not None and eos < self.vocab_size else None

    def token_id(self, text: str) -> int:
        """The id of the last token of ``text`` (LongBench's newline stop token)."""
        return self.encode(text)[-1]

    # -- passes over tokens ------------------------------------------------------------
    def _ids(self, ids) -> torch.Tensor:
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return t[None] if t.dim() == 1 else t

    @torch.no_grad()
    def chunks(self, ids, state: Any = None) -> Iterator[tuple[int, torch.Tensor, Any]]:
        """Yield ``(start, logits [B, c, V] fp32, state after the chunk)`` over ``ids [B, T]``."""
        ids = self._ids(ids)
        for a in range(0, ids.shape[1], self.chunk_size):
            logits, state, _ = self.net(ids[:, a:a + self.chunk_size], state)
            yield a, logits.float(), state

    @torch.no_grad()
    def prefill(self, ids, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Last-position logits [B, V] and the state after ``ids [B, T]`` (or [T])."""
        return generation.prefill(self.net, self._ids(ids), state, chunk_size=self.chunk_size)

    @torch.no_grad()
    def token_logprobs(self, ids, state: Any = None, *, start: int = 1, desc: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``ids [T]`` (or [B, T]): ``log p(ids[t] | ids[:t])`` and whether ``ids[t]`` is
        the argmax, for t in [start, T) -> two [B, T - start] tensors (fp32, bool).
        ``desc``: show a progress bar over the chunks."""
        ids = self._ids(ids)
        if not 1 <= start <= ids.shape[1]:
            raise ValueError(f"token_logprobs: start must be in [1, T={ids.shape[1]}], "
                             f"got {start}")
        lps, greedy = [], []
        chunks = self.chunks(ids[:, :-1], state)
        if desc is not None:
            chunks = progress(chunks, desc=desc, total=-(-(ids.shape[1] - 1) // self.chunk_size))
        for a, logits, _ in chunks:
            c = logits.shape[1]
            lo = max(start - 1 - a, 0)                    # positions predicting ids[start:]
            if lo >= c:
                continue
            tgt = ids[:, a + 1 + lo:a + 1 + c]            # [B, c - lo]
            lp = F.log_softmax(logits[:, lo:], dim=-1)     # [B, c - lo, V]
            lps.append(lp.gather(-1, tgt[..., None])[..., 0])
            greedy.append(lp.argmax(-1) == tgt)
        if not lps:
            return (torch.zeros(ids.shape[0], 0, device=self.device),
                    torch.zeros(ids.shape[0], 0, dtype=torch.bool, device=self.device))
        return torch.cat(lps, 1), torch.cat(greedy, 1)

    def generate(self, ids: Sequence[int], max_new_tokens: int, *,
                 stop_tokens: Sequence[int] = (), min_new_tokens: int = 0,
                 stop_strings: Sequence[str] = ()) -> list[int]:
        """Greedy continuation of one prompt; the stop token that ended it is not returned.
        ``stop_strings``: also stop once the decoded text contains one (the tokens that
        complete it are returned; callers cut the text)."""
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        stops = [int(s) for s in stop_tokens if s is not None]
        out = []
        for step in generation.stream(self.net, self._ids(ids), max_new_tokens=max_new_tokens,
                                      chunk_size=self.chunk_size, stop_tokens=stops,
                                      min_new_tokens=min_new_tokens):
            tok = int(step.token[0])
            if tok in stops:
                break
            out.append(tok)
            if stop_strings and any(s in self.decode(out) for s in stop_strings):
                break
        return out

    def generate_text(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                      stop_at_newline: bool = False, min_new_tokens: int = 0) -> str:
        stops = [self.eos_id] + ([self.token_id("\n")] if stop_at_newline else [])
        return self.decode(self.generate(prompt_ids, max_new_tokens, stop_tokens=stops,
                                         min_new_tokens=min_new_tokens))


def load_model(checkpoint: str | Path | None = None, *, net: torch.nn.Module | None = None,
               tokenizer: str | None = None, device: str = "cpu",
               dtype: str | None = None, chunk_size: int = 2048,
               overrides: Any = None) -> EvalModel:
    """An EvalModel from a checkpoint path (``overrides``: see ``from_checkpoint``), or from
    a network object (exactly one)."""
    if (checkpoint is None) == (net is None):
        raise ValueError("load_model: give exactly one of checkpoint=<path> or net=<module>")
    if checkpoint is not None:
        return EvalModel.from_checkpoint(checkpoint, tokenizer=tokenizer, device=device,
                                         dtype=dtype, chunk_size=chunk_size,
                                         overrides=overrides)
    if overrides:
        raise ValueError("load_model: overrides apply to a checkpoint's config; build the "
                         "network with the arguments you want instead")
    return EvalModel(net, tokenizer or "byte", device=device, dtype=dtype, chunk_size=chunk_size)
