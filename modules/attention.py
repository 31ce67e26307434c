"""Causal self-attention: all heads in one scaled_dot_product_attention call (flash / fused kernels).

Variants, all from the config: MHA / GQA / MQA (num_kv_heads), RoPE, qk_norm, sliding window,
document masking, and a KV cache for generation. To try a new attention idea, edit SelfAttention.forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from modules import mup
from modules.kv_cache import KVCache
from modules.logging import LoggingModule, log_io
from modules.norm import Norm
from modules.positional import apply_rope


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None = None,
                   doc_ids: torch.Tensor | None = None, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (B or 1, 1, Tq, Tk): True where a query may attend to a key.

    q_pos/k_pos are the slots of queries and keys in the sequence (Tq,) and (Tk,). Causal: key <= query;
    sliding window: query - key < window; doc_ids (B, T): same document only; key_valid (B, Tk): skip padding.
    """
    q, k = q_pos[:, None], k_pos[None, :]
    allowed = k <= q
    if sliding_window is not None:
        allowed = allowed & (q - k < sliding_window)
    allowed = allowed[None, None]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    if key_valid is not None:
        # a padding query would see no key at all (NaN softmax); let every query see itself
        allowed = (allowed & key_valid[:, None, None, :]) | (q == k)[None, None]
    return allowed


class SelfAttention(LoggingModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_q_heads, self.num_kv_heads, self.head_dim = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
        self.dropout = cfg.dropout_attn
        self.scale = mup.attention_scale(cfg)  # None: 1/sqrt(head_dim); μP: sqrt(base head_dim)/head_dim
        q_size, kv_size = cfg.num_q_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.qkv = nn.Linear(cfg.dim, q_size + 2 * kv_size, bias=cfg.linear_bias)  # one matmul for q, k, v
        self.out = nn.Linear(q_size, cfg.dim, bias=cfg.linear_bias)
        self.out.is_residual_projection = True  # scaled init, see Model._init_weights
        if cfg.qk_norm:  # https://arxiv.org/abs/2302.05442
            self.q_norm = Norm(cfg.head_dim, "RMSNorm", cfg.eps, affine=cfg.norm_affine)
            self.k_norm = Norm(cfg.head_dim, "RMSNorm", cfg.eps, affine=cfg.norm_affine)
        else:
            self.q_norm = self.k_norm = None

    @log_io
    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, layer_idx: int = 0) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim). mask None means plain causal attention (the fastest kernel)
        or, for a single token decoded with a cache, attention to every cached key."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.num_q_heads, self.head_dim).transpose(1, 2)   # (B, Hq, T, D)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,  # one query sees every key it is given
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_q_heads)  # GQA: kv heads are shared, not copied
        return self.out(y.transpose(1, 2).reshape(B, T, -1))
