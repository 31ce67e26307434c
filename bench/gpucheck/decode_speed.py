"""Section decode: generated tokens/s of a 100M-class model (llama_125M's shapes, random weights) at batch 1
and 64, through the public generation API (machinery/generation generate_ids), greedy, float32:

- eager: the KV-cache loop, one forward per token (GenerationConfig(compile="off")).
- cuda_graphs: compile="on", which on CUDA compiles the fixed-slot decode step with mode="reduce-overhead",
  replaying each step as a CUDA graph (not on a CPU: skipped there).
- compiled: the same fixed-slot step compiled without CUDA graphs (the default mode), to tell the two gains apart.

Every variant must give the eager tokens (float32, so no bf16 rounding can part them); speedup_vs_eager is
each one's tokens/s over eager's at the same batch. Timed: one generation after one that compiles or warms up.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from bench.gpucheck.context import Context, compile_stats
from machinery.cli import build_configs
from machinery.generation import GenerationConfig, SamplingConfig, generate_ids
from machinery.generation import decode_step as decode_step_module
from modules.model import Model

ITEMS = ("b1_eager", "b1_cuda_graphs", "b64_eager", "b64_cuda_graphs", "b1_compiled", "b64_compiled")
GREEDY = SamplingConfig(temperature=0.0)


@contextmanager
def decode_step_compiled_by(ctx: Context, cuda_graphs: bool):
    """compile="on" runs decode_step.compiled_decode_step(): on CUDA with CUDA graphs already (the public path);
    without them, or on the context's compile backend, the same step compiled here instead."""
    if cuda_graphs and ctx.compile_backend == "inductor":
        yield
        return
    compiled = ctx.compile(decode_step_module.decode_step)
    real = decode_step_module.compiled_decode_step
    decode_step_module.compiled_decode_step = lambda: compiled
    try:
        yield
    finally:
        decode_step_module.compiled_decode_step = real


class Decoder:
    """The model and the prompts of each batch size, shared by the variants; eager tokens kept to compare."""

    def __init__(self, ctx: Context):
        sizes = ctx.sizes
        self.ctx, self.sizes = ctx, sizes
        model_cfg, _ = build_configs(sizes["overrides"], sizes["preset"])
        torch.manual_seed(0)
        with torch.device(ctx.device):
            self.model = Model(model_cfg).eval()
        g = torch.Generator().manual_seed(0)
        self.prompts = {b: torch.randint(4, model_cfg.vocab_len, (b, sizes["prompt_len"]), generator=g).tolist()
                        for b in sizes["batches"].values()}
        self.eager_tokens, self.eager_rate = {}, {}

    def generate(self, batch: int, mode: str) -> list[list[int]]:
        options = GenerationConfig(max_new_tokens=self.sizes["new_tokens"], compile="off" if mode == "eager" else "on")
        return generate_ids(self.model, self.prompts[batch], GREEDY, options)

    def measure(self, item: str, batch: int, mode: str) -> None:
        ctx, start = self.ctx, time.time()
        if mode == "cuda_graphs" and not ctx.cuda:
            ctx.write(item, "skipped", error="CUDA graphs need a CUDA GPU", mode=mode, batch=batch)
            return
        with decode_step_compiled_by(ctx, cuda_graphs=mode == "cuda_graphs"):
            ctx.sync()
            t0 = time.perf_counter()
            self.generate(batch, mode)  # compiles (or warms up) this shape
            ctx.sync()
            first = time.perf_counter() - t0
            ctx.memory_mark()
            t0 = time.perf_counter()
            tokens = self.generate(batch, mode)
            ctx.sync()
            seconds = time.perf_counter() - t0
        new = self.sizes["new_tokens"]
        rate = batch * new / seconds
        if mode == "eager":
            self.eager_tokens[batch], self.eager_rate[batch] = tokens, rate
        expected = self.eager_tokens.get(batch)
        matching = None if expected is None else sum(
            a == b for row, ref in zip(tokens, expected) for a, b in zip(row, ref)) / (batch * new)
        stats = compile_stats(ctx.log) if mode != "eager" else {}
        ctx.write(item, preset=self.sizes["preset"], variant="ours", device=ctx.device.type, dtype="float32",
                  compile=mode != "eager", compile_backend=ctx.compile_backend if mode != "eager" else None,
                  tokens_per_sec=round(rate, 1), peak_memory_mb=ctx.peak_memory_mb(),
                  params=self.model.get_num_params(),
                  batch=batch, prompt_len=self.sizes["prompt_len"], new_tokens=new, mode=mode,
                  first_call_s=round(first, 2), ms_per_token=round(1e3 * seconds / new, 3),
                  tokens_identical=None if expected is None else tokens == expected, tokens_matching=matching,
                  speedup_vs_eager=round(rate / self.eager_rate[batch], 3) if batch in self.eager_rate else None,
                  seconds=round(time.time() - start, 1), **stats)


def run(ctx: Context, items: tuple[str, ...]) -> None:
    sizes = ctx.sizes
    decoder = Decoder(ctx)
    for item in items:
        size, mode = item.split("_", 1)
        batch = sizes["batches"][size]
        if mode != "eager" and batch not in decoder.eager_tokens:  # its baseline first (decode_more's own)
            ctx.run_item(f"{size}_eager", sizes["estimate_eager_s"], lambda: decoder.measure(f"{size}_eager", batch,
                                                                                             "eager"))
        estimate = sizes["estimate_eager_s" if mode == "eager" else "estimate_compiled_s"]
        ctx.run_item(item, estimate, lambda: decoder.measure(item, batch, mode))
