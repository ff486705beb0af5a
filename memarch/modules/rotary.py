"""Rotary position embedding (RoPE; Su et al., 2021), GPT-NeoX "rotate-half" layout.

For a head vector split as x = [x1, x2] (halves of size D/2) at position p:
    rope(x, p) = [x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w)],  w_i = base^(-2i/D)
so rope(q, i) . rope(k, j) depends on i - j only.

Angles are computed in float64 and only then cast, so positions in the millions keep
their precision (a long stream decoded token by token must match the parallel pass).

Frequency scaling (``scaling``, Hugging Face's ``rope_scaling`` / ``rope_parameters``), for
pretrained checkpoints; only the types below, anything else is refused:

* ``{"rope_type": "linear", "factor": s}`` (position interpolation, Chen et al. 2023):
  w_i / s.
* ``{"rope_type": "llama3", "factor": s, "low_freq_factor": l, "high_freq_factor": h,
  "original_max_position_embeddings": L}`` (Llama 3.1): with wavelength lam_i = 2 pi / w_i,
  w_i stays where lam_i < L / h, becomes w_i / s where lam_i > L / l, and in between
  (1 - a) w_i / s + a w_i with a = (L / lam_i - l) / (h - l).
* ``None`` or ``{"rope_type": "default"}``: unscaled.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ROPE_SCALING_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def check_rope_scaling(owner: str, scaling) -> dict | None:
    """``scaling`` as a plain dict (None for unscaled), or ``ValueError`` naming what is off."""
    if scaling is None:
        return None
    if not hasattr(scaling, "items"):
        raise ValueError(f"{owner}: rope_scaling must be None or a dict with a 'rope_type', "
                         f"got {scaling!r}")
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALING_KEYS:
        raise ValueError(f"{owner}: rope_scaling type {kind!r} is not supported; supported: "
                         f"{sorted(ROPE_SCALING_KEYS)}")
    need = ROPE_SCALING_KEYS[kind]
    extra = sorted(set(scaling) - {"rope_type", "type", *need})
    if extra:
        raise ValueError(f"{owner}: rope_scaling of type {kind!r} takes {list(need)}; "
                         f"unsupported keys {extra}")
    for key in need:
        v = scaling.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{owner}: rope_scaling[{key!r}] must be a number > 0 for type "
                             f"{kind!r}, got {v!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError(f"{owner}: rope_scaling needs high_freq_factor > low_freq_factor, got "
                         f"{scaling['high_freq_factor']} and {scaling['low_freq_factor']}")
    return None if kind == "default" else {"rope_type": kind, **{k: scaling[k] for k in need}}


class Rotary(nn.Module):
    def __init__(self, head_dim: int, *, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"Rotary: head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        self.scaling = check_rope_scaling("Rotary", scaling)
        self._inv_freq: dict[tuple, torch.Tensor] = {}   # inv_freq, fp64, per device + setting
        self._rot_mats: dict[tuple, torch.Tensor] = {}   # rotation_matrix's cache

    def inv_freq(self, device=None) -> torch.Tensor:
        """w [D/2] in fp64, scaled as ``scaling`` says."""
        w = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64,
                                        device=device) / self.head_dim)   # [D/2]
        sc = self.scaling
        if sc is None:
            return w
        s = float(sc["factor"])
        if sc["rope_type"] == "linear":
            return w / s
        lo, hi = float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
        L = float(sc["original_max_position_embeddings"])
        lam = 2 * math.pi / w                                            # wavelengths
        a = (L / lam - lo) / (hi - lo)
        mid = (1 - a) * w / s + a * w
        return torch.where(lam < L / hi, w, torch.where(lam > L / lo, w / s, mid))

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: integer positions of any shape [...]; returns cos, sin of shape [..., D/2].
        The frequencies are made here in fp64 (not a buffer: ``model.to(bf16)`` would round
        them and move every position)."""
        key = (pos.device, self.base, repr(self.scaling))
        w = self._inv_freq.get(key)
        if w is None:                                   # made once per device and setting
            w = self._inv_freq[key] = self.inv_freq(pos.device)
        ang = pos.to(torch.float64)[..., None] * w
        return ang.cos().to(dtype), ang.sin().to(dtype)


def rotation_matrix(rotary: Rotary, position: int, dtype: torch.dtype,
                    device=None) -> torch.Tensor:
    """M [D, D] with ``x @ M == apply_rotary(x, *rotary.cos_sin(position))`` (up to rounding):
    one matmul instead of the elementwise rotation, for a position used again and again
    (a decode step's constant sink slot). Cached per (position, dtype, device, setting)."""
    key = (int(position), dtype, torch.device(device) if device is not None else None,
           rotary.base, repr(rotary.scaling))
    m = rotary._rot_mats.get(key)
    if m is None:
        cos, sin = rotary.cos_sin(torch.tensor(int(position), device=device), torch.float64)
        c, s = torch.diag(cos), torch.diag(sin)                          # [D/2, D/2]
        m = torch.cat([torch.cat([c, s], 1), torch.cat([-s, c], 1)], 0).to(dtype)
        rotary._rot_mats[key] = m
    return m


def full_width(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., D/2] -> (cat(cos, cos), cat(-sin, sin)) [..., D], the tables of
    ``rotate``: made once, they serve every tensor rotated at the same positions."""
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def rotate(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """``apply_rotary`` with the tables of ``full_width`` (bitwise equal: x1 c + x2 (-s) is
    x1 c - x2 s exactly): x cos2 + [x2, x1] sin2, five ops instead of eight."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos2 + torch.cat([x2, x1], dim=-1) * sin2


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., D]; cos/sin broadcastable to [..., D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
