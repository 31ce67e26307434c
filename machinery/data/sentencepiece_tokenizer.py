"""A sentencepiece BPE model as a Tokenizer ('bpe_*' names; built by machinery/data/build_bpe.py)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from machinery.data.tokenizer_base import Tokenizer, num_cpus

_CHUNK_CHARS = 1 << 14  # long texts are encoded in chunks of about this many characters
_INNER_SPACE = re.compile("[^\u2581]\u2581")  # a '▁' (space) after another character inside one piece
_CUT = re.compile("(?<! ) ")  # a space that follows a non-space: a safe place to cut


def _split_at_spaces(text: str) -> list[str]:
    """`text` cut into pieces of about _CHUNK_CHARS characters, each cut just before a space that follows a
    non-space (where no BPE piece can span). Joining the pieces gives `text` back."""
    parts, start = [], 0
    while len(text) - start > 2 * _CHUNK_CHARS:
        m = _CUT.search(text, start + _CHUNK_CHARS)
        if m is None:
            break
        parts.append(text[start:m.start()])
        start = m.start()
    parts.append(text[start:])
    return parts


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model file; `name` defaults to its folder's name."""

    def __init__(self, model_path: str | Path, name: str | None = None):
        import sentencepiece as spm  # imported here so the byte tokenizer works without it

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"no sentencepiece model at {self.model_path}")
        self.name = name or self.model_path.parent.name
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        self.vocab_len = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        if min(self.bos_id, self.eos_id, self.pad_id) < 0 or not self.sp.is_byte(self.sp.piece_to_id("<0x00>")):
            raise ValueError(f"{self.model_path} lacks a bos, eos or pad token or byte fallback; rebuild it with "
                             f"machinery/data/build_bpe.py")
        pieces = self.sp.id_to_piece(list(range(self.vocab_len)))
        # What each id displays as and how many UTF-8 bytes it stands for ('▁' is sentencepiece's space).
        self._piece_texts, id_bytes = [], []
        for i, piece in enumerate(pieces):
            if self.sp.is_byte(i):
                text, n = piece, 1  # '<0xNN>'
            elif self.sp.is_control(i):
                text, n = "", 0
            else:
                text = self.sp.decode([i]) if self.sp.is_unknown(i) else piece.replace("\u2581", " ")
                n = len(text.encode("utf-8"))
            self._piece_texts.append(text)
            id_bytes.append(n)
        self._id_bytes = np.array(id_bytes, dtype=np.int64)
        # sentencepiece reads a literal '▁' (U+2581) in the input as a space; we encode it as its 3 fallback bytes
        self._block_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode("utf-8")]
        # Long texts are cut into chunks before a space that follows a non-space. No piece can span such a cut
        # when every piece has '▁' only at its start (build_bpe.py's models; checked here), so the chunks
        # encode to the same ids -- in parallel, and faster than one long string (sentencepiece's BPE is
        # O(n log n) per string with a large constant).
        self._can_chunk = not any(_INNER_SPACE.search(p) for p in pieces)

    def __reduce__(self):  # pickle by path (for DataLoader workers / multiprocessing), not the C++ object
        return (type(self), (str(self.model_path), self.name))

    def _encode_one(self, text: str) -> list[int]:
        if "\u2581" in text:
            return self._encode_with_block_char(text)
        if len(text) > 2 * _CHUNK_CHARS and self._can_chunk:
            return self._encode_batch([text], num_cpus())[0]
        return self.sp.encode(text)

    def _encode_batch(self, texts: list[str], num_threads: int) -> list[list[int]]:
        if self._can_chunk and any(len(t) > 2 * _CHUNK_CHARS for t in texts):
            out = self._encode_chunked(texts, num_threads)
        else:
            out = self.sp.encode(texts, num_threads=num_threads)
        for i, t in enumerate(texts):
            if "\u2581" in t:  # rare; C-speed substring check per document
                out[i] = self._encode_with_block_char(t)
        return out

    def _encode_chunked(self, texts: list[str], num_threads: int) -> list[list[int]]:
        chunks, counts = [], []
        for t in texts:
            parts = _split_at_spaces(t) if len(t) > 2 * _CHUNK_CHARS else [t]
            chunks.extend(parts)
            counts.append(len(parts))
        flat, out, k = self.sp.encode(chunks, num_threads=num_threads), [], 0
        for n in counts:
            out.append(flat[k] if n == 1 else [i for ids in flat[k:k + n] for i in ids])
            k += n
        return out

    def _encode_with_block_char(self, text: str) -> list[int]:
        ids: list[int] = []
        for k, part in enumerate(text.split("\u2581")):
            if k:
                ids.extend(self._block_ids)
            ids.extend(self._encode_one(part))
        return ids

    def _decode_unchecked(self, ids: list[int], checked: bool = False) -> str:
        return self.sp.decode(ids)  # control pieces (bos/eos/pad) decode to ''

    def decode_batch(self, batch) -> list[str]:
        rows = self._rows(batch)
        try:
            return self.sp.decode(rows, num_threads=num_cpus()) if rows else []
        except (TypeError, ValueError, IndexError, OverflowError):
            return [self.decode(row) for row in rows]  # the row-by-row path explains what is wrong

    def _token_texts(self, ids: list[int]) -> list[str]:
        return [self._piece_texts[i] for i in ids]
