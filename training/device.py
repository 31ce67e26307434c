"""Choosing the device and the precision, with safe defaults per device."""
from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (FLOP/s) for MFU on known GPUs; anything else is measured.
GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "4090": 165e12}


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that isn't there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible; use --device=auto or --device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available (needs Apple silicon); use --device=cpu")
    return torch.device(name)


def cpu_has_amx() -> bool:
    """Intel AMX runs bfloat16 matmuls several times faster than float32; without it bf16 is slower."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 autocast on CUDA GPUs that support it and on AMX CPUs; float32 elsewhere.
    MPS stays float32 unless asked: bf16 autocast there is recent and a common source of NaNs."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for forward passes: weights stay float32, matmuls run in dtype."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.lru_cache(maxsize=None)
def peak_flops(device_type: str, dtype: torch.dtype) -> float:
    """Peak matmul FLOP/s for MFU: a table for known GPUs, else a short matmul measurement here."""
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops if dtype == torch.bfloat16 else flops / 2  # tf32 is about half of bf16
    device = torch.device(device_type)
    n = 1024 if device_type == "cpu" else 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best
