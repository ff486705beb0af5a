"""``memarch.models.from_hf`` against ``transformers`` (offline: random models built from
configs here): logits in fp32, greedy generation, both config formats, shards, errors,
and StreamingLLM on a converted model."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from hf_helpers import hf_model, import_transformers

from memarch.generation import generate, stream
from memarch.models import from_hf
from memarch.models.hf import HFConfigError

import_transformers()

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
CASES = {
    "llama": ("llama", {}),
    "llama_llama3_rope": ("llama", dict(rope_parameters={"rope_theta": 5e5, **LLAMA3})),
    "llama_linear_rope": ("llama", dict(rope_parameters={"rope_theta": 1e4,
                                                         "rope_type": "linear",
                                                         "factor": 4.0})),
    "llama_biases_head_dim": ("llama", dict(attention_bias=True, mlp_bias=True, head_dim=16)),
    "mistral_window": ("mistral", dict(sliding_window=8)),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen2_window_layers": ("qwen2", dict(use_sliding_window=True, sliding_window=8,
                                          max_window_layers=1)),
}
T = 40     # longer than every window above, and than llama3's original context


def _save(model, tmp_path: Path, **kw) -> Path:
    d = tmp_path / "hf"
    model.save_pretrained(d, **kw)
    return d


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _close(actual, expected, what):
    """fp32 agreement to 1e-5 relative to the logits' scale."""
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max |diff| {err:.3g} > 1e-5 * {scale:.3g}"
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    family, kw = CASES[case]
    hf = hf_model(family, **kw)
    ids = torch.randint(0, 97, (2, T), generator=torch.Generator().manual_seed(1))
    ref = _logits(hf, ids)
    ours = from_hf(_save(hf, tmp_path))
    assert next(ours.parameters()).dtype == torch.float32
    _close(_logits(ours, ids), ref, case)
    _close(_logits(from_hf(hf), ids), ref, f"{case} (in-memory model)")
    if kw.get("tie_word_embeddings"):
        assert ours.head.weight is ours.embed.weight
    # the feature under test matters: dropping it moves the logits well past the tolerance
    plain = {"llama_llama3_rope": "rope_scaling", "llama_linear_rope": "rope_scaling",
             "mistral_window": "window", "qwen2_window_layers": "window"}.get(case)
    if plain:
        cfg = dict(ours.init_kwargs)
        cfg["mixers"] = {k: partial(v.func, **{**v.keywords, plain: None})
                         for k, v in ours.init_kwargs["mixers"].items()}
        other = type(ours)(**cfg)
        other.load_state_dict(ours.state_dict())
        diff = (_logits(other.eval(), ids) - ref).abs().max().item()
        assert diff > 1e-3 * ref.abs().max().item(), f"{case}: {plain} has no effect"


def test_window_layers_follow_layer_types(tmp_path):
    ours = from_hf(_save(hf_model("qwen2", use_sliding_window=True, sliding_window=8,
                                  max_window_layers=1), tmp_path))
    assert [b.mixer.window for b in ours.blocks] == [None, 8]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_generation_matches_transformers(case, tmp_path):
    """64 greedy tokens: memarch's chunked prefill + one-token decode vs transformers'
    generate with its own cache."""
    family, kw = CASES[case]
    hf = hf_model(family, **kw)
    prompt = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                          pad_token_id=0)[:, prompt.shape[1]:]
    ours = generate(from_hf(_save(hf, tmp_path)), prompt, 64, chunk_size=8).tokens
    assert ref.shape == ours.shape == (2, 64)
    assert len(set(ref.flatten().tolist())) >= 3, "degenerate reference: it would prove little"
    assert torch.equal(ours, ref), f"first difference at {(ours != ref).nonzero()[:1].tolist()}"


