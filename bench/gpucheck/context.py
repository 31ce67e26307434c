"""What a section's process knows and shares: its sizes, its deadline, where its lines go, how to compile,
how to time and measure memory; and run_item, which runs one item so that a failure, or too little time left,
costs that item alone (its line says which and why) while the next one still runs."""
from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from bench.gpucheck.record import Recorder
from bench.machine import reset_peak_rss, rss_mb

RECOMPILE_LIMIT = 8  # per code object: a model recompiling more often than this is a bug to see, not to wait out


def configure_compiler() -> None:
    """Bounded recompiles (torch 2.6+ calls the limit recompile_limit, older ones cache_size_limit)."""
    import torch._dynamo.config as dynamo_config
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, RECOMPILE_LIMIT)


def compile_stats(log: Callable[[str], None] = print) -> dict:
    """Graph breaks and graphs compiled since the last reset (torch._dynamo's counters); each break's reason
    goes to the log, since every break is a place where the compiled step hands control back to Python."""
    from torch._dynamo.utils import counters
    breaks = counters["graph_break"]
    for reason, count in breaks.items():
        log(f"  graph break x{count}: {reason.splitlines()[0][:200]}")
    return dict(graph_breaks=sum(breaks.values()), unique_graphs=counters["stats"]["unique_graphs"])


def clear_compile_counters() -> None:
    """Start counting graph breaks and graphs anew (what is compiled stays compiled)."""
    from torch._dynamo.utils import counters
    counters.clear()


def reset_compiler() -> None:
    """Forget compiled code and counters: the next item compiles (and counts) from scratch."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()


@dataclass
class Context:
    section: str
    smoke: bool
    deadline: float                 # time.time() after which no item starts
    recorder: Recorder
    sizes: dict                     # plan.sizes(smoke, section)
    compile_backend: str            # 'inductor', or 'eager' (dynamo's graph capture without code generation)
    measured_peak_flops: float | None = None  # the env section's own matmul rate, for a second MFU
    log: Callable[[str], None] = field(default=lambda text: print(text, flush=True))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() and not self.smoke else "cpu")

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def time_left(self) -> float:
        return self.deadline - time.time()

    def write(self, item: str, status: str = "ok", **values) -> dict:
        return self.recorder.write(self.section, item, status, **values)

    def run_item(self, item: str, estimate_s: float, fn: Callable[[], None]) -> None:
        """fn() writes the item's lines; here only a skip (too little time) or a failure is written."""
        if self.time_left() < estimate_s:
            self.write(item, "skipped", error=f"budget: {max(self.time_left(), 0):.0f} s left, this item needs "
                                              f"about {estimate_s:.0f} s")
            self.log(f"{self.section}/{item}: skipped (budget)")
            return
        start = time.time()
        self.log(f"{self.section}/{item}: start ({self.time_left():.0f} s left)")
        try:
            fn()
        except Exception as e:  # one item's failure is its line; the section goes on
            self.log(traceback.format_exc())
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.write(item, "error", error=f"{type(e).__name__}: {first}", seconds=round(time.time() - start, 1))
            self.log(f"{self.section}/{item}: error {type(e).__name__}: {first}")
        else:
            self.log(f"{self.section}/{item}: done in {time.time() - start:.1f} s")
        finally:
            self.free()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        reset_compiler()

    def compile(self, fn, **kwargs):
        """torch.compile with static shapes (every benchmarked step has the same ones); under the eager backend
        (the --smoke default) mode and options are dropped: they configure inductor."""
        if self.compile_backend == "eager":
            return torch.compile(fn, backend="eager", dynamic=False)
        return torch.compile(fn, dynamic=False, **kwargs)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def memory_mark(self) -> float:
        """Start measuring peak memory; returns the baseline (MB) that peak_memory_mb() subtracts."""
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2 ** 20
        reset_peak_rss()
        return 0.0  # a process's peak resident memory, libraries included: nothing to subtract

    def peak_memory_mb(self, baseline: float = 0.0) -> float:
        """CUDA: peak allocated since memory_mark, above its baseline; CPU: the process's peak resident set."""
        self.sync()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if self.cuda else rss_mb("VmHWM")
        return round(peak - baseline, 1)

    def seconds_per_call(self, fn: Callable[[], object], calls: int) -> float:
        """Wall seconds per call of fn over `calls` calls, the device synchronized before and after only (so
        the host queues work ahead, as in training)."""
        self.sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.sync()
        return (time.perf_counter() - start) / calls
