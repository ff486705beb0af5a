"""Hardening, files: writers never write over their inputs (convert, save_pretrained),
``from_hf`` follows transformers on tied weights, attention overrides are validated, shard
paths stay inside their folder, ``--tokenizer`` must parse as a tokenizer, and
``save_pretrained`` folders carry a digest of their tensors that loading checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from file_helpers import flip_safetensors
from hf_helpers import ROOT, hf_model, import_transformers

from memarch.convert import main
from memarch.hub import PretrainedError, from_pretrained, save_pretrained
from memarch.models import from_hf
from memarch.models.hf import HFConfigError, resolve_hf_configs


def _snapshot(d: Path) -> dict:
    """Every file under ``d`` (relative name -> sha256): proof that nothing changed."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _tokenizer_json(d: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the face of the deep " * 20],
                            trainers.BpeTrainer(vocab_size=40, special_tokens=["</s>", "<unk>"]))
    tok.save(str(d / "tokenizer.json"))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening") / "llama"
    hf_model("llama").save_pretrained(d)
    _tokenizer_json(d)
    return d


# -- 1. writers never write over their inputs ---------------------------------------------
@pytest.mark.parametrize("out", ["model.safetensors", "config.json", "tokenizer.json", ".",
                                 "new.ckpt", "sub/deeper/x.ckpt"])
def test_convert_hf_refuses_an_output_inside_its_source(hf_dir, out, capsys, checks):
    before = _snapshot(hf_dir)
    target = hf_dir / out if out != "." else hf_dir
    checks.true(main(["hf", str(hf_dir), str(target)]) == 2, "exit 2")
    err = capsys.readouterr().err
    checks.true(err.startswith("error: ") and "source" in err and str(hf_dir) in err, err)
    checks.true(_snapshot(hf_dir) == before, "the source folder is untouched")
    checks.true(not (hf_dir / "sub").exists(), "no folder created inside the source")


def test_convert_refuses_an_output_that_is_the_tokenizer_or_a_directory(hf_dir, tmp_path,
                                                                        capsys, checks):
    tok = tmp_path / "tok.json"
    tok.write_bytes((hf_dir / "tokenizer.json").read_bytes())
    before = tok.read_bytes()
    checks.true(main(["hf", str(hf_dir), str(tok), "--tokenizer", str(tok)]) == 2, "tok")
    checks.true("would overwrite" in capsys.readouterr().err and tok.read_bytes() == before,
                "the tokenizer file is untouched")
    (tmp_path / "adir").mkdir()
    checks.true(main(["hf", str(hf_dir), str(tmp_path / "adir")]) == 2, "dir")
    err = capsys.readouterr().err
    checks.true(err.startswith("error: ") and "is a directory" in err, err)
    checks.true(not list(tmp_path.glob("adir*.tmp")), "no .tmp left behind")


@pytest.mark.slow
def test_convert_cli_user_errors_have_no_traceback(hf_dir, tmp_path, checks):
    for args in (["hf", str(hf_dir), str(hf_dir / "model.safetensors")],
                 ["hf", str(hf_dir), str(tmp_path)],
                 ["hf", str(hf_dir), str(tmp_path / "x.ckpt"), "--tokenizer",
                  str(hf_dir / "config.json")]):
        r = subprocess.run([sys.executable, "-m", "memarch.convert", *args],
                           capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
        checks.true(r.returncode == 2 and r.stderr.startswith("error: ")
                    and "Traceback" not in r.stderr, r.stderr)


def test_convert_gguf_refuses_its_source_and_paths_through_it(tmp_path, capsys, checks):
    pytest.importorskip("gguf")
    from gguf_helpers import write_gguf
    write_gguf(hf_model("llama", hidden_size=64, intermediate_size=128), tmp_path / "m.gguf")
    before = _snapshot(tmp_path)
    for out in (tmp_path / "m.gguf", tmp_path / "m.gguf" / "x.ckpt", tmp_path):
        checks.true(main(["gguf", str(tmp_path / "m.gguf"), str(out)]) == 2, str(out))
        err = capsys.readouterr().err
        checks.true(err.startswith("error: ") and "Traceback" not in err, err)
    from memarch.models import from_gguf
    with pytest.raises(ValueError, match="read from"):
        save_pretrained(from_gguf(tmp_path / "m.gguf"), tmp_path / "m.gguf")
    checks.true(_snapshot(tmp_path) == before, "nothing written")


def test_save_pretrained_refuses_the_folder_its_model_came_from(hf_dir, tmp_path, checks):
    import shutil
    d = tmp_path / "hf"
    shutil.copytree(hf_dir, d)
    before = _snapshot(d)
    for model in (from_hf(d), from_pretrained(d)):
        for out in (d, d / "sub"):
            with pytest.raises(ValueError, match=r"read from.*save it somewhere else"):
                save_pretrained(model, out)
            checks.true(_snapshot(d) == before, "the Hugging Face folder is untouched")
    save_pretrained(from_hf(d), tmp_path / "elsewhere")      # anywhere else: fine
    checks.true((tmp_path / "elsewhere" / "model.safetensors").is_file(), "saved elsewhere")


# -- 2. tied weights as transformers reads them --------------------------------------------
def _edit_config(d: Path, **change):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))


