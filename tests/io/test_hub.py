"""memarch.hub: save_pretrained -> from_pretrained gives the same network (logits, state_dict,
streaming state, tied weights) for MemLMs built by hand, from configs and by Hydra, and for
HMT; loading refuses what it should (missing files, foreign targets, misfit weights, HF
configs); push_to_hub uploads the saved folder (fake HfApi, offline)."""

from __future__ import annotations

import json
import shutil
import sys
from functools import partial

import pytest
import torch

import memarch.config
import memarch.models
from memarch.config import TargetNotAllowedError, instantiate
from memarch.hub import PretrainedError, from_pretrained, model_config, push_to_hub, save_pretrained
from memarch.mixers import Attention, BaseConv, BasedLinearAttention, ShortConv
from memarch.models import HMT, MemLM

V = 37


def lm(mixers, pattern, **kw):
    return MemLM(vocab_size=V, d_model=16, mixers=mixers, layer_pattern=pattern, **kw)


def attention_lm(**kw):
    return lm({"attn": partial(Attention, n_heads=2)}, ["attn", "attn"], **kw)


def sinks_lm():
    return lm({"conv": partial(ShortConv, kernel_size=3),
               "swa": partial(Attention, n_heads=2, window=5, n_sinks=2,
                              sink_positions="cache")}, ["conv", "swa", "swa"])


def based_lm():
    return lm({"conv": partial(BaseConv, kernel_size=3),
               "based": partial(BasedLinearAttention, n_heads=2, feature_dim=4),
               "swa": partial(Attention, n_heads=2, window=4, n_sinks=1)},
              ["conv", "based", "swa"])


def config_lm():
    """Built by memarch.config.instantiate from a Hydra-style config (partials from config),
    one factory a bare class."""
    return instantiate({
        "_target_": "memarch.models.MemLM", "vocab_size": V, "d_model": 16,
        "layer_pattern": ["conv", "swa"], "d_hidden": 24,
        "mixers": {"conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True},
                   "swa": {"_target_": "memarch.mixers.Attention", "_partial_": True,
                           "n_heads": 2, "window": 6, "n_sinks": 2}}})


def hmt():
    return HMT(attention_lm(), segment_len=8, sensory_len=3, n_memories=2).double()


