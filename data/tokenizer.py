"""Tokenizers: text <-> token ids.

    tok = get_tokenizer("bpe_tinyStories", 1024)   # or get_tokenizer("byte")
    ids = tok.encode("Once upon a time")          # list[int]; a list of strings -> list[list[int]]
    tok.decode(ids)                                # 'Once upon a time'
    tok.display("Once upon a time")                # 'Once| upon| a| time'

Two kinds, one interface (`Tokenizer`):
  - `ByteTokenizer` ('byte'): ids 0..255 are the UTF-8 bytes; 256 bos, 257 eos, 258 pad (vocab_len 259).
  - `SentencePieceTokenizer` ('bpe_*'): a sentencepiece BPE model, tokenizers/<name>/tokenizer_<vocab_len>.model,
    built by tokenizers/build_bpe.py. ids 0 unk, 1 bos, 2 eos, 3 pad, 4..259 the 256 byte-fallback pieces,
    then single characters, then merges in merge order: a smaller vocabulary of the same name is a prefix of a
    larger one. Normalization is off and unknown characters fall back to bytes, so decode(encode(x)) == x.

encode() never adds bos/eos; decode() drops them (and pad). A list of strings is encoded in parallel
(sentencepiece's own threads), which is what pre-tokenizing a corpus should use.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

TOKENIZERS_DIR = Path(__file__).resolve().parents[1] / "tokenizers"  # never the CWD
BYTE_VOCAB_LEN = 259
_MODEL_FILE = re.compile(r"^tokenizer_(\d+)\.model$")

# The build flags of the BPE tokenizers this project knows about (without --sizes), for error messages.
# A folder built by build_bpe.py also records its own flags in build.json, which takes precedence.
BUILD_RECIPES = {
    "bpe_tinyStories": "--dataset=data/samples/tinystories --name=bpe_tinyStories",
    "bpe_fineweb-edu": "--dataset=HuggingFaceFW/fineweb-edu --data_subset=sample-10BT --streaming "
                       "--name=bpe_fineweb-edu",
    "bpe_fineweb": "--dataset=HuggingFaceFW/fineweb --data_subset=sample-10BT --streaming --name=bpe_fineweb",
}

_CHUNK_CHARS = 1 << 14  # long texts are encoded in chunks of about this many characters
_INNER_SPACE = re.compile("[^\u2581]\u2581")  # a '▁' (space) after another character inside one piece
_CUT = re.compile("(?<! ) ")  # a space that follows a non-space: a safe place to cut

_DISPLAY_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU limits
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
            return self._encode_batch(list(text), num_threads or _num_cpus())
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
                             f"tokenizers/build_bpe.py")
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
            return self._encode_batch([text], _num_cpus())[0]
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
            return self.sp.decode(rows, num_threads=_num_cpus()) if rows else []
        except (TypeError, ValueError, IndexError, OverflowError):
            return [self.decode(row) for row in rows]  # the row-by-row path explains what is wrong

    def _token_texts(self, ids: list[int]) -> list[str]:
        return [self._piece_texts[i] for i in ids]


# ---------------------------------------------------------------------------------------------------
def available_tokenizers() -> dict[str, list[int]]:
    """{name: sizes on disk}: 'byte' always, plus every folder in tokenizers/ with the vocab sizes of its
    tokenizer_<N>.model files. A folder with no model yet (e.g. bpe_fineweb-edu before it is built) has []."""
    out = {"byte": [BYTE_VOCAB_LEN]}
    if TOKENIZERS_DIR.is_dir():
        for folder in sorted(TOKENIZERS_DIR.iterdir()):
            if folder.is_dir() and folder.name != "byte" and not folder.name.startswith((".", "_")):
                out[folder.name] = sorted(int(m.group(1)) for f in folder.iterdir()
                                          if (m := _MODEL_FILE.match(f.name)))
    return out


def build_command(name: str, sizes: list[int]) -> str:
    """The command that (re)builds tokenizer `name` at `sizes`."""
    recipe = BUILD_RECIPES.get(name, f"--dataset=<your dataset> --name={name}")
    record = TOKENIZERS_DIR / name / "build.json"
    if record.is_file():
        try:
            recipe = json.loads(record.read_text())["recipe"]
        except (ValueError, KeyError):
            pass  # a damaged record should not hide the real error; fall back to the known recipe
    return f"python tokenizers/build_bpe.py {recipe} --sizes={','.join(map(str, sorted(sizes)))}"


def get_tokenizer(name: str, vocab_len: int | None = None) -> Tokenizer:
    """The tokenizer `name` (a folder in tokenizers/, or 'byte') at `vocab_len` tokens.
    vocab_len=None picks the smallest size on disk (the cheapest to train with)."""
    if vocab_len is not None and (isinstance(vocab_len, bool) or not isinstance(vocab_len, int)):
        raise ValueError(f"vocab_len must be an int or None, got {vocab_len!r}")
    available = available_tokenizers()
    if name == "byte":
        if vocab_len not in (None, BYTE_VOCAB_LEN):
            raise ValueError(f"the byte tokenizer has vocab_len {BYTE_VOCAB_LEN} (256 bytes + bos, eos, pad); "
                             f"got vocab_len={vocab_len}. Allowed: None or {BYTE_VOCAB_LEN}")
        return ByteTokenizer()
    if name not in available:
        listing = ", ".join(f"{k} {v}" for k, v in available.items())
        raise ValueError(f"unknown tokenizer {name!r}. Available (name [sizes on disk]): {listing}. "
                         f"To build a new one: {build_command(name, [vocab_len or 1024])}")
    sizes = available[name]
    if vocab_len is None and sizes:
        vocab_len = sizes[0]
    if vocab_len not in sizes:
        wanted = sorted(set(sizes) | {vocab_len or 32768})
        missing = f"no vocab_len={vocab_len}" if vocab_len else "no model"
        raise ValueError(
            f"tokenizer {name!r} has {missing} on disk (sizes available: {sizes or 'none'}). "
            f"Build it with: {build_command(name, wanted)}  (all sizes of a name are trained together so the "
            f"smaller vocabularies stay prefixes of the larger)")
    return SentencePieceTokenizer(TOKENIZERS_DIR / name / f"tokenizer_{vocab_len}.model", name=name)
