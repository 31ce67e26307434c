"""Section attention: one attention layer (llama_1B's heads, RoPE, GQA) at context 2048 in bf16, forward and
backward, under each mask and kernel: plain causal (SDPA, no mask: the flash kernel), document masking and a
sliding window each through SDPA with an explicit mask and through FlexAttention's block mask
(modules/attention.py choose_kernel). FlexAttention's output must match SDPA's. On a CPU only the forward runs
(FlexAttention has no CPU backward)."""
from __future__ import annotations

import time

import torch

from bench.gpucheck.context import Context
from config import ModelConfig
from machinery.run.device import autocast
from modules.attention import AttentionInputs, SelfAttention
from modules.positional import RotaryEmbedding

ITEMS = ("causal_sdpa", "docs_sdpa", "docs_flex", "window_sdpa", "window_flex")


class Layer:
    """One SelfAttention layer and its inputs, shared by the items."""

    def __init__(self, ctx: Context):
        s = ctx.sizes
        self.ctx, self.sizes = ctx, s
        self.cfg = ModelConfig(dim=s["heads"] * s["head_dim"], num_q_heads=s["heads"], num_kv_heads=s["kv_heads"],
                               max_seq_len=s["seq_len"], vocab_len=2)
        torch.manual_seed(0)
        with torch.device(ctx.device):
            self.attn = SelfAttention(self.cfg, layer_idx=0)
            B, T = s["batch"], s["seq_len"]
            self.x = torch.randn(B, T, self.cfg.dim, requires_grad=ctx.cuda)
            self.slots = torch.arange(T)
            self.rope = RotaryEmbedding(self.cfg.head_dim, T, self.cfg.theta)(self.slots)
            lengths = torch.randint(s["doc_len"] // 2, 2 * s["doc_len"], (B, T))  # random document lengths
            starts = torch.zeros(B, T, dtype=torch.bool)
            for b in range(B):  # a few dozen documents per row, built once
                at = lengths[b].cumsum(0)
                starts[b, at[at < T]] = True
            self.doc_ids = starts.cumsum(1).int()
        self.outputs: dict[str, torch.Tensor] = {}

    def call(self, inputs: AttentionInputs) -> torch.Tensor:
        with autocast(self.ctx.device, torch.bfloat16):
            y = self.attn(self.x, inputs)
        if self.ctx.cuda:
            y.float().square().mean().backward()
        return y

    def measure(self, item: str) -> None:
        ctx, start = self.ctx, time.time()
        mask, kernel = item.split("_")
        self.attn.sliding_window = self.sizes["window"] if mask == "window" else None
        # one AttentionInputs for every call: its mask (or block mask) is built once, as a model's forward builds
        # it once for all its layers; the timing is the attention's
        inputs = AttentionInputs(self.slots, self.rope, self.doc_ids if mask == "docs" else None, kernel=kernel)
        first_start = time.perf_counter()
        with torch.no_grad() if not ctx.cuda else torch.enable_grad():
            y = self.call(inputs)  # builds the mask; compiles FlexAttention's kernels for it
            ctx.sync()
            first = time.perf_counter() - first_start
            ctx.memory_mark()
            seconds = ctx.seconds_per_call(lambda: self.call(inputs), self.sizes["reps"])
        self.outputs[item] = y.detach().float()
        other = self.outputs.get(f"{mask}_sdpa")
        s = self.sizes
        ctx.write(item, preset="llama_1B", variant="ours", device=ctx.device.type, dtype="bfloat16",
                  compile=kernel == "flex" and ctx.cuda, tokens_per_sec=round(s["batch"] * s["seq_len"] / seconds, 1),
                  peak_memory_mb=ctx.peak_memory_mb(), mask=mask, kernel=kernel, batch=s["batch"],
                  seq_len=s["seq_len"], heads=f"{s['heads']}/{s['kv_heads']}", head_dim=s["head_dim"],
                  passes="forward+backward" if ctx.cuda else "forward", ms_per_call=round(1e3 * seconds, 3),
                  max_abs_diff_vs_sdpa=None if other is None or kernel == "sdpa" else
                  round(float((self.outputs[item] - other).abs().max()), 5), first_call_s=round(first, 2),
                  seconds=round(time.time() - start, 1))


def run(ctx: Context, items: tuple[str, ...]) -> None:
    layer = Layer(ctx)
    for item in items:
        ctx.run_item(item, ctx.sizes["estimate_s"], lambda: layer.measure(item))
