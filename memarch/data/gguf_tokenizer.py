"""The tokenizer a GGUF file describes, rebuilt as a Hugging Face ``tokenizers`` JSON.

A GGUF carries no ``tokenizer.json``: llama.cpp stores the vocabulary, merges and special ids
as ``tokenizer.ggml.*`` metadata. ``gguf_tokenizer_spec`` reads them (``gguf.GGUFReader``) and
builds, with the ``tokenizers`` library, the same tokenizer that transformers 5.25 builds for
``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` (its ``integrations/gguf``), call for
call, so the ids match; memarch never imports transformers for it. The mapping:

    tokenizer.ggml.model "gpt2"     byte-level BPE: tokens (respelled in the byte alphabet when
                                    they are not already), merges "a b" -> ("a", "b"), the
                                    ByteLevel pre-tokenizer and decoder; "<|endoftext|>" is a
                                    special token (GPT2Tokenizer's default unk/bos/eos)
    tokenizer.ggml.model "llama"    SentencePiece as BPE with byte fallback (LlamaTokenizer):
                                    merges from the file or rebuilt from the token scores,
                                    Metaspace "▁" prepended to the first word; "<s>", "</s>",
                                    "<unk>" are special tokens
    tokenizer.ggml.pre              the split regex before the byte-level step (``_SPLITS``:
                                    llama-bpe, qwen2, ...); gpt2/default/smollm/... keep GPT-2's
                                    own regex (transformers' fallback); any other name is refused
    tokenizer.ggml.token_type       3 (control): special added tokens, never split, skipped by
                                    decode; 4 (user-defined): plain added tokens, never split
    tokenizer.ggml.{bos,eos,unknown,padding}_token_id
                                    special added tokens; bos/eos ids go into the spec
    tokenizer.ggml.add_{bos,eos}_token
                                    a TemplateProcessing post-processor adding them (a
                                    SentencePiece file without the flag adds BOS, as llama.cpp)
    tokenizer.chat_template         the spec's "chat_template" (rendered by load_tokenizer's
                                    ``apply_chat_template``)

Refused by name: other tokenizer models (bert, t5, rwkv, gemma4, ...), SentencePiece files of
the architectures transformers builds differently (gemma*, phi3), unknown ``pre`` values.
Like transformers, ``tokenizer.ggml.add_space_prefix`` is not read (llama.cpp honours it), and
for ``pre`` "smollm"/"starcoder" the digits are not split one by one as llama.cpp does.
"""

from __future__ import annotations

import os

__all__ = ["GGUFFieldMissing", "gguf_tokenizer_spec", "read_field"]

_MISSING = object()


