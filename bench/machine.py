"""What every benchmark line records about the machine it ran on."""
from __future__ import annotations

from pathlib import Path

from machinery.run.device import cpu_busy_seconds, cpu_flags, cpu_model

# the instruction sets that decide CPU matmul speed, and so whether bfloat16 pays (see machinery/run/device.py)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_name() -> str:
    """The CPU's model name."""
    return cpu_model()


def cpu_features() -> str:
    """The speed-relevant instruction sets this CPU has, e.g. 'avx2 avx512f avx512_bf16' (every figure names them)."""
    flags = cpu_flags()
    return " ".join(f for f in SPEED_FLAGS if f in flags) or "none of " + "/".join(SPEED_FLAGS)


def cpu_busy_s() -> float:
    """CPU-seconds all processes have been busy (Linux): to tell whether others ran meanwhile."""
    return cpu_busy_seconds()


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory in MB (Linux /proc/self/status): VmRSS now, VmHWM its peak; NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
