"""A deliberately minimal, nanoGPT-style GPT training loop in plain PyTorch: the speed baseline that
templateGPT's `nanogpt_shakespeare` preset is compared against on *this* machine.

    python bench/reference_gpt.py                       # 2000 iters, ~1 min per 1000 iters on 2 cores
    python bench/reference_gpt.py --max_iters=20 --eval_interval=10

Same model and run as nanoGPT's CPU Shakespeare-char example: GPT-2 architecture without biases, 4 layers,
4 heads, dim 128, context 64, batch 12, dropout 0, tied embeddings, AdamW (lr 1e-3, betas 0.9/0.99,
weight decay 0.1 on 2-D tensors, not fused: nanoGPT fuses only on CUDA), 100 linear warmup steps then
cosine to 1e-4 at max_iters, grad clip 1, float32. Data: the characters of tinyshakespeare/input.txt
(ASCII, so characters = bytes), first 90% train, last 10% validation, random windows of 64 + 1.

On a GPU (`--device=cuda --dtype=bfloat16 --bias --vocab_size=32768 ...`) it is nanoGPT's GPU loop: bf16
autocast, fused AdamW, batches copied from pinned memory without waiting, and the loss read every
--log_interval iterations; --vocab_size trains on random tokens (throughput only). bench/gpu_check.py pairs
it with templateGPT's step on gpt2_124M's shapes.

Prints one JSON line: median / p10 / p90 ms per training iteration (evaluation excluded), tokens/s, the
final validation loss (nanoGPT's estimate: `eval_iters` random batches), the loss over the whole
validation split (every non-overlapping window, deterministic), and others_cpu_cores: CPU cores other
processes kept busy meanwhile (Linux; above ~0.2 the timings are contended).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from bench.machine import cpu_busy_s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "samples" / "tinyshakespeare" / "input.txt"


# --- the model ---------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's; PyTorch's had none to switch off)."""

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)  # q, k and v in one matmul
        self.c_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        self.ln_1 = LayerNorm(dim, bias)
        self.attn = CausalSelfAttention(dim, heads, bias)
        self.ln_2 = LayerNorm(dim, bias)
        self.c_fc = nn.Linear(dim, 4 * dim, bias=bias)
        self.mlp_proj = nn.Linear(4 * dim, dim, bias=bias)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, heads: int, dim: int, bias: bool = False):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, bias) for _ in range(layers))
        self.ln_f = LayerNorm(dim, bias)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block_ in self.blocks:  # residual projections: smaller init (GPT-2)
            for proj in (block_.attn.c_proj, block_.mlp_proj):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * layers))

    def num_params(self) -> int:
        """Without the position table, as nanoGPT reports it (0.80M for the Shakespeare-char model)."""
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block_ in self.blocks:
            x = block_(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


# --- data, schedule, evaluation --------------------------------------------------------------------------
def load_chars(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """nanoGPT's prepare.py: ids of the sorted distinct characters; first 90% train, last 10% val."""
    text = path.read_text(encoding="utf-8")
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(stoi)


def get_batch(data: np.ndarray, batch: int, block: int, device: str = "cpu"):
    ix = torch.randint(len(data) - block, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix.tolist()])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix.tolist()])
    if device == "cuda":  # nanoGPT: pinned memory, copied without waiting
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def synthetic_tokens(vocab: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random token ids (train, validation): a throughput benchmark's data, where only shapes matter."""
    ids = np.random.default_rng(seed).integers(0, vocab, n, dtype=np.int64).astype(np.uint32)
    return ids[:int(0.9 * n)], ids[int(0.9 * n):]


def lr_at(it: int, args) -> float:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    if it > args.max_iters:
        return args.min_lr
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


@torch.no_grad()
def estimate_loss(model, data, args, iters: int) -> float:
    model.eval()
    losses = [model(*get_batch(data, args.batch_size, args.block_size, args.device)).item() for _ in range(iters)]
    model.train()
    return sum(losses) / len(losses)


@torch.no_grad()
def full_val_loss(model, data, block: int, rows: int = 256) -> float:
    """Mean loss over every non-overlapping window of the validation split (no sampling noise)."""
    model.eval()
    n = (len(data) - 1) // block
    starts = np.arange(n) * block
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for i in range(0, n, rows):
        s = starts[i:i + rows, None] + np.arange(block + 1)
        w = torch.from_numpy(data[s].astype(np.int64)).to(device)
        total += model(w[:, :-1], w[:, 1:]).item() * len(s)
        count += len(s)
    model.train()
    return total / count


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the sorted values (numpy's default)."""
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--eval_iters", type=int, default=200, help="random val batches per estimate (nanoGPT: 200)")
    p.add_argument("--batch_size", type=int, default=12)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--warmup_iters", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 leaves the default")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (nanoGPT's CPU run: off)")
    p.add_argument("--bias", action="store_true", help="biases in Linears and LayerNorms (nanoGPT's GPT-2 default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: autocast")
    p.add_argument("--vocab_size", type=int, default=0, help="train on random tokens of this vocabulary "
                   "(a throughput benchmark) instead of --data's characters")
    p.add_argument("--log_interval", type=int, default=1, help="read the loss every this many iterations "
                   "(nanoGPT's CPU run: 1; its GPT-2 run: 10)")
    p.add_argument("--full_val", action=argparse.BooleanOptionalAction, default=True,
                   help="also report the loss over the whole validation split at the end")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.warmup_iters = min(args.warmup_iters, args.max_iters)
    return args


class Reference:
    """The model, optimizer and data of one run; `step()` is one training iteration of nanoGPT's loop.
    (bench_train.py --pair=...,reference alternates these steps with templateGPT's in one process.)"""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        torch.manual_seed(args.seed)
        if args.vocab_size:
            (self.train_data, self.val_data), self.vocab = synthetic_tokens(args.vocab_size, 1 << 22, args.seed), \
                args.vocab_size
        else:
            self.train_data, self.val_data, self.vocab = load_chars(args.data)
        self.model = GPT(self.vocab, args.block_size, args.n_layer, args.n_head, args.n_embd, args.bias).to(args.device)
        decay = [p_ for p_ in self.model.parameters() if p_.dim() >= 2]
        no_decay = [p_ for p_ in self.model.parameters() if p_.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=args.lr, betas=(0.9, args.beta2),
                                           fused=args.device == "cuda" or None)  # CPU default: for-loop
        self.train_model = torch.compile(self.model) if args.compile else self.model
        self.autocast = (torch.autocast(args.device, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                         else contextlib.nullcontext())
        self.it, self.train_loss = 0, float("nan")
        self.x, self.y = get_batch(self.train_data, args.batch_size, args.block_size, args.device)

    def step(self) -> float:
        """One iteration; returns its seconds."""
        args, optimizer, model = self.args, self.optimizer, self.model
        t0 = time.perf_counter()
        lr = lr_at(self.it, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            loss = self.train_model(self.x, self.y)
        self.x, self.y = get_batch(self.train_data, args.batch_size, args.block_size, args.device)  # prefetch
        loss.backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.it % args.log_interval == 0:  # nanoGPT's CPU run logs every iteration (log_interval=1)
            self.train_loss = loss.item()
        self.it += 1
        if args.device == "cuda":  # the step's kernels finish inside its time (launches return at once)
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main(argv=None) -> dict:
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Reference(args)
    model, train_model, val_data, vocab = run.model, run.train_model, run.val_data, run.vocab
    say(f"reference GPT: {model.num_params() / 1e6:.2f}M parameters, vocab {vocab}, "
        f"{torch.get_num_threads()} threads")

    times, val_loss, eval_s = [], float("nan"), 0.0
    busy0, own0, wall0 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    for it in range(args.max_iters):
        times.append(run.step())
        train_loss = run.train_loss
        done = it + 1
        if done % args.eval_interval == 0 or done == args.max_iters:
            t_eval = time.perf_counter()
            val_loss = estimate_loss(train_model, val_data, args, args.eval_iters)
            eval_s += time.perf_counter() - t_eval
            say(f"iter {done}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"median {1e3 * statistics.median(times):.2f} ms/iter")
    busy1, own1, wall1 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    others_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    full = full_val_loss(train_model, val_data, args.block_size) if args.full_val else None
    timed = times[min(10, len(times) // 2):] or times  # leave out the first (warm-up) iterations
    q = [_quantile(timed, 0.1), _quantile(timed, 0.9)]
    median = statistics.median(timed)
    row = dict(bench="reference_gpt", params=model.num_params(), vocab=vocab, threads=torch.get_num_threads(),
               compile=args.compile, iters=args.max_iters, ms_per_iter=round(1e3 * median, 3),
               ms_p10=round(1e3 * q[0], 3), ms_p90=round(1e3 * q[-1], 3),
               tokens_per_sec=round(args.batch_size * args.block_size / median, 1),
               train_loss=round(train_loss, 4), val_loss=round(val_loss, 4),
               val_loss_full=None if full is None else round(full, 4),
               train_s=round(sum(times), 2), eval_s=round(eval_s, 2), others_cpu_cores=round(others_cores, 3),
               peak_rss_mb=round(peak_rss_mb(), 1),
               load_avg=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
