"""Section train: tokens/s, MFU, peak memory and first-step (compile) time of the step train.py runs, bf16
autocast, compiled, on random tokens.

- gpt2_124M at context 1024, paired in one process with the nanoGPT-style reference step
  (bench/reference_gpt.py) on the same shapes: blocks of steps alternate, so both see the same machine.
- llama_1B at context 2048 with the largest micro-batch that fits, found by doubling without compiling (a
  bounded search: it stops at the first out-of-memory or at the plan's limit), without and (llama_1B_ac) with
  activation checkpointing, which fits a larger batch.
- gpt2_124M_fsdp: the same step with the model wrapped by FSDP2 in a process group of one GPU.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from bench.gpucheck.context import Context, clear_compile_counters, compile_stats
from bench.gpucheck.record import read_rows
from bench.gpucheck.synthetic import SyntheticStep
from machinery.run.device import peak_flops

ROOT = Path(__file__).resolve().parents[2]
ITEMS = ("gpt2_124M", "llama_1B", "llama_1B_ac", "gpt2_124M_fsdp")
REFERENCE_LOG_INTERVAL = 10  # nanoGPT's GPT-2 run reads the loss every 10 iterations


def largest_batch(probe: Callable[[int], float], start: int, limit: int,
                  free: Callable[[], None]) -> tuple[int | None, list[dict]]:
    """Double the micro-batch from `start` while probe(batch) runs (it returns its peak memory in MB; running
    out of memory raises torch.cuda.OutOfMemoryError), never past `limit`. free() runs after every probe, once
    the failed one's tensors are gone. -> (the largest batch that ran or None, one dict per probe)."""
    best, probes, batch = None, [], start
    while batch <= limit:
        try:
            peak, fits = probe(batch), True
        except torch.cuda.OutOfMemoryError:
            peak, fits = None, False
        free()
        probes.append(dict(batch=batch, fits=fits, peak_memory_mb=peak))
        if not fits:
            break
        best, batch = batch, batch * 2
    return best, probes


def mfu(ctx: Context, flops_per_token: float, tokens_per_sec: float) -> tuple[float, float | None]:
    """(MFU against the datasheet peak, MFU against the env section's measured matmul rate or None). A CPU has
    no datasheet entry: its float32 matmul rate stands in (a bf16 probe is slow where bf16 is emulated)."""
    achieved = flops_per_token * tokens_per_sec
    measured = ctx.measured_peak_flops
    peak = peak_flops("cuda", torch.bfloat16) if ctx.cuda else peak_flops("cpu", torch.float32)
    return round(achieved / peak, 4), round(achieved / measured, 4) if measured else None


def warm_up(ctx: Context, step: Callable[[], object], steps: int) -> float:
    """Run `steps` steps; returns the first one's seconds (compilation included)."""
    ctx.sync()
    start = time.perf_counter()
    step()
    ctx.sync()
    first = time.perf_counter() - start
    for _ in range(steps - 1):
        step()
    return first


def measured_line(ctx: Context, runner: SyntheticStep, tokens_per_sec: float, **values) -> dict:
    described = runner.describe()
    total, versus_measured = mfu(ctx, described["flops_per_token"], tokens_per_sec)
    return dict(described, tokens_per_sec=round(tokens_per_sec, 1), mfu=total, mfu_vs_measured=versus_measured,
                ms_per_step=round(1e3 * runner.tokens_per_step / tokens_per_sec, 3), device=ctx.device.type,
                compile_backend=ctx.compile_backend if runner.compiled else None, **values)


# --- gpt2_124M: ours and the reference, alternating ----------------------------------------------------------
def reference_step(ctx: Context, spec: dict, runner: SyntheticStep):
    """bench/reference_gpt.py's nanoGPT loop on our step's shapes and vocabulary, compiled like ours."""
    sys.path.insert(0, str(ROOT / "bench"))
    import reference_gpt
    m, t = runner.model_cfg, runner.cfg
    args = reference_gpt.parse_args([
        *(f"--{k}={v}" for k, v in spec["reference"].items()), f"--block_size={m.max_seq_len}",
        f"--batch_size={t.micro_batch_size}", f"--vocab_size={m.vocab_len}", "--bias", f"--device={ctx.device.type}",
        "--dtype=bfloat16", f"--beta2={t.beta2}", f"--lr={t.lr_max}", f"--warmup_iters={t.warmup_steps}",
        f"--log_interval={REFERENCE_LOG_INTERVAL}", "--quiet"])
    reference = reference_gpt.Reference(args)
    reference.train_model = ctx.compile(reference.model)
    return reference


