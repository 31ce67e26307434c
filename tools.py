"""What notebooks, inference and comparison share: listing runs, loading models and tokenizers, the LR schedule.

    model, tokenizer, model_cfg, train_cfg = tools.load_model("llama3_atto")

Run folders themselves (finding, describing, locking) live in machinery/run/runs.py.
"""
from __future__ import annotations

from pathlib import Path

import torch

from config import TrainConfig
from machinery.run.runs import list_runs, load_configs, resolve_run
from training.schedule import lr_at

__all__ = ["get_tokenizer", "list_runs", "load_model", "lr_schedule"]


def get_tokenizer(name: str, vocab_len: int | None = None):
    """A tokenizer from tokenizers/<name>; see machinery/data/tokenizer.py."""
    from machinery.data.tokenizer import get_tokenizer as _get
    return _get(name, vocab_len)


def lr_schedule(cfg: TrainConfig) -> list[float]:
    """The learning rate at every step of a run, for plotting."""
    return [lr_at(step, cfg) for step in range(cfg.max_iters)]


def load_model(name_or_path: str | Path, device: str | torch.device | None = None):
    """Load a trained run in eval mode: returns (model, tokenizer, model_cfg, train_cfg)."""
    from machinery.run.weights import load_weights
    from modules.model import Model

    run_dir = resolve_run(name_or_path)
    model_cfg, train_cfg = load_configs(run_dir)
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    model = Model(model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    model.to(device or "cpu").eval()  # eval: dropout off
    return model, tokenizer, model_cfg, train_cfg
