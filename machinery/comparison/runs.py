"""Runs to compare: each run folder's configs and log, and the config fields that tell them apart."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from config import ModelConfig, TrainConfig
from machinery.run import runs as run_folders

# fields that differ between any two runs without changing what they learn
NOT_A_DIFFERENCE = ("model_name", "cache_dir")


@dataclass
class Run:
    name: str
    path: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    log: pd.DataFrame  # log_data.csv: one row per evaluation

    @cached_property
    def _shape_model(self):
        """The model without its weights, for counting. Big models are built on the meta device (no memory);
        small ones on the CPU, because meta init imports torch._dynamo (seconds)."""
        from modules.model import Model
        cfg = self.model_cfg
        rough_params = 12 * cfg.num_layers * cfg.dim ** 2 + cfg.vocab_len * cfg.dim
        with torch.device("meta" if rough_params > 50_000_000 else "cpu"), torch.no_grad():
            return Model(cfg)

    @cached_property
    def flops_per_token(self) -> float:
        """Training FLOPs per token at the run's context length."""
        return self._shape_model.flops_per_token(self.model_cfg.max_seq_len)

    @cached_property
    def num_params(self) -> int:
        return self._shape_model.get_num_params()


def _known_runs() -> str:
    return ", ".join(run_folders.list_runs()) or "(none yet: train one with python train.py)"


def load_run(name: str | Path) -> Run:
    try:
        path = run_folders.resolve_run(name)
    except FileNotFoundError as e:
        msg = str(e)  # resolve_run lists trained/ for bare names; add the list for paths too
        raise FileNotFoundError(msg if "models there" in msg else f"{msg}; runs in trained/: {_known_runs()}") \
            from None
    model_cfg, train_cfg = run_folders.load_configs(path)
    log_path = path / "log_data.csv"
    if not log_path.is_file():
        raise ValueError(f"run {name} has no log_data.csv: it has not logged an evaluation yet")
    try:
        log = pd.read_csv(log_path)
    except pd.errors.EmptyDataError:
        log = pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"run {name}: {log_path} is not a readable CSV ({e})") from None
    if log.empty:
        raise ValueError(f"run {name} has no rows in log_data.csv: it has not finished its first evaluation")
    return Run(Path(str(name)).name, path, model_cfg, train_cfg, log)


def load_runs(names) -> dict[str, Run]:
    """Runs by name (trained/<name>) or folder path, keyed by folder name (the full argument if two clash)."""
    names = [names] if isinstance(names, (str, Path)) else list(names)
    runs = {}
    for name in names:
        run = load_run(name)
        if run.name in runs:
            run.name = str(name)
        runs[run.name] = run
    return runs


def as_runs(runs) -> dict[str, Run]:
    return runs if isinstance(runs, dict) else load_runs(runs)


def config_differences(runs: dict[str, Run]) -> dict[str, dict]:
    """{run: {field: value}} for every config field (model, then training) whose value is not the same in
    all runs: what tells a SiLU run from a Mish run. Empty dicts for a single run."""
    configs = {name: {**run.model_cfg.to_dict(), **run.train_cfg.to_dict()} for name, run in runs.items()}
    fields = list(dict.fromkeys(k for cfg in configs.values() for k in cfg))
    differing = [f for f in fields if f not in NOT_A_DIFFERENCE
                 and len({repr(cfg.get(f)) for cfg in configs.values()}) > 1]
    return {name: {f: cfg.get(f) for f in differing} for name, cfg in configs.items()}
