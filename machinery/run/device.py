"""Choosing the device and the precision, with safe defaults per device."""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from config import DTYPES

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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # instructions that make bfloat16 matmuls fast on x86 CPUs
BF16_MIN_SPEEDUP = 1.3  # bf16 must beat float32 matmuls by this much to be worth autocast's casts
PROBE_CACHE = Path.home() / ".cache" / "templateGPT" / "cpu_bf16_probe.json"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def measure_bf16_speedup(size: int = 384, repeats: int = 5) -> float:
    """float32 time / bfloat16 time of one size^3 matmul on this CPU: best of `repeats`, alternating the two
    (a few ms in all), so a busy machine slows both alike."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a.bfloat16(), b.bfloat16()
    best = {"float32": math.inf, "bfloat16": math.inf}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (x, y) in (("float32", (a, b)), ("bfloat16", (a16, b16))):
            start = time.perf_counter()
            x @ y
            best[name] = min(best[name], time.perf_counter() - start)
    return best["float32"] / best["bfloat16"]


@functools.lru_cache(maxsize=None)
def cpu_bf16_choice() -> tuple[bool, str]:
    """Whether bfloat16 autocast pays on this CPU, and why. CPUs without AMX or AVX512-BF16 emulate bf16 and run
    it far slower (~100x on AVX2-only EPYCs), so they get float32 without a probe; on the others a one-time
    matmul probe decides, cached in PROBE_CACHE per CPU model, flags and torch version."""
    flags = cpu_flags()
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    if not have:
        return False, "float32: this CPU has neither AMX nor AVX512-BF16, so bfloat16 matmuls are emulated (slow)"
    key = f"{cpu_model()}|{' '.join(have)}|torch {torch.__version__}"
    speedup = _cached_probe(key)
    if speedup is None:
        speedup = measure_bf16_speedup()
        _store_probe(key, speedup)
    if speedup >= BF16_MIN_SPEEDUP:
        return True, f"bfloat16 autocast: this CPU has {'+'.join(have)} and its bf16 matmuls ran {speedup:.1f}x float32"
    return False, f"float32: this CPU has {'+'.join(have)} but its bf16 matmuls ran only {speedup:.2f}x float32"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cached_probe(key: str) -> float | None:
    try:
        return float(json.loads(PROBE_CACHE.read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache yet, or an unreadable one: probe again


def _store_probe(key: str, speedup: float) -> None:
    try:
        cache = json.loads(PROBE_CACHE.read_text()) if PROBE_CACHE.is_file() else {}
        cache[key] = round(speedup, 3)
        PROBE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = PROBE_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, PROBE_CACHE)
    except (OSError, ValueError):
        pass  # a read-only home only costs a probe per process


def cpu_busy_seconds() -> float:
    """CPU-seconds all processes have kept this machine busy since boot (Linux /proc/stat; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return math.nan


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores all processes kept busy over the next `seconds` (NaN where /proc/stat is missing)."""
    start = cpu_busy_seconds()
    time.sleep(seconds)
    return (cpu_busy_seconds() - start) / seconds


def cpu_threads_choice() -> tuple[int, str]:
    """Intra-op threads for CPU training, and why. Tiny models on a busy machine run up to 25x slower with a
    thread per core than with one (OpenMP threads spin-wait for a core another process holds; measured in
    bench/README.md), while on an idle machine every core helps. So: OMP_NUM_THREADS if set, else the cores
    that other processes leave free right now (a 0.1 s look at /proc/stat), at least one."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), f"{torch.get_num_threads()} thread(s), as OMP_NUM_THREADS says"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores()
    if math.isnan(busy):
        return torch.get_num_threads(), f"{torch.get_num_threads()} thread(s) (torch's default; load unknown)"
    threads = max(1, min(cores, round(cores - busy)))
    return threads, (f"{threads} of {cores} cores (other processes kept {busy:.1f} busy; "
                     f"set OMP_NUM_THREADS to choose)")


def dtype_choice(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype for `--dtype=name` on `device`, and a short reason for the run header.
    'auto': bfloat16 autocast on CUDA GPUs that support it and on CPUs whose bf16 matmuls are really faster;
    float32 elsewhere. MPS stays float32 unless asked: bf16 autocast there is recent and a source of NaNs."""
    if name == "float32":
        return torch.float32, "float32 (as asked)"
    if name == "bfloat16":
        return torch.bfloat16, "bfloat16 autocast (as asked)"
    if name != "auto":
        raise ValueError(f"dtype={name!r} is unknown: allowed values are {', '.join(map(repr, DTYPES))}")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bfloat16 autocast: this GPU supports it"
        return torch.float32, "float32: this GPU has no bfloat16"
    if device.type == "cpu":
        use_bf16, why = cpu_bf16_choice()
        return (torch.bfloat16 if use_bf16 else torch.float32), why
    return torch.float32, f"float32: the safe default on {device.type}"


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    return dtype_choice(name, device)[0]


CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"  # cuBLAS repeats its sums bit for bit only with a fixed workspace


def use_deterministic_kernels(enabled: bool) -> None:
    """TrainConfig.deterministic: kernels that give the same bits on every run (atomic-add reductions, e.g. in
    attention's backward, otherwise sum in a different order each time), or torch's defaults. Strict: an op
    without a deterministic version stops the run with an error naming it (torch's warn-only mode would keep
    SDPA's flash and memory-efficient backward nondeterministic: they switch only in this one). cuBLAS reads
    its workspace setting when it starts, so this runs before the first matmul; a value already set is kept."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    if enabled != torch.are_deterministic_algorithms_enabled():  # the call imports inductor's config: ~1 s
        torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False  # its autotuner may pick a different kernel per run (also torch's default)


def nondeterministic_op(error: BaseException) -> str | None:
    """The op named by torch's error for an op without a deterministic kernel (under use_deterministic_kernels),
    or None for any other error."""
    text = str(error)
    if isinstance(error, RuntimeError) and "does not have a deterministic implementation" in text:
        return text.split(",")[0]
    return None


def nondeterministic_message(op: str, device: torch.device, what_was_kept: str) -> str:
    return f"--deterministic: {op} on {device.type}; add --deterministic=false: {what_was_kept}"


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
