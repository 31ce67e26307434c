"""Train nested sentencepiece BPE tokenizers on a dataset and write them to tokenizers/<name>/.

    python machinery/data/build_bpe.py --dataset=data/samples/tinystories --name=bpe_tinyStories \
        --sizes=512,1024,2048

The text is the train split as the data layer (machinery/data/sources.py) reads it for training: any hub dataset or
local .txt/.jsonl/.json/.parquet file or folder (relative paths are from the CWD; run from the project root).

Trains once at the largest size, then derives the smaller models by keeping a prefix of the pieces, so every
piece of a smaller model has the same id in the larger ones. sentencepiece orders the trained pieces
[unk bos eos pad, 256 byte-fallback pieces, merges in merge order, single characters]; we move the single
characters in front of the merges so that any prefix is a complete BPE model (every character, then the
first k merges) -- the same pieces sentencepiece picks when trained at that size. Normalization is off and
unknown characters fall back to bytes, so decoding gives back exactly the encoded text.

Writes, for each size, tokenizer_<size>.model and tokenizer_<size>.vocab ("piece<TAB>score" lines; newline,
tab and CR inside pieces written as \\n \\t \\r), and build.json: what it was trained on and the command.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: make `machinery` importable

from machinery.fileio import atomic_write, write_json, write_text  # noqa: E402 (needs the path above)

MAX_CHUNK_CHARS = 8192  # sentencepiece skips "sentences" over max_sentence_length: cut documents into chunks
VOCAB_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})  # one piece per line in .vocab
DEFAULTS = dict(data_subset=None, streaming=False, text_field="text", doc_separator=None, max_docs=None,
                max_chars=50_000_000, character_coverage=0.9995)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--dataset", required=True, help="hub name or local .txt/.jsonl/.json/.parquet file or folder")
    p.add_argument("--name", required=True, help="output folder in tokenizers/, e.g. bpe_tinyStories")
    p.add_argument("--sizes", default="512,1024,2048", help="comma-separated vocab sizes, trained together")
    p.add_argument("--data_subset", default=DEFAULTS["data_subset"], help="hub config, e.g. sample-10BT")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset instead of downloading it")
    p.add_argument("--text_field", default=DEFAULTS["text_field"])
    p.add_argument("--doc_separator", default=DEFAULTS["doc_separator"], help="split .txt files on this string")
    p.add_argument("--max_docs", type=int, default=DEFAULTS["max_docs"], help="read at most this many documents")
    p.add_argument("--max_chars", type=int, default=DEFAULTS["max_chars"],
                   help="stop reading after this many characters (BPE training holds the text in memory)")
    p.add_argument("--character_coverage", type=float, default=DEFAULTS["character_coverage"],
                   help="fraction of characters that get their own piece; the rarest fall back to bytes")
    p.add_argument("--num_threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out_dir", default=None, help="write here instead of tokenizers/<name> (tests)")
    args = p.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        raise ValueError(f"--sizes={args.sizes!r} must be comma-separated integers, e.g. --sizes=512,1024,2048")
    if not args.sizes:
        raise ValueError("--sizes is empty; give e.g. --sizes=512,1024,2048")
    for flag in ("max_docs", "max_chars", "num_threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag}={getattr(args, flag)} must be >= 1")
    if not 0 < args.character_coverage <= 1:
        raise ValueError(f"--character_coverage={args.character_coverage} must be in (0, 1]")
    return args


def recipe(args) -> str:
    """The flags that reproduce this training text (everything but sizes/out_dir/threads)."""
    flags = [f"--dataset={args.dataset}"]
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value != default:
            flags.append(f"--{key}" if value is True else f"--{key}={value}")
    return " ".join(flags + [f"--name={args.name}"])


# ---------------------------------------------------------------------------------------------------
# Reading the training text
def iter_documents(args):
    """Documents of the train split, read by the data layer (machinery/data/sources.py), like training reads them."""
    from machinery.data.sources import iter_documents as data_layer_documents

    return data_layer_documents(args.dataset, split="train", data_subset=args.data_subset,
                                streaming=args.streaming, text_field=args.text_field,
                                doc_separator=args.doc_separator)


def chunk(doc: str, limit: int = MAX_CHUNK_CHARS):
    """Pieces of at most `limit` characters, cut after a newline where possible."""
    while len(doc) > limit:
        cut = doc.rfind("\n", 0, limit) + 1 or limit
        yield doc[:cut]
        doc = doc[cut:]
    if doc:
        yield doc


def read_training_text(args) -> tuple[list[str], int, int]:
    from tqdm import tqdm

    chunks, n_docs, n_chars = [], 0, 0
    bar = tqdm(iter_documents(args), desc=f"reading {args.dataset}", unit=" docs", total=args.max_docs,
               file=sys.stderr, mininterval=1.0)
    for doc in bar:
        chunks.extend(chunk(doc))
        n_docs += 1
        n_chars += len(doc)
        if (args.max_docs and n_docs >= args.max_docs) or (args.max_chars and n_chars >= args.max_chars):
            break
    bar.close()
    if not n_chars:
        raise ValueError(f"--dataset={args.dataset} gave no text (field --text_field={args.text_field!r})")
    return chunks, n_docs, n_chars


# ---------------------------------------------------------------------------------------------------
# Protobuf wire format, just enough to reorder and truncate the pieces of a sentencepiece ModelProto
# (avoids a dependency on the protobuf package). ModelProto: 1 = repeated SentencePiece {1 piece, 2 score,
# 3 type}, 2 = TrainerSpec (4 = vocab_size), 4 = self_test_data.
PIECES, TRAINER_SPEC, SELF_TEST = 1, 2, 4
NORMAL = 1  # SentencePiece.Type; unset means NORMAL


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, the field's full encoding, its payload) for each field of a message, in order."""
    out, pos = [], 0
    while pos < len(buf):
        start = pos
        tag, pos = _read_varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            end = _read_varint(buf, pos)[1]
        elif wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            end = pos + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in the sentencepiece model")
        out.append((tag >> 3, buf[start:end], buf[pos:end]))
        pos = end
    return out


