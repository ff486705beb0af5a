"""Generate text from a memarch checkpoint, streaming, with the model state.

    python -m memarch.generate CKPT --prompt "Once upon a time" [--max-new-tokens 256]
    python -m memarch.generate CKPT --chat [--prompt "Hi!"] [--system "Be brief."]
    python -m memarch.generate CKPT --chat --window 1024 --n-sinks 4 --sink-positions cache
    options: [--temperature 0.7 --top-p 0.9 --top-k 50 --seed 0] [--chunk-size 2048]
             [--device cpu|cuda] [--dtype bfloat16] [--stats]

``CKPT`` is a memarch checkpoint with an embedded tokenizer (``python -m memarch.convert
gguf`` embeds it; ``convert hf`` embeds ``tokenizer.json`` or ``--tokenizer``). ``--window``
/ ``--n-sinks`` / ``--sink-positions`` are applied to every attention slot of the config
(``mixers.<slot>`` of a MemLM, ``backbone.mixers.<slot>`` of an HMT; see
``memarch.overrides``): StreamingLLM, a dense-trained model run with a constant-size state.

Output streams as it is generated: tokens are detokenised incrementally (``Detokenizer``,
the prefix/read-offset scheme of text-generation-inference and vLLM), so only whole UTF-8
characters are printed; special tokens are not. Generation stops at the tokenizer's EOS
and, in a chat, at the template's end-of-turn token (``end_of_turn``).

``--chat`` (``ChatSession``): the tokenizer's chat template, and the conversation is carried
in the model state from turn to turn: the state after a reply (its end-of-turn token
included) continues, and each turn prefills only the new text. That text is the rendered
conversation with the new user message minus the text the state has already consumed
(the previous rendering plus the reply). When the new rendering is not an extension of it
(a template that rewrites the history), or the delta does not tokenise as it does inside
the whole conversation, the delta is computed token-wise (the tokens of the whole
rendering after those the state consumed); when even that fails, the whole conversation is
prefilled again from an empty state (``ChatSession.reprefills`` counts it). With greedy
decoding the replies are those of prefilling the whole rendered conversation at once.
With a window and sinks the model state has a constant size (a ring buffer; the session
keeps the transcript, text and token ids, for the template); a dense model (a KV cache that
grows) refuses a conversation or prompt longer than its context (``memarch_converted``'s
``context_length`` / ``max_position_embeddings``, when known) and ends a reply there.
User lines come from stdin (prompt ``> `` on stderr); ``--prompt`` is the first one; EOF
or ``/exit`` ends. ``--stats`` prints prefill / decode tokens per second and the state's
size in bytes on stderr after each generation.

Errors print ``error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from memarch.convert import CONVERTED_KEY
from memarch.generation import stream

__all__ = ["ChatSession", "ContextError", "Detokenizer", "Stats", "Turn", "attention_overrides",
           "context_length", "end_of_turn", "grows_with_context", "main", "raw_encoder",
           "state_nbytes", "stream_text"]


class Stats(NamedTuple):
    prefill_tokens: int
    prefill_s: float
    decode_tokens: int
    decode_s: float
    state_bytes: int

    def __str__(self) -> str:
        def rate(n, s):
            return f"{n / s:,.1f} tok/s" if s > 0 else "- tok/s"
        return (f"prefill {self.prefill_tokens} tok in {self.prefill_s:.3f} s "
                f"({rate(self.prefill_tokens, self.prefill_s)}), decode "
                f"{self.decode_tokens} tok in {self.decode_s:.3f} s "
                f"({rate(self.decode_tokens, self.decode_s)}), state "
                f"{self.state_bytes:,} bytes")


class Turn(NamedTuple):
    ids: list[int]          # generated tokens (the stop token included when one was hit)
    state: Any              # the state after everything before ids[-1] (as generation.stream)
    stopped: int | None     # the stop token hit, None when max_new_tokens ended it
    stats: Stats


def state_nbytes(state: Any) -> int:
    """Bytes of the tensors in a state pytree (what the state holds, not spare capacity)."""
    return sum(x.nbytes for x in pytree.tree_leaves(state) if isinstance(x, torch.Tensor))


# -- tokenizer ---------------------------------------------------------------------------
def _decoder(tok, *, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    """``tok.decode`` with ``skip_special_tokens`` when the tokenizer takes it (memarch's
    tokenizers do), else its plain ``decode``."""
    try:
        tok.decode([], skip_special_tokens=skip_special_tokens)
        return lambda ids: tok.decode(ids, skip_special_tokens=skip_special_tokens)
    except TypeError:
        return tok.decode


class Detokenizer:
    """Incremental detokenisation: ``add(token)`` returns the text that became final (maybe
    ""), ``flush()`` the rest; special tokens are skipped. Text is released once its
    decoding no longer ends in U+FFFD (an incomplete UTF-8 character); decoding from
    ``prefix`` (one step back) keeps the tokenizer's context, e.g. a SentencePiece word's
    leading space. Holds O(1) tokens."""

    def __init__(self, tok):
        self.decode = _decoder(tok, skip_special_tokens=True)
        self.ids, self.prefix, self.read = [], 0, 0

    def add(self, token: int) -> str:
        self.ids.append(int(token))
        return self._next(final=False)

    def flush(self) -> str:
        return self._next(final=True)

    def _next(self, final: bool) -> str:
        before = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) <= len(before) or (text.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        del self.ids[:self.prefix]
        self.read -= self.prefix
        self.prefix = 0
        return text[len(before):]


def raw_encoder(tok) -> Callable[[str], list[int]]:
    """``text -> ids`` without the tokens the tokenizer adds itself (BOS/EOS): a chat
    template writes those (as ``transformers``' ``apply_chat_template`` tokenises). Uses
    ``encode(text, add_special_tokens=False)`` when the tokenizer takes it; otherwise
    strips what ``encode("")`` adds."""
    try:
        tok.encode("", add_special_tokens=False)
        return lambda s: list(tok.encode(s, add_special_tokens=False))
    except TypeError:
        pass
    empty, probe = list(tok.encode("")), list(tok.encode("a"))
    n = next((i for i, (a, b) in enumerate(zip(empty, probe)) if a != b),
             min(len(empty), len(probe)))
    pre, post = empty[:n], empty[n:]

    def encode(s: str) -> list[int]:
        ids = list(tok.encode(s))
        if pre and ids[:len(pre)] == pre:
            ids = ids[len(pre):]
        if post and ids[len(ids) - len(post):] == post:
            ids = ids[:len(ids) - len(post)]
        return ids
    return encode


_SPECIAL = re.compile(r"<\|[^|\s]+\|>|<[^<>\s]+>|\[/?[A-Za-z_]+\]")


def end_of_turn(tok, encode: Callable[[str], list[int]] | None = None
                ) -> tuple[int, str] | None:
    """(id, text) of the special token the chat template writes after each message (ChatML
    ``<|im_end|>``, Llama 3 ``<|eot_id|>``, Gemma ``<end_of_turn>``, Mistral ``</s>``), or
    None. Found by rendering a probe conversation and reading what follows the assistant's
    text: a special-looking token that encodes to one id, or a first token that decodes to
    nothing (a special token, skipped by ``decode``)."""
    encode = encode or raw_encoder(tok)
    reply = "memarch probe reply"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "memarch probe"},
                                        {"role": "assistant", "content": reply}],
                                       add_generation_prompt=False)
    except Exception:   # noqa: BLE001 -- a template may refuse the probe; then EOS only
        return None
    i = text.rfind(reply)
    after = text[i + len(reply):].lstrip() if i >= 0 else ""
    if not after:
        return None
    m = _SPECIAL.match(after)
    if m:
        ids = encode(m.group(0))
        tid = getattr(tok, "token_to_id", lambda s: None)(m.group(0))
        if len(ids) == 1 and tid in (None, ids[0]):
            return ids[0], m.group(0)
    ids = encode(after)
    if ids and _decoder(tok, skip_special_tokens=True)(ids[:1]) == "":
        for n in range(1, min(len(after), 64) + 1):
            if encode(after[:n]) == ids[:1]:
                return ids[0], after[:n]
    return None


# -- model -------------------------------------------------------------------------------
def attention_overrides(config: dict, **kwargs) -> dict[str, Any]:
    """Dotted overrides (``memarch.overrides``) setting ``kwargs`` (window, n_sinks,
    sink_positions; None values are skipped) on every memarch ``Attention`` slot of a model
    config: ``mixers.<slot>`` of a MemLM, ``backbone.mixers.<slot>`` of an HMT."""
    from memarch.config import resolve
    from memarch.mixers.attention import Attention
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if not kwargs:
        return {}
    prefix, mixers = "mixers", config.get("mixers")
    if not isinstance(mixers, dict) and isinstance(config.get("backbone"), dict):
        prefix, mixers = "backbone.mixers", config["backbone"].get("mixers")
    slots = []
    for slot, sub in (mixers or {}).items():
        try:
            cls = resolve(sub.get("_target_")) if isinstance(sub, dict) else None
        except Exception:   # noqa: BLE001 -- not an importable / allowed target: not attention
            cls = None
        if isinstance(cls, type) and issubclass(cls, Attention):
            slots.append(slot)
    if not slots:
        raise ValueError(f"the model has no attention slot to set {sorted(kwargs)} on "
                         f"(its {prefix}: {sorted(mixers or {})})")
    return {f"{prefix}.{s}.{k}": v for s in slots for k, v in kwargs.items()}


def grows_with_context(model) -> bool:
    """True when the model's state grows with the text: a MemLM with a full-attention layer
    (a KV cache). An HMT's backbone sees one segment at a time."""
    from memarch.mixers.attention import Attention
    if hasattr(model, "segment_len"):
        return False
    return any(isinstance(m, Attention) and m.window is None for m in model.modules())


def context_length(checkpoint: dict, model=None) -> int | None:
    """The trained context of a converted model (``memarch_converted``'s ``context_length``
    or ``max_position_embeddings``, or ``model.context_length``), None when unknown."""
    conv = checkpoint.get(CONVERTED_KEY) if isinstance(checkpoint, dict) else None
    conv = conv if isinstance(conv, dict) else {}
    for v in (conv.get("context_length"), conv.get("max_position_embeddings"),
              getattr(model, "context_length", None)):
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


class ContextError(ValueError):
    """The text does not fit a dense model's context."""


def _too_long(what: str, n: int, ctx: int) -> ContextError:
    return ContextError(f"{what} is {n} tokens, which does not fit the model's context of "
                        f"{ctx} tokens (dense attention: its KV cache grows with the text); "
                        "run it with a window and attention sinks, e.g. --window 1024 "
                        "--n-sinks 4, for a constant-size state")


# -- generation --------------------------------------------------------------------------
def stream_text(model, tok, ids: list[int], *, state: Any = None, stop_tokens=(),
                max_new_tokens: int = 256, chunk_size: int | None = 2048,
                temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None
                ) -> Generator[str, None, Turn]:
    """Prefill ``ids`` after ``state`` and generate; yields printable text as it becomes
    final and returns (``yield from`` / ``StopIteration.value``) the ``Turn``. The stop
    token is not decoded."""
    stops = {int(s) for s in stop_tokens}
    it = stream(model, list(ids), state=state, max_new_tokens=max_new_tokens,
                chunk_size=chunk_size, temperature=temperature, top_k=top_k, top_p=top_p,
                stop_tokens=sorted(stops), generator=generator)
    detok, out, stopped, times = Detokenizer(tok), [], None, []
    while True:
        t0 = time.perf_counter()
        step = next(it, None)
        tok_id = None if step is None else int(step.token[0])    # waits for the device
        times.append(time.perf_counter() - t0)
        if step is None:
            break
        state = step.state
        out.append(tok_id)
        if tok_id in stops:
            stopped = tok_id
            break
        piece = detok.add(tok_id)
        if piece:
            yield piece
    piece = detok.flush()
    if piece:
        yield piece
    stats = Stats(len(ids), times[0], max(len(out) - 1, 0), sum(times[1:]),
                  state_nbytes(state))
    return Turn(out, state, stopped, stats)


@torch.no_grad()
def _feed(model, token: int, state: Any) -> Any:
    dev = next(iter(model.parameters())).device
    return model(torch.tensor([[token]], device=dev), state)[1]


class ChatSession:
    """A conversation carried in the model state (see the module docstring).

        chat = ChatSession(model, tok, system="Be brief.")
        for piece in chat.send("Hello!"):
            print(piece, end="", flush=True)
        chat.reply_ids, chat.stats, chat.state, chat.messages

    ``send`` must be consumed to the end: a turn left unfinished is not recorded (the state
    and messages stay as before it). ``context_length``: refuse (``ContextError``) a turn
    that does not fit, for a model whose state grows (``grows_with_context``)."""

    def __init__(self, model, tok, *, system: str | None = None,
                 context_length: int | None = None, max_new_tokens: int = 256,
                 chunk_size: int | None = 2048, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None):
        if not callable(getattr(tok, "apply_chat_template", None)) or \
                not getattr(tok, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; generate without --chat")
        self.model, self.tok, self.context_length = model, tok, context_length
        self.sampling = {"max_new_tokens": max_new_tokens, "chunk_size": chunk_size,
                         "temperature": temperature, "top_k": top_k, "top_p": top_p,
                         "generator": generator}
        self.encode = raw_encoder(tok)
        self.end_of_turn = end_of_turn(tok, self.encode)
        eot = None if self.end_of_turn is None else self.end_of_turn[0]
        self.stop_tokens = sorted({t for t in (getattr(tok, "eos_id", None), eot)
                                   if t is not None})
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.state: Any = None
        self.seen: list[int] = []       # the tokens the state has consumed
        self.text: str | None = ""      # the same as template text (None: not known exactly)
        self.reply_ids: list[int] = []
        self.stats: Stats | None = None
        self.truncated = False          # the last reply was cut by the context length
        self.reprefills = 0

    def _render(self, messages: list[dict]) -> str:
        try:
            return self.tok.apply_chat_template(messages, add_generation_prompt=True)
        except Exception as e:   # noqa: BLE001 -- jinja errors: a clean message
            raise ValueError(f"the chat template failed: {type(e).__name__}: {e}") from None

    def _delta(self, full: str) -> tuple[bool, list[int]]:
        """(restart, ids): the tokens to prefill for the rendered conversation ``full``,
        after the current state (restart False) or from an empty one."""
        if self.state is None:
            return True, self.encode(full)
        whole = self.encode(full)
        if self.text is not None and full.startswith(self.text):
            ids = self.encode(full[len(self.text):])
            if ids and whole[len(whole) - len(ids):] == ids:
                return False, ids
        if whole[:len(self.seen)] == self.seen and len(whole) > len(self.seen):
            return False, whole[len(self.seen):]
        self.reprefills += 1
        return True, whole

    def send(self, text: str) -> Iterator[str]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty message")
        messages = self.messages + [{"role": "user", "content": text}]
        full = self._render(messages)
        restart, ids = self._delta(full)
        if not ids:
            raise ValueError("the chat template renders nothing for the new message")
        state, seen = (None, []) if restart else (self.state, self.seen)
        n, budget = len(seen) + len(ids), self.sampling["max_new_tokens"]
        ctx = self.context_length
        if ctx is not None and grows_with_context(self.model):
            if n >= ctx:
                raise _too_long("the conversation", n, ctx)
            budget = min(budget, ctx - n)
        turn = yield from stream_text(self.model, self.tok, ids, state=state,
                                      stop_tokens=self.stop_tokens,
                                      **{**self.sampling, "max_new_tokens": budget})
        eot = self.end_of_turn
        content = turn.ids[:-1] if turn.stopped is not None else turn.ids
        at_eot = eot is not None and turn.stopped == eot[0]
        t0 = time.perf_counter()
        if turn.stopped is None or at_eot:  # the last token (content or end of turn) goes in
            fed, state = turn.ids, _feed(self.model, turn.ids[-1], turn.state)
        else:                       # EOS where the template ends a turn otherwise: not fed
            fed, state = content, turn.state
        dt = time.perf_counter() - t0
        reply = _decoder(self.tok, skip_special_tokens=True)(content)
        # the template text the state consumed: the reply with any special token it holds
        # (then the next rendering, which has the reply without it, is no extension of it)
        keep = _decoder(self.tok, skip_special_tokens=False)
        literal = keep(content)
        if keep == self.tok.decode and any(keep([t]) == "" for t in set(content)):
            literal = None          # decode (without the option) dropped a special token
        self.text = None if literal is None else full + literal + (eot[1] if at_eot else "")
        self.messages = messages + [{"role": "assistant", "content": reply}]
        self.state, self.seen, self.reply_ids = state, seen + ids + list(fed), turn.ids
        self.truncated = (turn.stopped is None and len(turn.ids) == budget
                          and budget < self.sampling["max_new_tokens"])
        s = turn.stats
        self.stats = Stats(s.prefill_tokens, s.prefill_s,
                           s.decode_tokens + (len(fed) == len(turn.ids)), s.decode_s + dt,
                           state_nbytes(state))
        return turn


# -- CLI ---------------------------------------------------------------------------------
class _Error(Exception):
    pass


def _positive(name: str, minimum: int = 1):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an int, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        return v
    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m memarch.generate",
                                 description="Generate text from a memarch checkpoint.")
    ap.add_argument("checkpoint", help="a memarch checkpoint with an embedded tokenizer")
    ap.add_argument("--prompt", default=None, help="the prompt (with --chat: the first turn)")
    ap.add_argument("--chat", action="store_true",
                    help="chat with the tokenizer's chat template, turns read from stdin")
    ap.add_argument("--system", default=None, help="system message (--chat)")
    ap.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=256)
    ap.add_argument("--window", type=_positive("--window"), default=None,
                    help="attention window W on every attention slot")
    ap.add_argument("--n-sinks", type=_positive("--n-sinks", 0), default=None,
                    help="attention sinks S (needs a window)")
    ap.add_argument("--sink-positions", choices=["cache", "absolute"], default=None,
                    help="RoPE positions of the sinks (default: the config's); cache: "
                         "StreamingLLM's, to run a dense-trained model past its context")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--top-k", type=_positive("--top-k"), default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--chunk-size", type=_positive("--chunk-size"), default=2048,
                    help="prefill chunk (memory, not results)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if "
                                                   "available)")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16",
                                                      "float64"],
                    help="default: as stored")
    ap.add_argument("--stats", action="store_true",
                    help="print tok/s and the state's size on stderr after each reply")
    return ap


