"""Build everything from a composed Hydra config and train (train.py calls ``run``)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from memarch.lit.io import AtomicCheckpointIO
from memarch.lit.module import LitLM


def build(cfg: DictConfig, *, extra_callbacks=()):
    """(datamodule, module, trainer) from a composed config."""
    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    datamodule = instantiate(cfg.data)
    net = instantiate(cfg.model)
    module = LitLM(net=net, optimizer=instantiate(cfg.optim), scheduler=instantiate(cfg.sched),
                   model_config=model_config, stateful=cfg.data.stateful,
                   tokenizer=OmegaConf.select(cfg, "data.dataset.tokenizer", default=None),
                   **cfg.module)
    ckpt = ModelCheckpoint(dirpath=out / "checkpoints", filename="step_{step:06d}",
                           auto_insert_metric_name=False, save_last=True, save_top_k=-1,
                           every_n_train_steps=cfg.checkpoint.every_n_steps)
    callbacks = [ckpt, *[instantiate(c) for c in (cfg.get("callbacks") or {}).values()],
                 *extra_callbacks]
    loggers = [instantiate(lg) for lg in (cfg.get("logger") or {}).values()]
    plugins = [] if "fsdp" in str(cfg.trainer.get("strategy", "")) else [AtomicCheckpointIO()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          plugins=plugins)
    return datamodule, module, trainer


def run(cfg: DictConfig, *, extra_callbacks=()) -> dict:
    datamodule, module, trainer = build(cfg, extra_callbacks=extra_callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    result = {"global_step": trainer.global_step, "module": module, "trainer": trainer}
    if cfg.get("validate_at_end", True) and not trainer.fast_dev_run:
        metrics = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
        result.update({k: float(v) for k, v in metrics.items()})
    ckpt_cb = trainer.checkpoint_callback
    result["checkpoint"] = ckpt_cb.last_model_path if ckpt_cb else None
    if trainer.is_global_zero and "val/acc" in result:
        chance = getattr(datamodule.val_ds, "chance", math.nan)
        print(f"\nheld-out accuracy: {100 * result['val/acc']:.1f}% "
              f"(chance {100 * chance:.1f}%), val loss {result['val/loss']:.3f} "
              f"after {trainer.global_step} steps")
        if result["checkpoint"]:
            print(f"checkpoint: {result['checkpoint']}")
            print("load it for evaluation or generation:\n"
                  "  from memarch.checkpoint import load\n"
                  f"  model = load({result['checkpoint']!r}).model\n"
                  f"resume training: python train.py ckpt_path={result['checkpoint']}")
    return result
