"""Pretrained Hugging Face checkpoints (Llama, Mistral, Qwen2) as memarch ``MemLM``s.

    model = from_hf("path/to/Llama-3.2-1B")                        # exact
    model = from_hf("path/to/Llama-3.2-1B", window=1020, n_sinks=4,
                    sink_positions="cache")                         # StreamingLLM

These three families are MemLM with attention in every layer: RMSNorm pre-norm blocks,
GQA attention with rotate-half RoPE, a SwiGLU MLP and a final RMSNorm. The map is

    model.embed_tokens                          -> embed
    layers.i.input_layernorm / post_attention_  -> blocks.i.norm1 / norm2
    layers.i.self_attn.q_proj, o_proj           -> blocks.i.mixer.q_proj, o_proj
    layers.i.self_attn.[k_proj; v_proj]         -> blocks.i.mixer.kv_proj   (rows stacked)
    layers.i.mlp.gate_proj, up_proj, down_proj  -> blocks.i.mlp.w1, w3, w2
    model.norm, lm_head                         -> norm, head   (head = embed when tied)

Tying follows transformers 5: ``tie_word_embeddings: true`` with an ``lm_head.weight`` of
its own, different from the embedding, loads untied (a warning says so); untied without an
``lm_head.weight`` is refused (transformers would initialise a random head). Shards listed
in ``model.safetensors.index.json`` must be files inside the folder (no absolute path, no
``..``). ``from_hf`` records the folder it read (``model._memarch_source``), and
``memarch.hub.save_pretrained`` refuses to write into it.

and the config keys: ``rms_norm_eps``, ``head_dim``, biases (Llama's ``attention_bias`` and
``mlp_bias``; Qwen2's q/k/v biases without an o bias), ``tie_word_embeddings``, RoPE base
and scaling (``rope_theta`` + ``rope_scaling`` in transformers 4.x files, ``rope_parameters``
in 5.x; types default, linear and llama3), Mistral's ``sliding_window`` (every layer) and
Qwen2's ``use_sliding_window`` / ``layer_types`` (per layer) as ``Attention(window=W)``:
Hugging Face's window keeps key j for query i iff i - W < j <= i, which is memarch's.

Strictness: any other ``model_type``, a config value memarch cannot reproduce (another RoPE
type, partial rotary, an activation other than SiLU, dropout, quantization, a key this
module does not know) and any missing, unexpected or misshapen tensor raise ``HFConfigError``
naming it; so does an ``auto_map`` (custom modeling code, never run). Metadata (names,
``_``-prefixed keys, token ids, dtypes, ``max_position_embeddings``, generation settings:
``_METADATA``) is ignored with one debug log line; keys a config leaves out take the
transformers class's default (``FAMILY_DEFAULTS``). Differences that remain: RoPE angles
are computed in fp64 (transformers: fp32, which drifts by ~1e-3 rad at positions near 1e5,
so long contexts differ slightly; ours are the exact angles), and RMSNorm multiplies its
weight before the cast back to the input dtype (transformers after), so bf16/fp16 runs differ
by rounding; fp32 logits agree to ~1e-6 at short positions (tested to 1e-5).

Reading a directory needs ``safetensors`` only (``config.json`` plus ``model.safetensors``
or a sharded ``model.safetensors.index.json``), never ``transformers``, and runs no code from
the files. An in-memory ``transformers`` model is read through ``config.to_dict()`` and its
``state_dict()``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from memarch.config import instantiate, read_json_object
from memarch.kernels._common import IMPLS

__all__ = ["from_hf", "hf_to_memarch_config", "read_hf_config", "resolve_hf_configs",
           "HFConfigError", "FAMILIES", "ATTENTION_OVERRIDES"]

FAMILIES = ("llama", "mistral", "qwen2")
# Attention kwargs that change no parameter shape: what ``from_hf`` may override
ATTENTION_OVERRIDES = ("window", "n_sinks", "sink_positions", "block_size", "impl")
# the implementations of ``memarch.kernels.sliding_window_attn`` (``Attention(impl=...)``)
log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}

# Keys that do not change the function the checkpoint computes: bookkeeping, limits,
# token ids and generation settings. Besides these names, every key with a leading
# underscore (``_name_or_path``, ``_commit_hash``, ...) and every key ending in
# ``_token_id`` / ``_token_ids`` is metadata (``_metadata_key``). Each is logged (debug)
# and otherwise ignored.
_METADATA = {
    "architectures",          # class names; a head other than lm_head fails the weight check
    "dtype", "torch_dtype",   # storage dtype; ``from_hf`` reads it only to pick a dtype
    "transformers_version", "use_cache", "initializer_range", "tokenizer_class",
    "max_position_embeddings",  # a limit, not a parameter (llama3 RoPE reads it: _rope)
    "pretraining_tp",         # transformers 5 ignores it; in 4.x it only split the matmuls
    # tokens as strings (ids are covered by the suffix rule)
    "bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token",
    "mask_token",
    # names and tool bookkeeping written next to the weights
    "model_name", "unsloth_version",
    "transformers.js_config",  # ONNX runtime hints for transformers.js (kv-cache dtypes)
    "is_llama_config",        # nanotron's export marker (SmolLM); transformers ignores it
    # PretrainedConfig's generic attributes (transformers 4.x wrote them all)
    "id2label", "label2id", "problem_type", "finetuning_task", "task_specific_params",
    "prefix", "return_dict", "output_attentions", "output_hidden_states", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder",
    "chunk_size_feed_forward",  # chunking the MLP over positions computes the same values
    # generation settings
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams",
    "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}
# keys read below (with the value each family accepts)
_READ = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
         "rms_norm_eps", "tie_word_embeddings", "attention_bias", "mlp_bias", "rope_theta",
         "rope_scaling", "rope_parameters", "sliding_window", "use_sliding_window",
         "layer_types", "attention_dropout", "partial_rotary_factor", "use_mrope",
         "max_window_layers",   # Qwen2: first sliding layer; matters only with use_sliding_window
         "rope_interleaved",    # nanotron's (SmolLM): false is rotate-half, what we compute
         "quantization_config", "auto_map"}   # refused unless null / empty


def _metadata_key(key: str) -> bool:
    return key in _METADATA or key.startswith("_") or key.endswith(("_token_id", "_token_ids"))


# transformers' defaults (5.25 config classes; tests/io/test_hf.py checks them) for the keys a
# config.json may leave out
FAMILY_DEFAULTS = {
    "llama": dict(num_key_value_heads=None, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, hidden_act="silu"),
    "mistral": dict(num_key_value_heads=8, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    hidden_act="silu", sliding_window=4096),
    "qwen2": dict(num_key_value_heads=32, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  hidden_act="silu", sliding_window=4096, max_window_layers=28,
                  use_sliding_window=False),
}


class HFConfigError(ValueError):
    """A Hugging Face checkpoint memarch cannot load exactly (named in the message)."""


# -- config ------------------------------------------------------------------------------
def read_hf_config(path: str | os.PathLike) -> dict:
    """``config.json`` of a Hugging Face model directory, as a dict."""
    d = Path(path)
    f = d / "config.json" if d.is_dir() else d
    if not f.is_file():
        raise FileNotFoundError(f"from_hf: no config.json in {d} (expected a Hugging Face "
                                "model directory: config.json plus *.safetensors)")
    return read_json_object(f, owner="from_hf", error=HFConfigError)


def _rope(hf: dict) -> tuple[float, dict | None]:
    """(rope base, scaling dict or None) from either config format. As transformers 5 does,
    a non-empty ``rope_scaling`` wins over ``rope_parameters``; the base comes from the
    parameters, else ``rope_theta``, else 10000 (every family's default)."""
    params, legacy = hf.get("rope_parameters"), hf.get("rope_scaling")
    if isinstance(params, dict) and params and "rope_theta" not in params and \
            isinstance(next(iter(params.values())), dict):
        raise HFConfigError("from_hf: per-layer-type rope_parameters are not supported "
                            f"(got {sorted(params)})")
    if legacy is not None and not isinstance(legacy, dict) or \
            params is not None and not isinstance(params, dict):
        raise HFConfigError(f"from_hf: rope_scaling / rope_parameters must be objects, got "
                            f"{legacy!r} / {params!r}")
    scaling = dict(legacy or params or {})
    base = scaling.pop("rope_theta", None) or (params or {}).get("rope_theta") or \
        hf.get("rope_theta") or 10000.0
    prf = scaling.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if prf not in (None, 1, 1.0):
        raise HFConfigError(f"from_hf: partial_rotary_factor={prf} is not supported (memarch "
                            "rotates the whole head)")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3" and "original_max_position_embeddings" not in scaling:
        if "max_position_embeddings" not in hf:       # transformers' fallback
            raise HFConfigError("from_hf: llama3 rope scaling needs "
                                "'original_max_position_embeddings'")
        scaling["original_max_position_embeddings"] = hf["max_position_embeddings"]
    if kind == "default":
        extra = sorted(set(scaling) - {"rope_type", "type"})
        if extra:
            raise HFConfigError(f"from_hf: unsupported keys {extra} in the default RoPE's "
                                "parameters")
        return float(base), None
    scaling["rope_type"] = scaling.pop("type", kind)
    from memarch.modules.rotary import check_rope_scaling
    try:
        return float(base), check_rope_scaling("from_hf", scaling)
    except ValueError as e:
        raise HFConfigError(str(e)) from None


def _windows(hf: dict, family: str, n_layers: int) -> list[int | None]:
    """The attention window of each layer (None: full attention)."""
    sw = hf.get("sliding_window")
    types = hf.get("layer_types")
    if family in ("llama", "mistral"):       # one rule for every layer
        rule = [None if family == "llama" else sw] * n_layers
        if types is not None and [sw if t == "sliding_attention" else None
                                  for t in types] != rule:
            raise HFConfigError(f"from_hf: layer_types {types!r} are not supported for "
                                f"model_type {family!r} (every layer is "
                                f"{'full' if rule[0] is None else 'sliding'} attention)")
        return rule
    if types is None:                                         # qwen2
        use = hf.get("use_sliding_window")
        first = hf.get("max_window_layers")
        types = ["sliding_attention" if use and sw is not None and i >= first
                 else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers:
        raise HFConfigError(f"from_hf: layer_types must list one type per layer "
                            f"({n_layers}), got {types!r}")
    bad = sorted({t for t in types} - {"full_attention", "sliding_attention"})
    if bad:
        raise HFConfigError(f"from_hf: layer types {bad} are not supported "
                            "(full_attention, sliding_attention)")
    if "sliding_attention" in types and not hf.get("use_sliding_window"):
        types = ["full_attention"] * n_layers                 # transformers ignores them then
    return [sw if t == "sliding_attention" else None for t in types]


def check_attention_overrides(overrides: Mapping[str, Any], owner: str = "from_hf") -> None:
    """Refuse an unknown override name (TypeError) or an ``impl`` that is not one of
    ``IMPLS`` (the kernels' implementations; ValueError); ``Attention`` checks the other
    values itself."""
    bad = sorted(set(overrides) - set(ATTENTION_OVERRIDES))
    if bad:
        raise TypeError(f"{owner}: unknown attention override(s) {bad}; allowed (no parameter "
                        f"shape changes): {list(ATTENTION_OVERRIDES)}")
    impl = overrides.get("impl", "auto")
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{owner}: attention override impl={impl!r} is not an "
                         f"implementation; allowed: {', '.join(map(repr, IMPLS))}")


MAX_LAYERS = 10_000
"""The most layers a config may ask for (the largest checkpoints have ~100): past it
``hf_to_memarch_config`` refuses before building a per-layer list."""

# the type of each value read (strict: no bool where a number is meant, no string, no
# NaN/inf; an int where a float is meant is fine, as JSON writes 10000 for 10000.0)
_INTS = {"num_key_value_heads": (1, True), "head_dim": (1, True),
         "sliding_window": (1, True), "max_window_layers": (0, True)}   # key: (minimum, None ok)
_NUMBERS = {"rms_norm_eps": dict(minimum=0, min_open=True),
            "rope_theta": dict(minimum=1, min_open=True, none_ok=True),
            "partial_rotary_factor": dict(minimum=0, min_open=True, none_ok=True),
            "attention_dropout": dict(minimum=0, none_ok=True)}
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window",
          "rope_interleaved", "use_mrope")
