"""What a run costs: its peak memory and wall-clock time (columns of log_data.csv), and its summary.json.

peak_memory_mb, in MiB (2^20 bytes), since the training loop started:
    CUDA     torch.cuda.max_memory_allocated: the peak of the tensors torch allocated on the GPU (not the
             caching allocator's reserve nor the CUDA context, which nvidia-smi adds)
    CPU/MPS  the process's peak resident set (Linux: VmHWM, reset when the loop starts, so data loading and
             earlier work in the same process do not count; elsewhere ru_maxrss, the process's lifetime peak).
             It includes Python and torch themselves (~0.3-0.5 GB).
wall_s: wall-clock seconds since the loop started, evaluations and checkpoints included, summed over the
sessions of a resumed run (RunState.wall_time); elapsed_s counts the training steps only.
"""
from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

MIB = 2 ** 20
SUMMARY = "summary.json"


def memory_kind(device) -> str:
    if getattr(device, "type", device) == "cuda":
        return "cuda max_memory_allocated"
    return "process peak resident set (VmHWM)" if Path("/proc/self/clear_refs").exists() else \
        "process peak resident set (ru_maxrss, lifetime)"


def reset_peak_memory(device) -> None:
    """Start measuring the peak from now (best effort: where it cannot be reset the lifetime peak is kept)."""
    if getattr(device, "type", device) == "cuda":
        import torch
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak resident set size to the current one
    except OSError:
        pass


def peak_memory_mb(device) -> float:
    """The peak since reset_peak_memory, in MiB (NaN where the platform cannot tell)."""
    if getattr(device, "type", device) == "cuda":
        import torch
        return torch.cuda.max_memory_allocated(device) / MIB
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MIB  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return math.nan
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes on macOS, KiB on Linux


# --- a run's summary -------------------------------------------------------------------------------------
def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # '' in rows logged before a column existed
        return math.nan


def summarize_log(rows: list[dict], flops_per_token: float | None = None) -> dict:
    """One run's figures from its log_data.csv rows (strings or numbers; old logs may lack the cost columns):
    best and final validation loss, whether it was still improving (best loss at the last evaluation), tokens,
    training FLOPs, training and wall-clock time, peak memory (the largest over the sessions)."""
    def column(name):
        return [_number(r.get(name)) for r in rows]

    steps, val = column("step"), column("val_loss")
    scored = [(v, s) for v, s in zip(val, steps) if not math.isnan(v)]
    best_val, best_step = min(scored, key=lambda vs: vs[0]) if scored else (math.nan, math.nan)
    tokens = column("tokens")[-1] if rows else math.nan
    speeds = [v for v in column("tokens_per_sec") if not math.isnan(v)]
    peaks = [v for v in column("peak_memory_mb") if not math.isnan(v)]
    return {
        "last_step": int(steps[-1]) if rows and not math.isnan(steps[-1]) else None,
        "tokens": int(tokens) if not math.isnan(tokens) else None,
        "best_val_loss": best_val,
        "best_step": int(best_step) if not math.isnan(best_step) else None,
        "final_val_loss": scored[-1][0] if scored else math.nan,
        "still_improving": bool(scored) and best_step == scored[-1][1],
        "tokens_per_sec": statistics.median(speeds) if speeds else math.nan,
        "train_time_s": column("elapsed_s")[-1] if rows else math.nan,
        "wall_s": column("wall_s")[-1] if rows else math.nan,
        "peak_memory_mb": max(peaks) if peaks else math.nan,
        "train_flops": tokens * flops_per_token if flops_per_token and not math.isnan(tokens) else math.nan,
    }


def write_summary(run_dir: Path, rows: list[dict], flops_per_token: float, device) -> None:
    """trained/<run>/summary.json at the end of each training session (NaN is written as null)."""
    from machinery.fileio import write_json
    summary = {**summarize_log(rows, flops_per_token), "flops_per_token": flops_per_token,
               "peak_memory": memory_kind(device)}
    write_json(Path(run_dir) / SUMMARY, {k: None if isinstance(v, float) and math.isnan(v) else v
                                         for k, v in summary.items()})
