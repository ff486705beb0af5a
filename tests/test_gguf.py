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

from memarch.models.gguf import GGUFError, from_gguf  # noqa: E402
from memarch.models.hf import HFConfigError  # noqa: E402

Q = gguf.GGMLQuantizationType


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf ``LlamaModel.permute`` (written from its definition:
    rows per head reordered so that rotation pairs are adjacent)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _quantize(a: np.ndarray, qtype) -> np.ndarray:
    """``a`` [rows, cols] in ``qtype`` (raw bytes per row). ``gguf`` cannot quantise the
    K-quants, so those get random blocks with small scales: the test needs a file of that
    type, not a good approximation of ``a``."""
    if qtype not in (Q.Q4_K, Q.Q6_K):
        return gguf.quantize(a, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(0).integers(0, 256, (a.shape[0], a.shape[1] // block, size),
                                            dtype=np.uint8)
    d = np.frombuffer(np.float16(2e-4).tobytes(), np.uint8)
    if qtype == Q.Q4_K:                   # d, dmin (fp16), then scales and quants
        raw[..., 0:2], raw[..., 2:4] = d, d
    else:                                 # Q6_K: ql, qh, scales, then d (fp16)
        raw[..., size - 2:] = d
    return raw.reshape(a.shape[0], -1)


_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
          "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def write_gguf(hf, path: Path, *, arch: str | None = None, qtype=Q.F32, tokenizer=True,
               extra_meta=None, extra_tensors=None) -> dict:
    """Write ``hf`` (a transformers Llama / Qwen2) as llama.cpp would; returns its weights
    as the file holds them once dequantised (Hugging Face names and layout)."""
    c = hf.config
    arch = arch or c.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(4096)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    for k, v in (extra_meta or {}).items():
        w.add_string(k, v) if isinstance(v, str) else w.add_uint32(k, v)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    stored = {}
    for name, t in hf.state_dict().items():
        a = t.detach().float().numpy()
        raw = _quantize(a, qtype) if a.ndim == 2 and qtype != Q.F32 else a
        stored[name] = torch.from_numpy(
            gguf.dequantize(raw, qtype).reshape(a.shape).copy() if raw is not a else a.copy())
        if name.startswith("model.layers."):
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            mod, kind = rest.rsplit(".", 1)
            g = f"blk.{i}.{_NAMES[mod]}.{kind}"
            heads = {"self_attn.q_proj": c.num_attention_heads,
                     "self_attn.k_proj": c.num_key_value_heads}.get(mod)
            if arch == "llama" and heads:    # blocks lie within rows: permute stored rows
                raw = _permute(torch.from_numpy(raw), heads).numpy()
        else:
            g = {"model.embed_tokens.weight": "token_embd.weight",
                 "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}[name]
            if g == "output.weight" and c.tie_word_embeddings:
                continue
        w.add_tensor(g, raw, raw_dtype=qtype if raw is not a and raw.dtype == np.uint8 else None)
    for g, a in (extra_tensors or {}).items():       # an array, or (raw bytes, type)
        w.add_tensor(g, a[0], raw_dtype=a[1]) if isinstance(a, tuple) else w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


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
