"""Training: configs, fast_dev_run, exact resume, crash resume, loggers, stateful TBPTT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import default_collate
from train_helpers import ROOT, TINY, compose_cfg, experiments

from memarch import state as st
from memarch.checkpoint import load
from memarch.data import StreamSegments
from memarch.lit.module import NonFiniteLossError
from memarch.lit.train import build, run

# titans_mac_125m's one step at full size (seq_len 1024, 12 layers) takes ~20 s here: slow
_SLOW_EXPERIMENTS = {"titans_mac_125m"}


@pytest.mark.parametrize("exp", [
    pytest.param(e, marks=pytest.mark.slow) if e in _SLOW_EXPERIMENTS else e
    for e in experiments()])
def test_experiment_composes_instantiates_and_runs_fast_dev_run(exp, tmp_path, checks):
    # GPU experiments run their tiny smoke test on the CPU
    cfg = compose_cfg([f"experiment={exp}", "debug=tiny", "trainer.accelerator=cpu",
                       "trainer.precision=32-true", "trainer.devices=1"], tmp_path)
    if exp == "hmt_pretrained":   # needs a Hugging Face folder: test_hf_convert.py trains it
        checks.true(OmegaConf.is_missing(cfg.model.backbone, "path_or_model"),
                    "the pretrained folder is a required key")
        return
    if exp == "hmt_smollm2":      # the real model at its own width: tests/models/test_hmt_real.py
        checks.true(cfg.model.backbone._target_ == "memarch.models.from_gguf" and
                    cfg.model.backbone.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"),
                    "the real model's GGUF is the backbone")
        return
    dm, module, trainer = build(cfg)
    checks.true(trainer.fast_dev_run, "debug=tiny sets fast_dev_run")
    dm.setup()
    checks.true(module.net.vocab_size >= dm.train_ds.vocab_size, "vocab fits the data")
    trainer.fit(module, datamodule=dm)
    checks.true(trainer.global_step == 1, f"{exp}: one fast_dev_run step")


def _weights(module):
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


def test_exact_resume(tmp_path, checks):
    """N steps straight == N/2 steps, stop, resume from the checkpoint, N/2 steps."""
    common = [*TINY, "checkpoint.every_n_steps=3", "validate_at_end=false",
              "sched.warmup_steps=2", "+sched.total_steps=6", "trainer.max_steps=6"]
    straight = run(compose_cfg(common, tmp_path / "a"))
    first = run(compose_cfg([*common, "trainer.max_steps=3"], tmp_path / "b"))
    ckpt = tmp_path / "b" / "checkpoints" / "step_000003.ckpt"
    checks.true(ckpt.is_file(), "checkpoint at step 3")
    resumed = run(compose_cfg([*common, f"ckpt_path='{ckpt}'"], tmp_path / "c"))
    checks.true(first["global_step"] == 3 and resumed["global_step"] == 6, "steps")
    wa, wc = _weights(straight["module"]), _weights(resumed["module"])
    for k in wa:
        checks.equal(wc[k], wa[k], f"weight {k}")
    ws = _weights(first["module"])
    checks.true(any(not torch.equal(ws[k], wa[k]) for k in wa), "training changed weights")
    # the checkpoint rebuilds the network without Lightning
    model = load(tmp_path / "c" / "checkpoints" / "last.ckpt").model
    ids = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        checks.close(model(ids).logits, resumed["module"].net.eval()(ids).logits, atol=0,
                     msg="memarch.checkpoint.load rebuilds the same network")


def test_exact_resume_of_stateful_training(tmp_path, checks):
    """The carried model state goes into the checkpoint (as plain tensors) and comes back."""
    common = [*TINY, "data.stateful=true", "data.segment_len=16", "checkpoint.every_n_steps=3",
              "validate_at_end=false", "+sched.total_steps=6", "trainer.max_steps=6"]
    straight = run(compose_cfg(common, tmp_path / "a"))
    run(compose_cfg([*common, "trainer.max_steps=3"], tmp_path / "b"))
    ckpt = tmp_path / "b" / "checkpoints" / "step_000003.ckpt"
    torch.load(ckpt, weights_only=True)                  # loads without unpickling classes
    resumed = run(compose_cfg([*common, f"ckpt_path='{ckpt}'"], tmp_path / "c"))
    wa, wc = _weights(straight["module"]), _weights(resumed["module"])
    for k in wa:
        checks.equal(wc[k], wa[k], f"weight {k}")
    checks.close(resumed["module"]._carry, straight["module"]._carry, atol=0, msg="carry")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, checks):
    out = tmp_path / "run"
    args = [sys.executable, "train.py", *TINY, "checkpoint.every_n_steps=5",
            "trainer.max_steps=100000", f"hydra.run.dir={out}", "validate_at_end=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ckdir = out / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ckdir.glob("step_*.ckpt"))) < 3:
        time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checks.true(proc.returncode == -signal.SIGKILL, "killed")
    last = ckdir / "last.ckpt"
    checks.true(last.is_file(), "last.ckpt exists after the kill")
    step = torch.load(last, weights_only=False, map_location="cpu")["global_step"]
    res = run(compose_cfg([*TINY, f"ckpt_path={last}", f"trainer.max_steps={step + 3}",
                           "validate_at_end=false"], tmp_path / "resume"))
    checks.true(res["global_step"] == step + 3, f"resumed from step {step}")


@pytest.mark.parametrize("logger,pattern", [("csv", "csv/version_0/metrics.csv"),
                                            ("tensorboard", "tensorboard/version_0/events.*"),
                                            ("wandb", "wandb/offline-run-*")])
@pytest.mark.slow
def test_loggers(logger, pattern, tmp_path, monkeypatch, checks):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    over = [o for o in TINY if not o.startswith("logger")]
    run(compose_cfg([*over, f"logger={logger}", "trainer.max_steps=2", "validate_at_end=false"],
                    tmp_path))
    found = list(tmp_path.glob(pattern))
    checks.true(bool(found),
                f"{logger}: nothing matches {pattern} in {list(tmp_path.rglob('*'))[:20]}")


def test_unknown_config_keys_fail(tmp_path, checks):
    with pytest.raises(ConfigCompositionException, match="bogus"):
        compose_cfg(["model.bogus=1"], tmp_path)
    cfg = compose_cfg([*TINY, "+model.mixers.swa.bogus=1"], tmp_path)
    with pytest.raises(Exception, match="bogus"):
        build(cfg)
    cfg = compose_cfg([*TINY, "+data.dataset.bogus=1"], tmp_path)
    with pytest.raises(TypeError, match="bogus"):
        instantiate(cfg.data).setup()
    with pytest.raises(ConfigCompositionException, match="experiment"):
        compose_cfg(["experiment=no_such_experiment"], tmp_path)
    checks.n += 1


def _text_cfg(tmp_path, paths, extra=()):
    return compose_cfg([*TINY, "data=text", f"data.dataset.paths=[{','.join(map(str, paths))}]",
                        "data.dataset.seq_len=32", *extra], tmp_path)


@pytest.mark.parametrize("name,content,exc,pattern", [
    ("nope.txt", None, FileNotFoundError, r"data\.dataset\.paths: data file not found: .*nope.txt"),
    ("empty.txt", "", ValueError, r"data file is empty .*empty.txt"),
    ("bad.jsonl", '{"text": "fine"}\n{"text": "also fine"}\n{"text": broken\n', ValueError,
     r"bad.jsonl: line 3: malformed JSON"),
    ("nofield.jsonl", '{"body": "x"}\n', ValueError, r"line 1: no field 'text'"),
])
def test_data_file_errors(name, content, exc, pattern, tmp_path, checks):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(exc, match=pattern):
        instantiate(_text_cfg(tmp_path, [path]).data).setup()
    checks.n += 1


def test_hf_offline_points_to_local_files(tmp_path, monkeypatch, checks):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=r"offline.*data=text data.dataset.paths="):
        instantiate(compose_cfg([*TINY, "data=hf"], tmp_path).data).setup()
    checks.n += 1


class _PoisonAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.embed.weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, checks):
    cfg = compose_cfg([*TINY, "checkpoint.every_n_steps=2", "trainer.max_steps=10"], tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* at step 4"):
        run(cfg, extra_callbacks=[_PoisonAt(4)])
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    checks.true(ck["global_step"] == 4, f"last checkpoint at step {ck['global_step']}")
    checks.true(all(torch.isfinite(v).all() for v in ck["state_dict"].values()), "finite")


def test_train_on_text_with_local_tokenizer(tmp_path, checks):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    text = tmp_path / "a.txt"
    text.write_text("In the beginning was the word, and the word was with the text. " * 60)
    docs = tmp_path / "b.jsonl"
    docs.write_text("".join(f'{{"body": "document number {i} says hello"}}\n' for i in range(40)))
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(text)], trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]", "</s>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = _text_cfg(tmp_path, [text], ["data.vocab_size=120",
                                       f"data.dataset.tokenizer={tmp_path / 'tokenizer.json'}",
                                       "trainer.max_steps=3"])
    res = run(cfg)
    checks.true(res["global_step"] == 3 and res["val/loss"] == res["val/loss"], "trained")
    cfg = _text_cfg(tmp_path / "j", [docs], ["data.dataset.field=body", "trainer.max_steps=2"])
    checks.true(run(cfg)["global_step"] == 2, "trained on JSONL with a custom field")


class _Losses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_stateful_training_carries_detached_state(tmp_path, checks):
    over = [*TINY, "data.stateful=true", "data.segment_len=16", "trainer.max_steps=3",
            "validate_at_end=false", "optim.lr=0"]   # lr 0: only the carried state differs
    rec = _Losses()
    res = run(compose_cfg(over, tmp_path), extra_callbacks=[rec])
    module, dm = res["module"], res["trainer"].datamodule
    checks.true(module._carry is not None, "state carried")
    checks.true(all(not t.requires_grad for t in st.tensors(module._carry)),
                "carried state is detached")
    seg = StreamSegments(dm.train_ds, global_batch=4, segment_len=16)
    batches = [default_collate([seg[s * 4 + j] for j in range(4)]) for s in range(3)]
    checks.true([int(b["segment"][0]) for b in batches] == [0, 1, 2], "consecutive segments")
    checks.equal(batches[1]["input_ids"],
                 torch.stack([dm.train_ds[j]["input_ids"][16:32] for j in range(4)]),
                 "row j of step 1 is tokens 16..31 of document j")
    with torch.no_grad():
        s, carried = None, []
        for b in batches:
            loss, _, _, _, s = module._loss(b, s)
            carried.append(float(loss))
        reset = [float(module._loss(b, None)[0]) for b in batches]
    checks.close(torch.tensor(rec.losses), torch.tensor(carried), atol=1e-5,
                 msg="training losses are those of the carried-state run")
    checks.true(carried[0] == reset[0], "segment 0 starts from the empty state")
    checks.true(abs(carried[1] - reset[1]) > 1e-4,
                f"segment 1: carried-state loss {carried[1]} differs from reset {reset[1]}")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, checks):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "train.py", *TINY, "trainer=ddp", "trainer.devices=2",
                        "trainer.max_steps=3", f"hydra.run.dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    checks.true(r.returncode == 0, r.stderr[-3000:])
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    checks.true(ck["global_step"] == 3, "3 DDP steps")
