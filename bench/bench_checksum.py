"""What checksums cost: a checkpoint of a ~100M-parameter model (weights + AdamW state, ~1.2 GB) written and
read back with training/checkpoint.py (CRC-32 recorded, fsync, verified on load) versus plain safetensors +
torch.save / load. The two alternate in one process, so a busy machine slows both alike.

    python bench/bench_checksum.py [--params=100e6] [--rounds=3] [--dir=/tmp]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_busy_s, cpu_name  # noqa: E402
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402

SIDE = 2048  # tensors of SIDE x SIDE float32


def model_and_state(params: float) -> tuple[torch.nn.Module, dict]:
    model = torch.nn.Module()
    for i in range(round(params / SIDE ** 2)):
        model.register_parameter(f"w{i}", torch.nn.Parameter(torch.randn(SIDE, SIDE)))
    moments = {i: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
               for i, p in enumerate(model.parameters())}
    return model, {"step": 1, "optimizers": [{"state": moments, "param_groups": []}]}


def plain(folder: Path, model, state) -> tuple[float, float]:
    start = time.perf_counter()
    save_file({k: v.detach() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    torch.save(state, folder / "state.pt")
    saved = time.perf_counter()
    load_file(folder / "model.safetensors")
    torch.load(folder / "state.pt", weights_only=True)
    return saved - start, time.perf_counter() - saved


def checked(folder: Path, model, state) -> tuple[float, float]:
    start = time.perf_counter()
    save_checkpoint(folder, 1, model, state)
    saved = time.perf_counter()
    load_checkpoint(latest_checkpoint(folder), model)  # verifies on finding, and again on loading
    return saved - start, time.perf_counter() - saved


def main(argv: list[str]) -> None:
    opts = dict(a[2:].split("=", 1) for a in argv)
    params, rounds = float(opts.get("params", 100e6)), int(opts.get("rounds", 3))
    torch.set_num_threads(1)
    model, state = model_and_state(params)
    n = sum(p.numel() for p in model.parameters())
    times = {"plain": [], "checked": []}
    busy0, wall0 = cpu_busy_s(), time.perf_counter()
    for _ in range(rounds):
        for name, fn in (("plain", plain), ("checked", checked)):
            with tempfile.TemporaryDirectory(dir=opts.get("dir")) as folder:
                times[name].append(fn(Path(folder), model, state))
    load = (cpu_busy_s() - busy0) / (time.perf_counter() - wall0)
    print(f"{n / 1e6:.0f}M parameters + AdamW state, {rounds} alternating rounds, {cpu_name()}, "
          f"machine busy {load:.2f} cores on average")
    for name, runs in times.items():
        save, load_ = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  {name:8s} save {save:6.2f} s   load {load_:6.2f} s   (best of {rounds})")
    ratio = [sum(min(r[i] for r in times["checked"]) for i in (0, 1)),
             sum(min(r[i] for r in times["plain"]) for i in (0, 1))]
    print(f"  checked / plain, save + load: {ratio[0] / ratio[1]:.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