def _load(args):
    from memarch.checkpoint import TOKENIZER_KEY, CheckpointError, load, read
    from memarch.data.tokenizers import load_tokenizer
    over = {}
    if args.window is not None or args.n_sinks is not None or args.sink_positions:
        try:                                    # the config only: map, do not read, the weights
            ckpt = read(args.checkpoint, mmap=True)
        except CheckpointError:                 # a legacy (not zip) file cannot be mapped
            ckpt = read(args.checkpoint)
        cfg = ckpt.get("memarch_model_config")
        if isinstance(cfg, dict):
            over = attention_overrides(cfg, window=args.window, n_sinks=args.n_sinks,
                                       sink_positions=args.sink_positions)
    loaded = load(args.checkpoint, overrides=over or None)
    spec = loaded.checkpoint.get(TOKENIZER_KEY)
    if spec is None:
        raise _Error(f"checkpoint {args.checkpoint} has no tokenizer ({TOKENIZER_KEY!r}), so "
                     "text cannot be encoded or printed; convert the model with its "
                     "tokenizer embedded: python -m memarch.convert gguf ..., or "
                     "python -m memarch.convert hf PATH OUT.ckpt --tokenizer TOKENIZER")
    tok = load_tokenizer(spec)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(device=device, dtype=getattr(torch, args.dtype)
                            if args.dtype else None)
    return model, tok, context_length(loaded.checkpoint, loaded.model)


