"""Training batches cut from a 1-D token stream, with a state that resumes the exact same stream.

Each batch row is a window of seq_len + 1 tokens: inputs are the first seq_len, targets the last
seq_len (inputs shifted by one). 'random' draws the starts of the whole global batch (all ranks) from one
seeded generator and each rank keeps its own slice; 'sequential' walks non-overlapping windows in order,
rank r taking every world_size-th one. Either way, n processes with batch b see exactly the rows that one
process with batch n*b sees, so a multi-process run follows the single-process loss curve.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Optional

import numpy as np
import torch

from config import SAMPLING


class Batch(NamedTuple):
    inputs: torch.Tensor              # int64 (batch_size, seq_len)
    targets: torch.Tensor             # int64 (batch_size, seq_len): inputs shifted left by one
    doc_ids: Optional[torch.Tensor]   # int32 (batch_size, seq_len) document number within each row, or None


def document_ids(inputs: np.ndarray, bos_id: int) -> np.ndarray:
    """Number the documents inside each row: 0 for the first, +1 at every bos after the first token."""
    starts = inputs == bos_id
    starts[:, 0] = False  # a row's first token opens document 0 whether or not it is a bos
    return np.cumsum(starts, axis=1, dtype=np.int32)


class TokenBatches:
    """Endless iterator of Batch over `tokens` (a 1-D array or np.memmap of token ids)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, *, seed: int,
                 sampling: str = "random", rank: int = 0, world_size: int = 1, device="cpu",
                 doc_masking: bool = False, bos_id: Optional[int] = None):
        if getattr(tokens, "ndim", None) != 1:
            raise ValueError(f"tokens must be a 1-D array of token ids, got shape {getattr(tokens, 'shape', None)}")
        for name, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1),
                                 ("world_size", world_size, 1), ("rank", rank, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}={value!r} must be an integer >= {low}")
        if rank >= world_size:
            raise ValueError(f"rank={rank} must be < world_size={world_size}")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling={sampling!r} is invalid: use one of {SAMPLING}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"the token stream has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1} "
                             f"needed for one training window: use more data or a shorter max_seq_len")
        if doc_masking and bos_id is None:
            raise ValueError("doc_masking needs bos_id (the token that starts each document)")
        self.tokens, self.batch_size, self.seq_len = tokens, int(batch_size), int(seq_len)
        self.seed, self.sampling, self.rank, self.world_size = int(seed), sampling, int(rank), int(world_size)
        self.device = torch.device(device)
        self.doc_masking, self.bos_id = doc_masking, bos_id
        self.num_windows = (len(tokens) - 1) // self.seq_len  # sequential: windows share one boundary token
        self.rng = np.random.default_rng(self.seed)  # random: one global stream, sliced per rank
        self.position = 0  # batches drawn (random) / windows drawn by this rank (sequential)
        self._offsets = np.arange(self.seq_len + 1)
        self._data = np.asarray(tokens)  # plain ndarray view of the same memory: skips np.memmap overhead

    def __iter__(self):
        return self

    def _starts(self) -> np.ndarray:
        if self.sampling == "random":
            starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size * self.world_size)
            return starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        ordinal = self.position + np.arange(self.batch_size)  # this rank's k-th window...
        return (ordinal * self.world_size + self.rank) % self.num_windows * self.seq_len  # ...globally

    def __next__(self) -> Batch:
        starts = self._starts()
        self.position += self.batch_size if self.sampling == "sequential" else 1
        windows = self._data[starts[:, None] + self._offsets]  # one gather from the memmap
        inputs = windows[:, :-1].astype(np.int64)
        targets = windows[:, 1:].astype(np.int64)
        doc_ids = document_ids(inputs, self.bos_id) if self.doc_masking else None
        return Batch(self._to_device(inputs), self._to_device(targets),
                     None if doc_ids is None else self._to_device(doc_ids))

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with compute
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def state_dict(self) -> dict:
        """Small JSON-serializable snapshot; load_state_dict continues exactly from here."""
        return {"sampling": self.sampling, "seq_len": self.seq_len, "num_tokens": len(self.tokens),
                "rank": self.rank, "world_size": self.world_size, "seed": self.seed,
                "position": self.position, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict(). The token stream may have grown (a streaming run given more steps):
        then the draws continue but are no longer the ones the old stream would have given."""
        for name in ("sampling", "seq_len", "rank", "world_size"):
            if state.get(name) != getattr(self, name):
                raise ValueError(f"cannot resume batches: the saved state has {name}={state.get(name)!r} but this "
                                 f"loader has {name}={getattr(self, name)!r}; resume with the same settings")
        if state.get("num_tokens") != len(self.tokens):
            warnings.warn(f"resuming batches over {len(self.tokens):,} tokens, but the state was saved over "
                          f"{state.get('num_tokens')} tokens: the data differs from the interrupted run")
        self.position = int(state["position"])
        self.rng.bit_generator.state = state["rng"]