def pair(ctx: Context, item: str, spec: dict) -> None:
    start = time.time()
    baseline = ctx.memory_mark()
    ours = SyntheticStep(ctx, spec["preset"], spec["overrides"])
    ours.compile(ctx)
    first = {"ours": warm_up(ctx, ours.step, spec["warmup"])}
    peak = {"ours": ctx.peak_memory_mb(baseline)}
    stats = {"ours": compile_stats(ctx.log)}
    clear_compile_counters()  # the reference's compile counts on its own (ours stays compiled)
    baseline = ctx.memory_mark()
    reference = reference_step(ctx, spec, ours)
    first["reference"] = warm_up(ctx, reference.step, spec["warmup"])
    peak["reference"] = ctx.peak_memory_mb(baseline)
    stats["reference"] = compile_stats(ctx.log)
    steps = {"ours": ours.step, "reference": reference.step}
    rates = {"ours": [], "reference": []}
    for r in range(spec["rounds"]):  # alternate blocks, the order rotating each round
        for name in (["ours", "reference"] if r % 2 == 0 else ["reference", "ours"]):
            seconds = ctx.seconds_per_call(steps[name], spec["block"])
            rates[name].append(ours.tokens_per_step / seconds)
    tokens_per_sec = {name: statistics.median(values) for name, values in rates.items()}
    for name in ("ours", "reference"):
        ctx.write(item, **measured_line(
            ctx, ours, tokens_per_sec[name], preset=spec["preset"], variant=name, first_step_s=round(first[name], 2),
            peak_memory_mb=peak[name], steps=spec["rounds"] * spec["block"], parallel="none",
            speedup_vs_reference=round(tokens_per_sec["ours"] / tokens_per_sec["reference"], 3)
            if name == "ours" else None, seconds=round(time.time() - start, 1), **stats[name]))


# --- llama_1B: the largest micro-batch, then the compiled step at it ------------------------------------------
def earlier_batch(ctx: Context, item: str) -> int | None:
    """The micro-batch an earlier item of this check found (llama_1B's, where llama_1B_ac starts its search)."""
    rows = read_rows(ctx.recorder.paths[0], ctx.recorder.base.get("run_id"))
    found = [r["micro_batch"] for r in rows if r.get("item") == item and r.get("status") == "ok"]
    return found[-1] if found else None


def llama(ctx: Context, item: str, spec: dict, checkpointing: bool) -> None:
    start = time.time()
    runner = SyntheticStep(ctx, spec["preset"], {**spec["overrides"], "activation_checkpointing": checkpointing})

    def probe(batch: int) -> float:
        runner.set_micro_batch(batch)
        ctx.memory_mark()
        runner.step()
        return ctx.peak_memory_mb()  # weights and optimizer state included

    start_batch = (earlier_batch(ctx, "llama_1B") if checkpointing else None) or 1
    batch, probes = largest_batch(probe, start_batch, spec["max_batch"], ctx.free)
    ctx.log(f"train/{item}: micro-batch probes {probes}")
    if batch is None:
        raise RuntimeError(f"even micro_batch_size={start_batch} runs out of memory")
    runner.compile(ctx)
    while True:  # compiled code can need more memory than eager: halve until it runs
        try:
            runner.set_micro_batch(batch)
            ctx.memory_mark()
            first = warm_up(ctx, runner.step, spec["warmup"])
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        ctx.free()  # after the except block: its traceback held the failed step's tensors
        batch //= 2
        probes.append(dict(batch=batch, fits=None, note="the compiled step ran out of memory at twice this"))
    seconds = ctx.seconds_per_call(runner.step, spec["steps"])
    ctx.write(item, **measured_line(
        ctx, runner, runner.tokens_per_step / seconds, preset=spec["preset"], variant="ours",
        first_step_s=round(first, 2), peak_memory_mb=ctx.peak_memory_mb(), steps=spec["steps"], parallel="none",
        batch_probes=probes, seconds=round(time.time() - start, 1), **compile_stats(ctx.log)))


# --- FSDP2 on one GPU --------------------------------------------------------------------------------------------
def fsdp(ctx: Context, item: str, spec: dict) -> None:
    import torch.distributed as dist
    start = time.time()
    if ctx.cuda:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if ctx.cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        baseline = ctx.memory_mark()
        runner = SyntheticStep(ctx, spec["preset"], spec["overrides"], fsdp=True)
        runner.compile(ctx)
        first = warm_up(ctx, runner.step, spec["warmup"])
        seconds = ctx.seconds_per_call(runner.step, spec["steps"])
        ctx.write(item, **measured_line(
            ctx, runner, runner.tokens_per_step / seconds, preset=spec["preset"], variant="ours",
            first_step_s=round(first, 2), peak_memory_mb=ctx.peak_memory_mb(baseline), steps=spec["steps"],
            parallel="fsdp", seconds=round(time.time() - start, 1), **compile_stats(ctx.log)))
    finally:
        dist.destroy_process_group()


def run(ctx: Context, items: tuple[str, ...]) -> None:
    work = {"gpt2_124M": lambda spec: pair(ctx, "gpt2_124M", spec),
            "llama_1B": lambda spec: llama(ctx, "llama_1B", spec, checkpointing=False),
            "llama_1B_ac": lambda spec: llama(ctx, "llama_1B_ac", spec, checkpointing=True),
            "gpt2_124M_fsdp": lambda spec: fsdp(ctx, "gpt2_124M_fsdp", spec)}
    for item in items:
        spec = ctx.sizes[item]
        ctx.run_item(item, spec["estimate_s"], lambda: work[item](spec))
