"""What makes a run safe to continue: the checks before anything changes (resume only what can be resumed
exactly), and checkpoints that are saved whole and only when every number is finite. The run folder itself
(its name, description and lock) is training/runs.py's."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from config import ModelConfig, TrainConfig
from training import distributed, runs
from training.checkpoint import latest_checkpoint, save_checkpoint, save_weights
from training.run_state import RunState
from training.setup import TrainingError


def check_run_folder(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool,
                     overwrite: bool) -> Path | None:
    """Refuse, before anything changes, a start that would replace a run unasked or a resume that would not
    continue the same run. Returns the checkpoint to resume from (None for a fresh start)."""
    if not resume:
        if (run_dir.exists() or run_dir.is_symlink()) and not overwrite:
            raise TrainingError(f"{run_dir} already exists: add --resume to continue it, --overwrite to replace "
                                f"it, or choose another --model_name")
        return None
    if overwrite:
        raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")
    saved_model, saved_train = runs.load_configs(run_dir)  # refuses an incomplete description
    changed = [f"{f.name}: {getattr(saved_model, f.name)!r} -> {getattr(model_cfg, f.name)!r}"
               for f in dataclasses.fields(ModelConfig) if getattr(saved_model, f.name) != getattr(model_cfg, f.name)]
    if changed:
        raise TrainingError(f"--resume cannot change the architecture ({'; '.join(changed)}): the saved weights "
                            f"belong to the old one. Start a new run from it with --config={run_dir.name}")
    if train_cfg.optimizer != saved_train.optimizer:
        raise TrainingError(f"--resume cannot switch the optimizer from {saved_train.optimizer!r} to "
                            f"{train_cfg.optimizer!r}: the checkpoint holds {saved_train.optimizer}'s state")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainingError(f"{run_dir} has no complete checkpoint to resume from, so --resume changed nothing. "
                            f"Start it again with --overwrite (this replaces it) or choose another --model_name")
    return checkpoint


def restore(saved: dict, model, optimizers: list, batches, machine) -> RunState:
    """Optimizers, data position and RNG from a checkpoint's state (its weights are already in `model`)."""
    try:
        distributed.load_optimizer_states(model, optimizers, saved["optimizers"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's optimizer state does not fit this optimizer ({type(e).__name__}: "
                            f"{str(e)[:200]}): resume with the run's own optimizer settings") from None
    state = RunState.from_dict(saved)
    batches.load_state_dict(state.data[machine.dist.rank])
    state.restore_rng(machine.device)
    state.interval_loss = state.interval_loss.to(machine.device)
    return state


def non_finite(tree, prefix: str = "") -> list[str]:
    """Names of the tensors in a nested dict/list that hold an inf or a NaN."""
    if isinstance(tree, torch.Tensor):
        return [prefix] if tree.is_floating_point() and not torch.isfinite(tree).all() else []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return [name for key, value in items for name in non_finite(value, f"{prefix}.{key}" if prefix else str(key))]


def save_resumable(run_dir: Path, state: RunState, model, optimizers: list, batches, machine) -> None:
    """checkpoints/step_<N>/: weights and optimizers gathered whole, the run state with every process's data
    position. Refused (nothing written) when any weight or optimizer number is not finite."""
    state.data = distributed.gather(batches.state_dict(), machine.dist)
    state.capture_rng(machine.device)
    weights, optimizer_states = distributed.full_state_dicts(model, optimizers, machine.dist)
    bad = non_finite(weights) + non_finite(optimizer_states, "optimizer")
    if bad:
        raise TrainingError(f"at step {state.step} {len(bad)} tensor(s) hold inf/NaN (e.g. {bad[0]}): the checkpoint "
                            f"was not saved. The last good one is {latest_checkpoint(run_dir) or 'none yet'}. Try a "
                            f"lower --lr_max or --grad_clip=1, then --resume")
    if machine.is_main:
        save_checkpoint(run_dir, state.step, model, {**state.to_dict(), "optimizers": optimizer_states}, weights)
    distributed.barrier(machine.dist)


def save_best_weights(run_dir: Path, model, machine) -> None:
    """model.safetensors: the weights with the best validation loss so far (gathered whole under FSDP)."""
    weights, _ = distributed.full_state_dicts(model, [], machine.dist)
    if non_finite(weights):
        return  # a finite validation loss with an inf weight somewhere unused: keep the previous best
    if machine.is_main:
        save_weights(model, run_dir / "model.safetensors", weights)
