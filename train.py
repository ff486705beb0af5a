"""Train a memarch model: ``python train.py experiment=hybrid_tiny [key=value ...]``.

A bad config value, a bad data file, a refused resume or a stopped run (non-finite loss,
loss blow-up) ends with a one-paragraph message naming the key, file or checkpoint, and
exit status 1 (no traceback).

Resume: ``python train.py ckpt_path=RUN/checkpoints/last.ckpt [key=value ...]`` restores
the run's own command-line overrides (``RUN/.hydra/overrides.yaml``) before Hydra composes
the config; overrides given now win over the restored ones. Without that file the model
config stored in the checkpoint is used (the other settings are the defaults).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

_SPECIAL_CKPT = ("last", "hpc", "best", "registry")
_STATE: dict = {}      # what restore_overrides did (read by main)


def _key(override: str) -> str:
    """The config key (or group) an override sets: ``+a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("~+")


def _value(override: str) -> str:
    """An override's value as Hydra reads it (quotes removed)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        v = OverridesParser.create().parse_override(override).value()
        return str(v)
    except Exception:  # noqa: BLE001 - fall back to the raw text
        return override.split("=", 1)[1].strip("'\"")


def _names_model(keys) -> bool:
    """Some override sets the model (a ``model`` key or group, or an experiment)."""
    return any(k in ("model", "experiment") or k.startswith(("model.", "model/"))
               for k in keys)


def _is_override(arg: str) -> bool:
    return not arg.startswith("-") and "=" in arg


def restore_overrides(argv: list[str]) -> list[str]:
    """``argv`` with the resumed run's saved overrides inserted before the user's ones (see
    the module docstring); prints one line saying what was restored and from where."""
    _STATE.clear()
    args = argv[1:]
    user = [a for a in args if _is_override(a)]
    ckpt = next((_value(a) for a in reversed(user) if _key(a) == "ckpt_path"), None)
    if not ckpt or ckpt in _SPECIAL_CKPT or ckpt == "null":
        return argv
    ckpt_p = Path(ckpt)
    saved = ckpt_p.parent.parent / ".hydra" / "overrides.yaml"
    user_keys = {_key(a) for a in user}
    _STATE.update(ckpt=ckpt, user_keys=user_keys)
    if not saved.is_file():
        if ckpt_p.is_file():
            _STATE["fallback"] = True    # main() takes the model config from the checkpoint
        return argv
    from omegaconf import OmegaConf
    try:
        old = [str(o) for o in (OmegaConf.load(saved) or [])]
    except Exception as e:  # noqa: BLE001 - unreadable: say so and go on without it
        print(f"resume: cannot read {saved} ({e}); the run's overrides are not restored",
              flush=True)
        _STATE["fallback"] = ckpt_p.is_file()
        return argv
    mine = [o for o in old if _key(o) != "ckpt_path" and re.split(r"[./]", _key(o))[0] != "hydra"]
    keep = [o for o in mine if _key(o) not in user_keys]
    replaced = [_key(o) for o in mine if _key(o) in user_keys]
    _STATE["restored"] = keep
    first = next(i for i, a in enumerate(args) if _is_override(a))
    print(f"resume: restored the run's overrides from {saved}: {' '.join(keep) or '(none)'}"
          + (f" (given now instead: {', '.join(replaced)})" if replaced else ""), flush=True)
    return [argv[0], *args[:first], *keep, *args[first:]]


def check_override_keys(argv: list[str]) -> None:
    """Refuse an override of a key the config does not have (``model.d_modle=32``) before
    Hydra does, naming the closest existing keys: Hydra's own message only suggests
    ``+model.d_modle=32``, which adds the typo as a new key. Other composition errors are
    left to Hydra, which names them well."""
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf
    overrides = [a for a in argv[1:] if _is_override(a)]
    if not overrides or any(a.startswith(("-", "hydra.")) for a in argv[1:]
                            if not _is_override(a)):
        return
    config_dir = str(Path(__file__).resolve().parent / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        try:
            compose("train", overrides=overrides)
            return
        except ConfigCompositionException as e:
            m = re.match(r"Could not override '([^']+)'", str(e))
            if not m or "not in struct" not in str(e.__cause__):
                return
            key = m.group(1)
        except Exception:  # noqa: BLE001 - any other problem: Hydra reports it below
            return
        try:
            cfg = compose("train", overrides=[o for o in overrides if _key(o) != key])
        except Exception:  # noqa: BLE001
            return
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    known = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
    close = difflib.get_close_matches(leaf, known, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join((parent + '.' if parent else '') + c for c in close)}?"
            if close else f"{parent or 'the config'} has {', '.join(sorted(known))}")
    raise SystemExit(f"config error: {key}: unknown key; {hint} (to add a new key on "
                     f"purpose, prefix it with '+': +{key}=...)")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from memarch.checkpoint import CheckpointError
    from memarch.data.text import DataError
    from memarch.lit.module import TrainingStopped
    from memarch.lit.train import ConfigError, adopt_checkpoint_model, run
    try:
        if _STATE.get("ckpt") and str(cfg.get("ckpt_path")) == _STATE["ckpt"]:
            # the model comes from the checkpoint unless someone names it: no saved
            # overrides (a copied checkpoint), or saved ones that name no model (a run that
            # itself took its model from a checkpoint: fine-tuning a converted one)
            restored = [_key(o) for o in _STATE.get("restored", [])]
            mine = _names_model(_STATE["user_keys"])
            if _STATE.get("fallback") or not _names_model(restored):
                adopt_checkpoint_model(cfg, keep_current=mine or _names_model(restored))
        run(cfg)
    except TrainingStopped as e:
        raise SystemExit(f"training stopped: {e}") from None
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    except (DataError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.argv[:] = restore_overrides(sys.argv)
    check_override_keys(sys.argv)
    main()
