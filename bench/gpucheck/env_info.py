"""Section env: what the machine is (GPU, memory, driver, torch, CUDA, cuDNN, Triton) and what it really reaches:
a bf16 matrix product of 8192^3 (random data: zeros run faster) and a device-to-device copy. MFU is then read
against the datasheet peak and against this measured rate."""
from __future__ import annotations

import platform
import statistics
import subprocess
import time

import torch

from bench.gpucheck.context import Context
from bench.machine import cpu_features, cpu_name
from machinery.run.device import GPU_PEAK_FLOPS, peak_flops
from modules.attention import flex_attention

ITEMS = ("machine",)


def driver_version() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), None where it cannot be asked."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _median_seconds(ctx: Context, fn, reps: int) -> float:
    """Median seconds of fn over `reps` runs after warm-ups: CUDA events on a GPU, the wall clock on a CPU."""
    for _ in range(3):
        fn()
    ctx.sync()
    times = []
    for _ in range(reps):
        if ctx.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(ctx: Context, n: int, reps: int) -> float:
    """bf16 n x n x n matrix products per second, in TFLOP/s (2 n^3 each), on random data."""
    a = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16)
    return 2 * n ** 3 / _median_seconds(ctx, lambda: a @ b, reps) / 1e12


def copy_gb_per_s(ctx: Context, megabytes: int, reps: int) -> float:
    """A device-to-device copy, counting the bytes read and the bytes written."""
    src = torch.randn(megabytes * 2 ** 20 // 4, device=ctx.device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _median_seconds(ctx, lambda: dst.copy_(src), reps) / 1e9


def run(ctx: Context, items: tuple[str, ...]) -> None:
    ctx.run_item("machine", ctx.sizes["estimate_s"], lambda: machine(ctx))


def machine(ctx: Context) -> None:
    sizes = ctx.sizes
    values = dict(python=platform.python_version(), cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                  cpu=f"{cpu_name()} ({cpu_features()})", flex_attention=flex_attention is not None,
                  matmul_size=sizes["matmul_size"])
    try:
        import triton
        values["triton"] = triton.__version__
    except ImportError:
        values["triton"] = None
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        datasheet = next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in props.name), None)
        values.update(gpu_memory_gb=round(props.total_memory / 2 ** 30, 1), driver=driver_version(),
                      sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                      datasheet_tflops=datasheet and datasheet / 1e12,
                      sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
                      sdpa_cudnn=getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)())
    else:
        values["datasheet_tflops"] = round(peak_flops("cpu", torch.float32) / 1e12, 4)  # no datasheet: float32
    values["matmul_tflops"] = round(matmul_tflops(ctx, sizes["matmul_size"], sizes["matmul_reps"]), 2)
    values["copy_gb_per_s"] = round(copy_gb_per_s(ctx, sizes["copy_mb"], sizes["matmul_reps"]), 1)
    ctx.write("machine", dtype="bfloat16", **values)
    ctx.log(f"env: {values}")
