"""One transformer block: pre-norm residual attention, then pre-norm residual MLP."""
from __future__ import annotations

import torch
from torch import nn

from config import ModelConfig
from modules.attention import SelfAttention
from modules.kv_cache import KVCache
from modules.logging import LoggingModule, log_io
from modules.mlp import MLP
from modules.norm import Norm


class Layer(LoggingModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()

        def norm():
            return Norm(cfg.dim, cfg.norm_type, cfg.eps, cfg.norm_affine, cfg.norm_bias)

        self.attn_norm, self.attn = norm(), SelfAttention(cfg)
        self.mlp_norm, self.mlp = norm(), MLP(cfg)
        # second_resid_norm: also normalize each sublayer's output before the add (Gemma-2 "sandwich")
        self.attn_out_norm = norm() if cfg.second_resid_norm else nn.Identity()
        self.mlp_out_norm = norm() if cfg.second_resid_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout_resid)

    @log_io
    def forward(self, x: torch.Tensor, rope=None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        x = x + self.dropout(self.attn_out_norm(self.attn(self.attn_norm(x), rope, mask, cache, layer_idx)))
        x = x + self.dropout(self.mlp_out_norm(self.mlp(self.mlp_norm(x))))
        return x
