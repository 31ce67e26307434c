"""What notebooks, inference and comparison share: finding runs, loading models and tokenizers, the LR schedule.

    model, tokenizer, model_cfg, train_cfg = tools.load_model("llama3_atto")
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from config import ModelConfig, TrainConfig
from training.schedule import lr_at

ROOT = Path(__file__).resolve().parent
# where runs live; TEMPLATEGPT_TRAINED_DIR moves it (tests use this to keep trained/ clean)
TRAINED_DIR = Path(os.environ.get("TEMPLATEGPT_TRAINED_DIR", ROOT / "trained"))

__all__ = ["get_tokenizer", "list_runs", "resolve_run", "load_configs", "load_model", "lr_schedule", "lr_at"]


def get_tokenizer(name: str, vocab_len: int | None = None):
    """A tokenizer from tokenizers/<name>; see data/tokenizer.py."""
    from data.tokenizer import get_tokenizer as _get
    return _get(name, vocab_len)


def lr_schedule(cfg: TrainConfig) -> list[float]:
    """The learning rate at every step of a run, for plotting."""
    return [lr_at(step, cfg) for step in range(cfg.max_iters)]


def list_runs(trained_dir: Path | None = None) -> list[str]:
    """Names of run folders in trained/ (those holding a model_config.json)."""
    return sorted(p.parent.name for p in Path(trained_dir or TRAINED_DIR).glob("*/model_config.json"))


def resolve_run(name_or_path: str | Path) -> Path:
    """A bare name means trained/<name>; anything with a '/' (or starting with '.' or '~') is a path.
    A name never reaches outside trained/."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist")
    else:
        path = TRAINED_DIR / text
        if not path.is_dir():
            runs = ", ".join(list_runs()) or "(none yet: train one with python train.py)"
            raise FileNotFoundError(f"no model named {text!r} in trained/; models there: {runs}")
    if not (path / "model_config.json").is_file():
        raise FileNotFoundError(f"{path} is not a run folder: it has no model_config.json")
    return path


def load_configs(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    """The configs saved with a run (fields added since then take their defaults)."""
    run_dir = Path(run_dir)
    try:
        model_kw = json.loads((run_dir / "model_config.json").read_text())
        train_path = run_dir / "train_config.json"
        train_kw = json.loads(train_path.read_text()) if train_path.is_file() else {}
        return ModelConfig.from_dict(model_kw), TrainConfig.from_dict(train_kw)  # old field names too
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"the configs in {run_dir} are corrupt or from an incompatible version: {e}") from None


def load_model(name_or_path: str | Path, device: str | torch.device | None = None):
    """Load a trained run in eval mode: returns (model, tokenizer, model_cfg, train_cfg)."""
    from modules.model import Model
    from training.checkpoint import load_weights

    run_dir = resolve_run(name_or_path)
    model_cfg, train_cfg = load_configs(run_dir)
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    model = Model(model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    model.to(device or "cpu").eval()  # eval: dropout off
    return model, tokenizer, model_cfg, train_cfg
