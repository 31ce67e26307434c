"""One transformer block: pre-norm residual attention, then pre-norm residual MLP."""
from __future__ import annotations

import torch
from torch import nn

from config import ModelConfig
from modules.attention import AttentionInputs, SelfAttention
from modules.logging import LoggingModule, log_io
from modules.mlp import MLP
from modules.norm import build_norm


class Layer(LoggingModule):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # 0 = nearest the embeddings; per-layer variants key on it

        def norm():
            return build_norm(cfg.norm_type, cfg.dim, cfg.norm_eps, cfg.norm_affine, cfg.norm_bias)

        self.attn_norm, self.attn = norm(), SelfAttention(cfg, layer_idx)
        self.mlp_norm, self.mlp = norm(), MLP(cfg)
        # post_sublayer_norm: also normalize each sublayer's output before the add (Gemma-2's "sandwich",
        # https://arxiv.org/abs/2408.00118)
        self.attn_out_norm = norm() if cfg.post_sublayer_norm else nn.Identity()
        self.mlp_out_norm = norm() if cfg.post_sublayer_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout_resid)

    @log_io
    def forward(self, x: torch.Tensor, attn_inputs: AttentionInputs | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn_out_norm(self.attn(self.attn_norm(x), attn_inputs)))
        x = x + self.dropout(self.mlp_out_norm(self.mlp(self.mlp_norm(x))))
        return x
