"""What a run prints while it trains: every log_interval steps a line with the training loss, the lr and
tokens/s (nanoGPT's log_interval), a line when it evaluates, and a line per evaluation. On a terminal a
progress bar runs below the lines; when the output goes to a file, a CI log or a job scheduler there is no
bar (its carriage returns would make one endless line), only the plain lines. Each loss line is also a row of
train_loss.csv (the training curve), when given one."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from machinery.run.run_log import TrainLossLog


class Progress:
    def __init__(self, name: str, start_step: int, start_tokens: int, max_iters: int, log_interval: int,
                 enabled: bool = True, curve: TrainLossLog | None = None):
        self.name, self.max_iters, self.log_interval, self.enabled = name, max_iters, log_interval, enabled
        self.curve = curve
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=max_iters, initial=start_step, desc=name, dynamic_ncols=True)
        self._mark_time, self._mark_tokens = time.perf_counter(), start_tokens

    def write(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)  # above the bar, which is redrawn below
        else:
            print(line, flush=True)

    def step_done(self, step: int, loss, lr: float, tokens_seen: int) -> None:
        """After optimizer step `step` (1-based); `loss` is a device tensor, read only on log steps."""
        if self.bar is not None:
            self.bar.update(1)
        if not self.enabled or step % self.log_interval:
            return
        now = time.perf_counter()
        tokens_per_sec = (tokens_seen - self._mark_tokens) / max(now - self._mark_time, 1e-9)
        self._mark_time, self._mark_tokens = now, tokens_seen
        loss = float(loss)
        self.write(f"step {step}/{self.max_iters}: loss {loss:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tokens/s")
        if self.curve is not None:  # added before any checkpoint of this step, which saves the curve (train.py)
            self.curve.append(dict(step=step, tokens=tokens_seen, train_loss=loss, lr=lr))

    def evaluating(self, step: int, batches: int) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name} (evaluating)")
        else:
            self.write(f"step {step}/{self.max_iters}: evaluating on {batches} validation batches ...")

    def evaluated(self, row: dict, improved: bool) -> None:
        if self.bar is not None:
            self.bar.set_description(self.name)
        best = " (best so far: weights saved)" if improved else ""
        self.write(f"step {row['step']}/{self.max_iters}: train loss {row['train_loss']:.4f}, "
                   f"val loss {row['val_loss']:.4f}{best}, {row['tokens_per_sec']:,.0f} tokens/s")
        self._mark_time = time.perf_counter()  # the evaluation's time is not training time

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