_BOOLS_NOT_NONE = ("tie_word_embeddings", "use_sliding_window")   # null is not false


def _check_values(hf: Mapping[str, Any]) -> None:
    """``HFConfigError`` naming the key for a value of the wrong type or range (the strict
    parser of ``memarch.kernels._common``): ``tie_word_embeddings: "false"`` would otherwise
    be true, ``num_key_value_heads: 0`` the default, ``rope_theta: NaN`` a NaN model."""
    from memarch.kernels._common import check_bool, check_int, check_number
    try:
        for key, (lo, none_ok) in _INTS.items():
            if key in hf:
                check_int("from_hf", f"config {key!r}", hf[key], minimum=lo, none_ok=none_ok)
        for key, kw in _NUMBERS.items():
            if key in hf:
                check_number("from_hf", f"config {key!r}", hf[key], **kw)
        for key in _BOOLS:
            if hf.get(key) is not None or (key in _BOOLS_NOT_NONE and key in hf):
                check_bool("from_hf", f"config {key!r}", hf[key])
    except ValueError as e:
        raise HFConfigError(str(e)) from None
    H, Hkv = hf.get("num_attention_heads"), hf.get("num_key_value_heads")
    if (isinstance(H, int) and not isinstance(H, bool) and H >= 1 and Hkv is not None
            and H % Hkv):
        raise HFConfigError(f"from_hf: config 'num_key_value_heads'={Hkv!r} must divide "
                            f"'num_attention_heads'={H} (grouped-query attention)")
    if hf.get("use_sliding_window") and hf.get("max_window_layers") is None \
            and hf.get("model_type") == "qwen2" and hf.get("layer_types") is None:
        raise HFConfigError("from_hf: config 'max_window_layers' must be an int >= 0 with "
                            "use_sliding_window=true, got None")


