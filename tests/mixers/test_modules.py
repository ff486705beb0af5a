"""Building blocks against their formulas."""

from __future__ import annotations

import pytest
import torch
from reference import _rope, short_conv_ref

from memarch.mixers import ShortConv
from memarch.modules import RMSNorm, Rotary, SwiGLU, apply_rotary


@pytest.mark.parametrize("kw", [dict(kernel_size=4), dict(kernel_size=3, activation=None,
                                                          bias=False)])
def test_short_conv_matches_tap_sum(kw, checks):
    m = ShortConv(12, **kw).double()
    x = torch.randn(2, 17, 12, dtype=torch.float64)
    checks.close(m(x).y, short_conv_ref(m, x), atol=1e-12, msg="conv")


def test_rotary_matches_reference_and_is_relative(checks):
    rot = Rotary(8, base=10000.0)
    x = torch.randn(3, 8, dtype=torch.float64)
    for p in [0, 1, 37, 123_456]:
        c, s = rot.cos_sin(torch.tensor([p]), torch.float64)
        checks.close(apply_rotary(x, c, s), _rope(x, p, 10000.0), atol=1e-9, msg=f"pos {p}")
    q, k = torch.randn(2, 8, dtype=torch.float64)

    def score(i, j):
        ci, si = rot.cos_sin(torch.tensor(i), torch.float64)
        cj, sj = rot.cos_sin(torch.tensor(j), torch.float64)
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum()
    checks.close(score(10, 3), score(1_000_007, 1_000_000), atol=1e-9, msg="relative")


def test_rmsnorm_and_swiglu(checks):
    n = RMSNorm(6, eps=1e-6)
    x = torch.randn(4, 6)
    checks.close(n(x), x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt(), atol=1e-6, msg="rms")
    checks.true(SwiGLU(96).w1.out_features == 256, "8/3 * 96 = 256")
    checks.true(SwiGLU(100).w1.out_features == 320, "ceil(266 / 64) * 64")
