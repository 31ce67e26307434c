"""Learning-rate schedule: linear warmup, then cosine / linear / warmup-stable-decay annealing with
optional warm restarts (SGDR, https://arxiv.org/abs/1608.03983), then a flat tail at lr_min."""
from __future__ import annotations

import math

from config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup_iters:
        return cfg.lr_init + (cfg.lr_max - cfg.lr_init) * step / cfg.warmup_iters
    anneal_iters = cfg.max_iters - cfg.warmup_iters - cfg.final_flat_iters
    t = step - cfg.warmup_iters
    if anneal_iters <= 0 or t >= anneal_iters:
        return cfg.lr_min
    # cycle lengths L, L*T_mult, L*T_mult^2, ... add up to anneal_iters
    first = anneal_iters / sum(cfg.T_mult ** i for i in range(cfg.num_restarts + 1))
    cycle_len = first
    for _ in range(cfg.num_restarts):
        if t < cycle_len:
            break
        t -= cycle_len
        cycle_len *= cfg.T_mult
    frac = min(t / cycle_len, 1.0)  # progress through this cycle, 0 -> 1
    span = cfg.lr_max - cfg.lr_min
    if cfg.anneal_type == "cos":
        return cfg.lr_min + span * 0.5 * (1 + math.cos(math.pi * frac))
    if cfg.anneal_type == "lin":
        return cfg.lr_max - span * frac
    # wsd: stable at lr_max, then a linear decay over the last wsd_decay_frac of the cycle
    decay_start = 1 - cfg.wsd_decay_frac
    return cfg.lr_max if frac < decay_start else cfg.lr_max - span * (frac - decay_start) / cfg.wsd_decay_frac