def _piece_info(piece_msg: bytes) -> tuple[str, int]:
    text, kind = "", NORMAL
    for field, _, payload in _fields(piece_msg):
        if field == 1:
            text = payload.decode("utf-8")
        elif field == 3:
            kind = _read_varint(payload, 0)[0]
    return text, kind


def nested_order(proto: bytes) -> tuple[list[bytes], int]:
    """The pieces (encoded) as [special + byte pieces, single characters, merges]; and the size of the first
    two groups, the smallest vocabulary a prefix can have."""
    specials, chars, merges = [], [], []
    for field, raw, payload in _fields(proto):
        if field != PIECES:
            continue
        text, kind = _piece_info(payload)
        if kind != NORMAL:
            if chars or merges:
                raise RuntimeError(f"unexpected piece order: special piece {text!r} after normal pieces")
            specials.append(raw)
        else:
            (chars if len(text) == 1 else merges).append(raw)
    return specials + chars + merges, len(specials) + len(chars)


def model_with_pieces(proto: bytes, pieces: list[bytes]) -> bytes:
    """`proto` with its pieces replaced (and vocab_size set to match; the self-test samples dropped)."""
    out = list(pieces)
    for field, raw, payload in _fields(proto):
        if field == TRAINER_SPEC:
            spec = b"".join(r for f, r, _ in _fields(payload) if f != 4) + _varint(4 << 3) + _varint(len(pieces))
            out.append(_varint(TRAINER_SPEC << 3 | 2) + _varint(len(spec)) + spec)
        elif field not in (PIECES, SELF_TEST):
            out.append(raw)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------------
def train(chunks: list[str], vocab_size: int, args) -> bytes:
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chunks), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, character_coverage=args.character_coverage,
            # exact round trip: no normalization, keep every space, no added leading space
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # runs of spaces (indentation) become pieces
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_surface="\ufffd",  # unk shows as U+FFFD, like bad bytes
            max_sentence_length=4 * MAX_CHUNK_CHARS, input_sentence_size=0, num_threads=args.num_threads,
            minloglevel=2)
    except RuntimeError as e:
        if "required_chars" in str(e):  # fewer ids than 4 special + 256 bytes + the text's characters
            raise ValueError(f"--sizes={vocab_size} is too small for this text ({e})") from None
        raise ValueError(f"sentencepiece could not train a {vocab_size}-token BPE on this text: {e}. "
                         f"Give it more text (--max_docs/--max_chars) or ask for smaller --sizes") from None
    return model.getvalue()


