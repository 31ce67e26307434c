"""The language model: token embedding -> positions -> Layer x num_layers -> final norm -> logits.

    model = Model(ModelConfig(vocab_len=1024))
    logits, loss = model(input_ids, targets)      # (B, T, vocab), scalar

Every piece has a slow float64 twin in modules/reference.py that the tests hold it to.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from config import ModelConfig
from modules import mup
from modules.attention import AttentionInputs
from modules.kv_cache import KVCache
from modules.layer import Layer
from modules.logging import LoggingModule, log_io
from modules.norm import build_norm
from modules.positional import build_position_encoding


class Model(LoggingModule):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_len is None:
            raise ValueError("ModelConfig.vocab_len is None: set it from the tokenizer "
                             "(tools.get_tokenizer(cfg.tokenizer).vocab_len) before building the model")
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_len, cfg.dim)
        # pos_embedding: added to the residual stream ('learnable', 'Sinusoidal'); rope: applied inside attention
        self.pos_embedding, self.rope = build_position_encoding(cfg)
        self.embed_dropout = nn.Dropout(cfg.dropout_embed)
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = build_norm(cfg.norm_type, cfg.dim, cfg.norm_eps, cfg.norm_affine, cfg.norm_bias)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_len, bias=False)
        self.logit_multiplier = mup.output_multiplier(cfg)  # μP: 1/m (tied or not); exactly 1.0 under SP
        self.activation_checkpointing = False  # recompute each block in backward (set by train.py)
        self.attention_kernel = "auto"  # masked attention: 'auto', 'sdpa' or 'flex' (modules/attention.py)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # one tensor, two uses

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 init: N(0, 0.02); projections into the residual stream get 0.02/sqrt(2*layers)
        so the stream's variance doesn't grow with depth. μP: hidden matrices (every Linear but the output head)
        get std * sqrt(mup_base_dim / dim) (modules/mup.py); embeddings and the head keep std."""
        std = self.cfg.init_std
        if isinstance(module, nn.Linear):
            if module is not self.lm_head:
                std = mup.hidden_init_std(std, self.cfg)
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.cfg.num_layers)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    @log_io
    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *,
                positions: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False):
        """input_ids (B, T) -> (logits (B, T, vocab), loss or None).

        positions: (T,) or (B, T) positions of the tokens (default: after what the cache holds).
        doc_ids: (B, T) document numbers, to keep attention within documents (training).
        cache: a KVCache from new_cache(); filled and advanced by this call (generation). With fixed-slot
            writes (KVCache.start_static_writes) one token per row goes to the slot the cache holds as a tensor,
            so every call has the same shapes and a compiled decode step runs this very forward.
        last_only: compute logits for the last position only (generation).
        """
        cfg = self.cfg
        B, T = input_ids.shape
        if cache is not None and cache.write_slot is not None:
            if T != 1:
                raise ValueError(f"a cache with fixed-slot writes takes one token per row, not {T}")
            slots = cache.write_slot  # (1,) tensor: no Python number that changes between decode steps
        else:
            start = cache.length if cache is not None else 0
            if start + T > cfg.max_seq_len:
                raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={cfg.max_seq_len}")
            slots = torch.arange(start, start + T, device=input_ids.device)
        if positions is None:
            positions = slots

        x = self.embed_dropout(self.embed(input_ids, positions))
        rope = self.rope(positions) if self.rope is not None else None
        # what every layer's attention shares: masks, the cache (modules/attention.py decides how to use them)
        attn_inputs = AttentionInputs(slots, rope, doc_ids, cache, kernel=self.attention_kernel)

        checkpointing = self.activation_checkpointing and self.training
        if checkpointing:  # masks before the checkpointed layers: SelfAttention.prepare_mask says why
            for layer in self.layers:
                layer.attn.prepare_mask(attn_inputs)
        for layer in self.layers:
            if checkpointing:
                x = torch.utils.checkpoint.checkpoint(layer, x, attn_inputs, use_reentrant=False)
            else:
                x = layer(x, attn_inputs)
        attn_inputs.advance_cache()

        logits = self.output_logits(x[:, -1:] if last_only else x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> the residual stream (B, T, dim): token embeddings (+ positions if added here)."""
        x = self.token_embedding(input_ids)
        if self.cfg.scale_embeddings:
            x = x * mup.embedding_multiplier(self.cfg)  # sqrt(dim); μP: sqrt(mup_base_dim)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding(positions)
        return x

    def output_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream (..., dim) -> logits (..., vocab): final norm, output head, multipliers, cap."""
        logits = self.lm_head(self.final_norm(x))
        if self.logit_multiplier != 1.0:  # μP's output multiplier, modules/mup.py
            logits = logits * self.logit_multiplier
        if self.cfg.logit_softcap is not None:
            logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
        return logits

    def new_cache(self, batch_size: int, max_positions: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache of max_positions slots (default: the context) for generation (dtype: that of
        k/v, e.g. bfloat16 under autocast)."""
        cfg = self.cfg
        param = self.lm_head.weight
        return KVCache(cfg.num_layers, batch_size, max_positions or cfg.max_seq_len, cfg.num_kv_heads, cfg.head_dim,
                       device=param.device, dtype=dtype or param.dtype)

    def get_num_params(self, non_embedding: bool = False) -> int:
        """Parameters, counting tied weights once; non_embedding leaves out token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.token_embedding.weight.numel()
            if isinstance(self.pos_embedding, nn.Embedding):
                n -= self.pos_embedding.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6 per weight multiply-add in every matmul, plus
        attention scores and mixing over the keys each query sees on average (causal: about T/2)."""
        cfg = self.cfg
        T = seq_len or cfg.max_seq_len
        matmul_params = self.get_num_params(non_embedding=True)
        if self.lm_head.weight is self.token_embedding.weight:  # tied: not counted above, still a matmul
            matmul_params += self.lm_head.weight.numel()
        keys_seen = 0.0  # summed over layers: each may have its own window
        for layer in self.layers:
            window = layer.attn.sliding_window
            keys_seen += (T + 1) / 2 if window is None else min(window, (T + 1) / 2)
        attention = 2 * 2 * cfg.num_q_heads * cfg.head_dim * keys_seen  # QK^T and AV, forward
        return 6 * matmul_params + 3 * attention
