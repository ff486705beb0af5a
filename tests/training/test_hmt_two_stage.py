"""HMT's two-stage training (memarch.lit.callbacks.HMTTwoStageBPTT): short BPTT windows for the
first ``steps`` optimizer steps, then the model's configured ``bptt_segments``; the stage
follows ``global_step``, so a resume from either stage continues in the right one, exactly."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from train_helpers import TINY, compose_cfg

from memarch.lit.callbacks import HMTTwoStageBPTT
from memarch.lit.train import ConfigError, check_config, run

CB = "+callbacks.hmt_two_stage"
COMMON = ["experiment=hmt_attention_tiny", *TINY, "model.bptt_segments=2",
          "model.num_mem_embed=2", "checkpoint.every_n_steps=1", "validate_at_end=false",
          "+sched.total_steps=4", "trainer.max_steps=4",
          f"{CB}._target_=memarch.lit.callbacks.HMTTwoStageBPTT", f"{CB}.steps=2",
          f"{CB}.bptt_segments=1"]


class _Windows(pl.Callback):
    """(global_step, the HMT's bptt_segments) at every training forward."""

    def __init__(self):
        self.seen, self.handle = [], None

    def on_fit_start(self, trainer, pl_module):
        def hook(net, args):
            if net.training:
                self.seen.append((trainer.global_step, net.bptt_segments))
        self.handle = pl_module.net.register_forward_pre_hook(hook)

    def on_fit_end(self, trainer, pl_module):
        self.handle.remove()


def _train(over, out):
    rec = _Windows()
    res = run(compose_cfg([*COMMON, *over], out), extra_callbacks=[rec])
    return res, rec.seen


def test_stages_follow_the_step_and_survive_resume(tmp_path, checks):
    """Steps 0, 1 train with 1-segment windows, steps 2, 3 with model.bptt_segments=2; a run
    resumed from the checkpoint of step 1 (stage 1) or step 3 (stage 2) trains the remaining
    steps in their stages and ends with the straight run's weights (deterministic)."""
    straight, seen = _train([], tmp_path / "a")
    checks.true(seen == [(0, 1), (1, 1), (2, 2), (3, 2)], f"windows {seen}")
    net = straight["module"].net
    checks.true(net.bptt_segments == 2 and net.num_mem_embed == 2,
                "the configured value is back after fit")
    want = {k: v.clone() for k, v in net.state_dict().items()}
    for step, rest in ((1, [(1, 1), (2, 2), (3, 2)]), (3, [(3, 2)])):
        ckpt = tmp_path / "a" / "checkpoints" / f"step_{step:06d}.ckpt"
        resumed, seen = _train([f"ckpt_path='{ckpt}'"], tmp_path / f"r{step}")
        checks.true(seen == rest, f"resumed from step {step}: windows {seen}")
        got = resumed["module"].net.state_dict()
        for k, v in want.items():
            checks.equal(got[k], v, f"resumed from step {step}: {k}")


def test_without_the_callback_the_model_window_is_used(tmp_path, checks):
    over = [o for o in COMMON if not o.startswith(CB)] + ["trainer.max_steps=2"]
    rec = _Windows()
    run(compose_cfg(over, tmp_path), extra_callbacks=[rec])
    checks.true(rec.seen == [(0, 2), (1, 2)], f"windows {rec.seen}")


@pytest.mark.parametrize("over, pattern", [
    ([f"{CB}.stages=3"], r"callbacks\.hmt_two_stage\.stages: unknown key \(.*steps, "
                         r"bptt_segments\)"),
    (["callbacks.hmt_two_stage.steps=abc"],
     r"callbacks\.hmt_two_stage\.steps: expected an int"),
    (["callbacks.hmt_two_stage.bptt_segments=true"],
     r"callbacks\.hmt_two_stage\.bptt_segments: expected"),
    (["model.num_mem_embed=x"], r"model\.num_mem_embed: expected an int"),
    (["model.num_mem_embed=true"], r"model\.num_mem_embed: expected an int"),
])
def test_config_keys_are_checked(over, pattern, tmp_path, checks):
    cfg = compose_cfg([*COMMON, *over], tmp_path)
    with pytest.raises(ConfigError, match=pattern):
        check_config(cfg)
    checks.true(True)


def test_bad_values_and_no_hmt(tmp_path, checks):
    for kw, name in (({"steps": 0, "bptt_segments": 1}, "steps"),
                     ({"steps": 3, "bptt_segments": 0}, "bptt_segments"),
                     ({"steps": True, "bptt_segments": 1}, "steps")):
        with pytest.raises(ValueError, match=f"HMTTwoStageBPTT: {name} must be a positive int"):
            HMTTwoStageBPTT(**kw)
    with pytest.raises(ConfigError, match="num_mem_embed must be a positive int"):
        run(compose_cfg([*COMMON, "model.num_mem_embed=0"], tmp_path / "e"))
    cfg = compose_cfg([*TINY, "trainer.max_steps=1", "validate_at_end=false",
                       *[o for o in COMMON if o.startswith(CB)]], tmp_path / "m")
    with pytest.raises(ValueError, match="HMTTwoStageBPTT .*the model has no HMT"):
        run(cfg)
    checks.true(True)
