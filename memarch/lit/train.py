"""Build everything from a composed Hydra config and train (train.py calls ``run``).

Before anything is built, ``check_config`` checks every config node against the signature
of what it configures (its ``_target_``; ``module`` against ``LitLM``): an unknown key or a
value of the wrong scalar type (``model.d_model=abc``) raises ``ConfigError`` naming the key
as typed on the command line, and an error raised while instantiating a group is re-raised
naming the group. Values are checked strictly (``memarch.overrides.value_fits``): a string or
an int where a bool is meant (``...memory.residual_norm=no``) and a bool where a number is
meant are refused; Titans MAG / MAC's ``memory`` dict is checked against ``NeuralMemory``,
and an ``impl`` against the kernel implementations. The data are set up at start-up
(``setup_data``, in ``run``) and a memory longer than the training sequence (a Titans chunk, a
MAC or HMT segment over ``data.dataset.seq_len``) is refused (``check_memory_lengths``), before
training. Resuming (``ckpt_path=...``) refuses a model config that differs from the
checkpoint's unless ``+allow_config_change=true``, and a checkpoint whose tensors do not
match their recorded digest (``memarch.checkpoint``).
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from memarch.lit.console import StepPrinter, command, setup_logging
from memarch.lit.io import AtomicCheckpointIO
from memarch.lit.module import ConfigError, LitLM
from memarch.models.hf import resolve_hf_configs
from memarch.overrides import (
    describe_leaves,
    kwarg_leaves,
    kwargs_owner,
    value_fits,
)

log = logging.getLogger(__name__)

# LitLM arguments that build() injects (not set in the ``module`` config section)
_INJECTED = ("net", "optimizer", "scheduler", "model_config", "stateful", "tokenizer")
_META = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# groups whose nodes configure a ``_target_`` (logger/callbacks: a dict of such nodes)
_GROUPS = ("model", "data", "optim", "sched", "trainer", "logger", "callbacks")


# -- config checks ---------------------------------------------------------------------
# the strict checker is memarch.overrides' (shared with model_overrides): no truthy strings or
# ints where a bool is meant, no bools where a number is meant


def check_value(key: str, value: Any, leaves: list | None, *, default: Any = None) -> None:
    """Raise ``ConfigError`` if ``value`` does not fit the scalar annotation ``leaves``."""
    if not value_fits(value, leaves, default=default):
        raise ConfigError(f"{key}: expected {describe_leaves(leaves)}, got {value!r}")


def _check_kwargs(node: dict, key: str, fn, skip=()) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = {n: p for n, p in sig.parameters.items() if n not in skip}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    what = getattr(fn, "__qualname__", str(fn))
    for k, v in node.items():
        if k in _META:
            continue
        p = params.get(k)
        if p is None or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            if var_kw:
                continue
            if k in skip:
                raise ConfigError(f"{key}.{k}: set by train.py, not a config key")
            raise ConfigError(f"{key}.{k}: unknown key ({what} takes {', '.join(named)})")
        leaves, default = kwarg_leaves(fn, k)
        check_value(f"{key}.{k}", v, leaves, default=default)
        if k == "impl" and isinstance(v, str) and \
                getattr(fn, "__module__", "").startswith("memarch."):
            from memarch.kernels._common import IMPLS
            if v not in IMPLS:
                raise ConfigError(f"{key}.impl: expected one of {IMPLS}, got {v!r}")


def _check_node(node: Any, key: str, fn=None, skip=()) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            try:
                fn = get_object(target)
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"{key}._target_: cannot import {target!r} "
                                  f"({type(e).__name__}: {e})") from None
        if fn is not None:
            _check_kwargs(node, key, fn, skip)
        for k, v in node.items():
            if k not in _META:
                _check_node(v, f"{key}.{k}", _sub_owner(node, k, v))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_node(v, f"{key}[{i}]")


def _sub_owner(node: dict, k: str, v: Any):
    """The class whose kwargs a plain dict ``node[k]`` holds (Titans MAG / MAC's ``memory``:
    NeuralMemory's), or None."""
    if not isinstance(v, dict) or "_target_" in v or not str(
            node.get("_target_", "")).startswith("memarch."):
        return None
    try:
        return kwargs_owner(v, node, k)
    except (ValueError, ImportError, AttributeError):
        return None


def _container(cfg: DictConfig, key: str) -> Any:
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=True)
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True) \
            if OmegaConf.is_config(node) else node
    except MissingMandatoryValue as e:
        full = getattr(e, "full_key", None) or key
        raise ConfigError(f"{full}: no value given; set it on the command line "
                          f"({full}=...)") from None


