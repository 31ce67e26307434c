"""Causal self-attention: all heads in one fused call, scaled_dot_product_attention (SDPA) or FlexAttention.

Variants, all from the config: MHA / GQA / MQA (num_kv_heads), RoPE, qk_norm, sliding window,
document masking, and a KV cache for generation. Everything about who attends to whom lives in this file:
the mask (or SDPA's is_causal shortcut), the kernel that applies it, and the KV cache's writes and reads.

What the SDPA call computes, written out (modules/reference.py `attention` does it in float64; the
tests compare the two):

    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)   # (B, heads, T_queries, T_keys)
    scores = scores.masked_fill(~allowed, float("-inf"))     # allowed: attention_mask() below
    y = torch.softmax(scores, dim=-1) @ v                    # (B, heads, T_queries, head_dim)

To try an attention idea, edit SelfAttention. Each layer knows its index, so a per-layer variant is a
local edit in SelfAttention.__init__ (e.g. Gemma-2's sliding window on every other layer:
`self.sliding_window = cfg.sliding_window if layer_idx % 2 == 0 else None`).

Which kernel (choose_kernel below, one rule for every layer): plain causal attention is SDPA with
is_causal and no mask, which on a GPU runs the flash (or cuDNN) kernel. Document masking and sliding windows
need a mask, and an explicit mask forces SDPA off flash onto a slower kernel that reads the whole (T, T)
mask; so on CUDA those cases run FlexAttention (https://pytorch.org/blog/flexattention/), whose block mask
lets the fused kernel skip the blocks nobody attends to. FlexAttention has no dropout, no backward on CPUs,
needs head_dim >= 16 on CUDA and is fast only compiled, so everywhere else the explicit mask goes to SDPA.
`Model.attention_kernel` ("auto", "sdpa", "flex") overrides the rule, e.g. to compare the two (bench/gpu_check.py
does).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from config import ModelConfig
from modules import mup
from modules.kv_cache import KVCache
from modules.logging import LoggingModule, log_io
from modules.norm import RMSNorm
from modules.positional import apply_rope

try:  # FlexAttention: torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None

ATTENTION_KERNELS = ("auto", "sdpa", "flex")  # Model.attention_kernel: the rule below, or one kernel where it applies


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


FLEX_MIN_HEAD_DIM_CUDA = 16  # the Triton kernels' matrix instructions need at least this head_dim


def choose_kernel(requested: str, device: torch.device, masked: bool, dropout: float, head_dim: int) -> str:
    """'flex' or 'sdpa' for one attention call. masked: it needs a mask beyond plain causality (documents, a
    sliding window) and has no KV cache; dropout: the attention dropout in effect (0 in eval mode).

    'sdpa' always; 'flex' FlexAttention wherever a mask is needed; 'auto' FlexAttention for masked attention on
    CUDA without dropout and with head_dim >= 16, SDPA everywhere else (plain causal SDPA is already flash)."""
    if requested not in ATTENTION_KERNELS:
        raise ValueError(f"attention_kernel={requested!r} is unknown: allowed values are "
                         f"{', '.join(map(repr, ATTENTION_KERNELS))}")
    if requested == "sdpa" or not masked:
        return "sdpa"
    cuda = device.type == "cuda"
    if requested == "auto":
        usable = flex_attention is not None and dropout == 0 and head_dim >= FLEX_MIN_HEAD_DIM_CUDA
        return "flex" if cuda and usable else "sdpa"
    if flex_attention is None:
        raise ValueError(f"attention_kernel='flex' needs FlexAttention (torch >= 2.5); this is torch "
                         f"{torch.__version__}: use 'auto' or 'sdpa'")
    if dropout > 0:
        raise ValueError("attention_kernel='flex': FlexAttention has no attention dropout; set dropout_attn=0 "
                         "or use attention_kernel='auto' (SDPA with an explicit mask)")
    if cuda and head_dim < FLEX_MIN_HEAD_DIM_CUDA:
        raise ValueError(f"attention_kernel='flex': on CUDA FlexAttention needs head_dim >= "
                         f"{FLEX_MIN_HEAD_DIM_CUDA}, this model has {head_dim}; use 'auto' or 'sdpa'")
    return "flex"


def flex_block_mask(T: int, sliding_window: int | None, doc_ids: torch.Tensor | None, device: torch.device):
    """FlexAttention's BlockMask for T queries over the same T keys: the rule of attention_mask() as a
    mask_mod (called with index tensors), which create_block_mask turns into the list of (128 x 128) blocks
    that hold any allowed pair; fully masked blocks are never computed."""
    def allowed(b, h, q, k):
        ok = k <= q
        if sliding_window is not None:
            ok = ok & (q - k < sliding_window)
        if doc_ids is not None:
            ok = ok & (doc_ids[b, q] == doc_ids[b, k])
        return ok

    batch = doc_ids.shape[0] if doc_ids is not None else None  # None: one mask shared by every row
    return create_block_mask(allowed, batch, None, T, T, device=device)


_compiled_flex = None


def flex_attention_call(device: torch.device):
    """flex_attention for tensors on `device`, compiled when called outside torch.compile on CUDA: uncompiled
    it falls back to an unfused version that builds the whole score matrix. Inside a compiled model the
    model's compile fuses it; on a CPU (forward only) the unfused version is what runs."""
    global _compiled_flex
    if torch.compiler.is_compiling() or device.type != "cuda":
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


