"""A preallocated key/value cache, so generating each new token costs one position, not the whole prefix."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of each layer: k[layer] and v[layer], each (batch, kv_heads, max_positions, head_dim).

    Slots fill from the left: `length` of the `max_positions` slots hold a token. `key_valid` (batch,
    max_positions) marks real tokens (False for the left padding of a batch of prompts of different
    lengths); attention never looks at invalid keys. Only this class edits its tensors: generation asks it
    to mark padding, drop rows or write at a fixed slot through the methods below.

    Two ways to write a step's keys and values (`update`, called by attention):
    - growing (the default): after the filled part; attention gets the `length` filled slots.
    - fixed slot (`start_static_writes`): at the slot `write_slot` (a tensor), and attention gets every
      slot with a mask hiding the unfilled ones. Every step then has the same shapes and no Python number
      that changes, so torch.compile compiles the decode step once (and CUDA can replay it as a graph).
    """

    def __init__(self, num_layers: int, batch_size: int, max_positions: int, num_kv_heads: int, head_dim: int,
                 device=None, dtype=torch.float32):
        # one tensor per layer, not views of one big tensor: a compiled step then writes each in place
        shape = (batch_size, num_kv_heads, max_positions, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.key_valid = torch.ones(batch_size, max_positions, dtype=torch.bool, device=device)
        self.max_positions = max_positions
        self.length = 0
        self.write_slot: torch.Tensor | None = None  # (1,) long: fixed-slot writes, see start_static_writes

    @property
    def batch_size(self) -> int:
        return self.key_valid.shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, kv_heads, T, D); return the keys and values attention should see."""
        if self.write_slot is not None:  # one token at a tensor-valued slot; attention sees all slots
            self.k[layer].index_copy_(2, self.write_slot, k)
            self.v[layer].index_copy_(2, self.write_slot, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        if end > self.max_positions:
            raise ValueError(f"KV cache holds {self.max_positions} positions; {end} were asked for")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def all_valid(self) -> bool:
        """True when no slot is padding (then attention needs no mask)."""
        return bool(self.key_valid.all())

    def advance(self, num_positions: int) -> None:
        """Called once every layer has written this step. With fixed-slot writes only the slot tensor moves
        (in place: no Python number changes, so a compiled step can call this); `length` catches up in
        stop_static_writes."""
        if self.write_slot is not None:
            self.write_slot += num_positions
        else:
            self.length += num_positions

    def mark_padding(self, valid: torch.Tensor) -> None:
        """valid (B, T): False where the first T slots will hold left padding (never attended)."""
        self.key_valid[:, :valid.shape[1]] = valid

    def keep_rows(self, rows: torch.Tensor, max_positions: int) -> None:
        """Keep only batch rows `rows`, dropping the leading slots that are padding in all of them, in new
        tensors of `max_positions` slots. Dropping finished rows saves their compute; dropping padding frees
        slots, so a short prompt batched with a long one can still use the whole context, as it would alone."""
        valid = self.key_valid[rows, :self.length]
        shift = int((~valid.any(dim=0)).sum())  # padding is on the left, so these are the first slots
        n = self.length - shift
        if n > max_positions:
            raise ValueError(f"keep_rows: {n} filled slots do not fit in max_positions={max_positions}")
        def kept(old: torch.Tensor) -> torch.Tensor:
            new = old.new_zeros(len(rows), old.shape[1], max_positions, old.shape[3])
            new[:, :, :n] = old[rows, :, shift:self.length]
            return new

        self.k, self.v = [kept(k) for k in self.k], [kept(v) for v in self.v]
        self.key_valid = torch.ones(len(rows), max_positions, dtype=torch.bool, device=valid.device)
        self.key_valid[:, :n] = valid[:, shift:]
        self.max_positions, self.length = max_positions, n

    def start_static_writes(self) -> None:
        """From now on, write each single-token step at slot `length` (a tensor that `advance` moves on)."""
        self.write_slot = torch.tensor([self.length], device=self.key_valid.device)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (e.g. to mark their addresses static for CUDA graphs)."""
        extra = [self.write_slot] if self.write_slot is not None else []
        return [*self.k, *self.v, self.key_valid, *extra]

    def stop_static_writes(self) -> None:
        """Back to growing writes after the slots written so far."""
        self.length, self.write_slot = int(self.write_slot), None

    def static_attention_mask(self, sliding_window: int | None = None) -> torch.Tensor:
        """(B, 1, 1, max_positions) mask for the token written at write_slot: filled, real slots only
        (and, with a sliding window, only the last sliding_window of them)."""
        slots = torch.arange(self.max_positions, device=self.key_valid.device)
        allowed = self.key_valid & (slots <= self.write_slot)
        if sliding_window is not None:
            allowed = allowed & (self.write_slot - slots < sliding_window)
        return allowed[:, None, None, :]
