"""StreamingLLM's workflow: a model trained with dense attention, evaluated with a
window and sinks by overriding shape-free constructor arguments of its checkpoint's config
(``memarch.overrides``, ``memarch.checkpoint.load(overrides=...)``, ``python -m memarch.eval
model_overrides=...``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
from memarch.eval.model import EvalModel
from train_helpers import ROOT

from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY, load
from memarch.config import instantiate
from memarch.mixers import Attention, ShortConv
from memarch.mixers.attention import KVCacheState, SinkWindowState
from memarch.models import MemLM
from memarch.overrides import SHAPE_FREE_KEYS, apply_overrides, parse_overrides

W, S = 8, 4                       # the window and sinks the dense model is evaluated with
STREAM = {"mixers.attn.window": W, "mixers.attn.n_sinks": S,
          "mixers.attn.sink_positions": "cache"}


def _attn_cfg(**kw):
    return {"_target_": "memarch.mixers.Attention", "_partial_": True, "n_heads": 2,
            "window": None, "n_sinks": 0, "sink_positions": "absolute", **kw}


def lm_cfg(vocab=65):
    """conv -> dense attention -> dense attention (the n_sinks key is in the config, the
    block_size key is not: both may be overridden)."""
    attn = _attn_cfg()
    return {"_target_": "memarch.models.MemLM", "vocab_size": vocab, "d_model": 32,
            "mixers": {"conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True,
                                "kernel_size": 4},
                       "attn": attn},
            "layer_pattern": ["conv", "attn", "attn"], "d_hidden": 64}


def hmt_cfg():
    return {"_target_": "memarch.models.HMT", "segment_len": 16, "sensory_len": 4,
            "n_memories": 2, "backbone": lm_cfg()}


def _save(path, cfg):
    """A checkpoint as memarch's training writes it (Lightning keys start with ``net.``)."""
    net = instantiate(cfg)
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({CONFIG_KEY: cfg, TOKENIZER_KEY: None, "state_dict": sd}, path)
    return path, net


@pytest.fixture
def ckpt(tmp_path):
    return _save(tmp_path / "dense.ckpt", lm_cfg())


def _attn_layers(model):
    return [b.mixer for b in model.blocks if isinstance(b.mixer, Attention)]


