"""Tiny GGUF files for tests: ``write_gguf`` writes a random Hugging Face Llama / Qwen2 the
way llama.cpp's converter does (its Q/K row permutation for llama, quantised tensor types)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

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
