"""The first hour of a new user: resuming with only ``ckpt_path=`` (the run's
overrides restored), hints that run as printed, ``data=hf`` without a network, and console
output (Lightning lines once, no advertisements, plain progress lines when stdout is not a
terminal, no ``chance nan%``)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import socket
import subprocess
import sys
from collections import Counter

import pytest
import torch
from hydra.utils import instantiate
from train_helpers import ROOT, TINY, compose_cfg, train_py_exit

from memarch.data.text import DataError, HubUnavailable
from memarch.lit import console
from memarch.lit.train import adopt_checkpoint_model, run


def _entry():
    """train.py as a module (not run)."""
    spec = importlib.util.spec_from_file_location("memarch_train_entry", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train(args, env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


# -- resume ----------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_with_only_ckpt_path_restores_the_overrides_and_the_hint_runs(tmp_path, checks):
    """Probe: ``train.py experiment=passkey_tiny ...`` then the printed hint
    ``.venv/bin/python train.py ckpt_path=... trainer.max_steps=4``: it used to fail with
    ``size mismatch for net.embed.weight``; now the run's overrides are restored. The run's
    console output has each line once, no Lightning advertisement and no progress bar."""
    a, b = tmp_path / "a", tmp_path / "b"
    r = _train([sys.executable, "train.py", "experiment=passkey_tiny", "model.d_model=32",
                "data.batch_size=2", "data.val_size=4", "trainer.max_steps=2",
                "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
                "checkpoint.every_n_steps=2", "logger={}", f"hydra.run.dir={a}"])
    checks.true(r.returncode == 0, r.stderr[-3000:])
    out = r.stdout + r.stderr
    checks.true("litmodels" not in out and "litlogger" not in out and "Tip:" not in out,
                "no advertisement")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    twice = [ln for ln in lines if "Seed set to" in ln or "GPU available" in ln]
    checks.true(len(twice) == 2, f"Lightning INFO lines once each: {twice}")
    dup = [ln for ln, n in Counter(ln.split("] - ")[-1] for ln in lines
                                   if "][lightning" in ln or ln.startswith("INFO:")).items()
           if n > 1]
    checks.true(not dup, f"duplicated lines: {dup}")
    checks.true("it/s" not in out and "\r" not in out, "no progress bar in a captured run")
    checks.true("step 1/2  loss" in r.stdout and "step 2/2  loss" in r.stdout, r.stdout)
    checks.true("chance 10.0%" in r.stdout, "passkey defines a chance level")
    hint = r.stdout.splitlines()[r.stdout.splitlines().index(next(
        ln for ln in r.stdout.splitlines() if ln.startswith("train further"))) + 1].strip()
    argv = shlex.split(hint)
    checks.true(os.path.abspath(os.path.join(ROOT, argv[0])) == os.path.abspath(sys.executable)
                or argv[0] == "python", f"the hint names this interpreter: {hint}")
    # the run reached max_steps: the hint trains further (a plain resume would do nothing)
    checks.true(argv[1:] == ["train.py", f"ckpt_path={a / 'checkpoints' / 'last.ckpt'}",
                             "trainer.max_steps=4"], hint)
    if argv[0] == "python":
        argv[0] = sys.executable
    r = _train([*argv, f"hydra.run.dir={b}"])
    checks.true(r.returncode == 0, r.stderr[-3000:])
    checks.true("size mismatch" not in r.stderr, "no size mismatch")
    restored = next(ln for ln in r.stdout.splitlines() if ln.startswith("resume: restored"))
    checks.true(str(a / ".hydra" / "overrides.yaml") in restored
                and "experiment=passkey_tiny model.d_model=32" in restored
                and "trainer.max_steps" in restored.split("given now instead:")[1], restored)
    ck = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    checks.true(ck["global_step"] == 4, f"trained on to step 4 (got {ck['global_step']})")
    checks.true(ck["memarch_model_config"]["d_model"] == 32, "the run's model")


def test_restore_overrides_user_overrides_win(tmp_path, capsys, checks):
    """Probe: the saved overrides go before the user's, minus hydra.* / ckpt_path and the
    keys the user gives now; flags stay where they were."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- experiment=passkey_tiny\n- trainer.max_steps=3\n- hydra.run.dir=/x\n"
        "- hydra/job_logging=none\n- ckpt_path=/old.ckpt\n- +allow_config_change=true\n"
        "- 'data.dataset.paths=[a.txt,b.txt]'\n")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    train = _entry()
    got = train.restore_overrides(["train.py", "--cfg", "job", f"ckpt_path='{ckpt}'",
                                   "trainer.max_steps=9"])
    checks.true(got == ["train.py", "--cfg", "job", "experiment=passkey_tiny",
                        "+allow_config_change=true", "data.dataset.paths=[a.txt,b.txt]",
                        f"ckpt_path='{ckpt}'", "trainer.max_steps=9"], got)
    out = capsys.readouterr().out
    checks.true(out.count("\n") == 1 and str(run_dir / ".hydra" / "overrides.yaml") in out
                and "given now instead: trainer.max_steps" in out, out)
    plain = ["train.py", "trainer.max_steps=9"]
    checks.true(train.restore_overrides(plain) == plain, "no ckpt_path: unchanged")
    other = ["train.py", f"ckpt_path={tmp_path / 'nowhere' / 'x.ckpt'}"]
    checks.true(train.restore_overrides(other) == other, "no saved overrides: unchanged")


