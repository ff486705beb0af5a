"""Training configs and resume: each bad setting gets an error naming the key as typed (or
the file and line/byte offset), each probe named in its test's docstring."""

from __future__ import annotations

import logging
import os
import time

import pytest
import torch
from hydra.utils import instantiate
from train_helpers import TINY, compose_cfg, train_py_exit

from memarch.data.text import DataError
from memarch.lit.module import LitLM, LossBlowUpError
from memarch.lit.train import ConfigError, check_config, config_diff, run


@pytest.mark.parametrize("override,pattern", [
    ("model.d_model=abc", r"^model\.d_model: expected an int, got 'abc'$"),
    ("model.d_model=1.5", r"^model\.d_model: expected an int, got 1\.5$"),
    ("optim.lr=abc", r"^optim\.lr: expected a float, got 'abc'$"),
    ("data.dataset.seq_len=abc", r"^data\.dataset\.seq_len: expected an int, got 'abc'$"),
    ("data.batch_size=abc", r"^data\.batch_size: expected an int, got 'abc'$"),
    ("sched.warmup_steps=abc", r"^sched\.warmup_steps: expected an int, got 'abc'$"),
    ("trainer.max_steps=abc", r"^trainer\.max_steps: expected an int, got 'abc'$"),
    ("module.aux_loss_weight=abc", r"^module\.aux_loss_weight: expected a float, got 'abc'$"),
    ("module.divergence_factor=abc", r"^module\.divergence_factor: expected a float or null"),
    ("seed=abc", r"^seed: expected an int, got 'abc'$"),
    ("+model.mixers.swa.bogus=1", r"^model\.mixers\.swa\.bogus: unknown key \(Attention takes"),
    ("+module.bogus=1", r"^module\.bogus: unknown key \(LitLM takes"),
    ("trainer.max_steps=-1", r"^trainer\.max_steps must be >= 1 .* got -1$"),
    ("trainer.max_steps=0", r"^trainer\.max_steps must be >= 1 .* got 0$"),
    ("checkpoint.every_n_steps=0", r"^checkpoint\.every_n_steps must be >= 1"),
    ("+allow_config_change=yes", r"^allow_config_change: expected a bool \(true/false\) or "
                                 r"null, got 'yes'$"),
])
@pytest.mark.slow
def test_bad_config_value_names_the_key(override, pattern, tmp_path, checks):
    """Probe: ``python train.py <override>`` (model.d_model=abc, optim.lr=abc,
    trainer.max_steps=-1, ...): one generic check of every config node against the
    signature of its target names the key before anything is built."""
    cfg = compose_cfg([*TINY, override], tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        check_config(cfg)
    checks.n += 1


def test_failing_target_names_the_group(tmp_path, checks):
    """Probe: ``python train.py model.d_model=7`` (valid type, but no head count divides it)
    and ``optim.betas=abc``: the error raised by the target is re-raised naming the group."""
    with pytest.raises(ConfigError, match=r"^model: cannot build memarch.models.MemLM: "
                                          r"ValueError: .*d_model=7"):
        run(compose_cfg([*TINY, "model.d_model=7"], tmp_path))
    with pytest.raises(ValueError, match=r"^optim: cannot build the optimizer"):
        run(compose_cfg([*TINY, "optim.betas=abc", "trainer.max_steps=1",
                         "validate_at_end=false"], tmp_path))
    with pytest.raises(ConfigError, match=r"^module\.divergence_window must be an int >= 1"):
        run(compose_cfg([*TINY, "module.divergence_window=0"], tmp_path))
    checks.n += 1


def test_cli_prints_the_config_error_without_traceback(tmp_path, monkeypatch, capsys, checks):
    """Probe: ``python train.py model.d_model=abc`` on the command line: it exits with
    ``config error: model.d_model: expected an int, got 'abc'`` and no traceback (train.py's
    Hydra main, run in-process to skip a second interpreter's imports)."""
    code = train_py_exit([*TINY, "model.d_model=abc"], tmp_path, monkeypatch)
    checks.true(str(code) == "config error: model.d_model: expected an int, got 'abc'",
                f"exit: {code!r}")
    checks.true("Traceback" not in capsys.readouterr().err, "no traceback")


def _text_data(tmp_path, path, extra=()):
    cfg = compose_cfg([*TINY, "data=text", f"data.dataset.paths=[{path}]",
                       "data.dataset.seq_len=32", *extra], tmp_path)
    check_config(cfg)
    instantiate(cfg.data).setup()


@pytest.mark.parametrize("name,content,pattern", [
    ("latin1.txt", b"caf\xc3\xa9 ok\n" * 3 + b"na\xefve\n",
     r"latin1\.txt: byte offset 29: not UTF-8 text \(byte 0xef"),
    ("latin1.jsonl", b'{"text": "fine"}\n{"text": "na\xefve"}\n',
     r"latin1\.jsonl: line 2, byte offset 29: not UTF-8 text"),
    ("null.jsonl", b'{"text": "fine"}\n{"text": null}\n',
     r"null\.jsonl: line 2: field 'text' is null, expected a string"),
    ("number.jsonl", b'{"text": "fine"}\n\n{"text": 3}\n',
     r"number\.jsonl: line 3: field 'text' is a number \(3\), expected a string"),
    ("missing.jsonl", b'{"text": "fine"}\n{"body": "x"}\n',
     r"missing\.jsonl: line 2: no field 'text' .*set data\.dataset\.field"),
])
def test_bad_text_data_names_file_and_position(name, content, pattern, tmp_path, checks):
    """Probe: ``data=text`` on a file that is not UTF-8 (file + byte offset), and a JSONL
    line whose text field is null, a number or missing (file + line; it used to train on
    the text "None")."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern):
        _text_data(tmp_path, path)
    checks.n += 1


@pytest.mark.parametrize("override,pattern", [
    ("data.dataset.seq_len=0", r"data\.dataset\.seq_len must be an int >= 1 .*got 0"),
    ("data.dataset.seq_len=-5", r"data\.dataset\.seq_len must be an int >= 1 .*got -5"),
    ("data.dataset.val_fraction=0", r"data\.dataset\.val_fraction must lie in \(0, 1\)"),
    ("data.dataset.val_fraction=1", r"data\.dataset\.val_fraction must lie in \(0, 1\)"),
    ("data.dataset.val_fraction=-0.1", r"data\.dataset\.val_fraction must lie in \(0, 1\)"),
])
def test_text_packing_settings(override, pattern, tmp_path, checks):
    """Probe: ``data=text data.dataset.seq_len=0`` (used to advise "a smaller seq_len") and
    ``data.dataset.val_fraction`` outside (0, 1)."""
    path = tmp_path / "a.txt"
    path.write_text("some text to train on. " * 20)
    with pytest.raises(DataError, match=pattern):
        _text_data(tmp_path, path, [override])
    checks.n += 1


def _first_run(tmp_path):
    run(compose_cfg([*TINY, "trainer.max_steps=2", "checkpoint.every_n_steps=2",
                     "validate_at_end=false"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "step_000002.ckpt"
    assert ckpt.is_file()
    return ckpt


def test_resume_refuses_a_changed_model_config(tmp_path, checks):
    """Probe: ``python train.py ckpt_path=X model.d_model=64`` (checkpoint trained with 32):
    refused before training with the differing keys; ``+allow_config_change=true``
    overrides it (fine-tuning with a changed, shape-compatible config)."""
    ckpt = _first_run(tmp_path)
    common = [*TINY, f"ckpt_path={ckpt}", "trainer.max_steps=3", "validate_at_end=false"]
    with pytest.raises(ConfigError) as e:
        run(compose_cfg([*common, "model.d_model=64", "model.norm_eps=1e-5"], tmp_path / "b"))
    msg = str(e.value)
    checks.true("model.d_model: checkpoint 32, now 64" in msg, msg)
    checks.true("model.norm_eps: checkpoint 1e-06, now 1e-05" in msg, msg)
    checks.true("+allow_config_change=true" in msg, msg)
    checks.true(not (tmp_path / "b" / "checkpoints").exists(), "refused before training")
    res = run(compose_cfg([*common, "model.norm_eps=1e-5", "+allow_config_change=true"],
                          tmp_path / "c"))
    checks.true(res["global_step"] == 3, "fine-tuning resume trained on")
    with pytest.raises(ConfigError, match=r"^ckpt_path: checkpoint not found: .*nope\.ckpt"):
        run(compose_cfg([*TINY, f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "d"))
    checks.true(config_diff({"a": {"b": [1, 2]}, "c": 1}, {"a": {"b": [1, 3]}, "d": 2}) == [
        "model.a.b: checkpoint [1, 2], now [1, 3]", "model.c: checkpoint 1, now not set",
        "model.d: not in the checkpoint, now 2"], "dotted diff")


def test_stray_tmp_checkpoints_removed_at_start(tmp_path, caplog, checks):
    """Probe: a ``*.ckpt.tmp`` left by a save killed mid-write (memarch.lit.io writes
    ``<path>.tmp`` then renames) is removed at the next start, the run's and the resumed
    checkpoint's directory, with a log line naming each."""
    ckpt = _first_run(tmp_path)
    old = ckpt.parent / "step_000004.ckpt.tmp"
    old.write_bytes(b"partial")
    new = tmp_path / "b" / "checkpoints" / "last.ckpt.tmp"
    new.parent.mkdir(parents=True)
    new.write_bytes(b"partial")
    keep = ckpt.parent / "notes.tmp"
    keep.write_text("not a checkpoint")
    for p in (old, new):                   # older than the grace period for a live save
        os.utime(p, (time.time() - 600, time.time() - 600))
    live = ckpt.parent / "step_000006.ckpt.tmp"
    live.write_bytes(b"being written by another run")
    with caplog.at_level(logging.WARNING, logger="memarch.lit.train"):
        res = run(compose_cfg([*TINY, f"ckpt_path={ckpt}", "trainer.max_steps=3",
                               "validate_at_end=false"], tmp_path / "b"))
    checks.true(res["global_step"] == 3, "resumed")
    checks.true(not old.exists() and not new.exists(), "stray .ckpt.tmp removed")
    checks.true(keep.exists(), "other files kept")
    checks.true(live.exists(), "a .tmp modified just now is kept (a live save)")
    for p in (old, new):
        checks.true(any(str(p) in r.getMessage() for r in caplog.records), f"logged {p}")


def _blow_up(monkeypatch, steps, factor=1000.0):
    """Multiply the training loss by ``factor`` at the given global steps."""
    orig = LitLM._loss

    def scaled(self, batch, state=None):
        out = orig(self, batch, state)
        if self.training and self.global_step in steps:
            return (out[0] * factor, *out[1:])
        return out
    monkeypatch.setattr(LitLM, "_loss", scaled)


GUARD = ["module.divergence_window=4", "module.divergence_patience=3",
         "checkpoint.every_n_steps=3", "validate_at_end=false"]


def test_loss_blowup_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch, checks):
    """Probe: a finite loss blow-up (the loss forced to 1000x from step 8 on): the run stops
    after divergence_patience=3 steps over 10x the running median and names step_000006,
    the last checkpoint saved before the blow-up began (step_000009 was saved during it)."""
    _blow_up(monkeypatch, range(8, 10 ** 6))
    cfg = compose_cfg([*TINY, *GUARD, "trainer.max_steps=30"], tmp_path)
    with pytest.raises(LossBlowUpError) as e:
        run(cfg)
    msg = str(e.value)
    checks.true("at step 10" in msg and "since step 8" in msg, msg)
    checks.true(f"{tmp_path / 'checkpoints' / 'step_000006.ckpt'}" in msg, msg)
    checks.true((tmp_path / "checkpoints" / "step_000009.ckpt").is_file(), "saved during it")
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    checks.true(ck["global_step"] == 9 and len(ck["memarch_divergence"]["window"]) == 4,
                "guard state saved in the checkpoint")


