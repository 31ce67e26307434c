"""Tokenize a dataset split once into a memory-mapped token file, cached on disk.

Each document becomes [bos] + tokens + [eos]; documents are concatenated into one 1-D stream with
no padding. The cache folder `<cache_dir>/<dataset>_<split>_<tokenizer>-<vocab>_<hash8>/` holds
`tokens.bin` (raw uint16/uint32) and `manifest.json`; the hash covers everything that changes the
tokens (the data's identity - local files by path, size and mtime -, split settings, tokenizer).

Safety: a fresh build is written to a temp file and renamed, and the manifest (written last, also
atomically) is the only proof a cache is usable. It records the CRC-32 of the tokens, checked on every
load: a damaged cache is rebuilt with a warning instead of training on noise. Streaming / max_tokens
builds stop early, record how many documents they consumed, and a later call asking for more tokens
appends from there (extending the checksum).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from machinery.data.sources import iter_documents, resolve_source, source_fingerprint
from machinery.fileio import (
    CHECKSUM,
    WriteError,
    checksum,
    file_checksum,
    remove_stale_temps,
    reported_writes,
    usual_permissions,
    write_json,
)

FORMAT_VERSION = 1
_CHUNK_CHARS = 1 << 23   # characters per tokenizer.encode batch: bounds memory, big enough to parallelize
_CHUNK_DOCS = 8192
_MIN_CHUNK_CHARS = 1 << 10


def token_dtype(vocab_len: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id of the vocabulary."""
    if isinstance(vocab_len, bool) or not isinstance(vocab_len, int) or vocab_len < 1:
        raise ValueError(f"tokenizer vocab_len={vocab_len!r} must be a positive integer")
    if vocab_len <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_len <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"tokenizer vocab_len={vocab_len} is too large: token files store ids as uint32, "
                     f"so at most {1 << 32} ids are supported")


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[-limit:] or "data"


def cache_key(train_cfg, tokenizer, split: str) -> dict:
    """Everything that determines the token stream (not max_tokens: a prefix is the same stream)."""
    src = resolve_source(train_cfg.dataset, train_cfg.data_subset)
    return {"format_version": FORMAT_VERSION, "dataset": source_fingerprint(src),
            "data_subset": train_cfg.data_subset, "split": split, "text_field": train_cfg.text_field,
            "doc_separator": train_cfg.doc_separator, "val_fraction": train_cfg.val_fraction,
            "seed": train_cfg.seed, "tokenizer": tokenizer.name, "vocab_len": tokenizer.vocab_len,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}


def cache_folder(train_cfg, tokenizer, split: str, key: Optional[dict] = None) -> Path:
    key = key or cache_key(train_cfg, tokenizer, split)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    name, local = train_cfg.dataset, Path(train_cfg.dataset).expanduser()
    if local.exists():  # a folder's name, or a file's folder and stem: 'tinyshakespeare-input'
        local = local.resolve()
        name = local.name if local.is_dir() else f"{local.parent.name}-{local.stem}"
    if train_cfg.data_subset:
        name += f"-{train_cfg.data_subset}"
    label = f"{_slug(name)}_{split}_{_slug(tokenizer.name, 24)}-{tokenizer.vocab_len}_{digest}"
    return Path(train_cfg.cache_dir) / label


