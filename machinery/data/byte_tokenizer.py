"""The byte tokenizer ('byte'): ids 0..255 are the UTF-8 bytes; 256 bos, 257 eos, 258 pad."""
from __future__ import annotations

import numpy as np

from machinery.data.tokenizer_base import Tokenizer

BYTE_VOCAB_LEN = 259


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: no training, no unknowns, 259 ids (256 bytes + bos, eos, pad)."""

    def __init__(self):
        self.name = "byte"
        self.vocab_len = BYTE_VOCAB_LEN
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258
        self._id_bytes = np.array([1] * 256 + [0] * 3, dtype=np.int64)

    def _encode_one(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))  # bytes -> ints in C, no per-character Python loop

    def _encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]  # already memory-bound; threads would not help

    def _decode_unchecked(self, ids: list[int], checked: bool = False) -> str:
        if checked and ids and max(ids) >= 256:
            ids = [i for i in ids if i < 256]  # drop bos/eos/pad
        return bytes(ids).decode("utf-8", errors="replace")  # bytes() rejects ids > 255 in C

    def _token_texts(self, ids: list[int]) -> list[str]:
        return [chr(i) if i < 128 else f"<0x{i:02X}>" for i in ids]
