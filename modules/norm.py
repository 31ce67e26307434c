"""Normalization: RMSNorm (Llama), LayerNorm (GPT-2) or CosineNorm (unit L2 norm), chosen by norm_type."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.logging import LoggingModule, log_io


class Norm(LoggingModule):
    def __init__(self, dim: int, norm_type: str, eps: float, affine: bool = True, bias: bool = False):
        super().__init__()
        self.dim, self.norm_type, self.eps = dim, norm_type, eps
        # nn.Parameter, so .to(device), the optimizer and state_dict all see them
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    @log_io
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_type == "LayerNorm":
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        if self.norm_type == "RMSNorm":
            x = F.rms_norm(x, (self.dim,), self.weight, self.eps)  # fused kernel; reference in tests
        else:  # CosineNorm: project onto the unit sphere (https://arxiv.org/abs/1702.05870)
            x = F.normalize(x, dim=-1, eps=self.eps)
            if self.weight is not None:
                x = x * self.weight
        return x + self.bias if self.bias is not None else x
