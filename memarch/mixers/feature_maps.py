"""Feature maps phi for linear attention: phi(q) . phi(k) replaces exp(q . k / sqrt(d)).

* ``identity``: phi(x) = x
* ``elu``: phi(x) = elu(x) + 1 (Katharopoulos et al., 2006.16236)
* ``relu``: phi(x) = relu(x)
* ``taylor`` (BASED, 2402.18668): the second-order Taylor expansion of exp,
      phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]
  so that phi(q) . phi(k) = 1 + s + s^2 / 2 with s = q . k / sqrt(d).
  ``form="full"`` keeps all d^2 products (1 + d + d^2 features, BASED's code);
  ``form="unique"`` keeps the d(d+1)/2 products x_i x_j with i <= j, scaled by
  1/sqrt(2d) on the diagonal and 1/sqrt(d) off it (1 + d + d(d+1)/2 features): the same
  inner products with ~half the features, hence half the recurrent state.

Each map is a module with ``out_dim`` (features for input dim ``d``); it maps
``[..., d] -> [..., out_dim]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from memarch.kernels._common import check_int
from memarch.mixers.base import MAX_SCALARS

__all__ = ["FeatureMap", "TaylorFeatureMap", "make_feature_map", "FEATURE_MAPS"]


class FeatureMap(nn.Module):
    """Elementwise maps: identity, elu (+1), relu."""

    _FNS = {"identity": lambda x: x, "elu": lambda x: F.elu(x) + 1, "relu": F.relu}

    def __init__(self, dim: int, kind: str = "identity"):
        super().__init__()
        check_int("FeatureMap", "dim", dim, minimum=1)
        if not isinstance(kind, str) or kind not in self._FNS:
            raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {kind!r}")
        self.kind, self.in_dim, self.out_dim = kind, dim, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._FNS[self.kind](x)


class TaylorFeatureMap(nn.Module):
    def __init__(self, head_dim: int, form: str = "unique"):
        super().__init__()
        check_int("TaylorFeatureMap", "head_dim", head_dim, minimum=1)
        if 3 * head_dim * (head_dim + 1) // 2 > MAX_SCALARS:   # its index buffers: refuse first
            raise ValueError(f"TaylorFeatureMap: head_dim={head_dim} would make "
                             f"{head_dim * (head_dim + 1) // 2:.3g} quadratic features (index "
                             f"buffers of more than {MAX_SCALARS:.3g} entries): lower head_dim")
        if not isinstance(form, str) or form not in ("full", "unique"):
            raise ValueError(f"TaylorFeatureMap: form must be 'full' or 'unique', got {form!r}")
        d = head_dim
        self.in_dim, self.form = d, form
        if form == "full":
            self.out_dim = 1 + d + d * d
        else:
            iu = torch.triu_indices(d, d)                               # i <= j
            self.register_buffer("iu", iu, persistent=False)            # [2, d(d+1)/2]
            self.register_buffer("diag", iu[0] == iu[1], persistent=False)
            self.out_dim = 1 + d + iu.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:           # [..., d] -> [..., out_dim]
        d = self.in_dim
        one = torch.ones_like(x[..., :1])
        lin = x * d ** -0.25
        if self.form == "full":
            quad = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * d)
        else:
            quad = x[..., self.iu[0]] * x[..., self.iu[1]]
            quad = torch.where(self.diag, quad / math.sqrt(2 * d), quad / math.sqrt(d))
        return torch.cat([one, lin, quad], dim=-1)


FEATURE_MAPS = ("identity", "elu", "relu", "taylor")


def make_feature_map(kind: str, dim: int, *, taylor_form: str = "unique") -> nn.Module:
    if kind == "taylor":
        return TaylorFeatureMap(dim, form=taylor_form)
    return FeatureMap(dim, kind)