def check_config(cfg: DictConfig) -> None:
    """Check the composed config before anything is built (see the module docstring)."""
    for group in _GROUPS:
        node = _container(cfg, group)
        if group in ("logger", "callbacks"):
            for name, sub in (node or {}).items():
                _check_node(sub, f"{group}.{name}")
        elif node is not None:
            _check_node(node, group)
    _check_node(_container(cfg, "module") or {}, "module", LitLM, skip=_INJECTED)
    for key, kinds in (("seed", [int]), ("ckpt_path", [str, type(None)]),
                       ("validate_at_end", [bool]), ("allow_config_change", [bool, type(None)])):
        check_value(key, cfg.get(key), kinds)
    every = _container(cfg, "checkpoint.every_n_steps")
    check_value("checkpoint.every_n_steps", every, [int, type(None)])
    if every is not None and every < 1:
        raise ConfigError(f"checkpoint.every_n_steps must be >= 1 (or null: last.ckpt only), "
                          f"got {every}")
    max_steps = _container(cfg, "trainer.max_steps")
    if max_steps is None or max_steps < 1:
        raise ConfigError(f"trainer.max_steps must be >= 1 (training runs for that many "
                          f"optimizer steps; there are no epochs), got {max_steps}")


def _instantiate(key: str, node, **kwargs):
    """``hydra.utils.instantiate`` that names the config group when the target fails."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        target = OmegaConf.select(node, "_target_", default="?")
        raise ConfigError(f"{key}: cannot build {target}: {type(cause).__name__}: "
                          f"{cause}") from e


# -- resume ----------------------------------------------------------------------------
def config_diff(old: Any, new: Any, prefix: str = "model") -> list[str]:
    """``"key: checkpoint X, now Y"`` for every dotted key where two configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old:
                out.append(f"{prefix}.{k}: not in the checkpoint, now {new[k]!r}")
            elif k not in new:
                out.append(f"{prefix}.{k}: checkpoint {old[k]!r}, now not set")
            else:
                out += config_diff(old[k], new[k], f"{prefix}.{k}")
        return out
    if (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))
            and len(old) == len(new) and any(isinstance(x, dict) for x in old)):
        return [d for i, (a, b) in enumerate(zip(old, new))
                for d in config_diff(a, b, f"{prefix}[{i}]")]
    if old != new:
        return [f"{prefix}: checkpoint {old!r}, now {new!r}"]
    return []


def adopt_checkpoint_model(cfg: DictConfig, *, keep_current: bool = False) -> bool:
    """Resuming a checkpoint whose run overrides are not available (train.py found no
    ``.hydra/overrides.yaml`` next to it) or name no model (the run took its model from a
    checkpoint: ``memarch.convert``'s): take the model config stored in the checkpoint
    instead of the default one, with a log line. Its ``_target_``s must pass memarch's
    allow-list (Hydra then builds it). ``keep_current`` (model keys given on the
    command line) leaves ``cfg.model`` as it is, for ``check_resume`` to judge. Returns
    whether the model config was replaced."""
    ckpt = cfg.get("ckpt_path")
    if keep_current or not ckpt or not Path(str(ckpt)).is_file():
        return False
    from memarch.checkpoint import CONFIG_KEY, read
    try:
        stored = read(ckpt, mmap=True).get(CONFIG_KEY)
    except ValueError as e:
        raise ConfigError(f"ckpt_path: {e}") from e
    if not isinstance(stored, dict):
        return False
    from memarch.config import check_targets
    try:                     # Hydra builds cfg.model with no allow-list: check it here
        check_targets(stored)
    except (ValueError, ImportError, TypeError) as e:
        raise ConfigError(f"ckpt_path={ckpt}: refused: its model config names code that "
                          f"memarch does not build from a file: {e}") from None
    if not config_diff(stored, resolve_hf_configs(
            OmegaConf.to_container(cfg.model, resolve=True))):
        return False
    with open_dict(cfg):
        cfg.model = OmegaConf.create(stored)
        vocab = stored.get("vocab_size")
        if isinstance(vocab, int) and OmegaConf.select(cfg, "data.vocab_size") is not None:
            cfg.data.vocab_size = vocab
    log.warning("resume: no model named by the run's saved overrides (or none saved next to "
                "%s): the model config is taken from the checkpoint, the other settings are "
                "the run's overrides, the defaults and your command-line overrides", ckpt)
    return True