class GGUFFieldMissing(KeyError, ValueError):
    """A GGUF metadata key is absent (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self):   # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def read_field(reader, key: str, default=_MISSING):
    """The metadata value ``key`` of a ``gguf.GGUFReader`` as plain Python (str, int, float,
    bool, or a list of them); ``default`` when absent, else ``GGUFFieldMissing`` naming it."""
    field = reader.fields.get(key)
    if field is None:
        if default is _MISSING:
            raise GGUFFieldMissing(f"GGUF metadata has no {key!r}")
        return default
    return field.contents()


# tokenizer.ggml.pre -> the split regex transformers puts before ByteLevel (its table)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {**dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                            "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
           **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
           "qwen35": _QWEN35, "tekken": _TEKKEN,
           **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O)}
# pre values that keep ByteLevel's own GPT-2 regex (transformers' fallback; llama.cpp's regex
# for gpt2/mpt/olmo/jais; for smollm/starcoder/refact llama.cpp also splits digits singly)
_GPT2_REGEX = (None, "default", "gpt2", "mpt", "olmo", "jais", "smollm", "starcoder", "refact")
# SentencePiece files of these architectures get other builders in transformers
_SPM_OTHER = ("gemma", "gemma2", "gemma3", "phi3")
# architectures whose transformers tokenizer class (Qwen2Tokenizer) re-adds its named tokens
# as special ones
_RESPECIAL = ("qwen2", "qwen2moe", "qwen3", "qwen3moe")
_CONTROL, _USER_DEFINED = 3, 4   # llama.cpp token types


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable bytes stand for themselves, the rest map above 255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a vocabulary: every split of a token into two tokens, best score
    first (transformers' ``generate_merges`` with scores)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in dict(zip(tokens, scores)).items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _byte_level(f: dict):
    """GPT2Tokenizer(vocab, merges): byte-level BPE; "<|endoftext|>" its default specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    spell = _bytes_to_unicode()
    alphabet = set(spell.values())
    vocab = {t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(f["tokens"])}
    merges = [tuple(m.split(" ")) for m in f["merges"] or ()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None,
                               continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok, ["<|endoftext|>"], alphabet


def _sentencepiece(f: dict):
    """LlamaTokenizer(vocab, merges): BPE with byte fallback, Metaspace on the first word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    tokens = f["tokens"]
    if f["merges"] is not None:
        merges = [tuple(m.split(" ")) for m in f["merges"]]
    elif f["scores"] is not None:
        merges = _merges_from_scores(tokens, f["scores"])
    else:
        raise ValueError(f"GGUF {f['source']}: a SentencePiece tokenizer needs "
                         "tokenizer.ggml.merges or tokenizer.ggml.scores")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                               dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    return tok, ["<s>", "</s>", "<unk>"], None


def _template(tok, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool):
    """The TemplateProcessing transformers' ``update_post_processor`` writes."""
    from tokenizers import processors
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    def seq(x: str, i: int) -> str:   # "<s>:0 $A:0 </s>:0" for sequence i of x
        return " ".join(p for p in (f"{bos}:{i}" if add_bos else "", f"{x}:{i}",
                                    f"{eos}:{i}" if add_eos else "") if p)
    single, pair = seq("$A", 0), f"{seq('$A', 0)} {seq('$B', 1)}"
    special = [(t, tok.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _add_named(tok, names: list[str | None]):
    """Named special tokens (bos, eos, unk, pad order) not yet added: special added tokens."""
    from tokenizers import AddedToken
    have = {t.content for t in tok.get_added_tokens_decoder().values()}
    new = list(dict.fromkeys(n for n in names if n is not None and n not in have))
    if new:
        tok.add_tokens([AddedToken(n, special=True) for n in new])


def gguf_tokenizer_spec(path_or_reader, *, source: str | None = None) -> dict:
    """The tokenizer of a GGUF file (a path or an open ``gguf.GGUFReader``) as a memarch
    tokenizer spec: ``{"tokenizer.json": <tokenizers JSON>, "eos_id", "bos_id",
    "chat_template", "source"}`` (``load_tokenizer`` reads it back). Ids match transformers'
    GGUF tokenizer; unsupported tokenizers are refused by name (see the module docstring)."""
    from tokenizers import AddedToken, Regex, pre_tokenizers
    if isinstance(path_or_reader, (str, os.PathLike)):
        import gguf
        source = source or str(path_or_reader)
        reader = gguf.GGUFReader(os.path.expanduser(str(path_or_reader)))
    else:
        reader = path_or_reader
        source = source or str(getattr(reader.data, "filename", None) or "<GGUFReader>")

    def get(key, default=None):
        return read_field(reader, "tokenizer." + key, default)

    model, tokens = get("ggml.model"), get("ggml.tokens")
    if model is None or not tokens:
        raise ValueError(f"GGUF {source} has no tokenizer (tokenizer.ggml.* metadata)")
    arch, pre = read_field(reader, "general.architecture", None), get("ggml.pre")
    f = {"tokens": tokens, "merges": get("ggml.merges"), "scores": get("ggml.scores"),
         "source": source}

    if model == "gpt2":
        if pre not in _SPLITS and pre not in _GPT2_REGEX:
            raise ValueError(f"GGUF {source}: tokenizer.ggml.pre {pre!r} is not supported "
                             f"(known: {sorted(_SPLITS) + sorted(p for p in _GPT2_REGEX if p)})")
        tok, defaults, alphabet = _byte_level(f)
    elif model == "llama":
        if arch in _SPM_OTHER:
            raise ValueError(f"GGUF {source}: the SentencePiece tokenizer of architecture "
                             f"{arch!r} is not supported (only llama-style SentencePiece)")
        if pre in _SPLITS:   # transformers would put a byte-level split on SentencePiece
            raise ValueError(f"GGUF {source}: tokenizer.ggml.pre {pre!r} on a SentencePiece "
                             "tokenizer is not supported")
        tok, defaults, alphabet = _sentencepiece(f)
    else:
        raise ValueError(f"GGUF {source}: tokenizer.ggml.model {model!r} is not supported "
                         "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")

    # the builder's own default specials, and its post-processor (no bos/eos yet)
    _add_named(tok, defaults)
    tok.post_processor = _template(tok, None, None, False, False)
    # control tokens: special; user-defined ones in the vocabulary: plain added tokens (a
    # byte-level "control" token outside the byte alphabet is a llama.cpp mislabel: skipped)
    types = get("ggml.token_type") or []
    control = [AddedToken(t, normalized=False, special=True) for t, ty in zip(tokens, types)
               if ty == _CONTROL and (alphabet is None or set(t) <= alphabet)]
    if control:
        tok.add_special_tokens(control)
    vocab = tok.get_vocab(with_added_tokens=True)
    user = [AddedToken(t, normalized=False, special=False) for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens(user)
    if pre in _SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    # the file's named special tokens, and its bos/eos flags (SentencePiece: BOS by default)
    ids = {k: get(f"ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")}
    for k, i in ids.items():
        if i is not None and not 0 <= i < len(tokens):
            raise ValueError(f"GGUF {source}: tokenizer.ggml.{k}_token_id {i} is not a token "
                             f"id (the vocabulary has {len(tokens)})")
    names = {k: tokens[i] if i is not None else None for k, i in ids.items()}
    _add_named(tok, list(names.values()))
    if arch in _RESPECIAL:
        tok.add_tokens([AddedToken(n, special=True) for n in dict.fromkeys(names.values()) if n])
    add_bos, add_eos = get("ggml.add_bos_token"), get("ggml.add_eos_token")
    if model == "llama" and add_bos is None:
        add_bos = True
    if add_bos is not None or add_eos is not None:
        tok.post_processor = _template(tok, names["bos"], names["eos"], bool(add_bos),
                                       bool(add_eos))
    return {"tokenizer.json": tok.to_str(), "eos_id": ids["eos"], "bos_id": ids["bos"],
            "chat_template": get("chat_template"), "source": source}
