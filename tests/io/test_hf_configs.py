"""``hf_to_memarch_config`` on real ``config.json`` files of public checkpoints
(``tests/io/fixtures/hf_configs``, sources in its ``SOURCES.md``): each is accepted and builds
the matching MemLM (on the meta device: no weights), or is refused for a feature memarch
really lacks. Plus the key classification: metadata is ignored (one debug line), keys that
change the function are refused by name, ``auto_map`` (custom code) is refused."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from memarch.config import instantiate
from memarch.models.hf import HFConfigError, hf_to_memarch_config

FIXTURES = Path(__file__).parent / "fixtures" / "hf_configs"

# The expected outcome per fixture: None = accepted, else a pattern the HFConfigError's
# message must match (naming what memarch does not support).
EXPECTED = {
    "HuggingFaceTB__SmolLM2-135M": None,
    "TinyLlama__TinyLlama-1.1B-Chat-v1.0": None,
    "meta-llama__Llama-3.2-1B": None,
    "Qwen__Qwen2-0.5B": None,
    "Qwen__Qwen2.5-0.5B": None,
    "Qwen__Qwen2.5-0.5B-Instruct": None,
    "Qwen__Qwen2.5-1.5B-Instruct": None,
    "Qwen__Qwen2.5-Coder-0.5B-Instruct": None,
    "deepseek-ai__DeepSeek-R1-Distill-Qwen-1.5B":
        r"auto_map .*modeling_qwen2\.Qwen2ForCausalLM.* names custom modeling code, which "
        r"memarch does not run",
}


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_every_fixture_has_an_expected_outcome_and_a_source():
    names = {p.stem for p in FIXTURES.glob("*.json")}
    assert names == set(EXPECTED)
    sources = (FIXTURES / "SOURCES.md").read_text().splitlines()
    for name in sorted(names):
        digest = hashlib.sha256((FIXTURES / f"{name}.json").read_bytes()).hexdigest()
        rows = [line for line in sources if f"`{name}.json`" in line]
        assert len(rows) == 1 and digest in rows[0], \
            f"{name}.json changed or is not listed in SOURCES.md (sha256 {digest})"


def _rope_base(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_config(name):
    hf = _fixture(name)
    if EXPECTED[name] is not None:
        with pytest.raises(HFConfigError, match=EXPECTED[name]):
            hf_to_memarch_config(hf)
        return
    cfg = hf_to_memarch_config(hf)
    with torch.device("meta"):
        model = instantiate(cfg)
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    Hkv = hf.get("num_key_value_heads") or H
    Dh = hf.get("head_dim") or D // H
    assert len(model.blocks) == hf["num_hidden_layers"]
    assert model.vocab_size == hf["vocab_size"]
    assert tuple(model.embed.weight.shape) == (hf["vocab_size"], D)
    # every fixture names tie_word_embeddings itself (no default involved)
    assert (model.head.weight is model.embed.weight) is hf["tie_word_embeddings"]
    assert model.init_kwargs["norm_eps"] == hf["rms_norm_eps"]
    scaling = hf.get("rope_scaling")
    for b in model.blocks:
        attn = b.mixer
        assert (attn.n_heads, attn.n_kv_heads, attn.head_dim) == (H, Hkv, Dh)
        assert tuple(attn.q_proj.weight.shape) == (H * Dh, D)
        assert tuple(attn.kv_proj.weight.shape) == (2 * Hkv * Dh, D)
        assert (attn.q_proj.bias is not None) is (hf["model_type"] == "qwen2")
        assert attn.rotary.base == _rope_base(hf)
        assert attn.rotary.scaling == (scaling or None)
        # none of these uses sliding windows (Llama; Qwen2 with use_sliding_window false)
        assert not hf.get("use_sliding_window") and attn.window is None
        assert tuple(b.mlp.w1.weight.shape) == (hf["intermediate_size"], D)


# -- the key classification -----------------------------------------------------------------
# a small Llama config with only keys that change the function
BASE = {"model_type": "llama", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}
METADATA = {
    "_name_or_path": "HuggingFaceTB/SmolLM2-135M", "_model_name_or_path": "local/dir",
    "_commit_hash": "abc", "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16",
    "dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True,
    "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": None, "unk_token_id": 0,
    "suppress_token_ids": [5], "bos_token": "<s>", "eos_token": "</s>",
    "max_position_embeddings": 8192, "temperature": 0.7, "top_p": 0.9, "pretraining_tp": 1,
    "initializer_range": 0.02, "model_name": "smol", "is_llama_config": True,
    "transformers.js_config": {"kv_cache_dtype": {"fp16": "float16"}},
}


def test_metadata_is_ignored_with_one_debug_line(caplog):
    with caplog.at_level(logging.DEBUG, logger="memarch.models.hf"):
        cfg = hf_to_memarch_config({**BASE, **METADATA})
    assert cfg == hf_to_memarch_config(BASE)
    lines = [r.getMessage() for r in caplog.records if r.name == "memarch.models.hf"]
    assert len(lines) == 1 and "ignoring metadata config keys" in lines[0]
    assert str(sorted(METADATA)) in lines[0]


def test_no_debug_line_without_metadata(caplog):
    with caplog.at_level(logging.DEBUG, logger="memarch.models.hf"):
        hf_to_memarch_config(BASE)
    assert not [r for r in caplog.records if r.name == "memarch.models.hf"]


def test_name_or_path_and_unk_token_id_are_accepted():
    """What transformers writes into a SmolLM2 folder it saved."""
    cfg = hf_to_memarch_config({**BASE, "_model_name_or_path": "HuggingFaceTB/SmolLM2-135M",
                                "_name_or_path": "HuggingFaceTB/SmolLM2-135M",
                                "unk_token_id": 0})
    assert cfg == hf_to_memarch_config(BASE)


def test_auto_map_is_refused_as_custom_code():
    auto_map = {"AutoConfig": "configuration_x.XConfig",
                "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    with pytest.raises(HFConfigError, match=r"auto_map .*modeling_x\.XForCausalLM.* names "
                                            r"custom modeling code, which memarch does not run"):
        hf_to_memarch_config({**BASE, "auto_map": auto_map})
    assert hf_to_memarch_config({**BASE, "auto_map": {}}) == hf_to_memarch_config(BASE)


@pytest.mark.parametrize("key, value", [
    ("qk_layernorm", True), ("embedding_multiplier", 12.0), ("sliding_window_size", 4096),
    ("num_experts", 8),
])
def test_unknown_functional_key_is_refused_by_name(key, value):
    with pytest.raises(HFConfigError, match=rf"config keys \['{key}'\] are not supported for "
                                            r"model_type 'llama'"):
        hf_to_memarch_config({**BASE, key: value})


def test_quantization_config_refused_unless_null():
    with pytest.raises(HFConfigError, match="quantized checkpoints"):
        hf_to_memarch_config({**BASE, "quantization_config": {"quant_method": "awq"}})
    assert hf_to_memarch_config({**BASE, "quantization_config": None}) == \
        hf_to_memarch_config(BASE)


def test_rope_interleaved_only_false():
    assert hf_to_memarch_config({**BASE, "rope_interleaved": False}) == \
        hf_to_memarch_config(BASE)
    with pytest.raises(HFConfigError, match="rope_interleaved=true"):
        hf_to_memarch_config({**BASE, "rope_interleaved": True})
