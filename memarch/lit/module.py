"""LitLM: the LightningModule around a memarch network (injected, built by Hydra).

Loss = next-token cross-entropy over labels != -100 (+ aux_loss_weight * the model's
aux_loss, the sum of the mixers' aux losses, each already scaled by its mixer, e.g. MoM's
``aux_loss_coef``; so ``aux_loss_weight`` defaults to 1; logged apart as train/aux_loss).
AdamW with a weight-decay split (no decay for norms, biases, embeddings), a
warmup + cosine schedule, optional ``torch.compile``. With ``stateful=True`` the detached
model state is carried from one step to the next (truncated BPTT over the segments served
by ``memarch.data.StreamSegments``) and saved in checkpoints, so resume is exact.
A non-finite loss or gradient stops training with ``NonFiniteLossError`` before the
optimizer step, so no checkpoint ever holds the damaged weights.

Divergence guard (a finite blow-up): at every training step the loss and the largest
weight magnitude ``max |w|`` are compared with ``divergence_factor`` x the median of their
last ``divergence_window`` normal values (the medians floored at 0.1 nats and 1.0, so noise
near zero is no blow-up). A step where either is above it is out of range; its values do
not enter the windows. Once ``divergence_window`` steps have been seen (the warm-up),
``divergence_patience`` consecutive out-of-range steps stop training with
``LossBlowUpError``. The weights are checked as well as the loss because a run whose weights
explode (``optim.lr=1e3``) can saturate to a loss that looks normal. Where the training data
changes its task (a curriculum's next stage, ``LMDataModule.task_changes``), the loss window
starts afresh, with its warm-up: the loss of a harder task is no blow-up.

Every stop (a blow-up, a non-finite loss or gradient) names the last checkpoint saved
before the training left its range, with its step (a checkpoint of step s holds the weights
whose loss is computed at step s, so it counts as good once that step's loss and weights
were in range; out-of-range steps during the warm-up count too), and names ``last.ckpt``
when it was saved after that (with weights not safe to resume from). Step checkpoints are
never deleted (``save_top_k=-1``), so the named one is kept. ``divergence_factor=None``
turns the guard off (the stops then name the newest checkpoint saved before the stop's
step). Under DDP the guard follows the loss averaged over ranks and the largest weight over
ranks, so all ranks stop together.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from memarch import state as st
from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY
from memarch.data.synthetic import IGNORE_INDEX


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key as typed on the command
    line (``model.d_model: expected an int, got 'abc'``). train.py prints it without a
    traceback (``memarch.lit.train.ConfigError`` is this class)."""


class TrainingStopped(RuntimeError):
    """Training was stopped to protect the run; train.py prints the message."""


class NonFiniteLossError(TrainingStopped):
    pass


class LossBlowUpError(TrainingStopped):
    """A finite loss far above its running median for too many steps (see the docstring)."""


_MEDIAN_FLOOR = 0.1       # nats: below it a relative jump is noise, not a blow-up
_WEIGHT_FLOOR = 1.0       # max |w|: below it a relative jump is no blow-up (RMSNorm init: 1)