# -- the StreamingLLM workflow ------------------------------------------------------------------
def test_window_and_sinks_on_a_dense_checkpoint(ckpt, checks):
    path, _ = ckpt
    dense = load(path).model.double()
    loaded = load(path, overrides=STREAM)
    swa = loaded.model.double()
    checks.true(all(m.window == W and m.n_sinks == S and m.sink_positions == "cache"
                    for m in _attn_layers(swa)) and len(_attn_layers(swa)) == 2, "overridden")
    checks.true(loaded.config["mixers"]["attn"]["window"] == W
                and loaded.config["mixers"]["attn"]["n_sinks"] == S, "Loaded.config changed")
    checks.true(loaded.checkpoint[CONFIG_KEY]["mixers"]["attn"]["window"] is None,
                "the raw checkpoint keeps the stored config")
    ids = torch.randint(0, 65, (2, 3 * W))
    with torch.no_grad():
        # (a) within the window: the same function (another kernel: fp64 rounding only)
        for T in (1, W // 2, W):
            d = (dense(ids[:, :T]).logits - swa(ids[:, :T]).logits).abs().max().item()
            checks.true(d <= 1e-12, f"T={T} <= W: logits differ by {d}")
        # (b) beyond the window they differ ...
        d = (dense(ids).logits - swa(ids).logits)[:, W:].abs().max().item()
        checks.true(d > 1e-4, f"beyond the window the logits should differ, max diff {d}")
        # ... and equal a model built directly with those kwargs and the same weights
        direct = MemLM(vocab_size=65, d_model=32, d_hidden=64,
                       mixers={"conv": partial(ShortConv, kernel_size=4),
                               "attn": partial(Attention, n_heads=2, window=W, n_sinks=S,
                                               sink_positions="cache")},
                       layer_pattern=["conv", "attn", "attn"])
        direct.load_state_dict(load(path).model.state_dict())
        direct = direct.double().eval()
        checks.equal(swa(ids).logits, direct(ids).logits, "overridden == built directly")


def test_streaming_state_is_a_constant_size_window(ckpt, checks):
    path, _ = ckpt
    swa = load(path, overrides=STREAM).model.double()
    dense = load(path).model.double()
    ids = torch.randint(0, 65, (1, 3 * W))
    shapes, logits, state, dstate = [], [], None, None
    with torch.no_grad():
        for t in range(3 * W):                       # token by token
            out = swa(ids[:, t:t + 1], state)
            state, dstate = out.state, dense(ids[:, t:t + 1], dstate).state
            logits.append(out.logits)
            attn = [s for s in state if isinstance(s, SinkWindowState)]
            shapes.append([tuple(x.shape) for s in attn for x in s[:4]])
        full = swa(ids).logits
    checks.true(len(attn) == 2, f"two window states, got {[type(s).__name__ for s in state]}")
    checks.true(all(s == shapes[0] for s in shapes), f"state shapes change: {shapes[0]} ...")
    checks.true(shapes[-1][0] == (1, 2, S, 16) and shapes[-1][2] == (1, 2, W - 1, 16),
                f"S sinks + W - 1 recent entries: {shapes[-1]}")
    checks.true(swa.state_size(3 * W) == swa.state_size(W + 1) < dense.state_size(3 * W),
                "state_size constant and below the dense one")
    kv = [s for s in dstate if isinstance(s, KVCacheState)]
    checks.true(kv[0].k.shape[2] == 3 * W, f"the dense cache grows: {kv[0].k.shape}")
    checks.close(torch.cat(logits, 1), full, atol=1e-10, msg="streamed == one call")


def test_eval_model_from_checkpoint_passes_overrides(ckpt, checks):
    path, _ = ckpt
    m = EvalModel.from_checkpoint(path, overrides="{mixers.attn.window: 8, "
                                                  "mixers.attn.n_sinks: 4}")
    checks.true([a.window for a in _attn_layers(m.net)] == [W, W]
                and [a.n_sinks for a in _attn_layers(m.net)] == [S, S], "EvalModel overridden")
    m = EvalModel.from_checkpoint(path)
    checks.true([a.window for a in _attn_layers(m.net)] == [None, None], "no overrides")


# -- apply_overrides / parse_overrides ----------------------------------------------------------
def test_forms_of_overrides_are_the_same(checks):
    cfg = lm_cfg()
    before = copy.deepcopy(cfg)
    flat = apply_overrides(cfg, {"mixers.attn.window": 256, "mixers.attn.block_size": 32})
    nested = apply_overrides(cfg, {"mixers": {"attn": {"window": 256, "block_size": 32}}})
    text = apply_overrides(cfg, "{mixers.attn.window: 256, mixers.attn.block_size: 32}")
    checks.true(flat == nested == text, f"{flat['mixers']} {nested['mixers']}")
    checks.true(flat["mixers"]["attn"]["window"] == 256
                and flat["mixers"]["attn"]["block_size"] == 32, "set (block_size was absent)")
    checks.true(cfg == before, "the input config is not modified")
    checks.true(parse_overrides(None) == parse_overrides("") == parse_overrides("  ") == {},
                "no overrides")
    checks.true(parse_overrides({"mixers.attn": {"window": 4}}) == {"mixers.attn.window": 4},
                "mixed forms flatten")
    from omegaconf import OmegaConf
    dc = OmegaConf.create({"mixers": {"attn": {"window": 4, "n_sinks": 2}}})
    checks.true(parse_overrides(dc) == {"mixers.attn.window": 4, "mixers.attn.n_sinks": 2},
                "DictConfig")
    checks.true({"window", "n_sinks", "sink_positions", "block_size", "impl", "chunk_size"}
                <= SHAPE_FREE_KEYS and not {"n_heads", "d_model", "n_persistent"}
                & SHAPE_FREE_KEYS, f"{sorted(SHAPE_FREE_KEYS)}")


def test_unknown_path_names_the_key_and_the_available_ones(ckpt):
    path, _ = ckpt
    with pytest.raises(ValueError, match=r"unknown key 'mixers\.atn\.window'.*no 'mixers\.atn'"
                                         r".*\['attn', 'conv'\]"):
        load(path, overrides={"mixers.atn.window": 8})
    with pytest.raises(ValueError, match=r"no 'backbone'; sub-configs at the top level: "
                                         r"\['mixers'\]"):
        apply_overrides(lm_cfg(), {"backbone.mixers.attn.window": 8})
    with pytest.raises(ValueError, match=r"'mixers\.conv\.window': ShortConv takes no 'window'"
                                         r" argument; it takes \['activation', 'bias', "
                                         r"'kernel_size'\]"):
        apply_overrides(lm_cfg(), {"mixers.conv.window": 8})


@pytest.mark.parametrize("key", ["mixers.attn.n_heads", "d_model", "mixers.attn.n_persistent",
                                 "mixers.attn._target_", "vocab_size"])
def test_shape_changing_keys_are_refused(ckpt, key):
    path, _ = ckpt
    leaf = key.rsplit(".", 1)[-1]
    with pytest.raises(ValueError, match=rf"'{key}' is not allowed: '{leaf}' would change "
                                         r"parameter shapes.*allowed keys: \['block_size', "):
        load(path, overrides={key: 1})


def test_bad_values_are_refused_clearly(ckpt):
    path, _ = ckpt
    with pytest.raises(ValueError, match=r"model_overrides \{'mixers\.attn\.window': -1\}: "
                                         r"the model cannot be built with them: ValueError: "
                                         r"Attention: window must be a positive int or None, "
                                         r"got -1"):
        load(path, overrides={"mixers.attn.window": -1})
    with pytest.raises(ValueError, match="n_sinks > 0 needs a window"):
        load(path, overrides={"mixers.attn.n_sinks": 4})
    with pytest.raises(ValueError, match=r"'mixers\.attn\.impl' must be one of \('auto', "):
        load(path, overrides={"mixers.attn.impl": "cuda"})
    with pytest.raises(ValueError, match=r"must be a plain value .* got \[8\]"):
        load(path, overrides={"mixers.attn.window": [8]})
    with pytest.raises(ValueError, match="model_overrides: cannot parse"):
        load(path, overrides="{mixers.attn.window: [")
    with pytest.raises(ValueError, match="space after the colon"):
        parse_overrides("{mixers.attn.window:8}")
    with pytest.raises(ValueError, match="model_overrides must be a mapping"):
        parse_overrides("[8]")


def test_hmt_backbone_override(tmp_path, checks):
    path, _ = _save(tmp_path / "hmt.ckpt", hmt_cfg())
    loaded = load(path, overrides={"backbone.mixers.attn.window": 4,
                                   "backbone.mixers.attn.n_sinks": 2})
    attn = _attn_layers(loaded.model.backbone)
    checks.true([(a.window, a.n_sinks) for a in attn] == [(4, 2), (4, 2)], "HMT backbone")
    checks.true(loaded.config["backbone"]["mixers"]["attn"]["window"] == 4, "config")
    with pytest.raises(ValueError, match=r"no 'mixers'; sub-configs at the top level: "
                                         r"\['backbone'\]"):
        load(path, overrides={"mixers.attn.window": 4})


def test_titans_memory_chunk_size_in_a_kwargs_dict(checks):
    """MAG's ``memory: {}`` holds NeuralMemory's kwargs: chunk_size may be set there (it
    changes the memory's math, not its parameters), a shape key may not."""
    cfg = lm_cfg()
    cfg["mixers"]["attn"] = {"_target_": "memarch.mixers.MemoryAsGate", "_partial_": True,
                             "n_heads": 2, "window": 16, "n_persistent": 2,
                             "memory": {"n_heads": 2, "depth": 1}}
    net = instantiate(cfg)
    out = apply_overrides(cfg, {"mixers.attn.memory.chunk_size": 4, "mixers.attn.window": 8})
    new = instantiate(out)
    new.load_state_dict(net.state_dict())                           # strict: same shapes
    mag = new.blocks[1].mixer
    checks.true(mag.memory.chunk_size == 4 and mag.attn.window == 8, "MAG overridden")
    with pytest.raises(ValueError, match="'depth' would change parameter shapes"):
        apply_overrides(cfg, {"mixers.attn.memory.depth": 2})


# -- python -m memarch.eval model_overrides=... --------------------------------------------------
def _cli(*args):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "memarch.eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_eval_command_line_model_overrides(tmp_path, checks):
    """Perplexity by position (buckets of W tokens) of a dense byte model, then with a window
    and sinks given in Hydra's two forms: the first W positions score the same, later ones
    do not, and both forms give the same model."""
    path, _ = _save(tmp_path / "byte.ckpt", lm_cfg(vocab=257))
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, TOKENIZER_KEY: "byte"}, path)
    text = tmp_path / "text.txt"
    text.write_text("In the beginning was the word, and the word was with the model. " * 4)
    ppl = [f"checkpoint={path}", "tasks=[perplexity]", f"settings.perplexity.text_file={text}",
           "settings.perplexity.max_tokens=64", f"+settings.perplexity.bucket={W}"]
    runs = {}
    for name, ov in (("dense", []),
                     ("dict", [f"model_overrides={{mixers.attn.window:{W},"
                               f"mixers.attn.n_sinks:{S}}}"]),
                     ("plus", [f"+model_overrides.mixers.attn.window={W}",
                               f"+model_overrides.mixers.attn.n_sinks={S}"])):
        r = _cli(*ppl, *ov, f"out_dir={tmp_path / name}")
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = [b["ppl"] for b in json.loads(
            (tmp_path / name / "perplexity.json").read_text())["buckets"]]
        checks.true(len(runs[name]) == 64 // W, f"{name}: {runs[name]}")
        checks.true(("memarch.eval: model_overrides {'mixers.attn.window': 8, "
                     "'mixers.attn.n_sinks': 4}" in r.stdout) == (name != "dense"),
                    r.stdout[-2000:])
    dense, win = runs["dense"], runs["dict"]
    checks.true(runs["plus"] == win, f"the two forms: {runs['plus']} vs {win}")
    checks.true(abs(win[0] / dense[0] - 1) < 1e-5, f"within the window: {win[0]} {dense[0]}")
    checks.true(all(abs(w / d - 1) > 1e-6 for w, d in zip(win[1:], dense[1:])),
                f"beyond the window: {win} vs {dense}")
    # a string (quoted for Hydra) with an unknown key: one line, before any suite runs
    out = tmp_path / "bad"
    r = _cli(*ppl, "model_overrides='{mixers.atn.window: 8}'", f"out_dir={out}")
    checks.true(r.returncode != 0 and "model_overrides: unknown key 'mixers.atn.window'"
                in r.stderr and "['attn', 'conv']" in r.stderr
                and "Traceback" not in r.stderr, r.stderr[-2000:])
    checks.true(not out.exists(), "no suite ran, no output folder")
