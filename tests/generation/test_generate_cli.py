"""``python -m memarch.generate``: streamed text equals the decoded greedy tokens (whole UTF-8
characters only), EOS stops it, a chat carried in the model state gives the replies of
prefilling the whole rendered conversation, a window+sinks chat keeps a constant state,
and errors are one clean line with exit status 2."""

from __future__ import annotations

import io
import itertools
import re
import subprocess
import sys
from functools import partial

import pytest
import torch

from memarch.data.tokenizers import load_tokenizer
from memarch.generate import ChatSession, Detokenizer, end_of_turn, main, raw_encoder
from memarch.generation import generate
from memarch.hub import model_config
from memarch.mixers import Attention
from memarch.models import MemLM

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SCRIPT = "aé日🎉b"          # what the scripted model says: 11 bytes, all distinct


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the ByteLevel alphabet)."""
    from memarch.data.gguf_tokenizer import _bytes_to_unicode
    return _bytes_to_unicode()


def _spec(tok) -> dict:
    return {"tokenizer.json": tok.to_str(), "eos_id": tok.token_to_id(SPECIALS[0]),
            "bos_id": None, "chat_template": CHATML}


@pytest.fixture(scope="module")
def byte_tok():
    """Byte-level BPE: all 256 bytes plus merges that cut multibyte characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["héllo wörld, naïve café, 日本語のテキスト 🎉 😀 " * 20],
                            trainers.BpeTrainer(
                                vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def ascii_tok():
    return _ascii_tok()


def _ascii_tok():
    """One token per character (newline and printable ASCII) plus ChatML's specials: every
    token sequence is its text's tokenisation, so re-encoding a reply gives its tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    chars = _byte_chars()
    vocab = {chars[b]: i for i, b in enumerate([10, *range(32, 127)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def _save(path, model, spec, **converted):
    ckpt = {"memarch_model_config": model_config(model),
            "state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
            "memarch_tokenizer": spec}
    if converted:
        ckpt["memarch_converted"] = converted
    torch.save(ckpt, path)
    return str(path)


def _lm(vocab, *, d_model=32, eot_boost=1.0, eot=None, seed=0):
    torch.manual_seed(seed)
    m = MemLM(vocab_size=vocab, d_model=d_model, mixers={"attn": partial(Attention, n_heads=2)},
              layer_pattern=["attn", "attn"], d_hidden=64, tie_embeddings=False).eval()
    if eot is not None:
        with torch.no_grad():
            m.head.weight[eot] *= eot_boost
    return m


def _scripted_lm(tok) -> MemLM:
    """Greedy decoding follows token -> next: after any prompt ending in 'x' it says SCRIPT
    one byte token at a time, then EOS, then (were EOS not a stop) 'Z'."""
    chars = _byte_chars()
    seq = [tok.token_to_id(chars[b]) for b in b"x" + SCRIPT.encode() + b"\x00"]
    eos = tok.token_to_id(SPECIALS[0])
    seq[-1:] = [eos, tok.token_to_id("Z")]
    m = _lm(tok.get_vocab_size(), d_model=64)
    with torch.no_grad():
        m.embed.weight.mul_(20)          # the residual stream is the current token
        e = torch.nn.functional.normalize(m.embed.weight, dim=-1)
        for cur, nxt in itertools.pairwise(seq):
            m.head.weight[nxt] = 50 * e[cur]
    return m


def _cli(monkeypatch, capsys, *argv, stdin=""):
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_detokenizer_prints_whole_characters(byte_tok):
    tok = load_tokenizer(_spec(byte_tok))
    text = "héllo wörld, 日本語 🎉 café"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids), "a token cuts a character"
    d = Detokenizer(tok)
    pieces = [d.add(i) for i in ids] + [d.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces) and "" in pieces[:-1]
    # byte by byte (each token one byte of a multibyte character): the same
    chars = _byte_chars()
    d = Detokenizer(tok)
    pieces = [d.add(byte_tok.token_to_id(chars[b])) for b in text.encode()] + [d.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_cli_streams_the_greedy_text_and_stops_at_eos(byte_tok, tmp_path, monkeypatch, capsys):
    tok = load_tokenizer(_spec(byte_tok))
    model = _scripted_lm(byte_tok)
    path = _save(tmp_path / "m.ckpt", model, _spec(byte_tok))
    ref = generate(model, tok.encode("héllo x"), 20, stop_tokens=[tok.eos_id])
    ids = ref.tokens[0].tolist()
    assert ref.finished.item() and ids[-1] == tok.eos_id and tok.decode(ids) == SCRIPT
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 9, "multibyte chars cut in bytes"
    rc, out, err = _cli(monkeypatch, capsys, path, "--prompt", "héllo x", "--stats")
    assert rc == 0, err
    assert out == tok.decode(ids[:-1]) + "\n" == SCRIPT + "\n", "no 'Z': stopped at EOS"
    n = len(tok.encode("héllo x"))
    assert re.search(rf"prefill {n} tok .* tok/s.*decode 11 tok .*state [\d,]+ bytes", err), err
    # the same through the window/sink overrides (the text fits the window), and sampled
    rc, out2, err = _cli(monkeypatch, capsys, path, "--prompt", "héllo x", "--window", "4",
                         "--n-sinks", "1", "--sink-positions", "cache", "--temperature",
                         "0.5", "--top-k", "3", "--top-p", "0.9", "--seed", "1",
                         "--chunk-size", "3", "--dtype", "float64", "--device", "cpu")
    assert rc == 0 and out2 == out, err
    rc, out3, _ = _cli(monkeypatch, capsys, path, "--prompt", "héllo x", "--max-new-tokens", 3)
    assert out3 == "aé\n"


@pytest.mark.parametrize("window,eot_boost", [(None, 1.0), (None, 3.0), (8, 1.0), (8, 3.0)],
                         ids=["dense-eos", "dense-eot", "window-maxlen", "window-eot"])
def test_chat_state_carried_equals_prefilling_the_conversation(ascii_tok, tmp_path, window,
                                                               eot_boost):
    from memarch.checkpoint import load
    tok = load_tokenizer(_spec(ascii_tok))
    eot = ascii_tok.token_to_id("<|im_end|>")
    path = _save(tmp_path / "m.ckpt", _lm(tok.vocab_size, eot=eot, eot_boost=eot_boost),
                 _spec(ascii_tok))
    over = None if window is None else {"mixers.attn.window": window,
                                        "mixers.attn.n_sinks": 2,
                                        "mixers.attn.sink_positions": "cache"}
    model = load(path, overrides=over).model
    chat = ChatSession(model, tok, system="Be brief.", max_new_tokens=12)
    assert chat.end_of_turn == (eot, "<|im_end|>")
    assert chat.stop_tokens == sorted([tok.eos_id, eot])
    stops = set()
    for user in ["hello there", "how are you?", "tell me a story"]:
        before = len(chat.seen)
        printed = "".join(chat.send(user))
        rendered = tok.apply_chat_template(chat.messages[:-1], add_generation_prompt=True)
        whole = chat.encode(rendered)
        ref = generate(model, whole, 12, stop_tokens=chat.stop_tokens).tokens[0].tolist()
        assert chat.reply_ids == ref
        assert printed == tok.decode(ref) == chat.messages[-1]["content"]
        assert chat.stats.prefill_tokens == len(whole) - before, "only the new text"
        stops.add(chat.reply_ids[-1] if chat.reply_ids[-1] in chat.stop_tokens else None)
    assert chat.reprefills == 0
    want = {(None, 1.0): tok.eos_id, (None, 3.0): eot, (8, 1.0): None, (8, 3.0): eot}
    assert want[window, eot_boost] in stops, "the case covers its kind of turn end"


def test_chat_falls_back_when_the_template_rewrites_the_history(ascii_tok, tmp_path):
    """A template that shows only the last exchange: the new rendering extends neither the
    text nor the tokens the state consumed, so the conversation is prefilled again."""
    from memarch.checkpoint import load
    last_two = CHATML.replace("for m in messages", "for m in messages[-3:]")
    spec = {**_spec(ascii_tok), "chat_template": last_two}
    tok = load_tokenizer(spec)
    model = load(_save(tmp_path / "m.ckpt", _lm(tok.vocab_size), spec)).model
    chat = ChatSession(model, tok, max_new_tokens=8)
    for i, user in enumerate(["one", "two", "three"]):
        "".join(chat.send(user))
        whole = chat.encode(tok.apply_chat_template(chat.messages[:-1]))
        assert chat.reply_ids == generate(model, whole, 8, stop_tokens=chat.stop_tokens
                                          ).tokens[0].tolist()
        assert chat.reprefills == max(i - 1, 0) and chat.seen[:len(whole)] == whole


def test_window_chat_keeps_a_constant_state(ascii_tok, tmp_path, monkeypatch, capsys):
    tok = load_tokenizer(_spec(ascii_tok))
    path = _save(tmp_path / "m.ckpt", _lm(tok.vocab_size), _spec(ascii_tok),
                 context_length=100)
    lines = "".join(f"question number {i}?\n" for i in range(2, 11)) + "/exit\nnot read\n"
    rc, out, err = _cli(monkeypatch, capsys, path, "--chat", "--prompt", "question 1",
                        "--window", "8", "--n-sinks", "2", "--max-new-tokens", "6",
                        "--stats", stdin=lines)
    assert rc == 0, err
    sizes = [int(s.replace(",", "")) for s in re.findall(r"state ([\d,]+) bytes", err)]
    assert len(sizes) == 10 and len(set(sizes)) == 1, sizes   # far past 100 tokens: no limit
    assert err.count("> ") == 10 and out.endswith("\n"), "9 lines read, then /exit"
    # the dense model's KV cache grows, and its context (100 tokens) ends the chat cleanly
    rc, out, err = _cli(monkeypatch, capsys, path, "--chat", "--prompt", "question 1",
                        "--max-new-tokens", "6", "--stats", stdin=lines)
    sizes = [int(s.replace(",", "")) for s in re.findall(r"state ([\d,]+) bytes", err)]
    assert rc == 2 and sizes == sorted(set(sizes)) and len(sizes) >= 2, (sizes, err)
    assert re.search(r"error: the conversation is \d+ tokens, which does not fit the model's "
                     r"context of 100 tokens.*--window", err), err
    assert "Traceback" not in err


def test_errors_exit_2_with_a_message(byte_tok, ascii_tok, tmp_path, monkeypatch, capsys):
    model = _lm(byte_tok.get_vocab_size())
    no_tok = _save(tmp_path / "notok.ckpt", model, None)
    rc, out, err = _cli(monkeypatch, capsys, no_tok, "--prompt", "hi")
    assert rc == 2 and out == "" and str(no_tok) in err and "no tokenizer" in err
    assert "memarch.convert gguf" in err and "--tokenizer" in err
    path = _save(tmp_path / "ctx.ckpt", model, _spec(byte_tok), context_length=16)
    rc, out, err = _cli(monkeypatch, capsys, path, "--prompt", "x" * 40)
    assert rc == 2 and out == ""
    assert re.search(r"error: the prompt .* is 40 tokens, .* context of 16 tokens.*--window",
                     err), err
    rc, out, err = _cli(monkeypatch, capsys, path, "--prompt", "x" * 40, "--window", "8")
    assert rc == 0 and out, "a window lifts the limit"
    for argv, msg in [((tmp_path / "none.ckpt", "--prompt", "hi"), "file not found"),
                      ((path, "--prompt", " "), "empty prompt"),
                      ((path,), "--prompt is required"),
                      ((path, "--prompt", "hi", "--n-sinks", "2"), "needs a window"),
                      ((path, "--prompt", "hi", "--temperature", "-1"), "--temperature"),
                      ((path, "--prompt", "hi", "--top-p", "0"), "--top-p"),
                      ((path, "--prompt", "hi", "--system", "x"), "--system needs --chat"),
                      ((path, "--prompt", "hi", "--chat"), "chat")]:
        if msg == "chat":     # a tokenizer without a chat template
            spec = {**_spec(byte_tok), "chat_template": None}
            argv = (_save(tmp_path / "nochat.ckpt", model, spec), *argv[1:])
            msg = "no chat template"
        rc, out, err = _cli(monkeypatch, capsys, *argv)
        assert rc == 2 and err.startswith("error: ") and msg in err and out == "", (argv, err)
    with pytest.raises(SystemExit) as e:             # argparse: usage and exit 2
        _cli(monkeypatch, capsys, path, "--prompt", "hi", "--window", "0")
    assert e.value.code == 2 and "--window must be >= 1" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "memarch.generate", str(tmp_path / "none.ckpt"),
                        "--prompt", "hi"], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: checkpoint: file not found")
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_raw_encoder_and_end_of_turn_on_a_bos_adding_tokenizer(ascii_tok):
    """encode() adding BOS/EOS (a post-processor): the chat text is encoded without them
    (the template writes what it needs), and the end-of-turn token is still found."""
    from tokenizers import Tokenizer, processors
    t = Tokenizer.from_str(ascii_tok.to_str())
    t.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A <|im_start|>", special_tokens=[
            ("<|endoftext|>", t.token_to_id("<|endoftext|>")),
            ("<|im_start|>", t.token_to_id("<|im_start|>"))])
    tok = load_tokenizer(_spec(t))
    enc = raw_encoder(tok)
    assert tok.encode("hi")[0] == tok.eos_id and enc("hi") == ascii_tok.encode("hi").ids
    assert enc("<|im_start|>hi") == ascii_tok.encode("<|im_start|>hi").ids
    assert end_of_turn(tok) == (t.token_to_id("<|im_end|>"), "<|im_end|>")