class LitLM(pl.LightningModule):
    def __init__(self, *, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, model_config: dict | None = None,
                 aux_loss_weight: float = 1.0, stateful: bool = False, compile: bool = False,
                 tokenizer: str | None = None, divergence_factor: float | None = 10.0,
                 divergence_window: int = 100, divergence_patience: int = 20):
        super().__init__()
        if divergence_factor is not None and not divergence_factor > 1:
            raise ValueError(f"module.divergence_factor must be > 1 (or null: no guard), got "
                             f"{divergence_factor}")
        for key, v in (("divergence_window", divergence_window),
                       ("divergence_patience", divergence_patience)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"module.{key} must be an int >= 1, got {v!r}")
        self.divergence_factor, self.divergence_patience = divergence_factor, divergence_patience
        self._loss_window: deque[float] = deque(maxlen=divergence_window)  # normal losses
        self._weight_window: deque[float] = deque(maxlen=divergence_window)  # their max|w|
        self._seen = 0                                       # steps checked (warm-up)
        self._task_changes: set[int] = set()    # steps where the training data's task changes
        self._blowup_steps = 0                               # consecutive steps over it
        self._blowup_since: int | None = None                # step the blow-up began
        self._blowup_what: str | None = None                 # what left its range there
        self._good: tuple[str, int | None] | None = None     # last checkpoint before it
        self._last_save_step: int | None = None              # step of this run's newest save
        self._resumed_step: int | None = None
        self.tokenizer_name = tokenizer                      # saved for evaluation
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model_config = model_config
        self.aux_loss_weight, self.stateful = aux_loss_weight, stateful
        # not registered as a submodule: the checkpoint holds the weights once, as net.*
        object.__setattr__(self, "_fwd", torch.compile(net) if compile else net)
        self._carry = None                                   # stateful training: model state
        self._resume_total_steps: int | None = None          # the schedule horizon, on resume

    # -- steps -------------------------------------------------------------------------
    def _loss(self, batch, state=None):
        ids, labels = batch["input_ids"], batch["labels"]
        logits, new_state, aux = self._fwd(ids, state)
        mask = labels != IGNORE_INDEX
        if mask.any():
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                                   ignore_index=IGNORE_INDEX)
        else:
            loss = logits.sum() * 0.0
        correct = ((logits.argmax(-1) == labels) & mask).sum()
        return loss, aux, correct, mask.sum(), new_state

    def training_step(self, batch, batch_idx):
        state = None
        if self.stateful and self._carry is not None and int(batch["segment"][0]) != 0:
            state = st.to(self._carry, batch["input_ids"].device)
        loss, aux, correct, n, new_state = self._loss(batch, state)
        if self.stateful:
            self._carry = st.detach(new_state)
        total = loss if aux is None else loss + self.aux_loss_weight * aux
        if not torch.isfinite(total):
            raise NonFiniteLossError(
                f"non-finite training loss ({total.item()}) at step {self.global_step}; "
                f"training stopped before the optimizer step; "
                f"{self._checkpoint_note(self.global_step)}. Lower optim.lr, raise "
                "sched.warmup_steps or check the data.")
        self._check_blowup(total)
        self.log("train/loss", loss, prog_bar=True)
        if aux is not None:
            self.log("train/aux_loss", aux)
        self.log("train/acc", correct / n.clamp(min=1))
        return total

    def _latest_checkpoint(self) -> tuple[str, int | None] | None:
        """(path, step) of the newest step checkpoint saved so far (or of the one this run
        resumed from)."""
        if self._trainer is None:
            return None
        if self._last_save_step is not None:
            for cb in self.trainer.checkpoint_callbacks:
                if getattr(cb, "best_model_path", ""):
                    return str(cb.best_model_path), self._last_save_step
        if self.trainer.ckpt_path:
            return str(self.trainer.ckpt_path), self._resumed_step
        return None

    def _newest_file(self) -> tuple[str, int] | None:
        """(path, step) of the checkpoint this run wrote last (``last.ckpt`` when saved)."""
        if self._trainer is None or self._last_save_step is None:
            return None
        for cb in self.trainer.checkpoint_callbacks:
            path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
            if path:
                return str(path), self._last_save_step
        return None

    def _checkpoint_note(self, step: int) -> str:
        """Which checkpoint to resume from after a stop at ``step``: the last one saved
        before the training left its range (the current step, if it had not before), and
        whether a newer one holds weights from after that."""
        first = self._blowup_since if self._blowup_since is not None else step
        parts = []
        if self._blowup_since is not None:
            parts.append(f"the training left its range at step {first} ({self._blowup_what})")
        if self._good is not None:
            path, at = self._good
            parts.append(f"the last checkpoint saved before step {first} is {path}"
                         + (f" (step {at})" if at is not None else "") + ": resume from it")
        else:
            parts.append(f"no checkpoint was saved before step {first}")
        newest = self._newest_file()
        if newest is not None and newest[1] >= first and (
                self._good is None or newest[0] != self._good[0]):
            parts.append(f"{Path(newest[0]).name} (step {newest[1]}) holds the weights of step "
                         f"{newest[1]}, not from before step {first}: do not resume from it")
        return "; ".join(parts)

    def _weights_max(self) -> torch.Tensor:
        """max |w| over the parameters (local shards under FSDP), as a 0-dim tensor."""
        ts = [p.detach() for p in self.parameters() if p.numel()]
        ts = [t.to_local() if hasattr(t, "to_local") else t for t in ts]
        ts = [t for t in ts if t.numel()]
        if not ts:
            return torch.zeros(())
        by_device: dict = {}
        for t in ts:
            by_device.setdefault((t.device, t.dtype), []).append(t)
        maxes = [torch.stack(torch._foreach_norm(g, float("inf"))).max().float()
                 for g in by_device.values()]
        dev = maxes[0].device
        return torch.stack([m.to(dev) for m in maxes]).max()

    def _check_blowup(self, total: torch.Tensor) -> None:
        if self.divergence_factor is None:
            self._good = self._latest_checkpoint()
            return
        if int(self.global_step) in self._task_changes:      # a new task: a new loss level
            self._task_changes.discard(int(self.global_step))   # once (not per micro-batch)
            self._loss_window.clear()
            self._seen, self._blowup_steps, self._blowup_since = 0, 0, None
        value, wmax = total.detach().float(), self._weights_max().to(total.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            value = self.trainer.strategy.reduce(value, reduce_op="mean")
            wmax = self.trainer.strategy.reduce(wmax, reduce_op="max")
        value, wmax = torch.stack([value.reshape(()), wmax.reshape(())]).tolist()
        lw, ww, f = self._loss_window, self._weight_window, self.divergence_factor
        warm = self._seen < lw.maxlen
        self._seen += 1
        median = statistics.median(lw) if lw else math.inf
        wmedian = statistics.median(ww) if ww else math.inf
        out = []
        if value > f * max(median, _MEDIAN_FLOOR):
            out.append(f"loss {value:.4g} above {f:g} x its running median {median:.4g}")
        if not math.isfinite(wmax) or wmax > f * max(wmedian, _WEIGHT_FLOOR):
            out.append(f"largest weight |w| {wmax:.4g} above {f:g} x its running median "
                       f"{wmedian:.4g}")
        if not out:
            lw.append(value)
            ww.append(wmax)
            self._blowup_steps, self._blowup_since, self._blowup_what = 0, None, None
            self._good = self._latest_checkpoint()
            return
        if self._blowup_steps == 0:
            self._blowup_since, self._blowup_what = self.global_step, "; ".join(out)
        self._blowup_steps += 1
        if warm or self._blowup_steps < self.divergence_patience:
            return
        what = (f"training loss blew up: {value:.4g} at step {self.global_step} is above "
                f"{f:g} x its running median {median:.4g}" if value > f * max(median,
                                                                           _MEDIAN_FLOOR)
                else f"the weights blew up: the largest |w| {wmax:.4g} at step "
                     f"{self.global_step} is above {f:g} x its running median {wmedian:.4g}")
        raise LossBlowUpError(
            f"{what} (last {lw.maxlen} normal steps), for {self._blowup_steps} consecutive "
            f"steps since step {self._blowup_since}; training stopped before the optimizer "
            f"step; {self._checkpoint_note(self.global_step)}. "
            "Lower optim.lr, raise sched.warmup_steps or check the data "
            "(module.divergence_factor/_window/_patience tune this guard).")

    def on_train_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        self._task_changes = set(dm.task_changes()) if hasattr(dm, "task_changes") else set()

    def on_before_optimizer_step(self, optimizer):
        norms = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
        if norms and not torch.isfinite(torch.stack(norms).sum()):
            raise NonFiniteLossError(
                f"non-finite gradient at step {self.global_step}; training stopped before the "
                f"optimizer step; {self._checkpoint_note(self.global_step)}. Lower optim.lr, "
                "raise sched.warmup_steps or check the data.")

    def validation_step(self, batch, batch_idx):
        loss, _, correct, n, _ = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", correct.float() / n.clamp(min=1), prog_bar=True, sync_dist=True,
                 reduce_fx="mean")

    # -- optimisation ------------------------------------------------------------------
    def param_groups(self, weight_decay: float):
        decay, no_decay, seen = [], [], set()
        for module in self.net.modules():
            for p in module.parameters(recurse=False):
                if id(p) in seen or not p.requires_grad:
                    continue
                seen.add(id(p))
                if isinstance(module, nn.Embedding) or p.ndim < 2:
                    no_decay.append(p)
                else:
                    decay.append(p)
        # tied head weight == embedding weight: seen first as the embedding (no decay)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        wd = getattr(self.optimizer_factory, "keywords", {}).get("weight_decay", 0.0)
        try:
            opt = self.optimizer_factory(self.param_groups(wd))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"optim: cannot build the optimizer: {type(e).__name__}: "
                              f"{e}{_named(self.optimizer_factory, 'optim', e)}") from e
        if self.scheduler_factory is None:
            return opt
        kw = {}
        if "total_steps" not in getattr(self.scheduler_factory, "keywords", {}):
            # default horizon: the run's max_steps; a resumed run keeps the horizon it was
            # started with (extending max_steps then continues at the final LR)
            kw["total_steps"] = self._resume_total_steps or (
                int(self.trainer.max_steps) if self.trainer.max_steps > 0
                else int(self.trainer.estimated_stepping_batches))
        self._total_steps = kw.get("total_steps")
        try:
            sched = self.scheduler_factory(opt, **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sched: cannot build the LR schedule: {type(e).__name__}: "
                              f"{e}{_named(self.scheduler_factory, 'sched', e)}") from e
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.model_config
        checkpoint[TOKENIZER_KEY] = self.tokenizer_name
        checkpoint["memarch_total_steps"] = getattr(self, "_total_steps", None)
        checkpoint["memarch_carry_state"] = self._gather_carry()
        self._last_save_step = int(self.global_step)
        checkpoint["memarch_divergence"] = {
            "window": [float(v) for v in self._loss_window],
            "weights": [float(v) for v in self._weight_window], "seen": self._seen,
            "steps": self._blowup_steps, "since": self._blowup_since, "what": self._blowup_what,
            "good": list(self._good) if self._good is not None else None}
        checkpoint["memarch_rng"] = {
            "torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def _gather_carry(self):
        """The carried state of every rank as plain tensors ([world, B, ...] per leaf), so
        the checkpoint loads with ``weights_only=True`` and each rank resumes its own streams."""
        if self._carry is None:
            return None
        leaves, _ = pytree.tree_flatten(self._carry)
        world = self.trainer.world_size if self._trainer is not None else 1
        out = []
        for t in leaves:
            if t is None:
                out.append(None)
            else:
                g = self.all_gather(t) if world > 1 else t[None]
                out.append(g.detach().cpu())
        return {"world_size": world, "leaves": out}

    def _scatter_carry(self, saved):
        if saved is None:
            return None
        world = self.trainer.world_size if self._trainer is not None else 1
        if saved["world_size"] != world:
            raise ValueError(
                f"checkpoint carries stateful-training state of {saved['world_size']} ranks; "
                f"resume it with the same number of devices (now {world})")
        rank = self.trainer.global_rank if self._trainer is not None else 0
        leaves = [None if t is None else t[rank] for t in saved["leaves"]]
        B = next(t.shape[0] for t in leaves if t is not None)
        _, spec = pytree.tree_flatten(self.net.init_state(B, device="meta"))
        return pytree.tree_unflatten(leaves, spec)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._resume_total_steps = checkpoint.get("memarch_total_steps")
        self._carry = self._scatter_carry(checkpoint.get("memarch_carry_state"))
        self._resumed_step = checkpoint.get("global_step")
        guard = checkpoint.get("memarch_divergence")
        if guard is not None:
            self._loss_window = deque(guard["window"], maxlen=self._loss_window.maxlen)
            self._weight_window = deque(guard.get("weights", []),
                                        maxlen=self._weight_window.maxlen)
            self._seen = guard.get("seen", len(guard["window"]))
            self._blowup_steps, self._blowup_since = guard["steps"], guard["since"]
            self._blowup_what = guard.get("what")
            good = guard.get("good")
            self._good = (str(good[0]), good[1]) if good else None
        rng = checkpoint.get("memarch_rng")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _named(factory, group: str, e: Exception) -> str:
    """`` (check optim.lr=-1)``: the settings of a Hydra partial whose value the error
    message quotes, so the message names the key."""
    kw = getattr(factory, "keywords", {}) or {}
    text = str(e)
    hits = [f"{group}.{k}={v!r}" for k, v in kw.items()
            if not isinstance(v, bool) and isinstance(v, (int, float, str)) and str(v) in text]
    return f" (check {', '.join(hits)})" if hits else ""