def hf_to_memarch_config(hf: Mapping[str, Any], *, d_model: int | None = None,
                         **attention_overrides) -> dict:
    """The memarch model config (``_target_`` format, as in training checkpoints) of a
    Hugging Face Llama / Mistral / Qwen2 config; ``attention_overrides`` (``window``,
    ``n_sinks``, ``sink_positions``, ``block_size``, ``impl``) are set on every layer.
    ``d_model``: the width a caller expects (HMT's config passes its own), checked against
    ``hidden_size``; None: not checked."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise HFConfigError(f"from_hf: model_type {family!r} is not supported; supported: "
                            f"{list(FAMILIES)}")
    if hf.get("auto_map"):
        raise HFConfigError(f"from_hf: the config's auto_map {dict(hf['auto_map'])} names "
                            "custom modeling code, which memarch does not run; it loads only "
                            "the standard Llama / Mistral / Qwen2 architectures")
    if hf.get("quantization_config") is not None:
        raise HFConfigError("from_hf: quantized checkpoints (quantization_config) are not "
                            "supported; load the unquantized weights")
    ignored = sorted(k for k in hf if _metadata_key(k) and k not in _READ)
    unknown = sorted(k for k in hf if not _metadata_key(k) and k not in _READ)
    if unknown:
        raise HFConfigError(f"from_hf: config keys {unknown} are not supported for "
                            f"model_type {family!r} (memarch refuses what it cannot reproduce)")
    if ignored:
        log.debug("from_hf: ignoring metadata config keys %s (they do not change the "
                  "function)", ignored)
    hf = {**FAMILY_DEFAULTS[family], **hf}
    check_attention_overrides(attention_overrides)
    _check_values(hf)

    def need(key):
        v = hf.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HFConfigError(f"from_hf: config {key!r} must be a positive int, got {v!r}")
        return v

    def equal(key, allowed, default):
        v = hf.get(key, default)
        if v not in allowed:
            raise HFConfigError(f"from_hf: {key}={v!r} is not supported (supported: "
                                f"{allowed})")
        return v

    equal("hidden_act", ("silu", "swish"), "silu")
    equal("attention_dropout", (0, 0.0, None), 0.0)
    equal("use_mrope", (False, None), False)
    if hf.get("rope_interleaved"):
        # transformers ignores the key and rotates halves; weights trained with interleaved
        # pairs need their q/k rows permuted first, which a config cannot tell us was done
        raise HFConfigError("from_hf: rope_interleaved=true (RoPE on interleaved pairs) is "
                            "not supported: memarch, like transformers, rotates halves")
    want, (d_model, n_layers, H) = d_model, (need("hidden_size"), need("num_hidden_layers"),
                                             need("num_attention_heads"))
    if n_layers > MAX_LAYERS:            # one list entry (and one block) per layer
        raise HFConfigError(f"from_hf: config 'num_hidden_layers' must be <= {MAX_LAYERS}, "
                            f"got {n_layers}")
    if want is not None and want != d_model:
        raise HFConfigError(f"from_hf: d_model={want} was asked for, but the checkpoint's "
                            f"hidden_size is {d_model} (set d_model to null or {d_model})")
    Hkv = hf.get("num_key_value_heads") or H
    head_dim = hf.get("head_dim") or d_model // H
    if head_dim < 2 or head_dim % 2:            # RoPE rotates pairs
        given = (f"config 'head_dim'={head_dim}" if hf.get("head_dim") else
                 f"config 'hidden_size'={d_model} // 'num_attention_heads'={H} = {head_dim}")
        raise HFConfigError(f"from_hf: the head dimension must be even and >= 2 (RoPE rotates "
                            f"pairs), got {given}")
    if head_dim == d_model // H and d_model % H == 0:
        head_dim = None                                       # the default: not spelled out
    base, scaling = _rope(hf)
    if family == "qwen2":
        bias = dict(qkv_bias=True, o_bias=False)
        equal("attention_bias", (None,), None)
    else:
        bias = dict(bias=bool(equal("attention_bias", (True, False), False)))
    mlp_bias = bool(equal("mlp_bias", (True, False), False)) if family == "llama" else \
        bool(equal("mlp_bias", (False,), False))
    windows = _windows(hf, family, n_layers)
    sw = max((w for w in windows if w is not None), default=None)
    if sw is not None:                  # the window's cache: refused before any allocation
        from memarch.mixers.base import check_scalars
        try:
            check_scalars("from_hf", "state scalars per sequence per layer",
                          2 * Hkv * (head_dim or d_model // H) * (sw - 1),
                          {"sliding_window": sw, "num_key_value_heads": Hkv,
                           "head_dim": head_dim or d_model // H})
        except ValueError as e:
            raise HFConfigError(str(e)) from None
    attn = {"_target_": "memarch.mixers.Attention", "_partial_": True, "n_heads": H,
            "n_kv_heads": Hkv, "rope_base": base, **bias}
    if head_dim is not None:
        attn["head_dim"] = head_dim
    if scaling is not None:
        attn["rope_scaling"] = scaling
    slots, pattern = {}, []
    for w in windows:
        name = "attn" if w is None else "swa"
        if "window" in attention_overrides:                   # one window for every layer
            name = "attn"
        if name not in slots:
            slots[name] = {**attn, "window": w, **attention_overrides}
        pattern.append(name)
    eps = hf.get("rms_norm_eps", 1e-6)
    return {"_target_": "memarch.models.MemLM", "vocab_size": need("vocab_size"),
            "d_model": d_model, "mixers": slots, "layer_pattern": pattern,
            "d_hidden": need("intermediate_size"),
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            "norm_eps": float(eps), "mlp_bias": mlp_bias}


# -- weights -----------------------------------------------------------------------------
def _safetensors_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise HFConfigError(f"from_hf: {index} is not a safetensors index with a "
                                f"'weight_map' ({type(e).__name__}: {e})") from None
        if not isinstance(wm, dict) or not all(isinstance(f, str) for f in wm.values()):
            raise HFConfigError(f"from_hf: {index}: 'weight_map' must map tensor names to "
                                "shard file names")
        for f in dict.fromkeys(wm.values()):
            _check_shard_name(f, d, index)
        files = [d / f for f in dict.fromkeys(wm.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"from_hf: shard(s) {missing} listed in {index} are "
                                    f"missing from {d}")
        return files
    single = d / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt"))
    hint = (f"; found {found}: pickled weights are not read (they can run code), convert "
            "them to safetensors first") if found else ""
    raise FileNotFoundError(f"from_hf: no model.safetensors or model.safetensors.index.json "
                            f"in {d}{hint}")


def _check_shard_name(name: str, d: Path, index: Path) -> None:
    """A shard must be a file inside the model folder: no absolute path, no ``..`` (the
    names are taken as written, so the symlinks of a Hugging Face cache snapshot still
    work)."""
    p = Path(name)
    if not name or p.is_absolute() or p.drive or ".." in p.parts or "\\" in name:
        raise HFConfigError(f"from_hf: shard {name!r} listed in {index} lies outside the "
                            f"model folder {d}; shards must be files inside it")


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    out = {}
    for f in _safetensors_files(d):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    out[k] = fh.get_tensor(k)
        except Exception as e:   # safetensors raises its own error types
            raise HFConfigError(f"from_hf: cannot read {f}: {type(e).__name__}: {e}") from None
    return out


def _hf_to_memarch_weights(w: dict[str, torch.Tensor], n_layers: int, tied: bool,
                           owner: str = "from_hf"):
    """Rename (and stack k/v) Hugging Face tensors into a MemLM state dict; every tensor of
    ``w`` must be used (or be a known derived buffer). Returns (state dict, memarch name ->
    the Hugging Face name(s) it came from)."""
    name = {k.removeprefix("model."): k for k in w}           # our short name -> file's name
    w = {k.removeprefix("model."): v for k, v in w.items()}
    sd, used, origin = {}, set(), {}

    def take(src, dst, required=True):
        if src in w:
            sd[dst], origin[dst] = w[src], name[src]
            used.add(src)
        elif required:
            hint = (" (the config does not tie the embeddings, tie_word_embeddings: false, so "
                    "the head needs its own weights; transformers would initialise it at "
                    "random)") if src == "lm_head.weight" else ""
            raise HFConfigError(f"{owner}: tensor {'model.' * (src != 'lm_head.weight')}"
                                f"{src!r} is missing from the checkpoint{hint}")

    take("embed_tokens.weight", "embed.weight")
    take("norm.weight", "norm.weight")
    if tied:
        used.add("lm_head.weight")            # the head is the embedding
    else:
        take("lm_head.weight", "head.weight")
    for i in range(n_layers):
        p, q = f"layers.{i}.", f"blocks.{i}."
        take(p + "input_layernorm.weight", q + "norm1.weight")
        take(p + "post_attention_layernorm.weight", q + "norm2.weight")
        for src, dst in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
            for kind in ("weight", "bias"):
                take(f"{p}mlp.{src}.{kind}", f"{q}mlp.{dst}.{kind}", kind == "weight")
        for src in ("q_proj", "o_proj"):
            for kind in ("weight", "bias"):
                take(f"{p}self_attn.{src}.{kind}", f"{q}mixer.{src}.{kind}", kind == "weight")
        for kind in ("weight", "bias"):
            kk, vk = f"{p}self_attn.k_proj.{kind}", f"{p}self_attn.v_proj.{kind}"
            if kind == "weight" or kk in w or vk in w:
                for key in (kk, vk):
                    if key not in w:
                        raise HFConfigError(f"{owner}: tensor 'model.{key}' is missing from "
                                            "the checkpoint")
                if w[kk].shape != w[vk].shape:
                    raise HFConfigError(f"{owner}: {name[kk]} {tuple(w[kk].shape)} and "
                                        f"{name[vk]} {tuple(w[vk].shape)} differ in shape")
                sd[f"{q}mixer.kv_proj.{kind}"] = torch.cat([w[kk], w[vk]], 0)
                origin[f"{q}mixer.kv_proj.{kind}"] = f"{name[kk]} + v_proj (stacked)"
                used.update((kk, vk))
        used.add(p + "self_attn.rotary_emb.inv_freq")   # old files: derived from the config
    extra = sorted(name[k] for k in set(w) - used)
    if extra:
        raise HFConfigError(f"{owner}: unexpected tensors in the checkpoint: {extra[:8]}"
                            f"{' ...' if len(extra) > 8 else ''} (not part of a "
                            "Llama/Mistral/Qwen2 model with this config)")
    return sd, origin


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"from_hf: dtype must be one of {list(DTYPES)} (or None: the stored "
                     f"dtype), got {dtype!r}")


def from_hf(path_or_model, *, dtype=None, d_model: int | None = None, **attention_overrides):
    """A ``MemLM`` computing the same logits as a Hugging Face Llama / Mistral / Qwen2.

    Args:
        path_or_model: a local directory (``config.json`` + safetensors, sharded or not) or
            an in-memory ``transformers`` causal-LM model.
        dtype: parameter dtype (``torch.float32``/``"bfloat16"``/...); None keeps the stored
            dtype (the checkpoint's ``dtype``/``torch_dtype`` if its tensors differ).
        **attention_overrides: ``window``, ``n_sinks``, ``sink_positions``, ``block_size``,
            ``impl`` for every attention layer (e.g. ``window=1020, n_sinks=4,
            sink_positions="cache"``: StreamingLLM on the pretrained model).

    The returned model is in eval mode; ``model.init_kwargs`` holds its memarch config.
    """
    dtype = _dtype(dtype)
    if isinstance(path_or_model, (str, os.PathLike)):
        d = Path(os.path.expanduser(str(path_or_model)))
        if not d.is_dir():
            raise FileNotFoundError(f"from_hf: {d} is not a directory (expected a Hugging Face "
                                    "model directory: config.json plus *.safetensors)")
        hf = read_hf_config(d)
        cfg = hf_to_memarch_config(hf, d_model=d_model, **attention_overrides)  # before reading
        weights = _read_weights(d)
        model = build_from_hf_parts(hf, cfg, weights, dtype=dtype,
                                    attention_overrides=attention_overrides)
        model._memarch_source = d.resolve()   # save_pretrained never writes into it
        return model
    elif hasattr(path_or_model, "config") and hasattr(path_or_model, "state_dict"):
        hf = path_or_model.config.to_dict()
        cfg = hf_to_memarch_config(hf, d_model=d_model, **attention_overrides)
        # copies: the memarch model must not share storage with the transformers one
        weights = {k: v.detach().clone() for k, v in path_or_model.state_dict().items()}
    else:
        raise TypeError(f"from_hf: expected a directory path or a transformers model, got "
                        f"{type(path_or_model).__name__}")
    return build_from_hf_parts(hf, cfg, weights, dtype=dtype,
                               attention_overrides=attention_overrides)


def _separate_head(weights: Mapping[str, torch.Tensor]) -> bool:
    """True when ``weights`` hold an ``lm_head.weight`` that is not the embedding: then
    transformers (5.x) does not tie them, whatever ``tie_word_embeddings`` says."""
    head = weights.get("lm_head.weight")
    emb = weights.get("model.embed_tokens.weight", weights.get("embed_tokens.weight"))
    if head is None or emb is None:
        return False
    return head.shape != emb.shape or not torch.equal(head, emb.to(head.dtype))


def _file_tie(hf: dict, d: Path) -> dict:
    """``hf`` with ``tie_word_embeddings`` false when the folder's files hold an lm_head
    different from the embedding (read: those two tensors only)."""
    if not hf.get("tie_word_embeddings"):
        return hf
    from safetensors import safe_open
    found = {}
    try:
        for f in _safetensors_files(d):
            with safe_open(str(f), framework="pt") as fh:
                names = set(fh.keys())
                for k in ("lm_head.weight", "model.embed_tokens.weight"):
                    if k in names:
                        found[k] = fh.get_tensor(k)
    except Exception:   # noqa: BLE001 - unreadable files are reported when weights load
        return hf
    return {**hf, "tie_word_embeddings": False} if _separate_head(found) else hf


def build_from_hf_parts(hf: dict, cfg: dict, weights: dict[str, torch.Tensor], *, dtype=None,
                        attention_overrides: Mapping[str, Any] | None = None,
                        owner: str = "from_hf"):
    """The ``MemLM`` of memarch config ``cfg`` (from ``hf_to_memarch_config(hf)``) with the
    Hugging Face-named ``weights``, every tensor checked against the config's shapes (the
    step ``from_hf`` and ``from_gguf`` share). In eval mode; one token is run to prove that
    the dtype and implementation work here."""
    attention_overrides = dict(attention_overrides or {})
    if cfg["tie_embeddings"] and _separate_head(weights):
        log.warning("%s: the config ties the embeddings (tie_word_embeddings), but the "
                    "checkpoint has its own lm_head.weight, different from the embedding; "
                    "it is used, untied, as transformers does", owner)
        cfg = {**cfg, "tie_embeddings": False}
    sd, origin = _hf_to_memarch_weights(weights, len(cfg["layer_pattern"]),
                                        cfg["tie_embeddings"], owner)
    if dtype is None:
        kinds = {t.dtype for t in sd.values()}
        stored = _dtype(hf.get("dtype") or hf.get("torch_dtype")) if len(kinds) > 1 else None
        dtype = stored or next(iter(kinds))
    with torch.device("meta"):
        model = instantiate(cfg)
    expect = model.state_dict()
    for k, v in sd.items():
        if k not in expect:
            raise HFConfigError(f"{owner}: tensor for {k!r} has no place in the model")
        if tuple(v.shape) != tuple(expect[k].shape):
            raise HFConfigError(f"{owner}: tensor {origin[k]} has shape {tuple(v.shape)}, but "
                                f"the config makes {tuple(expect[k].shape)} (memarch's {k})")
    missing = sorted(set(expect) - set(sd) - ({"head.weight"} if cfg["tie_embeddings"]
                                              else set()))
    if missing:
        raise HFConfigError(f"{owner}: the checkpoint has no tensors for {missing[:8]}")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False, assign=True)
    if cfg["tie_embeddings"]:
        model.head.weight = model.embed.weight
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise HFConfigError(f"{owner}: no weights were loaded for {left}")
    model.eval()
    if attention_overrides.get("impl") == "triton":   # compiled for CUDA: checked, not run
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise HFConfigError(f"{owner}: impl='triton' runs fp16/bf16/fp32, not dtype="
                                f"{dtype}")
        return model
    try:                 # one token: the dtype / implementation runs here, or say so now
        with torch.no_grad():
            model(torch.zeros(1, 1, dtype=torch.long, device=model.embed.weight.device))
    except Exception as e:  # noqa: BLE001 - re-raised with what was asked for
        raise HFConfigError(
            f"{owner}: the model cannot run with dtype={dtype} and attention options "
            f"{attention_overrides or {}} on {model.embed.weight.device} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    return model


FROM_HF_TARGETS = ("memarch.models.from_hf", "memarch.models.hf.from_hf")
FROM_GGUF_TARGETS = ("memarch.models.from_gguf", "memarch.models.gguf.from_gguf")


def resolve_hf_configs(cfg: Any) -> Any:
    """``cfg`` (a model config, plain containers) with every ``from_hf`` / ``from_gguf``
    node, e.g. HMT's ``backbone: {_target_: memarch.models.from_hf, path_or_model: PATH,
    window: W}``, replaced by the MemLM config it builds (read from ``PATH/config.json`` or
    the GGUF's metadata; no weights). Training checkpoints store this form: they rebuild
    without the pretrained files (the weights are in the checkpoint) and through the
    allow-list, which builds modules only."""
    if isinstance(cfg, list):
        return [resolve_hf_configs(c) for c in cfg]
    if not isinstance(cfg, dict):
        return cfg
    target = cfg.get("_target_")
    if target in FROM_HF_TARGETS or target in FROM_GGUF_TARGETS:
        kw = {k: v for k, v in cfg.items() if not (k.startswith("_") and k.endswith("_"))}
        key = "path_or_model" if target in FROM_HF_TARGETS else "path"
        path = kw.pop(key, None)
        kw.pop("dtype", None)
        if not isinstance(path, (str, os.PathLike)):
            raise HFConfigError(f"{target} in a config needs {key}: a local "
                                f"{'directory' if key == 'path_or_model' else '.gguf file'}, "
                                f"got {path!r}")
        if target in FROM_HF_TARGETS:
            d = Path(os.path.expanduser(str(path)))
            return hf_to_memarch_config(_file_tie(read_hf_config(d), d), **kw)
        from memarch.models.gguf import gguf_to_hf, read_gguf
        return hf_to_memarch_config(gguf_to_hf(read_gguf(path)), **kw)
    return {k: resolve_hf_configs(v) for k, v in cfg.items()}
