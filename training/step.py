"""One optimizer step: the code train.py runs and bench/bench_train.py times (so the benchmark cannot drift
from the trainer). Forward and backward over grad_accum_steps micro-batches, gradient clipping, and the
update, which is skipped when the loss or the gradient is not finite.

Host syncs (the CPU waiting for the GPU), all of them in one step (tests/test_host_syncs.py holds it to this):
- one `.item()`, the finiteness check below: needed, since a non-finite update must never be applied.
- none for the data: each micro-batch is built on the host from the token array (it lives there) and copied
  from pinned memory with non_blocking=True (machinery/data/batches.py), so the host queues it and moves on.
- none for the learning rate (a Python float; fused AdamW takes it as one), the masks (built on the device),
  the loss (kept on the device in StepResult) or clipping (the norm stays a device tensor).
train.py adds a read of the loss every log_interval steps (the log line) and at evaluations and checkpoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from config import TrainConfig
from machinery.run import distributed
from machinery.run.device import autocast
from training.optim import set_lr
from training.schedule import lr_at


class NonFiniteStep(Exception):
    """The loss or the gradient norm was inf/NaN; the update was not applied."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"at step {step} the loss is {loss} and the gradient norm {grad_norm}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


@dataclass
class StepResult:
    loss: torch.Tensor       # mean loss over the micro-batches (on the device: reading it syncs)
    grad_norm: torch.Tensor  # global gradient norm before clipping
    lr: float


def _no_clock(phase: str) -> None:
    pass


def train_step(step: int, model: nn.Module, optimizers: list, batches, train_cfg: TrainConfig,
               device: torch.device, dtype: torch.dtype, clock=_no_clock) -> StepResult:
    """Optimizer step number `step` (0-based). `clock(phase)` is called as each phase ends
    ('data', 'forward', 'backward', 'clip', 'check', 'optimizer'): the benchmark times phases with it."""
    lr = lr_at(step, train_cfg)
    set_lr(optimizers, lr, train_cfg)
    accum = train_cfg.grad_accum_steps
    step_loss = torch.zeros((), device=device)
    for micro in range(accum):
        batch = next(batches)
        clock("data")
        with distributed.grad_sync(model, micro == accum - 1):  # all-reduce once, after the last micro-batch
            with autocast(device, dtype):
                _, loss = model(batch.inputs, batch.targets, doc_ids=batch.doc_ids)
            clock("forward")
            (loss / accum).backward()
            clock("backward")
        step_loss += loss.detach() / accum
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or math.inf)
    clock("clip")
    # the step's one host sync (see the top of this file). A finite loss can still come with an inf/NaN gradient
    # (no clipping, a huge lr): applying that update would poison the weights and the optimizer state.
    if not torch.isfinite(step_loss + grad_norm).item():
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        raise NonFiniteStep(step, step_loss.item(), grad_norm.item())
    clock("check")
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    clock("optimizer")
    return StepResult(step_loss, grad_norm, lr)
