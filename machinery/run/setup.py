"""The first steps of a run, shared by train.py and the benchmarks: the machine (device, precision,
processes, seed), the data, the model, and the model made ready to train (wrapped, optimizers, compiled)."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from config import ModelConfig, TrainConfig
from machinery.data.batches import TokenBatches
from machinery.run import distributed
from machinery.run.device import cpu_threads_choice, dtype_choice, pick_device, use_deterministic_kernels
from modules.model import Model
from training.optim import build_optimizers, optimizer_builder
from training.schedule import anneal_shape


class TrainingError(Exception):
    """A problem the user can fix; train.py prints it as one line, without a traceback."""


@dataclass
class Machine:
    device: torch.device
    dtype: torch.dtype
    dist: distributed.Dist
    dtype_reason: str = ""  # why dtype="auto" chose what it did (and on a CPU the thread count): the run header

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def say(self, *args, **kwargs) -> None:
        """print on the main process only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)


def set_up(train_cfg: TrainConfig) -> Machine:
    """Device, precision and processes; seeds torch. Fails at once on a choice with no implementation."""
    optimizer_builder(train_cfg.optimizer)
    anneal_shape(train_cfg.anneal_type)
    device = pick_device(train_cfg.device)
    use_deterministic_kernels(train_cfg.deterministic)  # before the first GPU kernel: cuBLAS reads it at start
    dist = distributed.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(train_cfg.seed)
    dtype, why = dtype_choice(train_cfg.dtype, device)
    if train_cfg.deterministic:
        why += "; deterministic kernels"
    return Machine(device, dtype, dist, why)


def choose_cpu_threads(machine: Machine) -> None:
    """On a CPU, train with the cores other processes leave free (machinery/run/device.py), and say so. train.py
    calls it; benchmarks and tests that set their own thread count do not."""
    if machine.device.type == "cpu":
        threads, why = cpu_threads_choice()
        torch.set_num_threads(threads)
        machine.dtype_reason += f"; threads: {why}"


@dataclass
class Data:
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    batches: TokenBatches  # this process's training batches; evaluation cuts its own from val_tokens


def load_data(model_cfg: ModelConfig, train_cfg: TrainConfig, machine: Machine, tokenizer,
              show_progress: bool | None = None, max_steps: int | None = None) -> Data:
    """Tokenize (once, cached) and cut batches. Rank 0 builds the cache first, the others then read it.
    show_progress: a tokenizing progress bar; None -> only on a terminal (a log file gets no bar).
    max_steps: the steps that will be run (default max_iters); streaming tokenizes only what they read."""
    from machinery.data.pretokenize import load_tokens
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    dist, T = machine.dist, model_cfg.max_seq_len
    tokens_per_step = train_cfg.micro_batch_size * train_cfg.grad_accum_steps * T * dist.world_size
    # streaming: tokenize only what this run will read (a longer run later extends the cache)
    streaming = train_cfg.streaming
    steps = train_cfg.max_iters if max_steps is None else max_steps
    train_needed = (steps + 1) * tokens_per_step + T + 1 if streaming else None
    val_needed = train_cfg.eval_batches * train_cfg.micro_batch_size * dist.world_size * T + 1 if streaming else None
    for turn in ("main", "others"):
        if dist.is_main == (turn == "main"):
            show = show_progress and dist.is_main
            train_tokens = load_tokens(train_cfg, tokenizer, "train", max_tokens=train_needed, show_progress=show)
            val_tokens = load_tokens(train_cfg, tokenizer, "validation", max_tokens=val_needed, show_progress=show)
        distributed.barrier(dist)
    for split, tokens in (("training", train_tokens), ("validation", val_tokens)):
        if len(tokens) < T + 1:
            raise TrainingError(f"the {split} split of {train_cfg.dataset} has {len(tokens)} tokens, fewer than one "
                                f"window (max_seq_len + 1 = {T + 1}): use more data, a larger --val_fraction, "
                                f"or a smaller --max_seq_len")
    batches = TokenBatches(train_tokens, train_cfg.micro_batch_size, T, seed=train_cfg.seed,
                           sampling=train_cfg.sampling, rank=dist.rank, world_size=dist.world_size,
                           device=machine.device, doc_masking=train_cfg.doc_masking, bos_id=tokenizer.bos_id)
    return Data(train_tokens, val_tokens, batches)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or a RuntimeError saying so (MPS; the CPU allocator's
    "can't allocate memory")."""
    text = str(error).lower()
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "allocate memory" in text))


def build_model(model_cfg: ModelConfig, train_cfg: TrainConfig, machine: Machine) -> Model:
    """The model on its device; running out of memory here is one line saying how big it was. On a GPU the weights
    are made and initialized there (a 1B model's init takes tens of seconds on the CPU, then a copy)."""
    try:
        with torch.device(machine.device) if machine.device.type == "cuda" else contextlib.nullcontext():
            model = Model(model_cfg).to(machine.device)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise TrainingError(f"out of memory building the model on {machine.device.type} "
                            f"(dim={model_cfg.dim}, num_layers={model_cfg.num_layers}, "
                            f"vocab_len={model_cfg.vocab_len}): choose a smaller model") from None
    model.activation_checkpointing = train_cfg.activation_checkpointing
    return model


def prepare_training(model: Model, train_cfg: TrainConfig, machine: Machine) -> tuple[nn.Module, list]:
    """(the module the steps call, the optimizers): wrapped for several processes, then compiled if asked.
    Load saved weights into `model` before this (FSDP shards them here)."""
    train_model = distributed.wrap_model(model, machine.dist, train_cfg.parallel, machine.device)
    optimizers = build_optimizers(model, train_cfg, machine.device)
    if train_cfg.compile:  # every step has the same shapes: one static graph, never a dynamic-shape recompile
        train_model = torch.compile(train_model, dynamic=False)
    return train_model, optimizers
