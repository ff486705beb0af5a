"""Lightning glue (the only package besides train.py that imports Lightning)."""

from memarch.lit.callbacks import HMTTwoStageBPTT
from memarch.lit.data import LMDataModule, StepBatchSampler
from memarch.lit.module import LitLM, NonFiniteLossError
from memarch.lit.schedules import warmup_cosine

__all__ = ["HMTTwoStageBPTT", "LitLM", "NonFiniteLossError", "LMDataModule", "StepBatchSampler",
           "warmup_cosine"]
