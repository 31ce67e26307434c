"""Optimizers: AdamW (fused where available), or Muon for hidden matrices with AdamW for the rest.
Weight decay applies to matrices only, not to norms, biases or embeddings."""
from __future__ import annotations

import torch
from torch import nn

from config import TrainConfig
from modules import mup


def split_params(model: nn.Module) -> tuple[list, list, list]:
    """(hidden matrices, embeddings and output head, norms and biases), each parameter once."""
    matrices, embeddings, other = [], [], []
    for name, param in model.named_parameters():  # tied weights appear once
        if not param.requires_grad:
            continue
        if "embedding" in name or "lm_head" in name:
            embeddings.append(param)
        elif param.dim() >= 2:
            matrices.append(param)
        else:
            other.append(param)
    return matrices, embeddings, other


def _adamw(groups: list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # fused runs the whole update in one kernel per device (CUDA and CPU); MPS gets foreach
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr_max, betas=(cfg.beta1, cfg.beta2), eps=cfg.adamw_eps,
                             fused=fused, foreach=None if fused else True)


def _adamw_only(model: nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    matrices, embeddings, other = split_params(model)
    # μP: hidden matrices get lr / m and decay * m (modules/mup.py); both factors are 1.0 under SP
    lr_scale, decay_scale = mup.adam_hidden_scales(getattr(model, "cfg", None))
    groups = [dict(params=matrices, weight_decay=cfg.weight_decay * decay_scale, base_lr=cfg.lr_max * lr_scale,
                   lr=cfg.lr_max * lr_scale),
              dict(params=embeddings + other, weight_decay=0.0, base_lr=cfg.lr_max)]
    return [_adamw([g for g in groups if g["params"]], cfg, device)]


def _muon_and_adamw(model: nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    # Muon orthogonalizes the update of each 2-D hidden matrix (https://kellerjordan.github.io/posts/muon/).
    # μP needs no lr factor here: the orthogonalized update is width-aware already (modules/mup.py)
    matrices, embeddings, other = split_params(model)
    muon = torch.optim.Muon([dict(params=matrices, base_lr=cfg.muon_lr)], lr=cfg.muon_lr,
                            weight_decay=cfg.weight_decay)
    adam_groups = [dict(params=embeddings + other, weight_decay=0.0, base_lr=cfg.lr_max)]
    return [muon, _adamw(adam_groups, cfg, device)]


# TrainConfig.optimizer -> its builder. A new optimizer is a name in config.OPTIMIZERS plus an entry here.
OPTIMIZER_BUILDERS = {"adamw": _adamw_only, "muon": _muon_and_adamw}


def optimizer_builder(name: str):
    """The builder for `name`; a name allowed in config.py but not implemented here is a clear error."""
    if name not in OPTIMIZER_BUILDERS:
        raise ValueError(f"optimizer={name!r} is allowed by config.OPTIMIZERS but training/optim.py has no "
                         f"builder for it (implemented: {', '.join(OPTIMIZER_BUILDERS)}): add one to "
                         f"OPTIMIZER_BUILDERS")
    return OPTIMIZER_BUILDERS[name]


def build_optimizers(model: nn.Module, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """One or two optimizers; every group has 'base_lr' so the schedule can scale it."""
    return optimizer_builder(cfg.optimizer)(model, cfg, device)


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float, cfg: TrainConfig) -> None:
    """Scale every group's base lr by the schedule's lr / lr_max."""
    scale = lr / cfg.lr_max
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