def check_resume(cfg: DictConfig) -> None:
    """Refuse to resume with a model config other than the checkpoint's (unless
    ``+allow_config_change=true``)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or str(ckpt) in ("last", "hpc", "best", "registry"):
        return
    from memarch.checkpoint import CONFIG_KEY, read
    if not Path(ckpt).exists():
        raise ConfigError(f"ckpt_path: checkpoint not found: {ckpt}")
    if Path(ckpt).is_dir():
        return                               # a sharded (FSDP) checkpoint: not readable here
    try:                                     # mapped, and checked against its digest
        ck = read(ckpt, mmap=True, verify=True)
    except ValueError as e:                  # memarch.checkpoint.CheckpointError: corrupt etc.
        raise ConfigError(f"ckpt_path: {e}") from e
    stored = ck.get(CONFIG_KEY)
    done, max_steps = ck.get("global_step"), cfg.get("trainer", {}).get("max_steps")
    if (isinstance(done, int) and isinstance(max_steps, int) and 0 <= max_steps <= done
            and "loops" in ck):              # a training checkpoint that is already there
        raise ConfigError(
            f"ckpt_path={ckpt}: the run is at step {done} and trainer.max_steps={max_steps}: "
            f"nothing left to train; to train further, raise it, e.g.\n  "
            f"{command(f'ckpt_path={ckpt}', f'trainer.max_steps={2 * max(done, 1)}')}")
    if stored is None:
        return                               # not a memarch checkpoint: nothing to compare
    now = resolve_hf_configs(OmegaConf.to_container(cfg.model, resolve=True))
    diff = config_diff(stored, now)
    if not diff:
        return
    if cfg.get("allow_config_change", False):
        log.warning("resuming %s with a changed model config (allow_config_change):\n  %s",
                    ckpt, "\n  ".join(diff))
        return
    raise ConfigError(
        f"ckpt_path={ckpt}: the model config differs from the checkpoint's:\n  "
        + "\n  ".join(diff)
        + "\nResume with the checkpoint's settings, or pass +allow_config_change=true to "
          "train the checkpoint's weights with the new config (fine-tuning).")


_TMP_GRACE_S = 120   # a .tmp written to this recently may belong to a live run's save


def remove_stray_tmp(*dirs: Path) -> list[Path]:
    """Delete ``*.ckpt.tmp`` left by a save killed mid-write (memarch.lit.io writes
    ``<path>.tmp`` and then renames it); logs each. Rank zero only. A file modified in the
    last two minutes is kept (with a log line): another run may still be writing it."""
    removed = []
    if rank_zero_only.rank != 0:
        return removed
    now = time.time()
    for d in dict.fromkeys(Path(d) for d in dirs):
        if not d.is_dir():
            continue
        for tmp in sorted(d.glob("*.ckpt.tmp")):
            if now - tmp.stat().st_mtime < _TMP_GRACE_S:
                log.warning("kept %s: modified in the last %d s, another run may be saving it",
                            tmp, _TMP_GRACE_S)
                continue
            tmp.unlink(missing_ok=True)
            log.warning("removed %s (a partial checkpoint from a save that was interrupted)",
                        tmp)
            removed.append(tmp)
    return removed


# -- build and run ---------------------------------------------------------------------
def build(cfg: DictConfig, *, extra_callbacks=()):
    """(datamodule, module, trainer) from a composed config. The progress bar
    (``trainer.enable_progress_bar``) is shown only when stdout is a terminal; otherwise,
    and whenever it is off, ``StepPrinter`` prints a plain line every
    ``trainer.log_every_n_steps`` steps."""
    check_config(cfg)
    setup_logging()
    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    model_config = resolve_hf_configs(OmegaConf.to_container(cfg.model, resolve=True))
    datamodule = _instantiate("data", cfg.data)
    net = _instantiate("model", cfg.model)
    check_memory_lengths(net, cfg, model_config)
    try:
        module = LitLM(net=net, optimizer=_instantiate("optim", cfg.optim),
                       scheduler=_instantiate("sched", cfg.sched), model_config=model_config,
                       stateful=cfg.data.stateful,
                       tokenizer=OmegaConf.select(cfg, "data.dataset.tokenizer", default=None),
                       **cfg.module)
    except ValueError as e:                  # LitLM's own checks name module.<key>
        raise ConfigError(str(e)) from e
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="step_{step:06d}",
                           auto_insert_metric_name=False, save_last=True, save_top_k=-1,
                           every_n_train_steps=cfg.checkpoint.every_n_steps)
    callbacks = [ckpt, *[_instantiate(f"callbacks.{k}", c)
                         for k, c in (cfg.get("callbacks") or {}).items()], *extra_callbacks]
    loggers = [_instantiate(f"logger.{k}", lg) for k, lg in (cfg.get("logger") or {}).items()]
    plugins = [] if "fsdp" in str(cfg.trainer.get("strategy", "")) else [AtomicCheckpointIO()]
    tty = hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
    bar = bool(cfg.trainer.get("enable_progress_bar", True)) and tty
    extra = {"enable_progress_bar": False} if not bar else {}
    if not bar:
        callbacks.append(StepPrinter(cfg.trainer.get("log_every_n_steps") or 50))
    trainer = _instantiate("trainer", cfg.trainer, callbacks=callbacks,
                           logger=loggers or False, plugins=plugins, **extra)
    return datamodule, module, trainer


def setup_data(datamodule) -> None:
    """Set the data up before training starts (Lightning's own ``setup`` call then finds it
    done), so a data setting that cannot work (``data.dataset.seq_len=0``, a
    ``data.vocab_size`` smaller than the data's) is a ``ConfigError`` naming the key, not a
    traceback from inside the trainer."""
    from memarch.data.text import DataError
    try:
        datamodule.setup("fit")
    except DataError:
        raise
    except ValueError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith("data") else f"data: {msg}") from e


def _find_keys(cfg: Any, leaf: str, value: Any, prefix: str = "model") -> list[str]:
    """Dotted keys under ``cfg`` whose last name is ``leaf`` and value ``value``."""
    out = []
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            if k == leaf and v == value and not isinstance(v, bool):
                out.append(f"{prefix}.{k}")
            elif isinstance(v, (dict, list)):
                out += _find_keys(v, leaf, value, f"{prefix}.{k}")
    elif isinstance(cfg, list):
        for i, v in enumerate(cfg):
            out += _find_keys(v, leaf, value, f"{prefix}[{i}]")
    return out


def _config_seq_len(cfg: DictConfig) -> int | None:
    v = OmegaConf.select(cfg, "data.dataset.seq_len", default=None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def check_memory_lengths(net, cfg: DictConfig, model_config: Any, datamodule=None) -> None:
    """Refuse a memory that would never run: a Titans ``NeuralMemory`` whose update chunk,
    or a MAC / HMT segment, is longer than the training sequence (``data.dataset.seq_len``;
    a memory is written once per chunk or segment, and its state starts empty for every
    sequence, also under stateful training). The message names both values. One exactly as
    long as the sequence is written at its end and never read: a warning."""
    seq_len = _config_seq_len(cfg)
    if seq_len is None:
        seq_len = getattr(getattr(datamodule, "train_ds", None), "seq_len", None)
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        return
    from memarch.mixers.titans import MemoryAsContext, NeuralMemory
    from memarch.models.hmt import HMT
    kinds = ((HMT, "segment_len", "writes its memory once per segment", "used"),
             (MemoryAsContext, "segment_len", "writes its memory once per segment",
              "written"),
             (NeuralMemory, "chunk_size", "writes its memory once per chunk", "written"))
    problems: dict[str, str] = {}
    warned: set[str] = set()
    for m in net.modules():
        for cls, attr, how, never in kinds:
            value = getattr(m, attr, None) if isinstance(m, cls) else None
            if not isinstance(value, int) or value < seq_len:
                continue
            keys = _find_keys(model_config, attr, value)
            name = " and ".join(keys) if keys else f"{cls.__name__} {attr}"
            if value == seq_len:
                if name not in warned:
                    warned.add(name)
                    log.warning("%s=%d equals the training sequence (data.dataset.seq_len=%d): "
                                "%s %s of %s tokens and reads it in the next one, so while "
                                "training it is written at the end of each sequence and "
                                "never read; a longer data.dataset.seq_len uses it", name,
                                value, seq_len, cls.__name__, how, attr)
                continue
            problems.setdefault(name, (
                f"{name}={value} is longer than the training sequence "
                f"(data.dataset.seq_len={seq_len}): {cls.__name__} {how} of {attr} tokens, "
                f"so it would never be {never}. Set {keys[0] if keys else attr} below {seq_len} "
                "or a longer data.dataset.seq_len"))
    if problems:
        raise ConfigError("; ".join(problems.values()))


def start_from_weights(cfg: DictConfig, module) -> bool:
    """``ckpt_path`` names a weights-only memarch checkpoint (``python -m memarch.convert``
    writes one; it has no optimizer or loop state to resume): load its weights into the
    network and return True, so the run starts at step 0 from them (fine-tuning)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or str(ckpt) in ("last", "hpc", "best", "registry") or \
            not Path(str(ckpt)).is_file():
        return False
    from memarch.checkpoint import TOKENIZER_KEY, read
    try:
        head = read(ckpt, mmap=True)
    except ValueError as e:
        raise ConfigError(f"ckpt_path: {e}") from e
    if "optimizer_states" in head or "state_dict" not in head:
        return False
    trained_tok = head.get(TOKENIZER_KEY)
    data_tok = OmegaConf.select(cfg, "data.dataset.tokenizer", default=None)
    if isinstance(trained_tok, dict) and data_tok in (None, "byte"):
        raise ConfigError(
            f"ckpt_path={ckpt} carries the tokenizer of {trained_tok.get('source')!r}, but "
            f"data.dataset.tokenizer is {data_tok!r}: pass data.dataset.tokenizer=<that "
            "tokenizer.json or folder> so the text is tokenized as the model was trained")
    sd = {k[len("net."):]: v for k, v in read(ckpt)["state_dict"].items()
          if k.startswith("net.")}
    try:
        module.net.load_state_dict(sd)
    except RuntimeError as e:
        raise ConfigError(f"ckpt_path={ckpt}: its weights do not fit the model: {e}") from None
    log.warning("ckpt_path=%s holds weights only (no optimizer state): training starts at "
                "step 0 from these weights (fine-tuning)", ckpt)
    return True


def run(cfg: DictConfig, *, extra_callbacks=()) -> dict:
    check_config(cfg)
    check_resume(cfg)
    datamodule, module, trainer = build(cfg, extra_callbacks=extra_callbacks)
    ckpt_path = cfg.get("ckpt_path")
    if start_from_weights(cfg, module):
        ckpt_path = None                     # fine-tuning: weights only, a fresh run
    setup_data(datamodule)
    if _config_seq_len(cfg) is None:         # the dataset's own length, now it is known
        check_memory_lengths(module.net, cfg, module.model_config, datamodule)
    dirs = [Path(cfg.paths.output_dir) / "checkpoints"]
    if ckpt_path and Path(ckpt_path).exists():
        dirs.append(Path(ckpt_path).parent)
    remove_stray_tmp(*dirs)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    result = {"global_step": trainer.global_step, "module": module, "trainer": trainer}
    if cfg.get("validate_at_end", True) and not trainer.fast_dev_run:
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        result.update({k: float(v) for k, v in metrics.items()})
    ckpt_cb = trainer.checkpoint_callback
    result["checkpoint"] = ckpt_cb.last_model_path if ckpt_cb else None
    result["max_steps"] = trainer.max_steps
    if trainer.is_global_zero:
        print_summary(result, getattr(datamodule.val_ds, "chance", None))
    return result


def print_summary(result: dict, chance: float | None = None) -> None:
    """The end-of-run lines: held-out accuracy (with chance level where the dataset defines
    one), the checkpoint and how to load it or resume from it."""
    if "val/acc" in result:
        where = f"(chance {100 * chance:.1f}%), " if chance is not None else ""
        print(f"\nheld-out accuracy: {100 * result['val/acc']:.1f}% {where}"
              f"val loss {result['val/loss']:.3f} after {result['global_step']} steps")
    ckpt = result.get("checkpoint")
    if ckpt:
        print(f"checkpoint: {ckpt}")
        print("load it for evaluation or generation:\n"
              "  from memarch.checkpoint import load\n"
              f"  model = load({ckpt!r}).model\n"
              + resume_hint(ckpt, result.get("global_step"), result.get("max_steps")))


def resume_hint(ckpt: str, step: int | None, max_steps: int | None) -> str:
    """How to go on from ``ckpt``: a run that reached ``trainer.max_steps`` trains further
    only with a larger one (resuming as it is would have nothing to do); an interrupted run
    resumes as it is."""
    if isinstance(step, int) and isinstance(max_steps, int) and 0 <= max_steps <= step:
        return ("train further (the run's settings are restored; the run reached "
                f"trainer.max_steps={max_steps}, so give a larger one):\n"
                f"  {command(f'ckpt_path={ckpt}', f'trainer.max_steps={2 * max(step, 1)}')}")
    return ("resume training (the run's settings are restored):\n"
            f"  {command(f'ckpt_path={ckpt}')}")
