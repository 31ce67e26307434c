"""Our training against nanoGPT's own train.py on nanoGPT's CPU Shakespeare configuration, on this machine,
in one run: full 2000-iteration trainings alternate (ours float32, ours bfloat16, nanoGPT), and each prints one
JSON line with its tokens/s (median over the run) and final validation loss.

    python bench/bench_vs_nanogpt.py --nanogpt_dir=/path/to/nanoGPT [--rounds=1] [--threads=1] [--iters=2000]

nanoGPT is not a dependency: clone it anywhere and run its data/shakespeare_char/prepare.py once (it reads
input.txt beside it; copy data/samples/tinyshakespeare/input.txt there when offline). Its CPU command is the
one from its README: --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
--batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0.
Our side is `train.py --preset=nanogpt_shakespeare` (the same sizes, schedule and optimizer settings).
Without --nanogpt_dir only our two dtypes run (the bf16/float32 ratio and the loss parity).
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import cpu_busy_s, cpu_features, cpu_name  # noqa: E402

TOKENS_PER_ITER = 12 * 64  # batch 12 x block 64, both sides
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--lr_decay_iters={iters}", "--max_iters={iters}", "--dropout=0.0",
                "--always_save_checkpoint=False"]
_ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
_EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def _env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def run_ours(dtype: str, iters: int, threads: int, trained_dir: Path) -> dict:
    name = f"vs_nanogpt_{dtype}_{time.time_ns()}"
    cmd = [sys.executable, "train.py", "--preset=nanogpt_shakespeare", f"--model_name={name}", f"--dtype={dtype}",
           f"--max_iters={iters}", f"--warmup_iters={min(100, iters // 10)}",
           f"--eval_interval={min(250, iters)}"]  # the preset's values at 2000 iterations; shorter runs for tests
    env = dict(_env(threads), TEMPLATEGPT_TRAINED_DIR=str(trained_dir))
    wall, busy = time.perf_counter(), cpu_busy_s()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall, busy = time.perf_counter() - wall, cpu_busy_s() - busy
    with open(trained_dir / name / "log_data.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rates = [float(r["tokens_per_sec"]) for r in rows]
    return dict(variant=f"ours_{dtype}", tokens_per_sec=round(statistics.median(rates), 1),
                val_loss=round(float(rows[-1]["val_loss"]), 4), iters=int(rows[-1]["step"]), wall_s=round(wall, 1),
                machine_busy_cores=round(busy / wall, 2))


def run_nanogpt(nanogpt_dir: Path, iters: int, threads: int) -> dict:
    out_dir = tempfile.mkdtemp(prefix="nanogpt_out_")
    cmd = [sys.executable, "train.py"] + [a.format(iters=iters) for a in NANOGPT_ARGS] + [f"--out_dir={out_dir}"]
    wall, busy = time.perf_counter(), cpu_busy_s()
    done = subprocess.run(cmd, cwd=nanogpt_dir, env=_env(threads), check=True, capture_output=True, text=True)
    wall, busy = time.perf_counter() - wall, cpu_busy_s() - busy
    times, val = [], float("nan")
    for line in done.stdout.splitlines():
        if m := _ITER_LINE.match(line):
            if int(m[1]) > 0:  # iteration 0 includes start-up
                times.append(float(m[2]))
        elif m := _EVAL_LINE.match(line):
            val = float(m[3])
    # eval iterations' times include the evaluation: the median ignores them
    return dict(variant="nanogpt", tokens_per_sec=round(TOKENS_PER_ITER / (statistics.median(times) / 1e3), 1),
                val_loss=round(val, 4), iters=iters, wall_s=round(wall, 1), machine_busy_cores=round(busy / wall, 2))


def main(argv: list[str] | None = None) -> int:
    from machinery.cli import print_help_if_asked, split_args
    overrides, _ = split_args(sys.argv[1:] if argv is None else argv)
    if print_help_if_asked(overrides, usage=__doc__, sections=[]):
        return 0
    nanogpt_dir = Path(overrides["nanogpt_dir"]).expanduser() if "nanogpt_dir" in overrides else None
    iters, rounds = int(overrides.get("iters", 2000)), int(overrides.get("rounds", 1))
    threads = int(overrides.get("threads", 1))
    if nanogpt_dir is not None and not (nanogpt_dir / "data" / "shakespeare_char" / "train.bin").is_file():
        print(f"error: {nanogpt_dir}/data/shakespeare_char/train.bin is missing: run its prepare.py first",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vs_nanogpt_") as trained_dir:
        for _ in range(rounds):
            runs = [lambda: run_ours("float32", iters, threads, Path(trained_dir)),
                    lambda: run_ours("bfloat16", iters, threads, Path(trained_dir))]
            if nanogpt_dir is not None:
                runs.append(lambda: run_nanogpt(nanogpt_dir, iters, threads))
            for run in runs:
                row = dict(bench="vs_nanogpt", cpu=cpu_name(), cpu_flags=cpu_features(), threads=threads, **run())
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
