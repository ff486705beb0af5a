"""Hardening, the training side: strings read as booleans in
overrides, memories that never run, corrupted checkpoints that load, a false reassurance
from the divergence stop, and tracebacks for user errors in train.py. Each test names the
probe it reproduces."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from train_helpers import TINY, compose_cfg, train_py_exit

from memarch.checkpoint import DIGEST_KEY, CheckpointError, load, read
from memarch.lit.io import AtomicCheckpointIO
from memarch.lit.module import TrainingStopped
from memarch.lit.train import ConfigError, check_config, run
from memarch.overrides import apply_overrides

MAG = ["experiment=titans_mag_tiny", "model.d_model=32", "data.batch_size=2",
       "data.val_size=4", "logger={}", "trainer.enable_progress_bar=false",
       "trainer.max_steps=1", "validate_at_end=false"]


# -- 1. strings (and ints) read as booleans -----------------------------------------------
@pytest.mark.parametrize("override,pattern", [
    ("+model.mixers.titans.memory.residual_norm=no",
     (r"^model\.mixers\.titans\.memory\.residual_norm: expected a bool \(true/false\), "
      r"got 'no'$")),
    ("+model.mixers.titans.memory.momentum=maybe",
     r"^model\.mixers\.titans\.memory\.momentum: expected a bool \(true/false\), got 'maybe'$"),
    ("+model.mixers.titans.memory.forgetting=1",
     r"^model\.mixers\.titans\.memory\.forgetting: expected a bool \(true/false\), got 1$"),
    ("model.mixers.titans.memory.chunk_size=true",
     r"^model\.mixers\.titans\.memory\.chunk_size: expected an int, got True$"),
    ("model.mixers.titans.window=true",
     r"^model\.mixers\.titans\.window: expected an int, got True$"),
    ("+model.mixers.titans.memory.bogus=1",
     r"^model\.mixers\.titans\.memory\.bogus: unknown key \(NeuralMemory takes"),
])
def test_strings_and_ints_are_not_booleans_in_train_overrides(override, pattern, tmp_path,
                                                              checks):
    """Probe: ``train.py experiment=titans_mag_tiny +model.mixers.titans.memory.residual_norm=no``
    (and ``momentum=maybe``) trained with the option on; the check of MAG's ``memory``
    kwargs against NeuralMemory's signature now refuses them (and a bool where an int is
    meant) naming the key and the value, before anything is built."""
    cfg = compose_cfg([*MAG, override], tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        check_config(cfg)
    checks.n += 1


def test_good_bool_overrides_still_pass(tmp_path, checks):
    cfg = compose_cfg([*MAG, "+model.mixers.titans.memory.residual_norm=true",
                       "+model.mixers.titans.memory.momentum=false"], tmp_path)
    check_config(cfg)
    checks.true(cfg.model.mixers.titans.memory.residual_norm is True, "a real bool passes")


@pytest.mark.parametrize("value,pattern", [
    (True, r"'mixers\.attn\.window' must be an int or null, got True"),
    ("8", r"'mixers\.attn\.window' must be an int or null, got '8'"),
    (2.5, r"'mixers\.attn\.block_size' must be an int, got 2\.5"),
])
def test_model_overrides_check_the_constructor_annotation(value, pattern, checks):
    """Probe: ``model_overrides='{mixers.attn.window: true}'``: a bool or a string where the
    constructor takes an int is refused by ``apply_overrides``, naming key and value."""
    cfg = {"_target_": "memarch.models.MemLM", "vocab_size": 17, "d_model": 16,
           "mixers": {"attn": {"_target_": "memarch.mixers.Attention", "_partial_": True,
                               "n_heads": 2}},
           "layer_pattern": ["attn"]}
    key = "mixers.attn.block_size" if value == 2.5 else "mixers.attn.window"
    with pytest.raises(ValueError, match=pattern):
        apply_overrides(cfg, {key: value})
    checks.true(apply_overrides(cfg, {key: 8})["mixers"]["attn"][key.rsplit(".")[-1]] == 8,
                "an int passes")


# -- 2. memories that never run -------------------------------------------------------------
@pytest.mark.parametrize("exp,override,pattern", [
    ("titans_mal_tiny", "model.mixers.mem.chunk_size=100000",
     r"model\.mixers\.mem\.chunk_size=100000 .*data\.dataset\.seq_len=128"),
    ("hmt_attention_tiny", "model.segment_len=256",
     r"model\.segment_len=256 .*data\.dataset\.seq_len=128"),
    ("titans_mac_tiny", "model.mixers.titans.segment_len=200",
     r"model\.mixers\.titans\.segment_len=200 .*data\.dataset\.seq_len=128"),
])
def test_memory_longer_than_the_sequence_stops_at_start(exp, override, pattern, tmp_path,
                                                        checks):
    """Probe: a MAL run with ``chunk_size=100000`` and an HMT run with ``segment_len=256``
    over ``seq_len=128`` trained without error, the memory never written. Now the run stops
    before training, naming both values."""
    cfg = compose_cfg([f"experiment={exp}", "model.d_model=32", "data.batch_size=2",
                       "data.val_size=4", "logger={}", "trainer.enable_progress_bar=false",
                       "trainer.max_steps=1", "validate_at_end=false", override], tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        run(cfg)
    checks.true(not (tmp_path / "checkpoints").exists(), "stopped before training")


# -- 3. checkpoint digests ------------------------------------------------------------------
def _trained(tmp_path):
    run(compose_cfg([*TINY, "trainer.max_steps=2", "checkpoint.every_n_steps=2",
                     "validate_at_end=false"], tmp_path / "a"))
    return tmp_path / "a" / "checkpoints" / "step_000002.ckpt"


def _flip(path, tensor, out):
    """A copy of ``path`` with one byte inside ``tensor``'s data flipped."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) < 0, "the tensor's bytes are in the file once"
    data[at + len(raw) // 2] ^= 0x10
    out.write_bytes(bytes(data))
    return out


def test_corrupted_checkpoint_is_refused_naming_the_tensor(tmp_path, checks):
    """Probe: a checkpoint with flipped bytes in ``embed.weight`` or in the optimizer state
    loaded without error (by ``memarch.checkpoint.load`` and by a resume). Checkpoints now
    record a digest of their tensors, and every load checks it."""
    good = _trained(tmp_path)
    ck = torch.load(good, weights_only=True)
    checks.true(DIGEST_KEY in ck, "the checkpoint records a digest")
    checks.true(load(good).model is not None, "an intact checkpoint loads")
    emb = _flip(good, ck["state_dict"]["net.embed.weight"], tmp_path / "emb.ckpt")
    opt_state = ck["optimizer_states"][0]["state"]
    pid = next(i for i, s in opt_state.items() if s["exp_avg"].numel() > 64)
    opt = _flip(good, opt_state[pid]["exp_avg"], tmp_path / "opt.ckpt")
    torch.load(emb, weights_only=True)       # torch itself reads the damaged file
    for path, name in ((emb, r"state_dict/net\.embed\.weight"),
                       (opt, rf"optimizer_states/0/state/{pid}/exp_avg")):
        for fn in (read, load):
            with pytest.raises(CheckpointError, match=rf"checkpoint {path}: .*{name}"):
                fn(path)
        with pytest.raises(CheckpointError, match=name):
            AtomicCheckpointIO().load_checkpoint(path)
        out = tmp_path / f"resume_{path.stem}"
        with pytest.raises(ConfigError, match=rf"^ckpt_path: checkpoint {path}: .*{name}"):
            run(compose_cfg([*TINY, f"ckpt_path={path}", "trainer.max_steps=3",
                             "validate_at_end=false"], out))
        checks.true(not (out / "checkpoints").exists(), "refused before training")


def test_checkpoint_without_digest_still_loads_and_resumes(tmp_path, checks):
    good = _trained(tmp_path)
    ck = torch.load(good, weights_only=True)
    old = tmp_path / "old.ckpt"
    torch.save({k: v for k, v in ck.items() if k != DIGEST_KEY}, old)
    checks.true(DIGEST_KEY not in read(old), "an older checkpoint, no digest")
    checks.true(load(old).model is not None, "loads")
    res = run(compose_cfg([*TINY, f"ckpt_path={old}", "trainer.max_steps=3",
                           "validate_at_end=false"], tmp_path / "b"))
    checks.true(res["global_step"] == 3, "resumes")


# -- 4. the divergence stop names a checkpoint from before the blow-up -------------------------
class _LrAt(pl.Callback):
    """From ``step`` on, train with learning rate ``lr`` (the issue's ``optim.lr=1e3``,
    after a few good checkpoints)."""

    def __init__(self, step, lr):
        self.step, self.lr = step, lr

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            for g in trainer.optimizers[0].param_groups:
                g["lr"] = self.lr


def _max_abs(path):
    sd = torch.load(path, weights_only=True)["state_dict"]
    return max(float(v.abs().max()) for v in sd.values() if v.is_floating_point())


@pytest.mark.parametrize("guard", [[], ["module.divergence_window=4",
                                        "module.divergence_patience=3"]])
def test_divergence_stop_names_a_checkpoint_from_before_the_blowup(guard, tmp_path, checks):
    """Probe: ``optim.lr=1e3``: the stop said "the last checkpoint is intact" while
    ``last.ckpt`` held weights of magnitude ~1e9 (the loss blew up at step 4, the stop came
    at step 24). The loss and the weights' magnitude are now checked at every step (also
    during the guard's warm-up), and the stop names the last checkpoint saved before they
    left their range, with its step, and says that later ones are not safe."""
    cfg = compose_cfg([*TINY, *guard, "checkpoint.every_n_steps=2", "trainer.max_steps=80",
                       "validate_at_end=false"], tmp_path)
    with pytest.raises(TrainingStopped) as e:
        run(cfg, extra_callbacks=[_LrAt(6, 1e3)])
    msg = str(e.value)
    ckdir = tmp_path / "checkpoints"
    checks.true("intact" not in msg, msg)
    good = ckdir / "step_000006.ckpt"
    checks.true(f"{good} (step 6)" in msg, msg)
    checks.true("step 6" in msg and "left" in msg, msg)
    checks.true(_max_abs(good) < 10, f"the named checkpoint is sane: {_max_abs(good)}")
    last = torch.load(ckdir / "last.ckpt", weights_only=True)["global_step"]
    if last > 6:
        checks.true(f"last.ckpt (step {last})" in msg, msg)


def test_non_finite_stop_without_a_checkpoint_before_says_so(tmp_path, checks):
    """The issue's case itself: ``optim.lr=1e3`` from the first step, a checkpoint every 2
    steps: the loss leaves its range at once, so no checkpoint holds weights from before."""
    cfg = compose_cfg([*TINY, "optim.lr=1e3", "checkpoint.every_n_steps=2",
                       "trainer.max_steps=80", "validate_at_end=false"], tmp_path)
    with pytest.raises(TrainingStopped) as e:
        run(cfg)
    msg = str(e.value)
    checks.true("intact" not in msg, msg)
    checks.true("no checkpoint was saved before" in msg, msg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    checks.true(f"last.ckpt (step {last})" in msg, msg)


# -- 5. no traceback for user errors in train.py ------------------------------------------------
def _train_py(args, tmp_path, monkeypatch, capsys):
    code = train_py_exit([*TINY, "trainer.max_steps=2", "validate_at_end=false", *args],
                         tmp_path, monkeypatch)
    return str(code), capsys.readouterr().err


@pytest.mark.parametrize("args,pattern", [
    (["optim.lr=-1"], r"^config error: optim: .*lr.*-1"),
    (["data.dataset.seq_len=0"], r"^config error: data.*seq_len.*0"),
    (["sched.warmup_steps=-1"], (r"^config error: sched: .*sched\.warmup_steps must be "
                                 r">= 0, got -1")),
    (["data.vocab_size=10"], (r"^config error: data\.vocab_size=10 is smaller than the "
                              r"dataset's vocabulary \(65\)")),
    (["+model.mixers.swa.impl=bogus"], (r"^config error: model\.mixers\.swa\.impl: expected "
                                        r"one of .*'auto'.*got 'bogus'$")),
])
@pytest.mark.slow
def test_train_py_user_errors_have_no_traceback(args, pattern, tmp_path, monkeypatch, capsys,
                                                 checks):
    """Probe: ``train.py optim.lr=-1``, ``data.dataset.seq_len=0``, a vocabulary too small
    for the data and ``...impl=bogus`` printed full tracebacks (``sched.warmup_steps=-1``
    trained, with a negative learning rate during the warm-up)."""
    code, err = _train_py(args, tmp_path, monkeypatch, capsys)
    checks.true(bool(__import__("re").match(pattern, code)), f"exit: {code!r}")
    checks.true("\n" not in code.strip(), f"one line: {code!r}")
    checks.true("Traceback" not in err, err[-2000:])
