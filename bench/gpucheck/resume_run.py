"""Section run: real train.py runs of a 100M-class model on the bundled TinyStories sample with the bundled
tokenizer (bpe_tinyStories 2048), deterministic kernels on, in float32 and in bf16:

- a straight run of ~150 steps: its loss must fall;
- its twin, killed with SIGKILL once its first checkpoint is written, then continued with --resume: its
  log_data.csv must equal the straight run's (the wall-clock columns aside), exactly in float32, and in bf16
  within the plan's tolerance on the losses.

The four first runs go at once (the GPU has room for all), then the two resumes: each dtype's pair of waves
costs about one run's time. Run folders and checkpoints go to a temporary folder, deleted at the end; each
process's output goes to the log.
"""
from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.gpucheck.context import Context
from machinery.run.run_log import TIMING_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
ITEMS = ("float32", "bfloat16")
LOSSES = ("train_loss", "val_loss")
POLL_S = 0.005  # how often the killer looks for the first checkpoint


def train_args(ctx: Context, dtype: str, name: str, cache: Path) -> list[str]:
    sizes = ctx.sizes
    settings = dict(sizes["model"], **sizes["train"], tokenizer="bpe_tinyStories", dataset="data/samples/tinystories",
                    cache_dir=str(cache), device=ctx.device.type, dtype=dtype, deterministic=True, compile=False,
                    model_name=name)
    return [f"--{k}={v}" for k, v in settings.items()]


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "log_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def compare(straight: list[dict], resumed: list[dict]) -> tuple[bool, float | None]:
    """(every deterministic column equal, the largest loss difference); None when the steps differ."""
    keep = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    if [r["step"] for r in straight] != [r["step"] for r in resumed]:
        return False, None
    diff = max((abs(float(a[k]) - float(b[k])) for a, b in zip(straight, resumed) for k in LOSSES), default=0.0)
    return keep(straight) == keep(resumed), diff