def test_tied_config_with_its_own_lm_head_follows_transformers(tmp_path, checks):
    tf = import_transformers()
    d = tmp_path / "hf"
    hf_model("llama", tie_word_embeddings=False).save_pretrained(d)
    _edit_config(d, tie_word_embeddings=True)     # the file keeps a separate lm_head
    ref = tf.LlamaForCausalLM.from_pretrained(d).eval()
    checks.true(ref.lm_head.weight.data_ptr() != ref.model.embed_tokens.weight.data_ptr(),
                "transformers 5 keeps a separate lm_head here (the premise)")
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        want = ref(ids).logits
        for got in (from_hf(d), from_hf(ref)):
            checks.close(got(ids).logits, want, atol=1e-5 * want.abs().max().item(),
                         msg="logits")
            checks.true(not got.init_kwargs["tie_embeddings"], "untied")
    # the config-only path (HMT's training checkpoints) agrees with the weights
    cfg = resolve_hf_configs({"_target_": "memarch.models.from_hf", "path_or_model": str(d)})
    checks.true(cfg["tie_embeddings"] is False, "resolve_hf_configs: untied")
    # an lm_head equal to the embedding: tied, as transformers ties it
    from safetensors.torch import load_file, save_file
    w = load_file(d / "model.safetensors")
    w["lm_head.weight"] = w["model.embed_tokens.weight"].clone()
    save_file(w, d / "model.safetensors", metadata={"format": "pt"})
    checks.true(from_hf(d).init_kwargs["tie_embeddings"] is True, "equal head: tied")


def test_untied_config_without_lm_head_is_refused(tmp_path, checks):
    """transformers initialises a random lm_head (a different model on every load): memarch
    refuses, naming the tensor and the config key."""
    from safetensors.torch import load_file, save_file
    d = tmp_path / "hf"
    hf_model("llama").save_pretrained(d)
    w = load_file(d / "model.safetensors")
    del w["lm_head.weight"]
    save_file(w, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(HFConfigError, match=r"lm_head.weight.*tie_word_embeddings"):
        from_hf(d)
    checks.true(True, "refused")


# -- 3. attention overrides are validated --------------------------------------------------
@pytest.mark.parametrize("over, match", [
    ({"impl": "bogus"}, r"impl='bogus'.*'auto', 'naive', 'torch', 'triton'"),
    ({"impl": 3}, r"impl=3"),
    # already refused by Attention itself (kept here so that they stay refused)
    ({"window": 0}, r"window.*0"),
    ({"window": "8"}, r"window.*'8'"),
    ({"n_sinks": -1}, r"n_sinks.*-1"),
    ({"n_sinks": True}, r"n_sinks.*True"),
    ({"sink_positions": "both"}, r"sink_positions.*'both'"),
    ({"block_size": 0}, r"block_size.*0"),
])
def test_attention_overrides_are_validated(hf_dir, over, match, checks):
    with pytest.raises(ValueError, match=match):
        from_hf(hf_dir, **over)
    checks.true(True, "refused")


# -- 4. shard paths stay inside their folder -----------------------------------------------
@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE",
                                   "sub/../../outside.safetensors"])
def test_shard_index_outside_the_folder_is_refused(tmp_path, shard, checks):
    import shutil
    d = tmp_path / "hf"
    hf_model("llama").save_pretrained(d)
    shutil.copy(d / "model.safetensors", tmp_path / "outside.safetensors")
    from safetensors import safe_open
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    (d / "model.safetensors").unlink()
    name = str(tmp_path / "outside.safetensors") if shard == "ABSOLUTE" else shard
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: name for k in keys}}))
    with pytest.raises(HFConfigError, match="outside") as e:
        from_hf(d)
    checks.true(name in str(e.value) and str(d) in str(e.value), str(e.value))


