"""Loading a checkpoint never runs code, bad files give one clear error, and a
failed save keeps the previous checkpoint. Each test names the probe it covers."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from memarch.eval.model import EvalModel
from train_helpers import ROOT

import memarch.config
from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY, CheckpointError, load, read
from memarch.config import TargetNotAllowedError, allow, instantiate
from memarch.lit.io import AtomicCheckpointIO

TINY_CFG = {"_target_": "memarch.models.MemLM", "vocab_size": 257, "d_model": 16,
            "mixers": {"conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True,
                                "kernel_size": 4}},
            "layer_pattern": ["conv"]}


class Payload:
    """Unpickling this runs ``touch marker`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(autouse=True)
def _restore_allow_list(monkeypatch):
    monkeypatch.setattr(memarch.config, "_ALLOWED", set(memarch.config._ALLOWED))


def _save(path, cfg=TINY_CFG, **extra):
    """A checkpoint as memarch's training writes it (weights only for ``TINY_CFG``)."""
    net = instantiate(TINY_CFG) if cfg is TINY_CFG else torch.nn.Module()
    sd = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({CONFIG_KEY: cfg, TOKENIZER_KEY: "byte", "state_dict": sd, **extra}, path)
    return path


def _cli(ckpt, tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "memarch.eval", f"checkpoint={ckpt}",
                           "preset=smoke", f"out_dir={tmp_path / 'out'}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


# -- probe 1a: a pickled os.system payload ---------------------------------------------------
def test_probe_pickle_payload_is_refused_by_load_and_never_runs(tmp_path, checks):
    control = tmp_path / "control_marker"
    torch.save({"x": Payload(control)}, tmp_path / "control.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)   # the payload is real...
    checks.true(control.exists(), "the payload runs under weights_only=False")

    marker = tmp_path / "marker"
    ckpt = _save(tmp_path / "evil.ckpt", payload=Payload(marker))
    for fn in (read, load, EvalModel.from_checkpoint):
        with pytest.raises(CheckpointError, match=r"evil.ckpt: refused: .*posix.system"):
            fn(ckpt)
    checks.true(not marker.exists(), "...and never runs on memarch's load paths")


# -- probe 1b: a checkpoint config whose _target_ is foreign code ----------------------------
@pytest.mark.parametrize("target,kwargs", [
    ("subprocess.run", lambda m: {"args": ["touch", str(m)]}),
    # an allowed prefix reaching foreign code through a module's import (torch.save)
    ("memarch.checkpoint.torch.save", lambda m: {"obj": 1, "f": str(m)})])
def test_probe_foreign_target_is_refused_by_load_and_never_runs(target, kwargs, tmp_path,
                                                                 checks):
    """As the model's ``_target_`` and nested inside a memarch model's config."""
    marker = tmp_path / "marker"
    payload = {"_target_": target, **kwargs(marker)}
    for cfg in (payload, {**TINY_CFG, "mixers": {"conv": payload}}):
        ckpt = _save(tmp_path / "evil.ckpt", cfg)
        for fn in (load, EvalModel.from_checkpoint):
            with pytest.raises(TargetNotAllowedError,
                               match=rf"evil.ckpt: _target_ '{target}' is not allowed"):
                fn(ckpt)
    with pytest.raises(ValueError, match=r"call memarch.config.allow\('(subprocess|torch)\.'\)"):
        instantiate(payload)
    checks.true(not marker.exists(), "the target never ran")


def test_probe_target_is_refused_before_its_module_is_imported(tmp_path, monkeypatch, checks):
    """Importing a module runs its code, so the check comes first; allow() then trusts it."""
    marker = tmp_path / "imported"
    pkg = tmp_path / "mypkg_issue10"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import pathlib, torch
        pathlib.Path({str(marker)!r}).touch()
        def make(d):
            return torch.nn.Linear(d, d)
        def other(d):
            return d
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"_target_": "mypkg_issue10.make", "d": 3}
    ckpt = tmp_path / "user.ckpt"
    torch.save({CONFIG_KEY: cfg, "state_dict": {"net.weight": torch.eye(3),
                                                "net.bias": torch.zeros(3)}}, ckpt)
    with pytest.raises(TargetNotAllowedError, match="'mypkg_issue10.make' is not allowed"):
        load(ckpt)
    checks.true(not marker.exists() and "mypkg_issue10" not in sys.modules, "not imported")

    # probe: allow() with an exact name trusts that name only, a prefix trusts the package
    allow("mypkg_issue10.make")
    model = load(ckpt).model
    checks.equal(model.weight, torch.eye(3), "the user's model loaded")
    with pytest.raises(TargetNotAllowedError, match="mypkg_issue10.other"):
        instantiate({"_target_": "mypkg_issue10.other", "d": 1})
    allow("mypkg_issue10.")
    checks.true(instantiate({"_target_": "mypkg_issue10.other", "d": 1}) == 1, "prefix")
    sys.modules.pop("mypkg_issue10")


def test_probe_memarch_configs_still_build(checks):
    """The shipped model configs only use memarch.* targets (and _partial_)."""
    net = instantiate(TINY_CFG)
    checks.true(type(net).__name__ == "MemLM", "memarch target builds")
    import functools
    checks.true(memarch.config.resolve("functools.partial") is functools.partial,
                "functools.partial is allowed")


# -- probe 2: files that are not checkpoints -------------------------------------------------
def _bad_files(tmp_path):
    good = _save(tmp_path / "good.ckpt").read_bytes()
    files = {"random": os.urandom(4096), "empty": b"", "truncated": good[:len(good) // 2]}
    for name, data in files.items():
        (tmp_path / f"{name}.ckpt").write_bytes(data)
    return [tmp_path / f"{name}.ckpt" for name in files]


def test_probe_random_empty_truncated_files_give_one_clear_error(tmp_path, checks):
    for path in _bad_files(tmp_path):
        for fn in (read, load, EvalModel.from_checkpoint):
            with pytest.raises(CheckpointError,
                               match=rf"checkpoint {path}: not a memarch checkpoint or truncated"):
                fn(path)
            checks.true(issubclass(CheckpointError, ValueError), "a ValueError")


# -- probes 1 and 2 through `python -m memarch.eval checkpoint=...` -----------------------------
@pytest.mark.slow
def test_probe_eval_cli_refuses_and_reports_without_traceback(tmp_path, checks):
    marker = tmp_path / "marker"
    cases = {
        _save(tmp_path / "pickle.ckpt", payload=Payload(marker)): "refused: it holds Python",
        _save(tmp_path / "target.ckpt", {"_target_": "subprocess.run",
                                         "args": ["touch", str(marker)]}):
            "_target_ 'subprocess.run' is not allowed",
        _bad_files(tmp_path)[-1]: "not a memarch checkpoint or truncated",   # truncated
    }
    for ckpt, message in cases.items():
        r = _cli(ckpt, tmp_path)
        checks.true(r.returncode != 0, f"{ckpt.name}: fails ({r.stdout}{r.stderr})")
        checks.true(f"memarch.eval: checkpoint {ckpt}" in r.stderr and message in r.stderr,
                    f"{ckpt.name}: clear message, got {r.stderr[-2000:]}")
        checks.true("Traceback" not in r.stderr, f"{ckpt.name}: no traceback: {r.stderr}")
    checks.true(not marker.exists(), "no payload ran")


# -- probe 3: disk full while saving ---------------------------------------------------------
def test_probe_disk_full_keeps_the_old_checkpoint(tmp_path, monkeypatch, checks):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    old = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=rf"cannot save checkpoint {path}: No space left") as e:
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    checks.true(e.value.errno == errno.ENOSPC, "errno kept")
    checks.true(path.read_bytes() == old, "old checkpoint byte-identical")
    checks.true(sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "no .tmp left")
    monkeypatch.undo()
    io.save_checkpoint({"step": torch.tensor(3)}, path)
    checks.equal(read(path)["step"], torch.tensor(3), "saving works again")


def test_probe_memarch_functions_are_not_targets_by_default(checks):
    """Probe: a config calling ``memarch.config.allow('os.')`` to widen the list itself."""
    from memarch import config
    with pytest.raises(config.TargetNotAllowedError, match=r"only torch.nn.Module classes"):
        config.instantiate({"_target_": "memarch.config.allow", "target": "os."})
    checks.true(not config.is_allowed("os.system"), "the list was not widened")


def test_probe_malformed_checkpoint_entries(tmp_path, checks):
    """Probes: a directory, a config that is a string, no state_dict, weights of the wrong
    shapes: each one CheckpointError naming the file, not a raw KeyError/AttributeError."""
    good = _save(tmp_path / "good.ckpt")
    ck = torch.load(good, weights_only=True)
    wrong = dict(TINY_CFG, d_model=8)
    cases = [
        (tmp_path, r"is a directory, not a checkpoint file"),
        (tmp_path / "str.ckpt", r"must be a model config \(a dict with a _target_\), got 'x'",
         {**ck, CONFIG_KEY: "x"}),
        (tmp_path / "nosd.ckpt", r"no 'state_dict' entry with the weights",
         {k: v for k, v in ck.items() if k != "state_dict"}),
        (tmp_path / "shape.ckpt", r"its weights do not fit the model its config builds",
         {**ck, CONFIG_KEY: wrong}),
    ]
    for path, pat, *content in cases:
        if content:
            torch.save(content[0], path)
        with pytest.raises(CheckpointError, match=pat):
            load(path)
        checks.n += 1