class AttentionInputs:
    """What every attention layer of one forward shares: the slots of this call's tokens, the RoPE rotations,
    document ids and the KV cache. Each layer asks it for the mask that fits its own sliding window
    (built once per forward and window) and for its keys and values through the cache."""

    def __init__(self, query_slots: torch.Tensor, rope: torch.Tensor | None = None,
                 doc_ids: torch.Tensor | None = None, cache: KVCache | None = None, kernel: str = "auto"):
        """query_slots (T,): positions start..start+T-1 in the sequence (start = what the cache holds).
        kernel: 'auto', 'sdpa' or 'flex' (choose_kernel)."""
        self.query_slots, self.rope, self.doc_ids, self.cache = query_slots, rope, doc_ids, cache
        self.kernel = kernel
        self.start = cache.length if cache is not None else 0
        self.end = self.start + len(query_slots)
        if cache is not None and doc_ids is not None:
            raise ValueError("doc_ids (document masking) is for training; generation with a KV cache takes none")
        self._masks = {}  # sliding_window -> (mask, is_causal)
        self._block_masks = {}  # sliding_window -> FlexAttention BlockMask

    def keys_values(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Without a cache, k and v as given. With one, write them after what it holds and return every
        position's (B, kv_heads, start + T, head_dim): a new token attends to the whole prefix."""
        if self.cache is None:
            return k, v
        all_k, all_v = self.cache.update(layer_idx, k, v)
        return all_k.to(k.dtype), all_v.to(v.dtype)

    def advance_cache(self) -> None:
        """Called once every layer has written this call's keys and values."""
        if self.cache is not None:
            self.cache.advance(self.end - self.start)

    def kernel_for(self, sliding_window: int | None, dropout: float, head_dim: int) -> str:
        """'flex' or 'sdpa' for a layer with this window, attention dropout and head_dim (choose_kernel)."""
        masked = self.cache is None and (self.doc_ids is not None or sliding_window is not None)
        return choose_kernel(self.kernel, self.query_slots.device, masked, dropout, head_dim)

    def block_mask(self, sliding_window: int | None):
        """FlexAttention's block mask for a layer with this window (built once per forward and window)."""
        if sliding_window not in self._block_masks:
            self._block_masks[sliding_window] = flex_block_mask(self.end - self.start, sliding_window, self.doc_ids,
                                                                self.query_slots.device)
        return self._block_masks[sliding_window]

    def mask(self, sliding_window: int | None) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for SDPA: a boolean mask, or None and SDPA's built-in causal rule."""
        if sliding_window not in self._masks:
            self._masks[sliding_window] = self._build_mask(sliding_window)
        return self._masks[sliding_window]

    def _build_mask(self, sliding_window: int | None) -> tuple[torch.Tensor | None, bool]:
        T, cache = self.end - self.start, self.cache
        if cache is not None and cache.write_slot is not None:  # fixed-slot decode: every slot, unfilled hidden
            return cache.static_attention_mask(sliding_window), False
        # No mask at all is SDPA's fastest path. It is exact when nothing but causality restricts attention and
        # the keys are exactly these T tokens (no cache, or a prefill from slot 0), or when one new token may
        # see every cached key. Padding in the cache (key_valid) always needs the mask.
        cache_is_causal = cache is None or ((self.start == 0 or T == 1) and cache.all_valid())
        if cache_is_causal and self.doc_ids is None and sliding_window is None:
            return None, T > 1
        key_slots = torch.arange(self.end, device=self.query_slots.device)
        key_valid = cache.key_valid[:, :self.end] if cache is not None else None
        return attention_mask(self.query_slots, key_slots, sliding_window, self.doc_ids, key_valid), False


class SelfAttention(LoggingModule):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx  # this layer's slot in the KV cache
        self.num_q_heads, self.num_kv_heads, self.head_dim = cfg.num_q_heads, cfg.num_kv_heads, cfg.head_dim
        self.sliding_window = cfg.sliding_window  # the same on every layer; see the module docstring
        self.dropout = cfg.dropout_attn
        self.scale = mup.attention_scale(cfg)  # None: 1/sqrt(head_dim); μP: sqrt(base head_dim)/head_dim
        q_size, kv_size = cfg.num_q_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.qkv = nn.Linear(cfg.dim, q_size + 2 * kv_size, bias=cfg.linear_bias)  # one matmul for q, k, v
        self.out = nn.Linear(q_size, cfg.dim, bias=cfg.linear_bias)
        self.out.is_residual_projection = True  # scaled init, see Model._init_weights
        if cfg.qk_norm:  # https://arxiv.org/abs/2302.05442
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, affine=cfg.norm_affine)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps, affine=cfg.norm_affine)
        else:
            self.q_norm = self.k_norm = None

    @log_io
    def forward(self, x: torch.Tensor, inputs: AttentionInputs | None = None) -> torch.Tensor:
        """x (B, T, dim) -> (B, T, dim). inputs None: T tokens from slot 0, no RoPE, no cache."""
        B, T, _ = x.shape
        if inputs is None:
            inputs = AttentionInputs(torch.arange(T, device=x.device))
        q, k, v = self.split_heads(self.qkv(x))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if inputs.rope is not None:
            q, k = apply_rope(q, inputs.rope), apply_rope(k, inputs.rope)
        # keys and values first: the cache refuses an overflow before a mask would slice its key_valid
        k, v = inputs.keys_values(self.layer_idx, k, v)
        if self.uses_flex(inputs):
            y = self.attend_flex(q, k, v, inputs.block_mask(self.sliding_window))
        else:
            y = self.attend(q, k, v, *inputs.mask(self.sliding_window))
        return self.out(y.transpose(1, 2).reshape(B, T, -1))  # heads side by side again, then mix them

    def uses_flex(self, inputs: AttentionInputs) -> bool:
        """FlexAttention or SDPA for this layer (choose_kernel's rule)."""
        return inputs.kernel_for(self.sliding_window, self.dropout if self.training else 0.0, self.head_dim) == "flex"

    def prepare_mask(self, inputs: AttentionInputs) -> None:
        """Build this layer's mask now (it is kept in `inputs`, once per forward and window). Model.forward calls
        it before checkpointed layers: building it inside one would be a side effect (a new entry in the inputs'
        mask cache) that torch.compile cannot trace through a checkpoint."""
        if self.uses_flex(inputs):
            inputs.block_mask(self.sliding_window)
        else:
            inputs.mask(self.sliding_window)

    @log_io
    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, q + 2 kv widths) -> q (B, q_heads, T, head_dim), k and v (B, kv_heads, T, head_dim)."""
        B, T, _ = qkv.shape
        q, k, v = qkv.split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.num_q_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    @log_io
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim) + mask) v for every head in one fused call -> (B, q_heads, T, head_dim)."""
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_q_heads)  # GQA: kv heads are shared, not copied

    @log_io
    def attend_flex(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
        """The same softmax(q k^T / sqrt(head_dim) + mask) v with FlexAttention: the mask is a block mask, so
        blocks of keys no query in a block may see are skipped, not computed and thrown away."""
        return flex_attention_call(q.device)(q, k, v, block_mask=block_mask, scale=self.scale,
                                             enable_gqa=self.num_kv_heads != self.num_q_heads)
