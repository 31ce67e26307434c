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
    return cfg.lr_min + (cfg.lr_max - cfg.lr_min) * anneal_shape(cfg.anneal_type)(frac, cfg)


# Each shape maps progress through a cycle (0 -> 1) to a fraction of the span lr_max - lr_min (1 -> 0).
def _cosine(frac: float, cfg: TrainConfig) -> float:
    return 0.5 * (1 + math.cos(math.pi * frac))


def _linear(frac: float, cfg: TrainConfig) -> float:
    return 1 - frac


def _warmup_stable_decay(frac: float, cfg: TrainConfig) -> float:
    """Stable at lr_max, then linear decay over the last wsd_decay_frac of the cycle
    (https://arxiv.org/abs/2404.06395)."""
    decay_start = 1 - cfg.wsd_decay_frac
    return 1.0 if frac < decay_start else 1 - (frac - decay_start) / cfg.wsd_decay_frac


# TrainConfig.anneal_type -> its shape. A new schedule is a name in config.ANNEAL_TYPES plus an entry here.
ANNEAL_SHAPES = {"cos": _cosine, "lin": _linear, "wsd": _warmup_stable_decay}


def anneal_shape(name: str):
    """The shape for `name`; a name allowed in config.py but not implemented here is a clear error."""
    if name not in ANNEAL_SHAPES:
        raise ValueError(f"anneal_type={name!r} is allowed by config.ANNEAL_TYPES but training/schedule.py has no "
                         f"shape for it (implemented: {', '.join(ANNEAL_SHAPES)}): add one to ANNEAL_SHAPES")
    return ANNEAL_SHAPES[name]
