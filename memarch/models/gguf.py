"""GGUF files (llama.cpp's format) as memarch ``MemLM``s.

    model = from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")                  # exact, fp32
    model = from_gguf(path, window=1024, n_sinks=4, sink_positions="cache")   # StreamingLLM

The file is read with the ``gguf`` package (llama.cpp's own reader): its metadata gives the
config, its tensors are dequantised by ``gguf.dequantize`` (every type that package
dequantises: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, the IQ types ...),
then cast to ``dtype`` (None: float32, where every dequantised value is exact). The metadata
is mapped onto the Hugging Face config keys and tensor names that ``from_hf`` reads, and the
model is assembled by the same code (``memarch.models.hf.build_from_hf_parts``), so every
shape is checked and nothing is approximated:

    {arch}.block_count, embedding_length, feed_forward_length -> layers, d_model, d_hidden
    {arch}.attention.head_count, head_count_kv, key_length    -> heads, KV heads, head dim
    {arch}.attention.layer_norm_rms_epsilon                   -> RMSNorm epsilon
    {arch}.rope.freq_base, rope.scaling.{type,factor}         -> RoPE base and scaling
    {arch}.context_length                                     -> ``model.context_length``
    token_embd / output_norm / output                         -> embed / norm / head
    blk.i.attn_{norm,q,k,v,output}, ffn_{norm,gate,up,down}   -> the block's tensors

Architectures: ``llama`` (Llama 1-3, TinyLlama, SmolLM, Mistral files) and ``qwen2``;
anything else is refused by name. A missing ``output.weight`` means tied embeddings.
llama.cpp's converter permutes the rows of Q and K of ``llama`` files so that its RoPE
rotates adjacent pairs (GPT-J style); ``from_gguf`` undoes it, back to the rotate-half
layout memarch (and Hugging Face) use. ``qwen2`` files are stored unpermuted.

Refused by name: a RoPE that memarch cannot reproduce (a partial rotary dimension, a scaling
type other than none/linear, Llama-3.1's ``rope_freqs`` frequency-factor tensor), mixtures
of experts, per-layer head counts, a tensor type ``gguf`` cannot dequantise, and a
truncated or malformed file. Reading runs no code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from memarch.kernels._common import check_int, check_number
from memarch.models.hf import (
    MAX_LAYERS,
    HFConfigError,
    _dtype,
    build_from_hf_parts,
    check_attention_overrides,
    hf_to_memarch_config,
)

__all__ = ["from_gguf", "read_gguf", "gguf_to_hf", "GGUFError", "GGUF_ARCHITECTURES"]

GGUF_ARCHITECTURES = ("llama", "qwen2")


class GGUFError(HFConfigError):
    """A GGUF file memarch cannot load exactly (named in the message)."""


def read_gguf(path: str | os.PathLike):
    """A ``gguf.GGUFReader`` over ``path`` (memory-mapped), or ``GGUFError`` for a file that
    is missing, truncated or not GGUF."""
    try:
        import gguf
    except ImportError:
        raise ImportError("from_gguf needs the gguf package: pip install 'memarch[gguf]'") \
            from None
    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise FileNotFoundError(f"from_gguf: no such file: {p}")
    try:
        reader = gguf.GGUFReader(str(p))
        for t in reader.tensors:                 # the last tensors are the first to go missing
            if t.data_offset + t.n_bytes > reader.data.size:
                raise ValueError(f"tensor {t.name!r} runs past the end of the file")
    except (ValueError, KeyError, IndexError, TypeError, OSError, AssertionError) as e:
        raise GGUFError(f"from_gguf: cannot read {p} as GGUF (truncated or not a GGUF file: "
                        f"{type(e).__name__}: {str(e)[:200]})") from None
    return reader


def _field(reader, key: str, default: Any = ...) -> Any:
    f = reader.fields.get(key)
    if f is None:
        if default is ...:
            raise GGUFError(f"from_gguf: the file has no metadata key {key!r}")
        return default
    return f.contents()


def gguf_to_hf(reader) -> dict:
    """The Hugging Face-style config (``model_type`` llama or qwen2) of a GGUF's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise GGUFError(f"from_gguf: architecture {arch!r} is not supported; supported: "
                        f"{list(GGUF_ARCHITECTURES)}")

    def meta(key, default=...):
        return _field(reader, f"{arch}.{key}", default)

    def meta_int(key, default=..., *, minimum=1, maximum=None):
        """An int metadata value (strict: no bool, float or string), None if absent and
        ``default`` is None."""
        v = meta(key, default)
        if isinstance(v, list):
            raise GGUFError(f"from_gguf: per-layer {arch}.{key} {v[:4]}... is not supported")
        try:
            return check_int("from_gguf", f"{arch}.{key}", v, minimum=minimum,
                             maximum=maximum, none_ok=default is None)
        except ValueError as e:
            raise GGUFError(str(e)) from None

    def meta_number(key, default=..., **kw):
        try:
            return check_number("from_gguf", f"{arch}.{key}", meta(key, default), **kw)
        except ValueError as e:
            raise GGUFError(str(e)) from None

    for key in ("expert_count", "expert_used_count"):
        if meta_int(key, 0, minimum=0):
            raise GGUFError(f"from_gguf: {arch}.{key}={meta(key)}: mixtures of experts are "
                            "not supported")
    heads, kv = meta_int("attention.head_count"), meta_int("attention.head_count_kv", None)
    d = meta_int("embedding_length")
    if kv is not None and heads % kv:
        raise GGUFError(f"from_gguf: {arch}.attention.head_count_kv={kv} must divide "
                        f"{arch}.attention.head_count={heads}")
    if meta("attention.key_length", None) is None and d % heads:
        raise GGUFError(f"from_gguf: {arch}.attention.head_count={heads} must divide "
                        f"{arch}.embedding_length={d} (or the file must give "
                        f"{arch}.attention.key_length)")
    head_dim = meta_int("attention.key_length", d // heads)
    if head_dim % 2:                            # RoPE rotates pairs
        given = (f"{arch}.attention.key_length={head_dim}"
                 if meta("attention.key_length", None) is not None else
                 f"{arch}.embedding_length={d} // {arch}.attention.head_count={heads} = "
                 f"{head_dim}")
        raise GGUFError(f"from_gguf: the head dimension must be even (RoPE rotates pairs), "
                        f"got {given}")
    value_length = meta_int("attention.value_length", head_dim)
    if value_length != head_dim:
        raise GGUFError(f"from_gguf: {arch}.attention.value_length "
                        f"{value_length} != key_length {head_dim} is not supported")
    rot = meta_int("rope.dimension_count", head_dim)
    if rot != head_dim:
        raise GGUFError(f"from_gguf: partial rotary embeddings ({arch}.rope.dimension_count="
                        f"{rot} of head dim {head_dim}) are not supported")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise GGUFError("from_gguf: the rope_freqs tensor (per-frequency RoPE factors, as "
                        "Llama-3.1 files store their llama3 scaling) is not supported")
    kind = meta("rope.scaling.type", "none")
    if not isinstance(kind, str) or kind not in ("none", "linear"):
        raise GGUFError(f"from_gguf: {arch}.rope.scaling.type {kind!r} is not supported "
                        "(none, linear)")
    factor = meta_number("rope.scaling.factor", 1.0, minimum=0, min_open=True)
    scaling = ({"rope_type": "linear", "factor": float(factor)}
               if kind == "linear" and factor != 1.0 else None)
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    vocab = meta_int("vocab_size", None) or (int(emb.shape[-1]) if emb is not None else None)
    hf = {"model_type": arch, "vocab_size": vocab, "hidden_size": d,
          "intermediate_size": meta_int("feed_forward_length"),
          "num_hidden_layers": meta_int("block_count", maximum=MAX_LAYERS),
          "num_attention_heads": heads,
          "num_key_value_heads": kv or heads, "head_dim": head_dim,
          "rms_norm_eps": meta_number("attention.layer_norm_rms_epsilon", minimum=0,
                                      min_open=True),
          "rope_theta": meta_number("rope.freq_base", 10000.0, minimum=1, min_open=True),
          "rope_scaling": scaling,
          "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
          "max_position_embeddings": meta_int("context_length", None)}
    if arch == "qwen2":
        hf["use_sliding_window"] = False
    return hf


_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


def _hf_name(name: str) -> str:
    """The Hugging Face name of a GGUF tensor (unknown names are kept: from_hf's check of
    unexpected tensors then names them)."""
    base, _, kind = name.rpartition(".")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{kind}"
    return name


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: its converter stores, per head, the rows
    [0, 2, 4, ..., 1, 3, 5, ...] interleaved (pairs for GPT-J rotation); memarch rotates
    halves. ``w`` [n_heads * head_dim, ...] (weight or bias)."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _weights(reader, hf: dict) -> dict[str, torch.Tensor]:
    import gguf
    out = {}
    for t in reader.tensors:
        try:
            w = gguf.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise GGUFError(f"from_gguf: tensor {t.name!r} has type {t.tensor_type.name}, "
                            "which the gguf package cannot dequantise") from None
        w = torch.from_numpy(w.astype("float32", copy=False).copy())
        # GGUF lists dims fastest first: [in, out] is a torch [out, in]
        w = w.reshape(tuple(int(n) for n in reversed(t.shape)))
        name = _hf_name(t.name)
        if hf["model_type"] == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = _unpermute(w, hf["num_attention_heads"])
        elif hf["model_type"] == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = _unpermute(w, hf["num_key_value_heads"])
        out[name] = w
    return out


def from_gguf(path: str | os.PathLike, *, dtype=None, d_model: int | None = None,
              **attention_overrides):
    """A ``MemLM`` computing the function of the GGUF model in ``path``.

    Args:
        path: a ``.gguf`` file (architecture ``llama`` or ``qwen2``).
        dtype: the parameters' dtype; None: float32 (dequantised weights are exact there).
        d_model: the width a caller expects (HMT's config passes its own), checked against
            the file's; None: not checked.
        **attention_overrides: ``window``, ``n_sinks``, ``sink_positions``, ``block_size``,
            ``impl`` for every attention layer, as for ``from_hf``.

    The model is in eval mode; ``model.context_length`` is the file's trained context
    (``{arch}.context_length``; None when the file does not say).
    """
    check_attention_overrides(attention_overrides, "from_gguf")
    reader = read_gguf(path)
    model = model_from_reader(reader, gguf_to_hf(reader), dtype=dtype, d_model=d_model,
                              **attention_overrides)
    model._memarch_source = Path(os.path.expanduser(str(path))).resolve()  # never written
    return model


def model_from_reader(reader, hf: dict, *, dtype=None, d_model: int | None = None,
                      **attention_overrides):
    """``from_gguf`` on an open reader whose config ``hf = gguf_to_hf(reader)`` is known
    (the converter reads the file once for the config, the tokenizer and the weights)."""
    dtype = _dtype(dtype) or torch.float32
    cfg = hf_to_memarch_config(hf, d_model=d_model, **attention_overrides)   # before weights
    model = build_from_hf_parts(hf, cfg, _weights(reader, hf), dtype=dtype,
                                attention_overrides=attention_overrides, owner="from_gguf")
    model.context_length = hf["max_position_embeddings"]
    return model