def perturbed(model):
    """Weights away from the seed's init, so only loading them can reproduce the model."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def save_load(model, path):
    save_pretrained(model, path)
    torch.manual_seed(1)                # a fresh init would differ from the saved weights
    return from_pretrained(path)


def check_same(model, loaded, ids, checks):
    checks.true(type(loaded) is type(model) and not loaded.training, "same class, eval mode")
    sd, sd2 = model.state_dict(), loaded.state_dict()
    checks.true(list(sd) == list(sd2), f"state_dict keys {list(sd)} vs {list(sd2)}")
    for k in sd:
        checks.equal(sd2[k], sd[k], k)
    with torch.no_grad():
        checks.equal(loaded(ids).logits, model(ids).logits, "logits")
        fresh = instantiate(model_config(model)).to(next(model.parameters()).dtype).eval()
        checks.true(not torch.equal(fresh(ids).logits, model(ids).logits),
                    "a fresh init differs (the test can fail)")


BUILDERS = {"attention": attention_lm, "sinks": sinks_lm, "based": based_lm,
            "config": config_lm, "untied": partial(attention_lm, tie_embeddings=False),
            "hmt": hmt}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip(name, tmp_path, checks):
    model = perturbed(BUILDERS[name]())
    loaded = save_load(model, tmp_path / "m")
    check_same(model, loaded, torch.randint(0, V, (2, 21)), checks)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    checks.true(cfg["memarch"]["format"] == 1 and cfg["memarch"]["class"] == cfg["_target_"]
                == f"memarch.models.{type(model).__name__}", f"memarch entry {cfg['memarch']}")
    checks.true(sorted(p.name for p in (tmp_path / "m").iterdir())
                == ["config.json", "model.safetensors"], "two files, no temporary left")


def test_config_lm_config_is_the_config_it_came_from(checks):
    cfg = model_config(config_lm())
    checks.true(cfg["mixers"]["conv"] == {"_target_": "memarch.mixers.ShortConv",
                                          "_partial_": True}, f"bare class: {cfg['mixers']}")
    checks.true(cfg["mixers"]["swa"] == {"_target_": "memarch.mixers.Attention",
                                         "_partial_": True, "n_heads": 2, "window": 6,
                                         "n_sinks": 2}, f"partial: {cfg['mixers']['swa']}")
    checks.true(cfg["d_hidden"] == 24 and cfg["layer_pattern"] == ["conv", "swa"], f"{cfg}")


@pytest.mark.parametrize("tie", [True, False])
def test_tied_head_stays_tied(tie, tmp_path, checks):
    model = perturbed(attention_lm(tie_embeddings=tie))
    loaded = save_load(model, tmp_path)
    same = loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    checks.true(same == tie, f"tie_embeddings={tie}: head and embedding shared={same}")
    checks.equal(loaded.head.weight, model.head.weight, "head")
    checks.equal(loaded.embed.weight, model.embed.weight, "embedding")


def test_hmt_streaming_state_round_trips(tmp_path, checks):
    model = perturbed(hmt())
    loaded = save_load(model, tmp_path)
    checks.true(loaded.backbone.embed.weight.dtype == torch.float64, "the saved dtype")
    ids = torch.randint(0, V, (2, 27))
    with torch.no_grad():
        a, b = model(ids[:, :11]), loaded(ids[:, :11])
        checks.equal(b.logits, a.logits, "first call")
        checks.equal(loaded(ids[:, 11:], b.state).logits, model(ids[:, 11:], a.state).logits,
                     "second call, from the state")


def test_dtype_argument(tmp_path, checks):
    model = perturbed(hmt())
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path, dtype=torch.float32)
    checks.true({p.dtype for p in loaded.parameters()} == {torch.float32}, "cast to float32")
    checks.equal(loaded.backbone.embed.weight, model.backbone.embed.weight.float(), "values")


@pytest.mark.parametrize("overrides", [
    ["experiment=hybrid_tiny"],
    ["experiment=based_tiny"],
    ["experiment=titans_mag_tiny"],       # memory: {...} is an OmegaConf DictConfig
    ["experiment=hmt_sinks_tiny", "model.segment_len=8", "model.sensory_len=2"],
])
def test_hydra_composed_model(overrides, tmp_path, checks):
    """hydra.utils.instantiate(cfg.model): the factories are Hydra's partials."""
    import hydra
    from train_helpers import compose_cfg

    cfg = compose_cfg([*overrides, "model.d_model=32"], tmp_path / "run")
    model = perturbed(hydra.utils.instantiate(cfg.model))
    loaded = save_load(model, tmp_path / "m")
    check_same(model, loaded, torch.randint(0, int(cfg.data.vocab_size), (1, 20)), checks)


# -- errors -------------------------------------------------------------------------------
def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        from_pretrained(tmp_path)
    save_pretrained(attention_lm(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"not found: {tmp_path / 'model.safetensors'}"):
        from_pretrained(tmp_path)


def write_config(path, cfg):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got a JSON list"),
    ('{"_target_": "memarch.models.MemLM"}', "not a memarch model config"),
    ('{"_target_": "memarch.models.MemLM", "memarch": {"format": 2, "version": "9.0"}}',
     "unknown format 2"),
])
def test_bad_config(text, match, tmp_path):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(PretrainedError, match=match):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("target, module", [("os.system", None),
                                            ("hub_evil_module.run", "hub_evil_module")])
def test_foreign_target_refused_before_import(target, module, tmp_path, monkeypatch):
    """A module that would leave a file behind if imported: it is never imported."""
    (tmp_path / "hub_evil_module.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef run(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_config(tmp_path / "m", {"_target_": target, "command": "touch pwned",
                                  "memarch": {"format": 1}})
    with pytest.raises(TargetNotAllowedError, match=target):
        from_pretrained(tmp_path / "m")
    assert not (tmp_path / "imported").exists() and "hub_evil_module" not in sys.modules


def test_weights_of_another_size(tmp_path):
    save_pretrained(attention_lm(), tmp_path / "a")
    save_pretrained(lm({"attn": partial(Attention, n_heads=2)}, ["attn"], d_hidden=8),
                    tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"shapes differ\): .*mlp.w1.weight: file "
                                              r"\[8, 16\], config \[64, 16\]"):
        from_pretrained(tmp_path / "a")


def test_missing_tensors(tmp_path):
    save_pretrained(attention_lm(), tmp_path / "a")
    save_pretrained(lm({"attn": partial(Attention, n_heads=2)}, ["attn"]), tmp_path / "b")
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(PretrainedError, match=r"Missing key\(s\).*blocks\.1\."):
        from_pretrained(tmp_path / "a")


