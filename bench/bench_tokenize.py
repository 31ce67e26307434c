"""Tokenizer throughput and compression, one JSON object per line.

    python bench/bench_tokenize.py [--repeats=3]     # --help lists the options

For 'byte' and every bpe_tinyStories size, on the TinyStories train stories (a list of documents) and on
Shakespeare (its paragraphs as documents, and the whole file as one string, which is how the data layer
hands a .txt file over):
  - encode MB/s, single-threaded (num_threads=1) and batched-parallel (all cores);
  - decode MB/s (decode_batch);
  - tokens per byte (compression; bits-per-byte = loss_per_token * tokens_per_byte / ln 2).
MB are 10^6 UTF-8 bytes of text; times are the best of --repeats runs. The first line describes the machine.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.machine import cpu_name  # noqa: E402
from bench.options import parse_options  # noqa: E402
from machinery.cli import UsageError  # noqa: E402
from machinery.data.tokenizer import available_tokenizers, get_tokenizer  # noqa: E402
from machinery.data.tokenizer_base import num_cpus  # noqa: E402

SAMPLES = ROOT / "data" / "samples"


@dataclass
class TokenizeBenchOptions:
    repeats: int = 3                    # timings per case; the best is reported

    def __post_init__(self):
        if self.repeats < 1:
            raise UsageError(f"--repeats={self.repeats} is invalid: must be >= 1")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def corpora() -> dict[str, list[str] | str]:
    with (SAMPLES / "tinystories" / "train.jsonl").open(encoding="utf-8") as f:
        stories = [json.loads(line)["text"] for line in f]
    shakespeare = (SAMPLES / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    paragraphs = [p + "\n\n" for p in shakespeare.split("\n\n")]
    return {"tinystories_train": stories, "shakespeare_paragraphs": paragraphs,
            "shakespeare_one_string": shakespeare}


def main(argv: list[str] | None = None) -> int:
    args = parse_options(TokenizeBenchOptions, argv, __doc__)
    if isinstance(args, int):  # --help printed, or a bad option
        return args
    import sentencepiece

    threads = num_cpus()
    emit(bench="tokenize", machine=cpu_name(), cpus=threads, load_avg_1min=round(os.getloadavg()[0], 2),
         python=platform.python_version(), sentencepiece=sentencepiece.__version__, repeats=args.repeats)
    toks = [get_tokenizer("byte")] + [get_tokenizer("bpe_tinyStories", n)
                                      for n in available_tokenizers().get("bpe_tinyStories", [])]
    for corpus, text in corpora().items():
        docs = [text] if isinstance(text, str) else text
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        for tok in toks:
            row = dict(bench="tokenize", tokenizer=tok.name, vocab_len=tok.vocab_len, corpus=corpus,
                       docs=len(docs), megabytes=round(n_bytes / 1e6, 3))
            if isinstance(text, str):  # one long string: encode(str) uses all cores when it is long
                ids = tok.encode(text)
                t = best_time(lambda: tok.encode(text), args.repeats)
                emit(**row, mode="encode_one_string", threads=threads, mb_per_s=round(n_bytes / t / 1e6, 2),
                     tokens_per_byte=round(len(ids) / n_bytes, 4))
                continue
            ids = tok.encode(docs)
            tokens_per_byte = round(sum(map(len, ids)) / n_bytes, 4)
            for mode, n in (("encode_1thread", 1), ("encode_batched", threads)):
                t = best_time(lambda: tok.encode(docs, num_threads=n), args.repeats)
                emit(**row, mode=mode, threads=n, mb_per_s=round(n_bytes / t / 1e6, 2),
                     tokens_per_byte=tokens_per_byte)
            t = best_time(lambda: tok.decode_batch(ids), args.repeats)
            emit(**row, mode="decode_batch", threads=threads, mb_per_s=round(n_bytes / t / 1e6, 2),
                 tokens_per_byte=tokens_per_byte)
    return 0


if __name__ == "__main__":
    sys.exit(main())