def _to_v4_config(d: Path) -> None:
    """Rewrite a 5.x config.json (``rope_parameters``) in the 4.x format (``rope_theta`` +
    ``rope_scaling`` with ``type``)."""
    f = d / "config.json"
    cfg = json.loads(f.read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    kind = rp.pop("rope_type")
    cfg["rope_scaling"] = None if kind == "default" else {"type": kind, **rp}
    cfg["torch_dtype"] = cfg.pop("dtype")
    f.write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", ["llama", "llama_llama3_rope"])
def test_transformers_4_config_format(case, tmp_path):
    family, kw = CASES[case]
    hf = hf_model(family, **kw)
    d = _save(hf, tmp_path)
    _to_v4_config(d)
    assert "rope_parameters" not in json.loads((d / "config.json").read_text())
    ids = torch.randint(0, 97, (1, T))
    _close(_logits(from_hf(d), ids), _logits(hf, ids), case)


def test_sharded_checkpoint_and_missing_shard(tmp_path):
    hf = hf_model("llama")
    d = _save(hf, tmp_path, max_shard_size="40KB")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    ids = torch.randint(0, 97, (1, 16))
    _close(_logits(from_hf(d), ids), _logits(hf, ids), "sharded")
    (d / shards[-1]).unlink()
    with pytest.raises(FileNotFoundError, match=shards[-1]):
        from_hf(d)


def test_dtype(tmp_path):
    d = _save(hf_model("qwen2"), tmp_path)
    m = from_hf(d, dtype="bfloat16")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert torch.isfinite(m(torch.randint(0, 97, (1, 9))).logits).all()
    for bad in ("int8", torch.int32, "float8"):
        with pytest.raises(ValueError, match="dtype must be one of"):
            from_hf(d, dtype=bad)
    # a dtype the chosen op cannot run: refused at load time, not at the first call
    with pytest.raises(HFConfigError, match="impl='triton' runs fp16/bf16/fp32, not dtype="
                                            "torch.float64"):
        from_hf(d, dtype="float64", window=8, impl="triton")
    assert from_hf(d, dtype="float64", window=8, impl="torch").embed.weight.dtype == \
        torch.float64


def test_in_memory_model_is_copied():
    hf = hf_model("llama")
    ours = from_hf(hf)
    with torch.no_grad():
        ours.blocks[0].mixer.q_proj.weight.zero_()
    assert hf.model.layers[0].self_attn.q_proj.weight.abs().sum() > 0


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_defaults_for_missing_keys_are_transformers(family):
    """Keys a config.json may leave out take the transformers config class's default."""
    from hf_helpers import FAMILY

    from memarch.models.hf import FAMILY_DEFAULTS
    cls = getattr(import_transformers(), FAMILY[family][0])
    for key, value in FAMILY_DEFAULTS[family].items():
        assert getattr(cls, key) == value, (family, key)


def test_missing_sliding_window_takes_the_family_default(tmp_path):
    d = _save(hf_model("mistral", sliding_window=8), tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["sliding_window"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert [b.mixer.window for b in from_hf(d).blocks] == [4096, 4096]


def test_rope_scaling_wins_over_rope_parameters(tmp_path):
    """transformers 5: ``rope_parameters = rope_scaling or rope_parameters``."""
    d = _save(hf_model("llama"), tmp_path)
    _edit(d, rope_scaling={"rope_type": "linear", "factor": 4.0})
    ours = from_hf(d)
    assert ours.blocks[0].mixer.rotary.scaling == {"rope_type": "linear", "factor": 4.0}
    theirs = import_transformers().AutoModelForCausalLM.from_pretrained(d).eval()
    ids = torch.randint(0, 97, (1, T))
    _close(_logits(ours, ids), _logits(theirs, ids), "rope_scaling over rope_parameters")


def _edit(d: Path, **changes) -> None:
    f = d / "config.json"
    cfg = json.loads(f.read_text())
    cfg.update(changes)
    f.write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, match", [
    (dict(model_type="gpt2"), "model_type 'gpt2' is not supported"),
    (dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    (dict(rope_parameters={"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}),
     "type 'yarn' is not supported"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    (dict(attention_dropout=0.1), "attention_dropout=0.1"),
    (dict(some_new_option=True), r"config keys \['some_new_option'\] are not supported"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantized"),
    (dict(num_key_value_heads=4), r"k_proj.weight \+ v_proj \(stacked\) has shape \(32, 64\), "
     r"but the config makes \(64, 64\)"),
    (dict(intermediate_size=80), r"model.layers.0.mlp.gate_proj.weight has shape \(96, 64\)"),
])
def test_config_errors_name_the_problem(tmp_path, change, match):
    d = _save(hf_model("llama"), tmp_path)
    _edit(d, **change)
    with pytest.raises(HFConfigError, match=match):
        from_hf(d)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        from_hf(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_hf(tmp_path / "empty")
    d = _save(hf_model("llama"), tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pickled weights are not read"):
        from_hf(d)
    with pytest.raises(TypeError, match="unknown attention override"):
        from_hf(d, n_heads=2)


def test_unexpected_or_missing_tensors(tmp_path):
    from safetensors.torch import load_file, save_file
    d = _save(hf_model("llama"), tmp_path)
    w = load_file(d / "model.safetensors")
    save_file({**w, "model.extra.weight": torch.zeros(3)}, d / "model.safetensors")
    with pytest.raises(HFConfigError, match="unexpected tensors.*model.extra.weight"):
        from_hf(d)
    del w["model.layers.1.mlp.up_proj.weight"]
    save_file(w, d / "model.safetensors")
    with pytest.raises(HFConfigError, match="layers.1.mlp.up_proj.weight' is missing"):
        from_hf(d)


def _state_numel(state) -> int:
    from memarch import state as st
    return sum(t.numel() for t in st.tensors(state))


@pytest.mark.parametrize("n_tokens", [2_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_streaming_llm_on_a_converted_model(tmp_path, n_tokens):
    """StreamingLLM on a pretrained model: window W + 4 sinks at cache positions. Within
    the window the logits equal the unmodified model's (and transformers'); 20,000 tokens
    (2,000 in the default run; ~80 s on 2 cores) stream through
    ``memarch.generation.stream`` at a constant state size."""
    W, S = 24, 4
    hf = hf_model("llama")
    d = _save(hf, tmp_path)
    full, sink = from_hf(d), from_hf(d, window=W, n_sinks=S, sink_positions="cache")
    assert all(b.mixer.window == W and b.mixer.n_sinks == S for b in sink.blocks)
    ids = torch.randint(0, 97, (1, 3 * W), generator=torch.Generator().manual_seed(3))
    ref, a, b = _logits(hf, ids), _logits(full, ids), _logits(sink, ids)
    _close(b[:, :W], ref[:, :W], "inside the window vs transformers")
    # the same function (summed in another order: the banded op vs SDPA)
    _close(b[:, :W], a[:, :W], "inside the window vs the unmodified model")
    assert (b[:, W + 1:] - a[:, W + 1:]).abs().max() > 1e-4, "the window must act beyond W"
    sizes, n = [], 0
    for step in stream(sink, ids[:, :8], max_new_tokens=n_tokens):
        n += 1
        if n % (n_tokens // 4) == 0:
            sizes.append(_state_numel(step.state))
            assert int(step.state[0].pos[0]) == 8 + n - 1
    assert n == n_tokens
    assert len(set(sizes)) == 1, f"the state grew: {sizes}"
    pos = len(sink.blocks)                          # one int64 position per layer and row
    assert sizes[0] == sink.state_size(20_008) + pos == sink.state_size(10) + pos
