"""Data-layer throughput: pre-tokenization (cold and warm cache) and batch assembly.

    python bench/bench_data.py                 # prints one JSON object per line
    python bench/bench_data.py --measure_step  # also times a real ~1M-parameter training step
    python bench/bench_data.py --help          # the options

Batch cost is also given as a percentage of one training step of a ~1M-parameter model (llama3_atto,
batch 32 x 256): of an assumed 100 ms step, and with --measure-step of a step timed here. Target: < 3 %.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.options import parse_options  # noqa: E402
from config import SAMPLING, TrainConfig  # noqa: E402
from machinery.cli import UsageError, build_configs  # noqa: E402
from machinery.data.batches import TokenBatches  # noqa: E402
from machinery.data.pretokenize import load_tokens  # noqa: E402
from machinery.data.sources import iter_documents  # noqa: E402
from machinery.data.tokenizer import get_tokenizer  # noqa: E402

SAMPLES = ROOT / "data" / "samples"
CORPORA = {"tinystories": dict(dataset=str(SAMPLES / "tinystories")),
           "shakespeare": dict(dataset=str(SAMPLES / "tinyshakespeare" / "input.txt"), val_fraction=0.1)}
ASSUMED_STEP_S = 0.100


@dataclass
class DataBenchOptions:
    repeats: int = 3                    # cold pre-tokenizations per case (the best is reported)
    measure_step: bool = False          # also time a real llama3_atto training step instead of assuming 100 ms

    def __post_init__(self):
        if self.repeats < 1:
            raise UsageError(f"--repeats={self.repeats} is invalid: must be >= 1")


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def tokenizers() -> list:
    out = [get_tokenizer("byte")]
    try:
        out.append(get_tokenizer("bpe_tinyStories", 1024))
    except ValueError as e:  # not built on this machine
        print(f"# skipping bpe_tinyStories: {e}", file=sys.stderr)
    return out


def bench_pretokenize(corpus: str, tokenizer, cache_dir: str, repeats: int) -> None:
    cfg = TrainConfig(cache_dir=cache_dir, **CORPORA[corpus])
    mb = sum(len(d.encode()) for d in iter_documents(cfg.dataset, "train", val_fraction=cfg.val_fraction)) / 1e6
    cold = []
    for r in range(repeats):  # a fresh cache folder each time: the full read + tokenize + write path
        cfg_r = TrainConfig(cache_dir=f"{cache_dir}/cold{tokenizer.name}{r}", **CORPORA[corpus])
        t0 = time.perf_counter()
        tokens = load_tokens(cfg_r, tokenizer, "train", show_progress=False)
        cold.append(time.perf_counter() - t0)
    warm = []
    for _ in range(max(5, repeats)):
        t0 = time.perf_counter()
        load_tokens(cfg_r, tokenizer, "train", show_progress=False)
        warm.append(time.perf_counter() - t0)
    best = min(cold)
    emit(bench="pretokenize", corpus=corpus, tokenizer=f"{tokenizer.name}-{tokenizer.vocab_len}", mb=round(mb, 3),
         tokens=len(tokens), cold_s=round(best, 4), mb_per_s=round(mb / best, 2),
         tokens_per_s=round(len(tokens) / best), warm_load_ms=round(min(warm) * 1e3, 3))


def measure_step_s(batch_size: int, seq_len: int) -> float:
    """Median time of one forward+backward+AdamW step of llama3_atto on this CPU."""
    import torch

    from modules.model import Model
    model_cfg, _ = build_configs({"max_seq_len": seq_len}, preset="llama3_atto")
    model = Model(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, model_cfg.vocab_len, (batch_size, seq_len))
    times = []
    for i in range(6):
        t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])  # the first step warms up allocators
    emit(bench="train_step", model="llama3_atto", params=sum(p.numel() for p in model.parameters()),
         batch=batch_size, seq_len=seq_len, step_ms=round(times[len(times) // 2] * 1e3, 1))
    return times[len(times) // 2]


def bench_batches(tokens, batch_size: int, seq_len: int, step_s, bos_id: int) -> None:
    """step_s: a measured training step in seconds, or None (then only the assumed 100 ms is used)."""
    for sampling in SAMPLING:
        for doc_masking in (False, True):
            batches = TokenBatches(tokens, batch_size, seq_len, seed=0, sampling=sampling,
                                   doc_masking=doc_masking, bos_id=bos_id)
            for _ in range(20):
                next(batches)
            n, t0 = 2000, time.perf_counter()
            for _ in range(n):
                next(batches)
            per = (time.perf_counter() - t0) / n
            row = dict(bench="batches", sampling=sampling, doc_masking=doc_masking, batch=batch_size,
                       seq_len=seq_len, batches_per_s=round(1 / per), us_per_batch=round(per * 1e6, 1),
                       percent_of_100ms_step=round(100 * per / ASSUMED_STEP_S, 4))
            if step_s is not None:
                row.update(percent_of_measured_step=round(100 * per / step_s, 5), measured_step_ms=round(step_s * 1e3))
            emit(**row)


def main(argv: list[str] | None = None) -> int:
    args = parse_options(DataBenchOptions, argv, __doc__)
    if isinstance(args, int):  # --help printed, or a bad option
        return args
    import torch
    emit(bench="machine", cpu=platform.processor() or platform.machine(), python=platform.python_version(),
         torch=torch.__version__, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as cache_dir:
        toks = tokenizers()
        list(iter_documents(CORPORA["tinystories"]["dataset"], "validation"))  # import `datasets` untimed
        for corpus in CORPORA:
            for tok in toks:
                bench_pretokenize(corpus, tok, cache_dir, args.repeats)
        tok = toks[-1]
        cfg = TrainConfig(cache_dir=cache_dir, **CORPORA["tinystories"])
        tokens = load_tokens(cfg, tok, "train", show_progress=False)
        batch_size, seq_len = 32, 256
        step_s = measure_step_s(batch_size, seq_len) if args.measure_step else None
        bench_batches(tokens, batch_size, seq_len, step_s, tok.bos_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