def test_resume_without_saved_overrides_takes_the_checkpoint_model(tmp_path, checks):
    """Probe: a checkpoint copied away from its run directory (no .hydra/overrides.yaml):
    the model config stored in the checkpoint is used, so the resume still loads; model keys
    given now are left to the config-change check."""
    first = [*TINY, "model.layer_pattern=[conv,swa]", "trainer.max_steps=2",
             "checkpoint.every_n_steps=2", "validate_at_end=false"]
    run(compose_cfg(first, tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "step_000002.ckpt"
    cfg = compose_cfg([*TINY, f"ckpt_path={ckpt}", "trainer.max_steps=3",
                       "validate_at_end=false"], tmp_path / "b")
    checks.true(not adopt_checkpoint_model(cfg, keep_current=True), "model keys given: kept")
    checks.true(adopt_checkpoint_model(cfg), "taken from the checkpoint")
    checks.true(list(cfg.model.layer_pattern) == ["conv", "swa"], "the checkpoint's pattern")
    checks.true(run(cfg)["global_step"] == 3, "resumed")


@pytest.mark.parametrize("exe,cwd,expect", [
    ("{root}/.venv/bin/python", "{root}", ".venv/bin/python"),
    ("/opt/py/bin/python3", "{root}", "/opt/py/bin/python3"),
])
def test_hint_interpreter(exe, cwd, expect, monkeypatch, checks):
    """Probe: the hint's interpreter runs without an activated venv: the repo's .venv python
    as ``.venv/bin/python`` (relative to the current directory), another one by its path
    unless it is the ``python`` on PATH."""
    monkeypatch.setattr(sys, "executable", exe.format(root=ROOT))
    monkeypatch.chdir(cwd.format(root=ROOT))
    monkeypatch.setenv("PATH", "/nonexistent")
    checks.true(console.python_command() == expect, console.python_command())
    checks.true(console.command("ckpt_path=x") == f"{expect} train.py ckpt_path=x",
                console.command("ckpt_path=x"))


# -- data=hf without a network ---------------------------------------------------------
def _online(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.mark.parametrize("error", ["builtin", "requests", "wrapped"])
def test_hf_connection_error_points_to_local_files(error, tmp_path, monkeypatch, checks):
    """Probe: ``data=hf`` online but the Hub unreachable (the loader raises a
    ConnectionError after its retries): the offline message pointing to ``data=text``."""
    import datasets
    import requests
    _online(monkeypatch)
    monkeypatch.setattr("memarch.data.text._hub_reachable", lambda: True)

    def fail(*a, **k):
        if error == "builtin":
            raise ConnectionError("Couldn't reach 'x' on the Hub (LocalEntryNotFoundError)")
        if error == "requests":
            raise requests.exceptions.ConnectionError("Max retries exceeded")
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except OSError as e:
            raise RuntimeError("download failed") from e
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(HubUnavailable, match=r"cannot be reached.*data=text "
                                             r"data\.dataset\.paths=") as e:
        instantiate(compose_cfg([*TINY, "data=hf"], tmp_path).data).setup()
    checks.true(isinstance(e.value, DataError) and isinstance(e.value, RuntimeError),
                "a DataError (train.py prints it) and a RuntimeError (as before)")


def test_hf_no_dns_fails_at_once_and_cli_prints_no_traceback(tmp_path, monkeypatch, capsys,
                                                             checks):
    """Probe: ``python train.py data=hf`` with no network (the Hub's name does not resolve):
    it stops before the loader's ~30 s of retries, with ``error: data=hf: ...`` and no
    traceback; a missing dataset keeps a message of its own."""
    import datasets
    _online(monkeypatch)
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy"):
        monkeypatch.delenv(k, raising=False)

    def no_dns(*a, **k):
        raise socket.gaierror(-2, "Name or service not known")
    called = []
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: called.append(1))
    msg = str(train_py_exit([*TINY, "data=hf"], tmp_path, monkeypatch))
    checks.true(msg.startswith("error: data=hf: cannot load the Hugging Face dataset")
                and "does not resolve" in msg and "data=text" in msg, msg)
    checks.true(not called, "the loader was not called")
    checks.true("Traceback" not in capsys.readouterr().err, "no traceback")
    monkeypatch.setattr("memarch.data.text._hub_reachable", lambda: True)

    def missing(*a, **k):
        raise FileNotFoundError("Dataset 'nope/nope' doesn't exist on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(DataError, match=r"^data\.dataset\.name: no Hugging Face dataset"):
        instantiate(compose_cfg([*TINY, "data=hf", "data.dataset.name=nope/nope"],
                                tmp_path).data).setup()


# -- console ---------------------------------------------------------------------------
def test_plain_progress_lines_and_summary(tmp_path, capsys, checks):
    """Probe: a run whose stdout is not a terminal: no progress bar, a plain line every
    ``trainer.log_every_n_steps`` steps and after each validation, then the summary with
    the chance level and a resume hint."""
    res = run(compose_cfg([*TINY, "trainer.enable_progress_bar=true", "trainer.max_steps=4",
                           "trainer.log_every_n_steps=2", "trainer.val_check_interval=2"],
                          tmp_path))
    out = capsys.readouterr().out
    checks.true(not res["trainer"].progress_bar_callback, "progress bar off (not a TTY)")
    steps = [ln for ln in out.splitlines() if ln.startswith("step ")]
    checks.true([s.split()[1] for s in steps] == ["2/4", "4/4"], out)
    checks.true(all(" loss " in s and " lr " in s for s in steps), out)
    checks.true(sum(ln.startswith("validation at step") for ln in out.splitlines()) == 2, out)
    checks.true("(chance " in out and "nan" not in out, out)
    checks.true(f"train.py ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}" in out, out)


def test_text_data_summary_has_no_chance(tmp_path, capsys, checks):
    """Probe: ``data=text`` (no chance level defined) printed ``chance nan%``."""
    text = tmp_path / "a.txt"
    text.write_text("some words of text for a tiny run. " * 80)
    run(compose_cfg([*TINY, "data=text", f"data.dataset.paths=[{text}]",
                     "data.dataset.seq_len=32", "trainer.max_steps=2"], tmp_path / "run"))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("held-out accuracy"))
    checks.true("chance" not in line and "nan" not in line, line)


@pytest.mark.parametrize("override,want", [
    ("model.d_modle=32", "model.d_modle: unknown key; did you mean model.d_model?"),
    ("trainer.max_step=3", "trainer.max_step: unknown key; did you mean trainer.max_steps?"),
    ("optim.zzz=1", "optim.zzz: unknown key; optim has "),
])
def test_a_mistyped_key_names_the_closest_one_before_hydra(override, want, tmp_path,
                                                          monkeypatch):
    """A typo got Hydra's advice to append ``+model.d_modle=32`` (which adds the typo as a
    new key) before memarch's own "unknown key" error; train.py now catches it first."""
    code = str(train_py_exit([override], tmp_path / "run", monkeypatch))
    assert code.startswith(f"config error: {want}"), code
    assert f"+{override.split('=')[0]}=" in code, code       # how to add a key on purpose


def test_resuming_a_finished_run_says_how_to_train_further(tmp_path):
    """A first-hour friction: the printed resume command of a finished run did nothing
    ("max_steps=600 reached") and left an empty outputs folder; it is refused at start-up,
    naming the step and the command that trains further."""
    from memarch.lit.train import ConfigError, check_resume
    ck = tmp_path / "last.ckpt"
    torch.save({"global_step": 6, "loops": {}, "state_dict": {}}, ck)
    cfg = compose_cfg([*TINY, "trainer.max_steps=6", f"ckpt_path={ck}"], tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)at step 6 and trainer.max_steps=6: nothing left "
                                          r"to train.*ckpt_path=.*trainer.max_steps=12"):
        check_resume(cfg)
