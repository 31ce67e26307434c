"""Feed-forward block: up-project, nonlinearity, down-project; optionally gated (SwiGLU / GeGLU).

The float64 version written out by hand is modules/reference.py `mlp`; the tests compare the two.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from modules.choices import pick
from modules.logging import LoggingModule, log_io

# config.MLP_NONLINEARITIES name -> function. A new one: its name there, its function here (F.mish, or one
# you define above), and its written-out form in modules/reference.py ACTIVATIONS.
ACTIVATIONS = {"GeLU": F.gelu, "SiLU": F.silu, "ReLU": F.relu,
               "GeLU_tanh": functools.partial(F.gelu, approximate="tanh")}  # GPT-2's, so its weights run exactly


def activation(name: str):
    """The function for a config.MLP_NONLINEARITIES name; a ValueError names one missing from ACTIVATIONS."""
    return pick(ACTIVATIONS, "mlp_nonlinearity", name, listed_in="MLP_NONLINEARITIES", where="modules/mlp.py")


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