# -- 5. a --tokenizer must be a tokenizer --------------------------------------------------
def test_tokenizer_must_parse_as_a_tokenizer(hf_dir, tmp_path, capsys, checks):
    from memarch.data.tokenizers import load_tokenizer, tokenizer_spec
    out = tmp_path / "x.ckpt"
    checks.true(main(["hf", str(hf_dir), str(out), "--tokenizer",
                      str(hf_dir / "config.json")]) == 2, "refused")
    err = capsys.readouterr().err
    checks.true(err.startswith("error: ") and str(hf_dir / "config.json") in err
                and "not a tokenizer" in err, err)
    checks.true(not out.exists(), "nothing written")
    for bad in ("{}", "not json", '{"model": 3}'):
        (tmp_path / "t.json").write_text(bad)
        with pytest.raises(ValueError, match=r"t.json.*not a tokenizer"):
            tokenizer_spec(tmp_path / "t.json")
    # an embedded spec that is not a tokenizer: one clear ValueError
    with pytest.raises(ValueError, match="not a tokenizer"):
        load_tokenizer({"tokenizer.json": (hf_dir / "config.json").read_text()})
    # a real one still works
    spec = tokenizer_spec(hf_dir / "tokenizer.json")
    checks.true(load_tokenizer(spec).encode("the deep") != [], "a tokenizer.json works")


def test_tokenizer_may_be_a_gguf(hf_dir, tmp_path, capsys, checks):
    pytest.importorskip("gguf")
    from gguf_helpers import write_gguf

    from memarch.checkpoint import TOKENIZER_KEY, read
    from memarch.data.tokenizers import load_tokenizer
    write_gguf(hf_model("llama"), tmp_path / "m.gguf")
    write_gguf(hf_model("llama"), tmp_path / "notok.gguf", tokenizer=False)
    out = tmp_path / "x.ckpt"
    checks.true(main(["hf", str(hf_dir), str(out), "--tokenizer",
                      str(tmp_path / "m.gguf")]) == 0, "a GGUF's tokenizer")
    spec = read(out)[TOKENIZER_KEY]
    checks.true(spec["source"] == str(tmp_path / "m.gguf")
                and load_tokenizer(spec).token_to_id("t5") == 5, "embedded from the GGUF")
    checks.true(main(["hf", str(hf_dir), str(tmp_path / "y.ckpt"), "--tokenizer",
                      str(tmp_path / "notok.gguf")]) == 2, "a GGUF without a tokenizer")
    checks.true("notok.gguf" in capsys.readouterr().err, "named")


# -- 6. save_pretrained folders carry a digest ---------------------------------------------
@pytest.mark.parametrize("tensor", ["embed.weight", "blocks.1.mlp.w2.weight"])
def test_corrupted_save_pretrained_folder_is_refused(tmp_path, tensor, checks):
    from functools import partial

    from memarch.mixers import Attention
    from memarch.models import MemLM
    model = MemLM(vocab_size=37, d_model=16, mixers={"attn": partial(Attention, n_heads=2)},
                  layer_pattern=["attn", "attn"])
    save_pretrained(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["memarch"]
    checks.true(tensor in meta["sha256"], f"digest recorded: {sorted(meta['sha256'])}")
    from_pretrained(tmp_path / "m")                          # intact: loads
    flip_safetensors(tmp_path / "m" / "model.safetensors", tensor)
    with pytest.raises(PretrainedError, match=rf"{tensor}.*sha256|sha256.*{tensor}"):
        from_pretrained(tmp_path / "m")
    # a folder without a digest (older memarch) still loads, corrupted or not
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    del cfg["memarch"]["sha256"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    checks.true(from_pretrained(tmp_path / "m") is not None, "no digest: loads")


def test_a_config_given_as_the_data_tokenizer_is_named(hf_dir, checks):
    from memarch.data.tokenizers import load_tokenizer
    with pytest.raises(ValueError, match=r"config.json is not a tokenizer"):
        load_tokenizer(str(hf_dir / "config.json"))
    checks.true(load_tokenizer(str(hf_dir)).encode("the deep") != [], "a folder with one works")


def test_convert_disk_full_keeps_the_old_file_and_says_so(hf_dir, tmp_path, monkeypatch, capsys,
                                                          checks):
    out = tmp_path / "x.ckpt"
    out.write_bytes(b"old")

    def full(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64")
    monkeypatch.setattr(torch, "save", full)
    checks.true(main(["hf", str(hf_dir), str(out)]) == 2, "exit 2")
    err = capsys.readouterr().err
    checks.true(err.startswith("error: cannot write") and "disk full" in err, err)
    checks.true(out.read_bytes() == b"old" and not (tmp_path / "x.ckpt.tmp").exists(),
                "old file kept, no .tmp left")