def test_hf_config_points_to_from_hf(tmp_path, monkeypatch, checks):
    write_config(tmp_path, {"model_type": "llama", "hidden_size": 16})
    monkeypatch.delattr(memarch.models, "from_hf", raising=False)
    with pytest.raises(PretrainedError, match="memarch.models.from_hf"):
        from_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(memarch.models, "from_hf", lambda path, dtype: calls.append(
        (path, dtype)) or attention_lm(), raising=False)
    model = from_pretrained(tmp_path, dtype=torch.float64)
    checks.true(isinstance(model, MemLM) and not model.training
                and calls == [(tmp_path, torch.float64)], f"dispatched to from_hf: {calls}")


def test_hf_checkpoint_loads_and_saves(tmp_path, checks):
    """A tiny transformers Llama folder: from_pretrained converts it (memarch.models.from_hf),
    and the MemLM it gives round-trips through save_pretrained."""
    hf_helpers = pytest.importorskip("hf_helpers")
    if not hasattr(memarch.models, "from_hf"):
        pytest.skip("memarch.models.from_hf is not there")
    hf = hf_helpers.hf_model("llama")
    hf.save_pretrained(tmp_path / "hf")
    model = from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        checks.close(model(ids).logits, hf(ids).logits, atol=1e-4, msg="converted")
    check_same(model, save_load(model, tmp_path / "m"), ids, checks)


def test_unwritable_configs(monkeypatch, checks):
    model = attention_lm()
    model.init_kwargs["mixers"]["attn"] = lambda d_model, layer_idx: Attention(d_model)
    with pytest.raises(TypeError, match=r"model.mixers.attn .*function"):
        model_config(model)
    model.init_kwargs["mixers"]["attn"] = partial(Attention, 16)
    with pytest.raises(TypeError, match=r"model.mixers.attn is a partial with positional"):
        model_config(model)
    model.init_kwargs["mixers"]["attn"] = Attention
    model.init_kwargs["norm_eps"] = torch.tensor(1e-6)
    with pytest.raises(TypeError, match=r"model.norm_eps .*torch.Tensor"):
        model_config(model)

    class Local(ShortConv):
        pass
    model.init_kwargs["norm_eps"], model.init_kwargs["mixers"]["attn"] = 1e-6, Local
    with pytest.raises(TargetNotAllowedError, match=r"model.mixers.attn: .*Local"):
        model_config(model)                  # a loader would refuse it
    monkeypatch.setattr(memarch.config, "_ALLOWED", {*memarch.config._ALLOWED, "test_hub."})
    with pytest.raises(TypeError, match="model.mixers.attn .*cannot be imported"):
        model_config(model)                  # allowed, but not importable
    checks.true(model_config(attention_lm())["mixers"]["attn"]["_partial_"], "a good one")


def test_failed_save_keeps_the_good_files(tmp_path, monkeypatch, checks):
    model = perturbed(attention_lm())
    save_pretrained(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*a, **kw):
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(attention_lm(tie_embeddings=False), tmp_path)
    checks.true({p.name: p.read_bytes() for p in tmp_path.iterdir()} == before,
                "the saved files are untouched, no temporary left")


# -- hub ----------------------------------------------------------------------------------
def test_push_to_hub_uploads_the_saved_folder(monkeypatch, checks):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, *, exist_ok, private):
            calls.append(("create_repo", repo_id, exist_ok, private))
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, *, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, commit_message))
            self.loaded = from_pretrained(folder_path)
            return "commit-info"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    model = perturbed(attention_lm())
    out = push_to_hub(model, "me/tiny", private=True, token="tok", commit_message="hi")
    checks.true(out == "commit-info" and calls == [
        ("init", "tok"), ("create_repo", "me/tiny", True, True),
        ("upload_folder", "me/tiny", "hi")], f"calls {calls}")


def test_push_to_hub_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        push_to_hub(attention_lm(), "me/tiny")


@pytest.mark.parametrize("name", ["attention", "hmt"])
def test_model_methods(name, tmp_path, checks):
    """``model.save_pretrained`` / ``Class.from_pretrained`` (memarch.hub.HubMixin)."""
    model = perturbed(BUILDERS[name]())
    model.save_pretrained(tmp_path / "m")
    cls = type(model)
    check_same(model, cls.from_pretrained(tmp_path / "m"), torch.randint(0, V, (2, 21)), checks)
    other = HMT if cls is MemLM else MemLM
    with pytest.raises(TypeError, match=f"holds a {cls.__name__}, not a {other.__name__}"):
        other.from_pretrained(tmp_path / "m")
