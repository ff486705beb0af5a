"""``memarch.models.from_gguf`` on tiny GGUF files written here with the ``gguf`` package:
a random Hugging Face Llama / Qwen2 is written the way llama.cpp's converter writes it (its
Q/K row permutation for llama, quantised tensor types), and the memarch model read back must
compute the Hugging Face model's logits (with the dequantised weights). Errors name the
problem and nothing is half-built. The real model's checks are in ``test_real_model.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hf_helpers import hf_model

gguf = pytest.importorskip("gguf")

from gguf_helpers import write_gguf  # noqa: E402

from memarch.models.gguf import GGUFError, from_gguf  # noqa: E402
from memarch.models.hf import HFConfigError  # noqa: E402

Q = gguf.GGMLQuantizationType


def _dequantised_hf(hf, stored):
    """``hf`` with its weights replaced by the stored (dequantised) ones."""
    sd = hf.state_dict()
    hf.load_state_dict({k: stored.get(k, sd[k]) for k in sd})
    if hf.config.tie_word_embeddings:
        hf.tie_weights()
    return hf


CASES = {
    "llama_gqa_f32": ("llama", {}, Q.F32),
    "llama_tied_q8_0": ("llama", {"tie_word_embeddings": True}, Q.Q8_0),
    "llama_f16": ("llama", {}, Q.F16),
    "llama_bf16": ("llama", {}, Q.BF16),
    "qwen2_bias_f32": ("qwen2", {}, Q.F32),
    "qwen2_q4_0": ("qwen2", {}, Q.Q4_0),
    # K-quants work in rows of 256
    "llama_q4_k": ("llama", {"hidden_size": 256, "intermediate_size": 256}, Q.Q4_K),
    "llama_q6_k": ("llama", {"hidden_size": 256, "intermediate_size": 256}, Q.Q6_K),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_equal_the_dequantised_hf_model(case, tmp_path, checks):
    family, kw, qtype = CASES[case]
    hf = hf_model(family, **{"hidden_size": 64, "intermediate_size": 128, **kw})
    stored = write_gguf(hf, tmp_path / "m.gguf", qtype=qtype)
    hf = _dequantised_hf(hf, stored)
    ours = from_gguf(tmp_path / "m.gguf")
    ids = torch.randint(0, hf.config.vocab_size, (2, 37),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids).logits
    checks.true(ref.std() > 0.1, "degenerate logits prove little")
    checks.close(got, ref, atol=1e-5 * ref.abs().max().item(), msg=case)
    checks.true(ours.context_length == 4096)
    checks.true(all(p.dtype == torch.float32 for p in ours.parameters()))


def test_dtype_argument(tmp_path):
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "m.gguf", qtype=Q.Q8_0)
    m = from_gguf(tmp_path / "m.gguf", dtype="bfloat16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="dtype must be one of"):
        from_gguf(tmp_path / "m.gguf", dtype="int8")


def test_attention_overrides(tmp_path):
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "m.gguf")
    m = from_gguf(tmp_path / "m.gguf", window=16, n_sinks=4, sink_positions="cache")
    assert {(b.mixer.window, b.mixer.n_sinks) for b in m.blocks} == {(16, 4)}
    with pytest.raises(TypeError, match="unknown attention override.*'n_heads'"):
        from_gguf(tmp_path / "m.gguf", n_heads=2)


def test_refused_by_name(tmp_path):
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "a.gguf", arch="gemma")
    with pytest.raises(GGUFError, match="architecture 'gemma' is not supported"):
        from_gguf(tmp_path / "a.gguf")
    write_gguf(hf, tmp_path / "b.gguf", extra_meta={"llama.rope.scaling.type": "yarn"})
    with pytest.raises(GGUFError, match="rope.scaling.type 'yarn'"):
        from_gguf(tmp_path / "b.gguf")
    write_gguf(hf, tmp_path / "c.gguf", extra_meta={"llama.expert_count": 8})
    with pytest.raises(GGUFError, match="mixtures of experts"):
        from_gguf(tmp_path / "c.gguf")
    write_gguf(hf, tmp_path / "d.gguf",
               extra_tensors={"rope_freqs.weight": np.ones(4, dtype=np.float32)})
    with pytest.raises(GGUFError, match="rope_freqs"):
        from_gguf(tmp_path / "d.gguf")
    write_gguf(hf, tmp_path / "e.gguf",
               extra_tensors={"blk.0.attn_q_norm.weight": np.ones(8, dtype=np.float32)})
    with pytest.raises(HFConfigError,
                       match="from_gguf: unexpected tensors.*blk.0.attn_q_norm.weight"):
        from_gguf(tmp_path / "e.gguf")


def test_unsupported_tensor_type(tmp_path):
    """A type ``gguf`` cannot dequantise (Q8_1, llama.cpp's internal activation format)."""
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    size = gguf.GGML_QUANT_SIZES[Q.Q8_1][1]
    write_gguf(hf, tmp_path / "q.gguf",
               extra_tensors={"blk.0.extra.weight": (np.zeros((4, size), np.uint8), Q.Q8_1)})
    with pytest.raises(GGUFError, match="'blk.0.extra.weight' has type Q8_1, which the gguf "
                                        "package cannot dequantise"):
        from_gguf(tmp_path / "q.gguf")


def test_truncated_or_not_gguf(tmp_path):
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    for n in (len(data) - 100, len(data) // 2, 100, 3):
        (tmp_path / "t.gguf").write_bytes(data[:n])
        with pytest.raises(GGUFError, match="cannot read .*t.gguf as GGUF"):
            from_gguf(tmp_path / "t.gguf")
    (tmp_path / "x.gguf").write_text("not a gguf file at all")
    with pytest.raises(GGUFError, match="x.gguf as GGUF"):
        from_gguf(tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError, match="no such file"):
        from_gguf(tmp_path / "missing.gguf")


def _convert(tmp_path, src: Path):
    from memarch.convert import main
    return main(["gguf", str(src), str(tmp_path / "out" / "m.ckpt")])


def test_convert_refuses_bad_files_and_writes_nothing(tmp_path, capsys):
    """``python -m memarch.convert gguf``: each bad file is named in one error line, exit 2,
    and no checkpoint (nor its temporary file) is written."""
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "notok.gguf", tokenizer=False)
    write_gguf(hf, tmp_path / "gemma.gguf", arch="gemma")
    size = gguf.GGML_QUANT_SIZES[Q.Q8_1][1]
    write_gguf(hf, tmp_path / "q81.gguf",
               extra_tensors={"blk.0.extra.weight": (np.zeros((4, size), np.uint8), Q.Q8_1)})
    data = (tmp_path / "notok.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) // 2])
    cases = {"notok.gguf": "has no tokenizer", "gemma.gguf": "architecture 'gemma'",
             "cut.gguf": "cut.gguf as GGUF", "missing.gguf": "no such file",
             "q81.gguf": "'blk.0.extra.weight' has type Q8_1"}
    for name, match in cases.items():
        assert _convert(tmp_path, tmp_path / name) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err, (name, err)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_convert_refuses_to_overwrite_its_source(tmp_path, capsys):
    from memarch.convert import main
    hf = hf_model("llama", hidden_size=64, intermediate_size=128)
    write_gguf(hf, tmp_path / "m.gguf")
    before = (tmp_path / "m.gguf").read_bytes()
    assert main(["gguf", str(tmp_path / "m.gguf"), str(tmp_path / "m.gguf")]) == 2
    assert "would overwrite the source" in capsys.readouterr().err
    assert (tmp_path / "m.gguf").read_bytes() == before