class Runs:
    """The train.py processes of one check, in a temporary folder; stop() ends any still running."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_run_"))
        self.env = dict(os.environ, TEMPLATEGPT_TRAINED_DIR=str(self.tmp / "trained"), PYTHONUNBUFFERED="1",
                        OMP_NUM_THREADS=str(ctx.sizes["threads"]))
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.tmp / f"{name}.log"
        with open(self.logs[name], "w") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=self.env,
                                                stdout=out, stderr=subprocess.STDOUT)

    def run_dir(self, name: str) -> Path:
        return self.tmp / "trained" / name

    def output(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    def wait(self, name: str) -> int:
        timeout = max(1.0, self.ctx.time_left())
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"train.py ({name}) was still running when the budget ran out") from None

    def kill_after_first_checkpoint(self, names: list[str]) -> dict[str, int | None]:
        """SIGKILL each named run as soon as its first checkpoint is complete; -> the step each was killed after
        (None: it ended first)."""
        killed, waiting = {}, set(names)
        while waiting:
            if self.ctx.time_left() <= 0:
                raise TimeoutError("no checkpoint before the budget ran out")
            for name in list(waiting):
                pointer = self.run_dir(name) / "checkpoints" / "latest.json"
                if pointer.exists():  # written once a checkpoint is complete
                    self.procs[name].send_signal(signal.SIGKILL)
                    self.procs[name].wait()
                    killed[name] = max((int(p.name.split("_")[1]) for p in pointer.parent.glob("step_*")), default=None)
                elif self.procs[name].poll() is not None:
                    killed[name] = None
                else:
                    continue
                waiting.discard(name)
            time.sleep(POLL_S)
        return killed

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in self.logs:
            self.ctx.log(f"--- train.py {name} ---\n{self.output(name)[-4000:]}")
        shutil.rmtree(self.tmp, ignore_errors=True)


def run(ctx: Context, items: tuple[str, ...]) -> None:
    dtypes = [item for item in ITEMS if item in items]
    if ctx.time_left() < ctx.sizes["estimate_s"]:
        for dtype in dtypes:
            ctx.run_item(dtype, ctx.sizes["estimate_s"], lambda: None)  # writes the skip
        return
    runs, written, start = Runs(ctx), set(), time.time()
    try:
        both(ctx, runs, dtypes, written)
    except Exception as e:  # the dtypes without a line yet get this error (the runs go together)
        ctx.log(traceback.format_exc())
        for dtype in dtypes:
            if dtype not in written:
                ctx.write(dtype, "error", error=f"{type(e).__name__}: {str(e)[:300]}",
                          seconds=round(time.time() - start, 1))
    finally:
        runs.stop()


def both(ctx: Context, runs: Runs, dtypes: list[str], written: set) -> None:
    start = time.time()
    cache = runs.tmp / "cache"
    for dtype in dtypes:  # all first runs at once (the token cache is built once, under its lock)
        runs.start(f"{dtype}_straight", train_args(ctx, dtype, f"{dtype}_straight", cache))
        runs.start(f"{dtype}_killed", train_args(ctx, dtype, f"{dtype}_killed", cache))
    killed = runs.kill_after_first_checkpoint([f"{d}_killed" for d in dtypes])
    for dtype in dtypes:
        if killed[f"{dtype}_killed"] is not None:
            runs.start(f"{dtype}_resumed", [*train_args(ctx, dtype, f"{dtype}_killed", cache), "--resume"])
    for dtype in dtypes:
        ctx.write(dtype, **judge(ctx, runs, dtype, killed[f"{dtype}_killed"], start))
        written.add(dtype)


def judge(ctx: Context, runs: Runs, dtype: str, killed_at: int | None, start: float) -> dict:
    """One dtype's line: did the loss fall, was it killed, did the resumed log equal the straight one."""
    sizes = ctx.sizes
    line = dict(variant="ours", device=ctx.device.type, dtype=dtype, compile=False, steps=sizes["train"]["max_iters"],
                killed_at_step=killed_at, tolerance=0.0 if dtype == "float32" else sizes["bf16_tolerance"],
                train_command="python train.py " + " ".join(train_args(ctx, dtype, "NAME", Path("CACHE"))))
    problems = []
    for name in (f"{dtype}_straight", f"{dtype}_resumed"):
        if name in runs.procs and runs.wait(name) != 0:
            problems.append(f"{name} exited with {runs.procs[name].returncode}: "
                            f"{runs.output(name).strip().splitlines()[-1:]}")
    if killed_at is None:
        problems.append("the run ended before it could be killed after a checkpoint")
    if problems:
        return dict(line, status="error", error="; ".join(problems), seconds=round(time.time() - start, 1))
    straight, resumed = read_log(runs.run_dir(f"{dtype}_straight")), read_log(runs.run_dir(f"{dtype}_killed"))
    exact, diff = compare(straight, resumed)
    resumed_from = re.search(r"from step (\d+)", runs.output(f"{dtype}_resumed"))
    warnings = sorted(set(re.findall(r"(\w+) does not have a deterministic implementation",
                                     runs.output(f"{dtype}_straight"))))
    ok = exact if dtype == "float32" else diff is not None and diff <= sizes["bf16_tolerance"]
    losses = [float(r["val_loss"]) for r in straight]
    last = straight[-1]
    return dict(line, status="ok" if ok else "error",
                error=None if ok else f"the resumed log differs from the straight run's (largest loss gap {diff})",
                tokens_per_sec=float(last["tokens_per_sec"]), mfu=float(last["mfu"]),
                resumed_from_step=int(resumed_from.group(1)) if resumed_from else None, rows_compared=len(straight),
                exact=exact, max_loss_diff=diff, loss_first=losses[0], loss_last=losses[-1],
                loss_fell=losses[-1] < losses[0], deterministic_warnings=warnings, params=params_of(runs, dtype),
                seconds=round(time.time() - start, 1))


def params_of(runs: Runs, dtype: str) -> float | None:
    """The parameter count train.py printed in its header ('12.34M parameters')."""
    found = re.search(r"([\d.]+)M parameters", runs.output(f"{dtype}_straight"))
    return round(float(found.group(1)) * 1e6) if found else None
