"""HMT over the frozen real model (``configs/experiment/hmt_smollm2.yaml``): a few training
steps through train.py's code path (Hydra compose + ``memarch.lit.train.run``), at small
segment sizes on a slice of the shipped KJV text.

Marked ``real``; without the file (``make real-model``) it skips, saying so.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from train_helpers import compose_cfg

from memarch.checkpoint import load
from memarch.data.text import KJV, read_text
from memarch.lit.train import run

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def gguf_path(real_model_file):
    return real_model_file


class _Snapshot(pl.Callback):
    """The network's weights before the first step, and every step's training loss."""

    def __init__(self):
        self.before, self.losses = None, []

    def on_train_start(self, trainer, pl_module):
        self.before = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_hmt_smollm2_trains_memory_only_and_checkpoint_loads(gguf_path, tmp_path, checks):
    text = tmp_path / "kjv.txt"
    text.write_text(read_text(KJV)[:60_000], encoding="utf-8")   # ~16k tokens: 2 s to tokenize
    cfg = compose_cfg([
        "experiment=hmt_smollm2", f"model.backbone.path={gguf_path}",
        # 4 segments of 32: segments 2 and 3 recall over >= 2 memories, so W_q, W_k and T
        # get gradients (over one memory the softmax is constant)
        "model.segment_len=32", "model.sensory_len=8", "model.n_memories=4",
        f"data.dataset.paths=[{text}]", "data.dataset.seq_len=128",
        "data.dataset.val_fraction=0.05", "trainer.limit_val_batches=1",
        "trainer.max_steps=2", "trainer.val_check_interval=1000", "checkpoint.every_n_steps=2",
        "sched.warmup_steps=1", "logger={}", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1"], tmp_path / "run")
    snap = _Snapshot()
    result = run(cfg, extra_callbacks=[snap])
    checks.true(result["global_step"] == 2, f"2 steps, got {result['global_step']}")
    net = result["module"].net
    checks.true(len(snap.losses) == 2 and all(map(math.isfinite, snap.losses)),
                f"finite training losses, got {snap.losses}")
    checks.true(math.isfinite(result["val/loss"]), f"val/loss finite, got {result['val/loss']}")

    after = net.state_dict()
    extra = {n for n, _ in net.named_parameters() if not n.startswith("backbone.")}
    checks.true(extra == {"init_memory", "summary_prompt", "wq.weight", "wk.weight"},
                f"HMT's own parameters: {sorted(extra)}")
    for k, v in snap.before.items():
        if k.startswith("backbone."):          # frozen: bitwise the GGUF's weights
            checks.equal(after[k], v, f"backbone weight {k} changed")
        else:
            checks.true(not torch.equal(after[k], v), f"HMT parameter {k} did not train")
    checks.true(not any(p.requires_grad for p in net.backbone.parameters()),
                "backbone frozen (requires_grad=False)")

    ckpt = result["checkpoint"]
    loaded = load(ckpt).model
    checks.true(type(loaded).__name__ == "HMT" and loaded.segment_len == 32, "an HMT loads")
    got = loaded.state_dict()
    checks.true(set(got) == set(after), "same weights")
    for k in after:
        checks.equal(got[k], after[k], f"checkpoint weight {k}")
    ids = torch.randint(0, net.vocab_size, (1, 70))
    with torch.no_grad():
        checks.close(loaded(ids).logits, net.eval()(ids).logits, atol=1e-5,
                     msg="the loaded HMT computes the trained one's logits")
