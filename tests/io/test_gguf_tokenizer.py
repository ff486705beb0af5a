"""``memarch.data.gguf_tokenizer``: the tokenizer of a GGUF file, rebuilt without
transformers, against transformers' own GGUF tokenizer (``AutoTokenizer.from_pretrained(dir,
gguf_file=...)``): on small GGUF files written here with ``gguf.GGUFWriter`` (byte-level BPE
and SentencePiece, token types, bos/eos flags, pre-tokenizer regexes), and, marked ``real``,
on the real SmolLM2 file (200k characters of the KJV, odd strings, the chat template)."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import pytest
from hf_helpers import ROOT, import_transformers

from memarch.data.gguf_tokenizer import GGUFFieldMissing, gguf_tokenizer_spec, read_field
from memarch.data.tokenizers import load_tokenizer

gguf = pytest.importorskip("gguf")

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, "
        "and void; and darkness was upon the face of the deep. It's 1611: we'll say 12 or 345 "
        "times, they've gone. Naïve café, Ünïcödé and 中文 too.\n\n  Spaces\tand tabs.\n") * 30
ODD = ["", " ", "  1", "a  1", "Hello world", " 12345 678", "héllo wörld ünïcödé", "emoji 🤗🎉 ok",
       "tabs\tand\nnewlines\n\n  x", "<|im_start|>user\nhi<|im_end|>", "<think>x</think>",
       "a<s>b</s>", "  leading", "trailing   ", "中文字符 日本語", "it's I'll WE'VE", "\r\n\r\n",
       "MiXeD CaSe 3.14159", "x" * 300, "has space", "<bos>x<eos>", "<|endoftext|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'bad' %}"
            "{{ raise_exception('no bad roles') }}{% endif %}"
            "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🤗, 12 + 34?"},
        {"role": "assistant", "content": "46."}, {"role": "user", "content": "And  then?\n"}]


@contextlib.contextmanager
def _root_off_path():
    """transformers resolves modules lazily; the repository root's ``kernels/`` must not
    shadow the PyPI package it imports (see hf_helpers.import_transformers)."""
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT)]
    try:
        yield
    finally:
        sys.path[:] = saved


def hf_gguf_tokenizer(path):
    tf = import_transformers()
    with _root_off_path():
        return tf.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                gguf_file=os.path.basename(path))


def write_gguf(path, *, arch="llama", model="gpt2", pre=None, tokens=None, types=None,
               merges=None, scores=None, **kw):
    """A tensorless GGUF: the hyperparameters transformers needs for a config, then
    whatever tokenizer metadata is given (``kw``: GGUFWriter ``add_<name>`` calls)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    if tokens is not None:
        w.add_vocab_size(len(tokens))
        w.add_token_list(tokens)
    for name, value in (("tokenizer_model", model), ("tokenizer_pre", pre), ("token_types", types),
                        ("token_merges", merges), ("token_scores", scores), *kw.items()):
        if value is not None:
            getattr(w, "add_" + name)(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def _trained(pre_tokenizer, vocab_size):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(
        pre_tokenizer, pre_tokenizers.ByteLevel) else []
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=vocab_size,
                                                        initial_alphabet=alphabet,
                                                        show_progress=False))
    j = json.loads(tok.to_str())["model"]
    vocab = [t for t, _ in sorted(j["vocab"].items(), key=lambda kv: kv[1])]
    return vocab, [m if isinstance(m, str) else " ".join(m) for m in j["merges"]]


@pytest.fixture(scope="module")
def byte_vocab():
    """A byte-level BPE vocabulary (the 256 byte symbols and merges learned on TEXT) behind
    control tokens, user-defined tokens, a "<bos>" of normal type and a mislabelled control
    token with a space (transformers skips it)."""
    from tokenizers import pre_tokenizers
    vocab, merges = _trained(pre_tokenizers.ByteLevel(add_prefix_space=False), 600)
    head = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "has space",
            "<bos>"]
    return head + vocab, [3, 3, 3, 4, 4, 3, 1] + [1] * len(vocab), merges


@pytest.fixture(scope="module")
def spm_vocab():
    """A llama-style SentencePiece vocabulary: <unk>, <s>, </s>, 256 byte tokens, pieces
    with decreasing scores, a user-defined token."""
    from tokenizers import pre_tokenizers
    pieces, merges = _trained(pre_tokenizers.Metaspace(), 400)
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *pieces, "<|user|>"]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0]
    return tokens, types, scores, merges


