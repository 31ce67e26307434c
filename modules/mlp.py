"""Feed-forward block: up-project, nonlinearity, down-project; optionally gated (SwiGLU / GeGLU)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from modules.logging import LoggingModule, log_io


def activation(name: str):
    """config.MLP_NONLINEARITIES names map to torch.nn.functional by lower case: 'GeLU' -> F.gelu."""
    if name == "GeLU_tanh":  # GPT-2's tanh approximation of GeLU, so imported GPT-2 weights run exactly
        return functools.partial(F.gelu, approximate="tanh")
    return getattr(F, name.lower())


class MLP(LoggingModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_hidden_dim
        self.gated = cfg.mlp_gated
        self.act = activation(cfg.mlp_nonlinearity)
        # gated: one matmul makes both the gate and the value (https://arxiv.org/abs/2002.05202)
        self.up = nn.Linear(cfg.dim, hidden * (2 if self.gated else 1), bias=cfg.linear_bias)
        self.down = nn.Linear(hidden, cfg.dim, bias=cfg.linear_bias)
        self.down.is_residual_projection = True  # scaled init, see Model._init_weights

    @log_io
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = self.act(gate) * value
        else:
            h = self.act(h)
        return self.down(h)
