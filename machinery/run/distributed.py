"""Several processes under torchrun: DistributedDataParallel (replicas) or FSDP2 (sharded parameters).

    torchrun --nproc_per_node=8 train.py ...          # one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 train.py ...
Without torchrun everything here is a no-op for a single process.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> Dist:
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU); single process otherwise."""
    if "RANK" not in os.environ:
        return Dist()
    dist = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    if device_type == "cuda":
        torch.cuda.set_device(dist.local_rank)
    torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist


def shutdown() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def mean_across_ranks(value: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        value = value.clone()
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
        value /= dist.world_size
    return value


def max_across_ranks(value: float, dist: Dist, device: torch.device) -> float:
    """The largest of every process's value (e.g. peak memory: the rank that needs the most sets the cost)."""
    if dist.enabled:
        value = torch.tensor(float(value), device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return value.item()
    return value


def wrap_model(model: nn.Module, dist: Dist, parallel: str, device: torch.device) -> nn.Module:
    """DDP replicates the model and averages gradients; FSDP2 shards each block's parameters."""
    if not dist.enabled:
        return model
    if parallel == "fsdp":
        return shard_model(model)
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2, in place: each block's parameters sharded over the process group, then the rest. Needs a process
    group (torchrun's; bench/gpu_check.py starts one of a single process to time the wrapper on one GPU)."""
    from torch.distributed.fsdp import fully_shard
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def gather(obj, dist: Dist) -> list:
    """Every rank's `obj` (small, picklable: e.g. a data-loader position), in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


# --- whole state dicts, whatever the wrapping ------------------------------------------------------------
# The one place that knows FSDP shards parameters: get_model_state_dict gathers the shards into whole
# tensors (on CPU when several processes share a GPU node's memory); for one process or DDP it returns the
# model's own tensors. `model` is the plain Model (FSDP2 shards it in place; DDP and torch.compile wrap it).
def full_state_dicts(model: nn.Module, optimizers: list, dist: Dist) -> tuple[dict, list[dict]]:
    """(weights, [optimizer states]) as whole tensors with parameter names as keys."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=dist.enabled)
    return (get_model_state_dict(model, options=options),
            [get_optimizer_state_dict(model, opt, options=options) for opt in optimizers])


def load_optimizer_states(model: nn.Module, optimizers: list, states: list[dict]) -> None:
    """The inverse of full_state_dicts for the optimizers (each rank keeps its own shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    for opt, state in zip(optimizers, states, strict=True):
        set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def grad_sync(model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on micro-steps before the last one of an accumulation."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return _reenable_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _reenable_sync(model):
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
