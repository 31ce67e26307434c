"""What checksums cost: a checkpoint of a ~100M-parameter model (weights + AdamW state, ~1.2 GB) written and
read back with machinery/run/checkpoint.py (CRC-32 recorded, fsync, verified on load) versus plain safetensors +
torch.save / load, and the CRC-32 work alone. They alternate in one process, so a busy machine slows all
alike; CPU time is reported beside wall time because it varies less when other processes compete.

    python bench/bench_checksum.py [--params=100e6] [--rounds=3] [--dir=/tmp]
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_busy_s, cpu_name  # noqa: E402
from bench.options import parse_options  # noqa: E402
from machinery.fileio import file_checksum  # noqa: E402
from machinery.run.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from machinery.run.weights import tensors_checksum  # noqa: E402

SIDE = 2048  # tensors of SIDE x SIDE float32


def model_and_state(params: float) -> tuple[torch.nn.Module, dict]:
    model = torch.nn.Module()
    for i in range(round(params / SIDE ** 2)):
        model.register_parameter(f"w{i}", torch.nn.Parameter(torch.randn(SIDE, SIDE)))
    moments = {i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
               for i, p in enumerate(model.parameters())}
    return model, {"step": 1, "optimizers": [{"state": moments, "param_groups": []}]}


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): on a shared machine CPU time is the steadier of the two."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def plain(folder: Path, model, state) -> list[tuple[float, float]]:
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return [timed(lambda: (save_file(tensors, folder / "model.safetensors"), torch.save(state, folder / "state.pt"))),
            timed(lambda: (load_file(folder / "model.safetensors"),
                           torch.load(folder / "state.pt", weights_only=True)))]


def checked(folder: Path, model, state) -> list[tuple[float, float]]:
    return [timed(save_checkpoint, folder, 1, model, state),
            timed(lambda: load_checkpoint(latest_checkpoint(folder), model))]


def checksums_alone(folder: Path, model, state) -> list[tuple[float, float]]:
    """The added work by itself: CRC-32 of the weights in memory and of state.pt on disk (page cache)."""
    torch.save(state, folder / "state.pt")
    work = lambda: (tensors_checksum(model.state_dict()), file_checksum(folder / "state.pt"))  # noqa: E731
    return [timed(work), (0.0, 0.0)]


@dataclass
class ChecksumBenchOptions:
    params: float = 100e6       # parameters of the model whose checkpoint is written and read
    rounds: int = 3             # alternating rounds of plain / checked / CRC alone
    dir: Optional[str] = None   # where the checkpoints are written (default: the system's temp folder)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(ChecksumBenchOptions, argv, __doc__)
    if isinstance(options, int):
        return options
    params, rounds = options.params, options.rounds
    torch.set_num_threads(1)
    model, state = model_and_state(params)
    n = sum(p.numel() for p in model.parameters())
    kinds = {"plain": plain, "checked": checked, "crc only": checksums_alone}
    times = {name: [] for name in kinds}
    busy0, wall0 = cpu_busy_s(), time.perf_counter()
    for _ in range(rounds):
        for name, fn in kinds.items():
            with tempfile.TemporaryDirectory(dir=options.dir) as folder:
                times[name].append(fn(Path(folder), model, state))
    load = (cpu_busy_s() - busy0) / (time.perf_counter() - wall0)
    print(f"{n / 1e6:.0f}M parameters + AdamW state ({n * 12 / 1e9:.1f} GB), {rounds} alternating rounds, "
          f"{cpu_name()}, {os.cpu_count()} cores busy {load:.2f} on average")
    for name, rows in times.items():
        (sw, sc), (lw, lc) = [[statistics.median(r[i][j] for r in rows) for j in (0, 1)] for i in (0, 1)]
        if name == "crc only":
            print(f"  CRC-32 of weights + state.pt alone: {sw:5.2f} s wall {sc:5.2f} s CPU (median)")
        else:
            print(f"  {name:8s}  save {sw:5.2f} s wall {sc:5.2f} s CPU   load {lw:5.2f} s wall {lc:5.2f} s CPU  "
                  f"(median)")
    for j, what in ((0, "wall"), (1, "CPU")):
        ratio = statistics.median(sum(c[i][j] for i in (0, 1)) / sum(p[i][j] for i in (0, 1))
                                  for c, p in zip(times["checked"], times["plain"]))
        print(f"  checked / plain, save + load, {what}: {ratio:.2f}x (median of the rounds' ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