def assert_same(spec, ref, texts):
    """The spec's tokenizer is transformers' one: the same tokenizers JSON, the same ids and
    decodes on ``texts``, the same bos/eos."""
    from tokenizers import Tokenizer
    ours = json.loads(Tokenizer.from_str(spec["tokenizer.json"]).to_str())
    theirs = json.loads(ref.backend_tokenizer.to_str())
    assert ours == theirs, [k for k in theirs if ours.get(k) != theirs[k]]
    tok = load_tokenizer(spec)
    for s in texts:
        ids = tok.encode(s)
        assert ids == ref.encode(s), s
        assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids), s
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids,
                                                                       skip_special_tokens=True)
    assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id)
    # the ids decode(skip_special_tokens=True) drops
    assert tok.special_ids == {i for i, t in ref.added_tokens_decoder.items() if t.special}
    assert tok.vocab_size == len(ref)
    return tok


# ---- GGUF metadata --------------------------------------------------------------------------

def test_read_field_plain_values_and_missing_keys(tmp_path):
    p = write_gguf(tmp_path / "t.gguf", tokens=["a", "b"], types=[1, 3], bos_token_id=1,
                   add_bos_token=True, chat_template="{{ x }}")
    r = gguf.GGUFReader(p)
    assert read_field(r, "general.architecture") == "llama"
    assert read_field(r, "tokenizer.ggml.tokens") == ["a", "b"]
    assert read_field(r, "tokenizer.ggml.token_type") == [1, 3]
    assert read_field(r, "tokenizer.ggml.bos_token_id") == 1
    assert read_field(r, "tokenizer.ggml.add_bos_token") is True
    assert read_field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert read_field(r, "nope", None) is None and read_field(r, "nope", 7) == 7
    with pytest.raises(GGUFFieldMissing, match="'nope'") as e:
        read_field(r, "nope")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)


def test_no_tokenizer_is_a_clear_error(tmp_path):
    p = write_gguf(tmp_path / "bare.gguf", model=None)
    with pytest.raises(ValueError, match=r"GGUF .*bare\.gguf has no tokenizer \(tokenizer\.ggml"):
        gguf_tokenizer_spec(p)


@pytest.mark.parametrize("kw, match", [
    ({"model": "bert"}, "tokenizer.ggml.model 'bert' is not supported"),
    ({"model": "t5"}, "tokenizer.ggml.model 't5' is not supported"),
    ({"pre": "no-such-pre"}, "tokenizer.ggml.pre 'no-such-pre' is not supported"),
    ({"model": "llama", "arch": "gemma2", "scores": [0.0, 0.0]}, "architecture 'gemma2'"),
    ({"model": "llama", "pre": "qwen2", "scores": [0.0, 0.0]}, "pre 'qwen2' on a SentencePiece"),
    ({"model": "llama"}, "needs tokenizer.ggml.merges or tokenizer.ggml.scores"),
])
def test_unsupported_tokenizers_are_refused_by_name(tmp_path, kw, match):
    kw.setdefault("arch", "llama")
    p = write_gguf(tmp_path / "t.gguf", tokens=["a", "b"], merges=None, **kw)
    with pytest.raises(ValueError, match=match):
        gguf_tokenizer_spec(p)


# ---- exact against transformers, small files ------------------------------------------------

@pytest.mark.parametrize("arch, pre, flags", [
    ("llama", "smollm", {}),
    ("llama", "llama-bpe", {"add_bos_token": True}),
    ("llama", "gpt2", {"add_bos_token": True, "add_eos_token": True}),
    ("llama", None, {"add_eos_token": True}),
    ("qwen2", "qwen2", {"add_bos_token": False}),      # Qwen2Tokenizer re-marks its specials
    ("llama", "tekken", {}),
    ("llama", "gpt-4o", {}),
])
def test_byte_level_matches_transformers(tmp_path, byte_vocab, arch, pre, flags):
    tokens, types, merges = byte_vocab
    ids = {"bos_token_id": 6, "eos_token_id": 3, "pad_token_id": 2}   # eos: a user-defined token
    if arch == "llama":
        ids["unk_token_id"] = 0
    p = write_gguf(tmp_path / "b.gguf", arch=arch, pre=pre, tokens=tokens, types=types,
                   merges=merges, chat_template=TEMPLATE, **ids, **flags)
    spec = gguf_tokenizer_spec(p)
    assert (spec["bos_id"], spec["eos_id"], spec["chat_template"]) == (6, 3, TEMPLATE)
    assert_same(spec, hf_gguf_tokenizer(p), ODD + [TEXT[:3000]])


