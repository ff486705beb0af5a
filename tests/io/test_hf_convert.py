"""Pretrained models through memarch's tools: ``python -m memarch.convert hf``, the
embedded tokenizer, evaluation, fine-tuning from a converted checkpoint (``train.py
ckpt_path=...``) and HMT over a frozen pretrained backbone (``model/backbone=hf``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hf_helpers import hf_model
from train_helpers import ROOT, compose_cfg

from memarch.checkpoint import TOKENIZER_KEY, load, read
from memarch.convert import CONVERTED_KEY, main
from memarch.generation import stream
from memarch.models import from_hf

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without "
        "form, and void; and darkness was upon the face of the deep. ") * 40
TRAIN = ["logger={}", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
         "trainer.val_check_interval=1000", "validate_at_end=false", "data=text",
         "data.batch_size=2", "data.val_size=2", "data.dataset.seq_len=32",
         "data.dataset.val_fraction=0.1", "data.vocab_size=97", "trainer.max_steps=2",
         "checkpoint.every_n_steps=2"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Llama saved by transformers, with a BPE tokenizer.json (90 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    d = tmp_path_factory.mktemp("llama")
    hf_model("llama", eos_token_id=0).save_pretrained(d)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=90,
                                                       special_tokens=["</s>", "<unk>"]))
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture()
def text_file(tmp_path):
    f = tmp_path / "kjv.txt"
    f.write_text(TEXT)
    return f


def test_convert_cli_writes_a_checkpoint_memarch_reads(hf_dir, tmp_path, capsys):
    out = tmp_path / "llama.ckpt"
    assert main(["hf", str(hf_dir), str(out), "--window", "16", "--n-sinks", "4",
                 "--sink-positions", "cache"]) == 0
    printed = capsys.readouterr().out
    assert "tokenizer embedded" in printed and "attention {'window': 16" in printed
    ckpt = read(out)
    assert ckpt[CONVERTED_KEY]["overrides"] == {"window": 16, "n_sinks": 4,
                                                "sink_positions": "cache"}
    model = load(out).model
    ref = from_hf(hf_dir, window=16, n_sinks=4, sink_positions="cache")
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert all(b.mixer.window == 16 and b.mixer.n_sinks == 4 for b in model.blocks)
    # the tokenizer travels inside the file, and evaluation uses it
    from memarch.eval.model import EvalModel
    from tokenizers import Tokenizer
    spec = ckpt[TOKENIZER_KEY]
    assert spec["eos_id"] == 0 and spec["source"] == str(hf_dir)
    ev = EvalModel.from_checkpoint(out)
    assert ev.text_problem() is None
    want = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).encode("the face of the deep").ids
    assert ev.encode("the face of the deep") == want
    assert not (tmp_path / "llama.ckpt.tmp").exists()


@pytest.mark.slow
def test_convert_cli_errors(tmp_path, hf_dir):
    r = subprocess.run([sys.executable, "-m", "memarch.convert", "hf", str(tmp_path / "none"),
                        str(tmp_path / "x.ckpt")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "is not a directory" in r.stderr, r.stderr
    assert main(["hf", str(hf_dir), str(tmp_path / "x.ckpt"), "--dtype", "int8"]) == 2
    assert not (tmp_path / "x.ckpt").exists()


def test_finetune_from_a_converted_checkpoint(hf_dir, tmp_path, text_file):
    """``train.py ckpt_path=converted.ckpt``: the model config is the checkpoint's, training
    starts at step 0 from its weights (lr 0 keeps them: proof that they were loaded)."""
    from memarch.lit.train import ConfigError, adopt_checkpoint_model, run
    out = tmp_path / "llama.ckpt"
    main(["hf", str(hf_dir), str(out)])
    common = [*TRAIN, f"data.dataset.paths=[{text_file}]", f"ckpt_path={out}"]
    cfg = compose_cfg([*common, f"data.dataset.tokenizer={hf_dir}", "optim.lr=0"],
                      tmp_path / "run")
    assert adopt_checkpoint_model(cfg)
    result = run(cfg)
    assert result["global_step"] == 2
    ref = from_hf(hf_dir).state_dict()
    for k, v in result["module"].net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the converted model's tokenizer is not the default byte one: refused, not guessed
    cfg = compose_cfg(common, tmp_path / "run2")
    adopt_checkpoint_model(cfg)
    with pytest.raises(ConfigError, match="data.dataset.tokenizer"):
        run(cfg)


def test_hmt_over_a_frozen_pretrained_backbone(hf_dir, tmp_path, text_file):
    """``experiment=hmt_pretrained`` (``model/backbone=hf``, ``model.freeze_backbone=true``):
    only HMT's parameters train; the checkpoint stores the resolved MemLM config and reloads
    without the folder."""
    from memarch.lit.train import run
    cfg = compose_cfg([*TRAIN, "experiment=hmt_pretrained", "trainer=cpu",
                       f"model.backbone.path_or_model={hf_dir}", "model.segment_len=16",
                       "model.sensory_len=4", "model.n_memories=2", "optim.lr=1e-2",
                       f"data.dataset.paths=[{text_file}]", "data.dataset.seq_len=32"],
                      tmp_path / "run")
    assert cfg.model.freeze_backbone and cfg.data.dataset.tokenizer == str(hf_dir)
    result = run(cfg)
    net = result["module"].net
    ref = from_hf(hf_dir).state_dict()
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, ref[k]), f"frozen backbone changed: {k}"
    assert not any(p.requires_grad for p in net.backbone.parameters())
    fresh = type(net)(from_hf(hf_dir), segment_len=16, sensory_len=4, n_memories=2)
    moved = [n for n, p in net.named_parameters()
             if not n.startswith("backbone.") and not torch.equal(p, fresh.state_dict()[n])]
    assert moved, "HMT's own parameters must train"
    stored = read(result["checkpoint"])["memarch_model_config"]
    assert stored["backbone"]["_target_"] == "memarch.models.MemLM"
    loaded = load(result["checkpoint"]).model
    ids = torch.randint(0, 90, (1, 40))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, net.eval()(ids).logits)


@pytest.mark.parametrize("n_tokens", [2_000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_streaming_llm_on_a_dense_trained_checkpoint(tmp_path, n_tokens):
    """StreamingLLM's workflow on memarch's own model: train with dense attention
    (``experiment=transformer_tiny``), then stream with a window + 4 sinks at cache positions
    (``load(overrides=...)``): the same function within the window, constant state over
    20,000 tokens (2,000 in the default run)."""
    from memarch.lit.train import run
    W = 16
    result = run(compose_cfg(["experiment=transformer_tiny", "logger={}", "trainer.max_steps=3",
                              "trainer.enable_progress_bar=false", "validate_at_end=false",
                              "data.batch_size=4", "data.val_size=8"], tmp_path / "run"))
    dense = load(result["checkpoint"]).model
    assert all(b.mixer.window is None for b in dense.blocks)
    over = {"mixers.attn.window": W, "mixers.attn.n_sinks": 4,
            "mixers.attn.sink_positions": "cache"}
    sinks = load(result["checkpoint"], overrides=over).model
    ids = torch.randint(0, dense.vocab_size, (2, 3 * W))
    with torch.no_grad():
        a, b = dense(ids).logits, sinks(ids).logits
    torch.testing.assert_close(b[:, :W], a[:, :W], rtol=0, atol=1e-5 * a.abs().max().item())
    assert (b[:, W + 1:] - a[:, W + 1:]).abs().max() > 1e-4
    sizes = []
    for i, step in enumerate(stream(sinks, ids[:, :4], max_new_tokens=n_tokens), 1):
        if i % (n_tokens // 4) == 0:
            sizes.append(sum(t.numel() for s in step.state for t in s))
    assert len(sizes) == 4 and len(set(sizes)) == 1, sizes


def test_hmt_follows_a_bf16_backbone(hf_dir):
    """A bf16 checkpoint (as Llama 3.2 ships) under HMT outside autocast: HMT's own
    parameters take the backbone's dtype."""
    from memarch.models import HMT
    model = HMT(from_hf(hf_dir, dtype="bfloat16"), segment_len=8, sensory_len=2, n_memories=2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(torch.randint(0, 90, (1, 20)))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all()


def test_adopting_a_checkpoint_model_runs_no_foreign_code(tmp_path):
    """``train.py ckpt_path=X`` takes X's model config and Hydra builds it: its targets must
    pass memarch's allow-list first (nothing is imported or called otherwise)."""
    from memarch.lit.train import ConfigError, adopt_checkpoint_model
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"memarch_model_config": {"_target_": "pathlib.Path.touch",
                                         "self": str(marker)},
                "state_dict": {}}, ckpt)
    cfg = compose_cfg([f"ckpt_path={ckpt}"], tmp_path / "run")
    with pytest.raises(ConfigError, match="refused.*pathlib.Path.touch"):
        adopt_checkpoint_model(cfg)
    assert not marker.exists()


@pytest.mark.slow
def test_finetune_run_resumes_with_the_printed_command(hf_dir, tmp_path, text_file):
    """Fine-tune a converted checkpoint with train.py, then resume the fine-tuning run with
    ``train.py ckpt_path=<its last.ckpt>``: the model comes from the checkpoint (the run's
    saved overrides name none)."""
    out = tmp_path / "llama.ckpt"
    main(["hf", str(hf_dir), str(out)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run_dir = tmp_path / "ft"
    common = [a for a in TRAIN if not a.startswith(("trainer.max_steps", "logger"))]
    first = subprocess.run(
        [sys.executable, "train.py", f"ckpt_path={out}", *common, "logger={}",
         f"data.dataset.paths=[{text_file}]", f"data.dataset.tokenizer={hf_dir}",
         "trainer.max_steps=2", f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    second = subprocess.run(
        [sys.executable, "train.py", f"ckpt_path={last}", "trainer.max_steps=4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert read(last)["global_step"] == 4