def test_curriculum_stage_restarts_the_loss_window(tmp_path, monkeypatch, checks):
    """Probe: a curriculum's next stage is a harder task with a higher loss, no blow-up (a
    MAC recipe was stopped at its 1 -> 2 pairs switch). The same 1000x loss from step 8 on
    that stops the run above trains on when a curriculum stage begins at step 8 (sequence
    32, batch 4): the guard's loss window starts afresh there. ``task_changes`` is the first
    step holding each stage's sequences."""
    from memarch.lit.data import LMDataModule
    stages = "data.dataset.curriculum=[[32,1],[50,2]]"
    dm = instantiate(compose_cfg([*TINY, stages], tmp_path / "dm").data)
    checks.true(dm.task_changes() == [8, 12], f"task changes {dm.task_changes()}")
    checks.true(LMDataModule.task_changes(instantiate(compose_cfg(TINY, tmp_path / "n").data))
                == [], "no curriculum: no change")
    _blow_up(monkeypatch, range(8, 10 ** 6))
    res = run(compose_cfg([*TINY, *GUARD, stages, "trainer.max_steps=30"], tmp_path / "run"))
    checks.true(res["global_step"] == 30, f"stopped at {res['global_step']}")


def test_loss_spikes_below_patience_or_in_warmup_do_not_stop(tmp_path, monkeypatch, checks):
    """Probe: spikes at steps 1-3 (warm-up: the window is not full) and 8-9 (2 steps, under
    divergence_patience=3) train on to max_steps."""
    _blow_up(monkeypatch, {1, 2, 3, 8, 9})
    res = run(compose_cfg([*TINY, *GUARD, "trainer.max_steps=12"], tmp_path))
    checks.true(res["global_step"] == 12, f"stopped at {res['global_step']}")
