"""Tokenizers: byte level by default, or any local ``tokenizer.json`` / HF tokenizer folder."""

from __future__ import annotations

import functools
import os
from pathlib import Path


class ByteTokenizer:
    """UTF-8 bytes 0..255, plus an end-of-document token 256 (vocab_size 257)."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class _HFTokenizer:
    """A ``tokenizers.Tokenizer`` (or a transformers tokenizer) behind memarch's interface;
    ``bos_id`` and ``chat_template`` come from a spec that has them (a GGUF's)."""

    def __init__(self, tok, eos_id: int | None, vocab_size: int, *, bos_id: int | None = None,
                 chat_template: str | None = None):
        self._tok, self.eos_id, self.vocab_size = tok, eos_id, vocab_size
        self.bos_id, self.chat_template = bos_id, chat_template
        if hasattr(tok, "get_added_tokens_decoder"):     # tokenizers
            self.special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        else:                                            # transformers
            self.special_ids = set(getattr(tok, "all_special_ids", ()))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        out = self._tok.encode(text, add_special_tokens=add_special_tokens)
        return list(out.ids if hasattr(out, "ids") else out)

    def decode(self, ids, *, skip_special_tokens: bool | None = None) -> str:
        # None: the backend's own default (tokenizers skips special tokens, transformers keeps them)
        kw = {} if skip_special_tokens is None else {"skip_special_tokens": skip_special_tokens}
        return self._tok.decode([int(i) for i in ids], **kw)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` (an added token or a vocabulary entry), None if it has none."""
        if hasattr(self._tok, "token_to_id"):
            return self._tok.token_to_id(token)
        i = self._tok.convert_tokens_to_ids(token)
        return None if i is None or (i == self._tok.unk_token_id and token != self._tok.unk_token) \
            else i

    def id_to_token(self, i: int) -> str | None:
        if hasattr(self._tok, "id_to_token"):
            return self._tok.id_to_token(int(i))
        return self._tok.convert_ids_to_tokens(int(i))

    def apply_chat_template(self, messages: list[dict], *,
                            add_generation_prompt: bool = True) -> str:
        """The prompt text of ``messages`` (``[{"role": ..., "content": ...}, ...]``) in the
        tokenizer's Jinja chat template, rendered as transformers does (a sandboxed
        environment, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``bos_token`` and
        ``eos_token``). Encode it with ``add_special_tokens=False`` as transformers does: the
        template writes its own special tokens."""
        if not self.chat_template:
            raise ValueError("tokenizer: this tokenizer has no chat template (a GGUF's comes from "
                             "tokenizer.chat_template); format the prompt yourself")
        names = {k: self.id_to_token(i) for k, i in (("bos_token", self.bos_id),
                                                     ("eos_token", self.eos_id)) if i is not None}
        return _chat_template(self.chat_template).render(
            messages=_plain(list(messages)), add_generation_prompt=add_generation_prompt,
            tools=None, documents=None, **{k: v for k, v in names.items() if v is not None})


def _plain(x):
    """A JSON-plain copy of template input (dict keys whose value is None dropped, as in
    transformers), so the template sees no object with methods of its own."""
    if x is None or type(x) in (str, int, float, bool):
        return x
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return str(x)


@functools.lru_cache(maxsize=8)
def _chat_template(source: str):
    """A compiled chat template, in the environment transformers renders templates in."""
    import json
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    class Dict:   # dict(...) and dict.fromkeys(...), not the type itself
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class Namespace(jinja2.utils.Namespace):
        # no underscore attributes on a namespace (a way out of the sandbox)
        def __init__(*args, **kwargs):
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat template: namespace attribute {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace, dict=Dict(),
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env.from_string(source)


def tokenizer_spec(path: str | os.PathLike, *, eos_id: int | None = None) -> dict:
    """A tokenizer that travels inside a checkpoint: ``{"tokenizer.json": <its text>,
    "eos_id": ..., "source": path}`` from a ``tokenizer.json`` file or a folder holding one
    (``load_tokenizer`` reads it back; the ``tokenizers`` library parses JSON only, no code).
    ``eos_id`` None: the usual end-of-text tokens are looked up."""
    p = Path(os.path.expanduser(str(path)))
    if p.suffix == ".gguf" and p.is_file():          # the tokenizer in a GGUF's metadata
        from memarch.data.gguf_tokenizer import gguf_tokenizer_spec
        try:
            spec = gguf_tokenizer_spec(p)
        except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
            raise ValueError(f"tokenizer: {p} is not a tokenizer: a GGUF file without usable "
                             f"tokenizer metadata ({type(e).__name__}: {str(e)[:200]})") from None
        return {**spec, "eos_id": spec.get("eos_id") if eos_id is None else eos_id}
    file = p if p.is_file() else p / "tokenizer.json"
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer: no tokenizer.json at {p}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"tokenizer: {file} is not a tokenizer (not UTF-8 text; a "
                         "tokenizer.json or a .gguf is expected)") from None
    _parse_tokenizer_json(text, str(file))
    return {"tokenizer.json": text, "eos_id": eos_id, "source": str(p)}


def _parse_tokenizer_json(text: str, what: str):
    """``tokenizers.Tokenizer`` of ``text``, or a ValueError naming ``what``: a file that
    parses as JSON but not as a tokenizer (a config.json, say) is not one."""
    from tokenizers import Tokenizer
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types
        raise ValueError(f"tokenizer: {what} is not a tokenizer (the tokenizers library "
                         f"cannot read it as a tokenizer.json: {str(e).splitlines()[0][:200]}); "
                         "give a tokenizer.json, a folder holding one, or a .gguf") from None


def _from_tokenizers(tok, eos_id: int | None = None, **kw) -> _HFTokenizer:
    if eos_id is None:
        eos_id = next((tok.token_to_id(t) for t in ("</s>", "<|endoftext|>", "<eos>", "[SEP]",
                                                    "<|end_of_text|>")
                       if tok.token_to_id(t) is not None), None)
    return _HFTokenizer(tok, eos_id, tok.get_vocab_size(), **kw)


def load_tokenizer(name: str | dict | None = "byte"):
    """``"byte"``/None: ByteTokenizer; a ``tokenizer.json`` file or a folder holding one:
    the ``tokenizers`` library; a dict from ``tokenizer_spec`` (a checkpoint's embedded
    tokenizer); a ``.gguf`` file: the tokenizer in its metadata
    (``memarch.data.gguf_tokenizer``); any other folder or hub name:
    ``transformers.AutoTokenizer`` (offline it must be a local folder)."""
    if name in (None, "byte"):
        return ByteTokenizer()
    if isinstance(name, dict):
        if not isinstance(name.get("tokenizer.json"), str):
            raise ValueError(f"tokenizer: a tokenizer spec must hold the text of a "
                             f"tokenizer.json under 'tokenizer.json', got keys {sorted(name)}")
        tok = _parse_tokenizer_json(name["tokenizer.json"],
                                    f"the embedded tokenizer (from {name.get('source')})")
        return _from_tokenizers(tok, name.get("eos_id"),
                                bos_id=name.get("bos_id"), chat_template=name.get("chat_template"))
    p = Path(os.path.expanduser(str(name)))
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer: no such GGUF file: {p}")
        from memarch.data.gguf_tokenizer import gguf_tokenizer_spec
        return load_tokenizer(gguf_tokenizer_spec(p))
    file = p if p.is_file() else p / "tokenizer.json"
    if file.is_file() and file.suffix == ".json":
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"tokenizer: {file} is not a tokenizer (not UTF-8 text)") from None
        return _from_tokenizers(_parse_tokenizer_json(text, str(file)))
    if not p.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"tokenizer: {name!r} is neither a local tokenizer.json nor a folder, and the hub is "
            "offline (HF_HUB_OFFLINE=1); pass data.dataset.tokenizer=byte or a local path")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(name))
    return _HFTokenizer(tok, tok.eos_token_id, len(tok), bos_id=tok.bos_token_id,
                        chat_template=getattr(tok, "chat_template", None))
