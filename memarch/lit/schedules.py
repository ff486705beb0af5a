"""Learning-rate schedules (multipliers of the optimizer's lr)."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer, *, total_steps: int, warmup_steps: int = 100,
                  min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine to ``min_lr_ratio`` at
    ``total_steps`` (constant afterwards)."""
    if total_steps < 1:
        raise ValueError(f"sched.total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"sched.warmup_steps must be >= 0, got {warmup_steps}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"sched.min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return LambdaLR(optimizer, f)
