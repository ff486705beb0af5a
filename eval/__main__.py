"""``python -m memarch.eval checkpoint=PATH [preset=auto|smoke|synthetic|longbench|
longbench_e|real] [tasks=[...]] [settings.<suite>.<key>=...] [longbench.<key>=...]
[model_overrides='{mixers.attn.window: 256, mixers.attn.n_sinks: 4}']``.

``model_overrides`` changes shape-free constructor arguments of the checkpoint's model before
it is built (``memarch.overrides``; StreamingLLM: a dense-trained model evaluated with a
window and sinks); a key that is not in the config or would change a parameter shape stops
the run before any suite.

Hydra entry over ``eval/configs/eval.yaml`` (installed as ``memarch/eval/configs/``, outside
train.py's config path); the default preset ``auto`` runs the suites that fit the model.
Results go to ``out_dir`` (see memarch.eval.run), created only when a file is written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def _new_dirs(out_dir) -> list[Path]:
    """``out_dir`` and its parents up to the first that exists (innermost first)."""
    if out_dir is None:
        return []
    new, p = [], Path(out_dir).absolute()
    while not p.exists() and p != p.parent:
        new.append(p)
        p = p.parent
    return new


def _remove_if_empty(dirs: list[Path]) -> None:
    """A failed run leaves no empty output folder (nor the empty parents it made)."""
    for d in dirs:
        with contextlib.suppress(OSError):          # not empty, or not there
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from memarch.eval.model import EvalModel
    from memarch.eval.run import evaluate, validate_tasks

    from memarch.overrides import parse_overrides
    c = OmegaConf.to_container(cfg, resolve=True)
    known = {"checkpoint", "tokenizer", "device", "dtype", "chunk_size", "tasks", "settings",
             "longbench", "out_dir", "model_overrides"}
    unknown = sorted(set(c) - known)
    new_dirs = _new_dirs(c.get("out_dir"))
    try:
        if unknown:
            raise ValueError(f"eval config: unknown key(s) {unknown}; expected {sorted(known)}")
        if c.get("checkpoint") in (None, "", "???"):
            raise ValueError("no checkpoint given: pass checkpoint=PATH (a training checkpoint, "
                             "e.g. outputs/DATE/TIME/checkpoints/last.ckpt, or a file made by "
                             "python -m memarch.convert)")
        overrides = parse_overrides(c.get("model_overrides"))     # a string or a dict
        validate_tasks(c["tasks"])
        model = EvalModel.from_checkpoint(c["checkpoint"], tokenizer=c["tokenizer"],
                                          device=c["device"], dtype=c["dtype"],
                                          chunk_size=c["chunk_size"], overrides=overrides)
        if overrides:
            print(f"memarch.eval: model_overrides {overrides}")
        evaluate(model, c["tasks"], c["out_dir"], settings=c["settings"],
                 longbench=c["longbench"])
    # ValueError includes memarch.checkpoint.CheckpointError (corrupt, truncated or unsafe
    # file) and memarch.config.TargetNotAllowedError; OSError an unreadable file
    except (ValueError, OSError) as e:
        _remove_if_empty(new_dirs)
        raise SystemExit(f"memarch.eval: {e}") from None
    except BaseException:
        _remove_if_empty(new_dirs)
        raise


if __name__ == "__main__":
    main()
