"""The real pretrained model (SmolLM2-135M-Instruct, the GGUF of ``make real-model``) in
memarch, against transformers' own GGUF loader of the same file: logits, greedy decoding,
``from_hf`` on the folder transformers writes, the converter and the chat CLI.

Marked ``real``; without the file (``make real-model``) every test here skips, saying so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_helpers import import_transformers

from memarch.checkpoint import TOKENIZER_KEY, load
from memarch.convert import CONVERTED_KEY
from memarch.convert import main as convert_main
from memarch.data.text import KJV, read_text
from memarch.generation import generate
from memarch.models import from_hf

pytestmark = pytest.mark.real
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gguf_path(real_model_file) -> Path:
    return real_model_file


@pytest.fixture(scope="module")
def theirs(gguf_path):
    """transformers' model from the same GGUF (its own reader and dequantisation), fp32."""
    tf = import_transformers()
    m = tf.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def their_tokenizer(gguf_path):
    tf = import_transformers()
    return tf.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def ours(real_model):
    return real_model


@pytest.fixture(scope="module")
def kjv_ids(their_tokenizer) -> torch.Tensor:
    """[1, 512] tokens of the shipped KJV text (from Genesis 2 on: not the file's start)."""
    text = read_text(KJV)[5000:40000]
    return torch.tensor([their_tokenizer(text)["input_ids"][:512]])


def test_logits_match_transformers(ours, theirs, kjv_ids):
    """fp32 over 512 tokens: max |dlogit| <= 1e-4 of the logits' scale."""
    with torch.no_grad():
        ref, got = theirs(kjv_ids).logits, ours(kjv_ids).logits
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    print(f"\nmax |dlogit| {err:.3g} at logit scale {scale:.3g} ({err / scale:.2g} of scale)")
    assert scale > 10, "degenerate logits prove little"
    assert err <= 1e-4 * scale


def test_greedy_decoding_matches_transformers(ours, theirs, kjv_ids):
    """64 greedy tokens after 200 tokens: memarch's chunked prefill (chunks of 48) and
    one-token decode vs transformers' generate with its own cache."""
    prompt = kjv_ids[:, :200]
    with torch.no_grad():
        ref = theirs.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                              pad_token_id=0)[:, prompt.shape[1]:]
    got = generate(ours, prompt, 64, chunk_size=48).tokens
    assert ref.shape == got.shape == (1, 64)
    assert len(set(ref[0].tolist())) >= 10, "degenerate continuation: it would prove little"
    assert torch.equal(got, ref), f"first difference at {(got != ref).nonzero()[:1].tolist()}"


def test_from_hf_on_the_folder_transformers_writes_is_bitwise_from_gguf(theirs, ours, tmp_path):
    """transformers refuses to save its GGUF-flagged model; its state dict in a plain
    LlamaForCausalLM saves as an ordinary folder (config.json with the metadata keys real
    configs carry), which ``from_hf`` reads into the same weights as ``from_gguf``."""
    tf = import_transformers()
    cfg = theirs.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg))
    plain.load_state_dict(theirs.state_dict())
    plain.save_pretrained(tmp_path / "smollm2")
    via_hf = from_hf(tmp_path / "smollm2").state_dict()
    via_gguf = ours.state_dict()
    assert via_hf.keys() == via_gguf.keys()
    for k in via_gguf:
        assert via_hf[k].dtype == via_gguf[k].dtype and torch.equal(via_hf[k], via_gguf[k]), k


@pytest.fixture(scope="module")
def converted(real_checkpoint) -> Path:
    return real_checkpoint


def test_converted_checkpoint(converted, ours):
    loaded = load(converted)
    sd, ref = loaded.model.state_dict(), ours.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    ck = loaded.checkpoint
    assert ck[CONVERTED_KEY]["context_length"] == 8192
    assert "<|im_start|>" in ck[TOKENIZER_KEY]["chat_template"]


def test_chat_answers_the_capital_question(converted):
    r = subprocess.run([sys.executable, "-m", "memarch.generate", str(converted), "--chat",
                        "--prompt", "What is the capital of France?", "--max-new-tokens", "24"],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                       check=False,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout


def test_convert_errors_write_nothing(gguf_path, tmp_path, capsys):
    """A truncated GGUF is refused naming the file; nothing is written."""
    with open(gguf_path, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(gguf_path.stat().st_size // 3))
    assert convert_main(["gguf", str(tmp_path / "cut.gguf"), str(tmp_path / "out.ckpt")]) == 2
    assert "cut.gguf as GGUF" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]
