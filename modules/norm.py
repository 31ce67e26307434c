"""Normalization, one class per norm_type: RMSNorm (Llama), LayerNorm (GPT-2), CosineNorm (unit L2 norm).

    norm = build_norm("RMSNorm", dim=128, eps=1e-6)      # NORMS maps each config name to its class

The float64 versions written out by hand are in modules/reference.py (`norm`); the tests compare the two.
To add a norm: a subclass here, its name in NORMS and in config.NORM_TYPES, and its reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.choices import pick
from modules.logging import LoggingModule, log_io


class Norm(LoggingModule):
    """What every norm shares: the width, eps, and an optional learnable scale (weight) and shift (bias)."""

    def __init__(self, dim: int, eps: float, affine: bool = True, bias: bool = False):
        super().__init__()
        self.dim, self.eps = dim, eps
        # nn.Parameter, so .to(device), the optimizer and state_dict all see them
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def scale_and_shift(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            x = x * self.weight
        return x + self.bias if self.bias is not None else x


class RMSNorm(Norm):
    """x / sqrt(mean(x^2) + eps): no centering (https://arxiv.org/abs/1910.07467)."""

    @log_io
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(x, (self.dim,), self.weight, self.eps)  # fused kernel, scale included
        return x + self.bias if self.bias is not None else x


class LayerNorm(Norm):
    """(x - mean) / sqrt(var + eps) (https://arxiv.org/abs/1607.06450)."""

    @log_io
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


class CosineNorm(Norm):
    """Project onto the unit sphere: x / |x| (https://arxiv.org/abs/1702.05870)."""

    @log_io
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale_and_shift(F.normalize(x, dim=-1, eps=self.eps))


NORMS = {"RMSNorm": RMSNorm, "LayerNorm": LayerNorm, "CosineNorm": CosineNorm}


def build_norm(norm_type: str, dim: int, eps: float, affine: bool = True, bias: bool = False) -> Norm:
    """The norm named by config.NORM_TYPES; a ValueError names one without a class in NORMS."""
    cls = pick(NORMS, "norm_type", norm_type, listed_in="NORM_TYPES", where="modules/norm.py")
    return cls(dim, eps, affine, bias)
