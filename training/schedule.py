"""Learning-rate schedule: linear warmup, then cosine / linear / warmup-stable-decay annealing with
optional warm restarts (SGDR, https://arxiv.org/abs/1608.03983), then a flat tail at lr_min. A --resume that
changes max_iters follows TrainConfig.resume_schedule (resumed_schedule)."""
from __future__ import annotations

import dataclasses
import math

from config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.decay_restart_step is not None and step >= cfg.decay_restart_step:
        return _restarted_decay(step, cfg)
    if step < cfg.warmup_steps:
        return cfg.lr_init + (cfg.lr_max - cfg.lr_init) * step / cfg.warmup_steps
    anneal_iters = cfg.max_iters - cfg.warmup_steps - cfg.final_flat_iters
    t = step - cfg.warmup_steps
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


def _restarted_decay(step: int, cfg: TrainConfig) -> float:
    """After a --resume with resume_schedule='restart_decay': from decay_restart_lr at decay_restart_step down
    to lr_min at max_iters - final_flat_iters, in anneal_type's shape."""
    end = cfg.max_iters - cfg.final_flat_iters
    if step >= end:
        return cfg.lr_min
    frac = (step - cfg.decay_restart_step) / (end - cfg.decay_restart_step)
    return cfg.lr_min + (cfg.decay_restart_lr - cfg.lr_min) * anneal_shape(cfg.anneal_type)(frac, cfg)


def resumed_schedule(saved: TrainConfig, cfg: TrainConfig, step: int) -> tuple[TrainConfig, str | None]:
    """The config a run resumed at `step` trains with from here on, and a line for the run header saying what its
    schedule does now (None when the lr is unchanged). `saved`: the config the run followed so far; `cfg`: the
    resumed one (saved plus the command line). A new max_iters is applied as cfg.resume_schedule says:
    'stretch' stretches the rest of the schedule to the new length (the lr may jump), 'extend_tail' keeps the
    decay where it was and holds lr_min for the added steps (final_flat_iters grows), 'restart_decay' decays from
    the lr reached at `step` (or at the end of warmup) to lr_min over the steps left."""
    before = lr_at(step, saved)
    if cfg.max_iters == saved.max_iters:
        after = lr_at(step, cfg)
        return cfg, None if after == before else f"schedule changed: {_lr_change(step, before, after)}"
    if cfg.warmup_iters is None:  # the warmup the run had (10% of its first length) stays at the new length
        cfg = dataclasses.replace(cfg, warmup_iters=saved.warmup_steps)
    head = f"schedule: max_iters {saved.max_iters} -> {cfg.max_iters}, resume_schedule={cfg.resume_schedule!r}: "
    if cfg.resume_schedule == "extend_tail":
        flat = cfg.final_flat_iters + cfg.max_iters - saved.max_iters
        if flat < 0:
            raise ValueError(f"resume_schedule='extend_tail' keeps the decay, which ends at step "
                             f"{saved.max_iters - cfg.final_flat_iters}: max_iters={cfg.max_iters} would cut it; "
                             f"use --resume_schedule=stretch or restart_decay to shorten the run")
        cfg = dataclasses.replace(cfg, final_flat_iters=flat)
        end = cfg.max_iters - flat
        return cfg, head + (f"the decay still ends at step {end}, then lr_min={cfg.lr_min:.2e} until step "
                            f"{cfg.max_iters}; {_lr_change(step, before, lr_at(step, cfg))}")
    if cfg.resume_schedule == "restart_decay":
        start = max(step, cfg.warmup_steps)
        lr = min(max(lr_at(start, saved), cfg.lr_min), cfg.lr_max)
        cfg = dataclasses.replace(cfg, decay_restart_step=start, decay_restart_lr=lr)
        end = max(cfg.max_iters - cfg.final_flat_iters, start)
        flat_already = " (it had reached lr_min: to decay again from a higher lr, start a new run with " \
                       "--init_from=RUN)" if lr == cfg.lr_min else ""
        return cfg, head + (f"from {lr:.2e} at step {start}, a new {cfg.anneal_type} decay to "
                            f"lr_min={cfg.lr_min:.2e} by step {end}{flat_already}")
    return cfg, head + (f"the rest of the schedule is stretched to the new length: "
                        f"{_lr_change(step, before, lr_at(step, cfg))} (--resume_schedule=extend_tail keeps the "
                        f"decay as it was, restart_decay decays from the current lr)")


def _lr_change(step: int, before: float, after: float) -> str:
    if after == before:
        return f"the lr at step {step} stays {after:.2e}"
    return f"the lr at step {step} goes from {before:.2e} to {after:.2e}"


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