def _print(gen: Generator[str, None, Any], out) -> Any:
    while True:
        try:
            piece = next(gen)
        except StopIteration as e:
            return e.value
        out.write(piece)
        out.flush()


def _user_lines(first: str | None) -> Iterator[str]:
    if first is not None:
        yield first
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip():
            yield line.rstrip("\n")


def _run(args) -> int:
    if args.prompt is not None and not args.prompt.strip():
        raise _Error("empty prompt")
    if not args.chat and args.prompt is None:
        raise _Error("--prompt is required (or --chat for an interactive conversation)")
    if args.system is not None and not args.chat:
        raise _Error("--system needs --chat")
    if not (args.temperature >= 0 and args.temperature < float("inf")):
        raise _Error(f"--temperature must be a finite number >= 0, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise _Error(f"--top-p must be in (0, 1], got {args.top_p}")
    model, tok, ctx = _load(args)
    gen = None
    if args.seed is not None:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    sampling = {"max_new_tokens": args.max_new_tokens, "chunk_size": args.chunk_size,
                "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "generator": gen}
    if ctx is not None and not grows_with_context(model):
        ctx = None                                  # constant state: no limit
    out = sys.stdout
    if not args.chat:
        ids = list(tok.encode(args.prompt))
        if not ids:
            raise _Error("the prompt encodes to no tokens")
        budget = args.max_new_tokens
        if ctx is not None:
            if len(ids) > ctx:
                raise _too_long(f"the prompt ({args.checkpoint})", len(ids), ctx)
            budget = min(budget, ctx - len(ids) + 1)
        eos = getattr(tok, "eos_id", None)
        turn = _print(stream_text(model, tok, ids, stop_tokens=[] if eos is None else [eos],
                                  **{**sampling, "max_new_tokens": budget}), out)
        out.write("\n")
        out.flush()
        if budget < args.max_new_tokens and turn.stopped is None and len(turn.ids) == budget:
            print(f"[stopped at the model's context of {ctx} tokens]", file=sys.stderr)
        if args.stats:
            print(f"[{turn.stats}]", file=sys.stderr)
        return 0
    chat = ChatSession(model, tok, system=args.system, context_length=ctx, **sampling)
    for line in _user_lines(args.prompt):
        _print(chat.send(line), out)
        out.write("\n")
        out.flush()
        if chat.truncated:
            print(f"[stopped at the model's context of {ctx} tokens]", file=sys.stderr)
        if args.stats:
            print(f"[{chat.stats}]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)           # bad flags: argparse's message, exit 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (_Error, ValueError, TypeError, OSError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:   # noqa: BLE001 -- never a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