@contextlib.contextmanager
def _locked(folder: Path):
    """Exclusive lock on the cache folder so parallel ranks don't build the same cache twice."""
    try:
        import fcntl
    except ImportError:  # Windows: no locking; ranks should build on rank 0 first
        yield
        return
    try:
        handle = open(folder / ".lock", "a")
    except OSError:  # a read-only cache someone else built: reading needs no lock
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _valid_manifest(folder: Path, key: dict, dtype: np.dtype) -> Optional[dict]:
    """The manifest if the cache is usable, else None. Bytes past num_tokens (an append that was
    interrupted before its manifest update) are cut off: the recorded prefix was never touched."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    tokens = folder / "tokens.bin"
    fields_ok = isinstance(manifest, dict) and all(
        isinstance(manifest.get(k), int) for k in ("num_tokens", "num_docs")) and "exhausted" in manifest
    if (not fields_ok or manifest.get("complete") is not True or manifest.get("key") != key
            or manifest.get("dtype") != dtype.name or not tokens.exists()):
        return None
    expected = manifest["num_tokens"] * dtype.itemsize
    size = tokens.stat().st_size
    if size < expected:
        return None
    if size > expected:
        os.truncate(tokens, expected)
    crc = file_checksum(tokens, stop_byte=expected)
    if CHECKSUM not in manifest:  # written before caches had checksums: trust it once and record one
        manifest[CHECKSUM] = crc
        with contextlib.suppress(WriteError):  # a read-only cache stays as it is
            write_json(folder / "manifest.json", manifest)
    elif manifest[CHECKSUM] != crc:
        warnings.warn(f"token cache {tokens} is damaged (its tokens do not match the checksum recorded when "
                      f"it was written): rebuilding it")
        return None
    return manifest


def _pack(token_lists: list, bos: int, eos: int, vocab_len: int, dtype: np.dtype) -> np.ndarray:
    """[bos] + ids + [eos] for every document, flattened, with ids checked against the vocabulary."""
    lengths = np.fromiter((len(t) for t in token_lists), np.int64, len(token_lists))
    flat = np.fromiter(itertools.chain.from_iterable(token_lists), np.int64, int(lengths.sum()))  # C loop
    if flat.size and (flat.min() < 0 or flat.max() >= vocab_len):
        bad = flat.max() if flat.max() >= vocab_len else flat.min()
        raise ValueError(f"tokenizer produced id {bad}, outside its vocabulary [0, {vocab_len})")
    starts = np.concatenate([[0], np.cumsum(lengths + 2)[:-1]])
    out = np.empty(int(lengths.sum()) + 2 * len(token_lists), dtype)
    is_text = np.ones(out.size, bool)
    is_text[starts] = is_text[starts + lengths + 1] = False
    out[starts], out[starts + lengths + 1] = bos, eos
    out[is_text] = flat
    return out


def _tokenize_into(handle, docs, tokenizer, dtype, max_tokens, have_tokens, bar) -> tuple[int, int, bool]:
    """Encode documents in batches and append them to `handle` until max_tokens (or the end).

    Returns (tokens written, documents consumed, whether the documents ran out)."""
    written = consumed = 0
    batch, chars = [], 0
    docs = iter(docs)
    while True:
        need = None if max_tokens is None else max_tokens - have_tokens - written
        if need is not None and need <= 0:
            return written, consumed, False
        # Near max_tokens, encode batches of about `need` characters (BPE gives fewer tokens than
        # characters, bytes about as many) so a streaming run stops close to max_tokens.
        limit = _CHUNK_CHARS if need is None else min(_CHUNK_CHARS, max(_MIN_CHUNK_CHARS, need))
        doc = next(docs, None)
        if doc is not None:
            batch.append(doc)
            chars += len(doc)
            if chars < limit and len(batch) < _CHUNK_DOCS:
                continue
        if batch:
            ids = tokenizer.encode(batch)
            if len(ids) != len(batch):
                raise RuntimeError(f"tokenizer {tokenizer.name!r} returned {len(ids)} sequences for "
                                   f"{len(batch)} documents")
            packed = _pack(ids, tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_len, dtype)
            handle.write(packed.tobytes())
            written, consumed = written + packed.size, consumed + len(batch)
            bar.update(packed.size)
            batch, chars = [], 0
        if doc is None:
            return written, consumed, True


def load_tokens(train_cfg, tokenizer, split: str, max_tokens: Optional[int] = None,
                show_progress: bool = True) -> np.ndarray:
    """The token stream of `split` as a read-only 1-D np.memmap, tokenizing on the first call.

    max_tokens: stop tokenizing once at least this many tokens exist and return exactly the first
    min(max_tokens, available) tokens; a later call with a larger max_tokens resumes where the last
    one stopped (what streaming runs use). None: the whole split (with train_cfg.streaming, that
    streams all of it). train_cfg.streaming itself only says how the hub dataset is read.
    """
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be a positive integer or None")
    dtype = token_dtype(tokenizer.vocab_len)
    for name in ("bos_id", "eos_id"):  # they mark where documents start and end
        value = getattr(tokenizer, name, None)
        if not isinstance(value, (int, np.integer)) or not 0 <= value < tokenizer.vocab_len:
            raise ValueError(f"tokenizer {tokenizer.name!r} has {name}={value!r}; it must be a token id "
                             f"in [0, vocab_len={tokenizer.vocab_len})")
    key = cache_key(train_cfg, tokenizer, split)
    folder = cache_folder(train_cfg, tokenizer, split, key)
    with reported_writes(folder):
        folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        remove_stale_temps(folder, "*.tmp")  # left by a killed build (no one else builds while we hold the lock)
        manifest = _valid_manifest(folder, key, dtype)
        enough = manifest is not None and (manifest["exhausted"] or (
            max_tokens is not None and manifest["num_tokens"] >= max_tokens))
        if not enough:
            manifest = _build(folder, key, manifest, train_cfg, tokenizer, split, dtype, max_tokens,
                              show_progress)
    count = manifest["num_tokens"] if max_tokens is None else min(max_tokens, manifest["num_tokens"])
    return np.memmap(folder / "tokens.bin", dtype=dtype, mode="r", shape=(count,))


def _build(folder: Path, key: dict, manifest: Optional[dict], train_cfg, tokenizer, split: str,
           dtype: np.dtype, max_tokens: Optional[int], show_progress: bool) -> dict:
    """Tokenize fresh (manifest None) or resume an unfinished streaming cache; return the new manifest."""
    from tqdm.auto import tqdm
    have_tokens = manifest["num_tokens"] if manifest else 0
    have_docs = manifest["num_docs"] if manifest else 0
    docs = iter_documents(train_cfg.dataset, split, data_subset=train_cfg.data_subset,
                          streaming=train_cfg.streaming, text_field=train_cfg.text_field,
                          doc_separator=train_cfg.doc_separator, val_fraction=train_cfg.val_fraction,
                          seed=train_cfg.seed, skip=have_docs)
    tokens = folder / "tokens.bin"
    if manifest is None:  # start over: drop any stale manifest first so nothing points at new bytes
        (folder / "manifest.json").unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".tokens.bin.", suffix=".tmp")
        os.close(fd)
        target = Path(name)
        usual_permissions(target)  # not mkstemp's 0600: a cache others may share
    else:
        target = tokens
    bar = tqdm(total=max_tokens, initial=have_tokens, unit="tok", unit_scale=True, disable=not show_progress,
               desc=f"tokenizing {folder.name}")
    try:
        with reported_writes(tokens):
            handle = open(target, "ab" if manifest else "wb")
        with handle:
            out = _Checksummed(handle, tokens, manifest[CHECKSUM] if manifest else 0)
            written, consumed, exhausted = _tokenize_into(out, docs, tokenizer, dtype, max_tokens,
                                                          have_tokens, bar)
            with reported_writes(tokens):
                handle.flush()
                os.fsync(handle.fileno())
        if target != tokens:
            os.replace(target, tokens)
    except BaseException:
        if target != tokens:
            target.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    manifest = {"complete": True, "num_tokens": have_tokens + written, "num_docs": have_docs + consumed,
                "exhausted": exhausted, "dtype": dtype.name, "bytes": (have_tokens + written) * dtype.itemsize,
                CHECKSUM: out.crc, "key": key}
    write_json(folder / "manifest.json", manifest)
    return manifest


class _Checksummed:
    """A file handle that keeps the CRC-32 of everything written through it (continuing `crc`); a failed
    write (a full disk) is a WriteError naming the cache file."""

    def __init__(self, handle, path: Path, crc: int):
        self.handle, self.path, self.crc = handle, path, crc

    def write(self, data: bytes) -> None:
        with reported_writes(self.path):
            self.handle.write(data)
        self.crc = checksum([data], self.crc)

