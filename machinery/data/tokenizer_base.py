"""The interface every tokenizer implements (see machinery/data/tokenizer.py for the tokenizers and get_tokenizer)."""
from __future__ import annotations

import os

import numpy as np

_DISPLAY_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})


def num_cpus() -> int:
    """CPUs this process may use: the default thread count for batched encoding."""
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU limits
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Tokenizer:
    """The interface every tokenizer implements. Subclasses set the attributes below and `_id_bytes`
    (UTF-8 bytes each id stands for, 0 for special tokens) and implement the underscored methods."""

    name: str
    vocab_len: int
    bos_id: int
    eos_id: int
    pad_id: int
    _id_bytes: np.ndarray

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_len={self.vocab_len})"

    # ---- public API ----
    def encode(self, text: str | list[str], num_threads: int | None = None) -> list[int] | list[list[int]]:
        """Token ids of a string, or a list of id lists for a list of strings (encoded in parallel with
        `num_threads` threads, default all available cores). No bos/eos is added."""
        if isinstance(text, str):
            return self._encode_one(text)
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return self._encode_batch(list(text), num_threads or num_cpus())
        raise ValueError(f"{self.name}.encode takes a str or a list of str, got {type(text).__name__}")

    def decode(self, ids) -> str:
        """Text of one sequence of ids (list, 1-D torch tensor or numpy array). bos/eos/pad are dropped;
        byte sequences that are not valid UTF-8 become U+FFFD."""
        if isinstance(ids, list):  # fast path: the backend checks types and range in C
            try:
                text = self._decode_unchecked(ids)
                if isinstance(text, str):
                    return text
            except (TypeError, ValueError, IndexError, OverflowError):
                pass  # specials to drop, or bad ids: the checked path handles or explains them
        return self._decode_unchecked(self._check_ids(ids).tolist(), checked=True)

    def decode_batch(self, batch) -> list[str]:
        """decode() of each row of a 2-D tensor/array or a list of id lists."""
        return [self.decode(row) for row in self._rows(batch)]

    def display(self, text: str) -> str:
        """How `text` splits into tokens: each token's text joined by '|', e.g. 'Once| upon| a| time'.
        Spaces are shown as spaces; newline, tab and carriage return as \\n, \\t, \\r; a token that is a lone
        byte rather than whole characters (byte fallback, or any non-ASCII byte of 'byte') as <0xNN>.
        A literal '|' in the text is shown as-is."""
        return "|".join(t.translate(_DISPLAY_ESCAPES) for t in self._token_texts(self._encode_one(text)))

    def token_bytes(self, ids) -> int:
        """UTF-8 bytes the ids stand for (the denominator of bits-per-byte). For ids that came from encode()
        this is exactly len(text.encode()); special tokens count 0."""
        return int(self._id_bytes[self._check_ids(ids)].sum())

    # ---- helpers ----
    def _rows(self, batch) -> list:
        """The rows of a batch (2-D tensor/array or list of sequences) as lists."""
        rows = batch.detach().cpu().tolist() if hasattr(batch, "detach") else (
            batch.tolist() if isinstance(batch, np.ndarray) else list(batch))
        if rows and isinstance(rows[0], (int, np.integer)):
            raise ValueError(f"{self.name}.decode_batch takes a batch of sequences (2-D); use decode for one")
        return rows

    def _check_ids(self, ids) -> np.ndarray:
        """ids as a 1-D int64 array, with a clear error for anything that is not valid token ids."""
        if hasattr(ids, "detach"):  # torch tensor, possibly on GPU (no torch import needed here)
            ids = ids.detach().cpu().numpy()
        arr = np.asarray(ids)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{self.name}: token ids must be integers, got dtype {arr.dtype}")
        if arr.ndim > 1:
            raise ValueError(f"{self.name}.decode takes one sequence (1-D), got shape {arr.shape}; "
                             f"use decode_batch for a batch")
        arr = arr.reshape(-1).astype(np.int64, copy=False)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_len:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self.name}: token id {bad} is outside 0..{self.vocab_len - 1} "
                             f"(vocab_len={self.vocab_len}); were these ids made by another tokenizer?")
        return arr

    def _encode_one(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        raise NotImplementedError

    def _decode_unchecked(self, ids: list[int], checked: bool = False) -> str:
        """Text of ids; may raise TypeError/ValueError/IndexError on bad ids unless `checked`."""
        raise NotImplementedError

    def _token_texts(self, ids: list[int]) -> list[str]:
        raise NotImplementedError
