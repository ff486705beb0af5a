"""Training callbacks configured from ``callbacks.<name>`` (``_target_`` plus the
constructor's kwargs; ``memarch.lit.train.check_config`` refuses unknown keys).

``HMTTwoStageBPTT``: HMT's two-stage training (He et al., 2405.06067): short
backpropagation unrolls first, then long ones. Enable it with::

    callbacks:
      hmt_two_stage:
        _target_: memarch.lit.callbacks.HMTTwoStageBPTT
        steps: 300             # stage 1: optimizer steps 0 .. steps-1
        bptt_segments: 1       # the stage-1 window

or on the command line: ``+callbacks.hmt_two_stage._target_=memarch.lit.callbacks.HMTTwoStageBPTT
+callbacks.hmt_two_stage.steps=300 +callbacks.hmt_two_stage.bptt_segments=1``.
"""

from __future__ import annotations

import logging

import lightning.pytorch as pl

from memarch.mixers.base import check_positive_int

__all__ = ["HMTTwoStageBPTT"]

log = logging.getLogger(__name__)


class HMTTwoStageBPTT(pl.Callback):
    """Train every HMT in the network with ``bptt_segments`` segments per backpropagation
    window for the first ``steps`` optimizer steps (stage 1), then with the model's
    configured ``bptt_segments`` (``model.bptt_segments``; None: the whole training call)
    for the rest of the run (stage 2).

    HMT-pytorch runs the two stages as separate runs, each with its own ``--bptt_depth``:
    ``--hmt_stage_1`` trains the memory cell without the memory recall (a
    ``RecurrentWrapper`` with no cross-attention), ``--hmt_stage_2 --load_from_ckpt`` loads it
    and adds the recall. Departure: here only the window changes, the recall (and every
    parameter) trains in both stages.

    One run does both: the stage of every training batch is decided from
    ``trainer.global_step`` (optimizer steps done), so a run resumed from a checkpoint of
    either stage continues in the right stage, and nothing is saved in the checkpoint. Only
    an attribute is set (no randomness), so training stays deterministic. At the end of
    ``fit`` the configured value is restored.
    """

    def __init__(self, *, steps: int, bptt_segments: int):
        super().__init__()
        check_positive_int("HMTTwoStageBPTT", "steps", steps)
        check_positive_int("HMTTwoStageBPTT", "bptt_segments", bptt_segments)
        self.steps, self.bptt_segments = steps, bptt_segments
        self._configured: dict[int, int | None] = {}     # id(HMT) -> its model.bptt_segments
        self._hmts: list = []
        self._stage: int | None = None

    def _find(self, pl_module) -> list:
        from memarch.models.hmt import HMT
        return [m for m in pl_module.modules() if isinstance(m, HMT)]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._hmts = self._find(pl_module)
        if not self._hmts:
            raise ValueError("HMTTwoStageBPTT (callbacks): the model has no HMT "
                             "(model=hmt); remove the callback or train an HMT")
        for m in self._hmts:
            self._configured.setdefault(id(m), m.bptt_segments)

    def stage_at(self, global_step: int) -> int:
        """1 while fewer than ``steps`` optimizer steps are done, else 2."""
        return 1 if global_step < self.steps else 2

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        stage = self.stage_at(trainer.global_step)
        for m in self._hmts:
            m.bptt_segments = (self.bptt_segments if stage == 1
                               else self._configured[id(m)])
        if stage != self._stage:
            log.info("HMT two-stage training: stage %d from step %d (bptt_segments=%s)",
                     stage, trainer.global_step,
                     self.bptt_segments if stage == 1 else self._configured[id(self._hmts[0])])
            self._stage = stage

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        for m in self._hmts:
            m.bptt_segments = self._configured[id(m)]
        self._stage = None