def check_models(out_dir: Path, sizes: list[int], sample: list[str]) -> dict[int, float]:
    """Load every model, check nesting and the exact round trip on `sample`; return tokens per byte."""
    from machinery.data.sentencepiece_tokenizer import SentencePieceTokenizer

    toks = [SentencePieceTokenizer(out_dir / f"tokenizer_{s}.model") for s in sizes]
    largest = toks[-1].sp
    n_bytes = sum(len(t.encode("utf-8")) for t in sample)
    tokens_per_byte = {}
    for size, tok in zip(sizes, toks):
        if tok.vocab_len != size or [tok.sp.id_to_piece(i) for i in range(size)] != \
                [largest.id_to_piece(i) for i in range(size)]:
            raise RuntimeError(f"{tok.model_path} is not a prefix of the largest model")
        ids = tok.encode(sample)
        if tok.decode_batch(ids) != sample:
            raise RuntimeError(f"{tok.model_path} does not round-trip the training text exactly")
        tokens_per_byte[tok.vocab_len] = sum(map(len, ids)) / max(n_bytes, 1)
    return tokens_per_byte


def main(argv=None) -> None:
    import sentencepiece as spm

    args = parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else ROOT / "tokenizers" / args.name
    t0 = time.time()
    chunks, n_docs, n_chars = read_training_text(args)
    read_s = time.time() - t0
    print(f"read {n_docs:,} documents, {n_chars:,} characters ({len(chunks):,} chunks) from {args.dataset} "
          f"in {read_s:.1f} s")

    trained = train(chunks, max(args.sizes), args)
    pieces, min_size = nested_order(trained)
    if args.sizes[0] < min_size:
        raise ValueError(f"--sizes={args.sizes[0]} is too small: this text needs {min_size} tokens before any "
                         f"merge (4 special + 256 bytes + {min_size - 260} characters). Use sizes >= {min_size} "
                         f"or lower --character_coverage so rare characters fall back to bytes")
    # Moving the characters must not change how the largest model splits text.
    full = model_with_pieces(trained, pieces)
    sample = chunks[:200]
    a, b = spm.SentencePieceProcessor(model_proto=trained), spm.SentencePieceProcessor(model_proto=full)
    if a.encode(sample, out_type=str) != b.encode(sample, out_type=str):
        raise RuntimeError("reordering the pieces changed the segmentation; please report this")

    out_dir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        model = model_with_pieces(trained, pieces[:size])
        atomic_write(out_dir / f"tokenizer_{size}.model", lambda tmp: Path(tmp).write_bytes(model))
        sp = spm.SentencePieceProcessor(model_proto=model)
        lines = (f"{sp.id_to_piece(i).translate(VOCAB_ESCAPES)}\t{sp.get_score(i):g}\n" for i in range(size))
        write_text(out_dir / f"tokenizer_{size}.vocab", "".join(lines))
    tokens_per_byte = check_models(out_dir, args.sizes, sample)

    command = f"python machinery/data/build_bpe.py {recipe(args)} --sizes={','.join(map(str, args.sizes))}"
    record = dict(recipe=recipe(args), command=command, sizes=args.sizes, documents=n_docs, characters=n_chars,
                  min_size=min_size, character_coverage=args.character_coverage,
                  tokens_per_byte_on_sample={str(k): round(v, 4) for k, v in tokens_per_byte.items()},
                  sentencepiece=spm.__version__, read_seconds=round(read_s, 1),
                  train_seconds=round(time.time() - t0 - read_s, 1))
    write_json(out_dir / "build.json", record)

    on_disk = {int(p.stem.removeprefix("tokenizer_")) for p in out_dir.glob("tokenizer_*.model")
               if p.stem.removeprefix("tokenizer_").isdigit()}
    stale = sorted(on_disk - set(args.sizes))
    print(f"trained a {max(args.sizes)}-token BPE in {record['train_seconds']} s; "
          f"wrote sizes {args.sizes} to {out_dir}")
    print("tokens per byte on the first 200 chunks: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in tokens_per_byte.items()))
    if stale:
        print(f"warning: {out_dir} also holds sizes {stale} from an earlier build; they are not nested with the "
              f"new models unless trained on the same text -- rebuild them together or delete them")


if __name__ == "__main__":
    main()