@pytest.mark.parametrize("with_merges, flags", [(False, {}),
                                                 (True, {"add_bos_token": False,
                                                         "add_eos_token": True})])
def test_sentencepiece_matches_transformers(tmp_path, spm_vocab, with_merges, flags):
    tokens, types, scores, merges = spm_vocab
    p = write_gguf(tmp_path / "s.gguf", model="llama", pre="default", tokens=tokens,
                   types=types, scores=scores, merges=merges if with_merges else None,
                   bos_token_id=1, eos_token_id=2, unk_token_id=0, **flags)
    tok = assert_same(gguf_tokenizer_spec(p), hf_gguf_tokenizer(p),
                      ODD + ["<|user|> hi", "  two", TEXT[:3000]])
    assert (tok.encode("hi")[0] == 1) is not with_merges    # BOS by default, not when told


def test_chat_template_matches_transformers(tmp_path, byte_vocab):
    tokens, types, merges = byte_vocab
    p = write_gguf(tmp_path / "c.gguf", pre="smollm", tokens=tokens, types=types, merges=merges,
                   bos_token_id=1, eos_token_id=2, add_bos_token=True, chat_template=TEMPLATE)
    ref, tok = hf_gguf_tokenizer(p), load_tokenizer(gguf_tokenizer_spec(p))
    for gen in (True, False):
        text = tok.apply_chat_template(CHAT, add_generation_prompt=gen)
        assert text == ref.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen)
        assert tok.encode(text, add_special_tokens=False) == ref.apply_chat_template(
            CHAT, add_generation_prompt=gen)["input_ids"]
    assert text.startswith("<|im_start|><|im_start|>system\n")     # bos_token is <|im_start|>
    assert tok.token_to_id("<|im_end|>") == 2 and tok.token_to_id("<no such>") is None
    assert {0, 1, 2} <= tok.special_ids and not {3, 5, 6} & tok.special_ids
    import jinja2
    with pytest.raises(jinja2.exceptions.TemplateError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": "x"}])


def test_no_chat_template_is_a_clear_error(tmp_path, byte_vocab):
    tokens, types, merges = byte_vocab
    p = write_gguf(tmp_path / "n.gguf", pre="gpt2", tokens=tokens, types=types, merges=merges)
    spec = gguf_tokenizer_spec(gguf.GGUFReader(p), source="mine")
    assert spec["source"] == "mine" and spec["chat_template"] is None
    assert spec["bos_id"] is None and spec["eos_id"] is None
    with pytest.raises(ValueError, match="has no chat template"):
        load_tokenizer(spec).apply_chat_template(CHAT)


# ---- the real model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_gguf():
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        return str(real_model_path())
    except RealModelMissing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def kjv_text():
    """The first 200,000 characters of the King James Bible (the copy shipped in the repo)."""
    from memarch.data.text import KJV, read_text
    return read_text(KJV)[:200_000]


@pytest.fixture(scope="module")
def real_pair(real_gguf):
    """(memarch's tokenizer, transformers' tokenizer, the spec) of the real GGUF."""
    spec = gguf_tokenizer_spec(real_gguf)
    return load_tokenizer(spec), hf_gguf_tokenizer(real_gguf), spec


@pytest.mark.real
def test_real_spec_is_transformers_tokenizer(real_pair):
    _tok, ref, spec = real_pair
    assert (spec["bos_id"], spec["eos_id"]) == (1, 2)
    assert spec["chat_template"] == ref.chat_template
    assert_same(spec, ref, ODD)


@pytest.mark.real
def test_real_kjv_ids_and_round_trip(real_pair, kjv_text):
    tok, ref, _ = real_pair
    ids = tok.encode(kjv_text)
    assert ids == ref.encode(kjv_text)
    assert len(ids) > 40_000
    assert tok.decode(ids) == kjv_text


@pytest.mark.real
def test_real_special_tokens(real_pair):
    tok, ref, _ = real_pair
    s = "<|im_start|>user\nhi<|im_end|>"
    ids = tok.encode(s)
    assert ids == ref.encode(s) and ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids, skip_special_tokens=False) == s
    assert tok.decode(ids) == "user\nhi"
    assert tok.special_ids == set(range(17))


@pytest.mark.real
def test_real_chat_template(real_pair):
    tok, ref, _ = real_pair
    for chat in (CHAT, CHAT[1:]):                  # with and without a system message
        text = tok.apply_chat_template(chat)
        assert text == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == ref.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert text.endswith("<|im_start|>assistant\n")
