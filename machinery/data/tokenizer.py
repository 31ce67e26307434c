"""Tokenizers: text <-> token ids.

    tok = get_tokenizer("bpe_tinyStories", 1024)   # or get_tokenizer("byte")
    ids = tok.encode("Once upon a time")          # list[int]; a list of strings -> list[list[int]]
    tok.decode(ids)                                # 'Once upon a time'
    tok.display("Once upon a time")                # 'Once| upon| a| time'

Two kinds, one interface (`Tokenizer`):
  - `ByteTokenizer` ('byte'): ids 0..255 are the UTF-8 bytes; 256 bos, 257 eos, 258 pad (vocab_len 259).
  - `SentencePieceTokenizer` ('bpe_*'): a sentencepiece BPE model, tokenizers/<name>/tokenizer_<vocab_len>.model,
    built by machinery/data/build_bpe.py. ids 0 unk, 1 bos, 2 eos, 3 pad, 4..259 the 256 byte-fallback pieces,
    then single characters, then merges in merge order: a smaller vocabulary of the same name is a prefix of a
    larger one. Normalization is off and unknown characters fall back to bytes, so decode(encode(x)) == x.

encode() never adds bos/eos; decode() drops them (and pad). A list of strings is encoded in parallel
(sentencepiece's own threads), which is what pre-tokenizing a corpus should use.
"""
from __future__ import annotations

import json
import re

from machinery import PROJECT_ROOT
from machinery.data.byte_tokenizer import BYTE_VOCAB_LEN, ByteTokenizer
from machinery.data.sentencepiece_tokenizer import SentencePieceTokenizer
from machinery.data.tokenizer_base import Tokenizer

TOKENIZERS_DIR = PROJECT_ROOT / "tokenizers"  # never the CWD
_MODEL_FILE = re.compile(r"^tokenizer_(\d+)\.model$")

# The build flags of the BPE tokenizers this project knows about (without --sizes), for error messages.
# A folder built by build_bpe.py also records its own flags in build.json, which takes precedence.
BUILD_RECIPES = {
    "bpe_tinyStories": "--dataset=data/samples/tinystories --name=bpe_tinyStories",
    "bpe_fineweb-edu": "--dataset=HuggingFaceFW/fineweb-edu --data_subset=sample-10BT --streaming "
                       "--name=bpe_fineweb-edu",
    "bpe_fineweb": "--dataset=HuggingFaceFW/fineweb --data_subset=sample-10BT --streaming --name=bpe_fineweb",
}


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
    return f"python machinery/data/build_bpe.py {recipe} --sizes={','.join(map(str, sorted(sizes)))}"


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
