"""A preallocated key/value cache, so generating each new token costs one position, not the whole prefix."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, shape (layers, batch, kv_heads, max_len, head_dim).

    `length` is how many positions are filled. `key_valid` marks real tokens (False for left padding
    in a batch of prompts of different lengths); attention never looks at invalid keys.
    """

    def __init__(self, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                 device=None, dtype=torch.float32):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, kv_heads, T, D) after the filled part; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def all_valid(self) -> bool:
        """True when no slot is padding (then attention needs no mask)."""
        return bool(self.key_valid.all())

    def advance(self, num_positions: int) -> None:
        """Called by the model once every layer has written this step."""
        self.length += num_positions
