"""Resumable checkpoints, and what train.py saves and restores with them. Every file is written atomically
(machinery/fileio.py), weights are safetensors carrying a CRC-32 (machinery/run/weights.py), and the resumable state
loads with torch.load(weights_only=True): no pickled code runs.

trained/<model_name>/
    model.safetensors                      weights (best validation loss so far)
    checkpoints/step_<N>/                  model.safetensors + state.pt (optimizer, schedule, RNG, data position)
                                           + checksums.json (sizes of both, CRC-32 of state.pt)
    checkpoints/latest.json                the newest step_<N> when it was written (a hint for people)

Resume never trusts latest.json: it scans the step folders and takes the newest complete one, so a lost
or damaged pointer or a half-deleted folder costs nothing; loading it checks every checksum.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch

from machinery.fileio import (
    CHECKSUM,
    file_checksum,
    flush_to_disk,
    remove_stale_temps,
    reported_writes,
    temp_folder,
    write_json,
)
from machinery.run import distributed
from machinery.run.run_state import RunState
from machinery.run.setup import TrainingError
from machinery.run.weights import clean_state_dict, fit_state, read_weights, save_weights

CHECKPOINTS_KEPT = 2
WEIGHTS, STATE, CHECKSUMS = "model.safetensors", "state.pt", "checksums.json"
_STEP_FOLDER = re.compile(r"step_(\d+)")


# --- resumable checkpoints -------------------------------------------------------------------------------
def checkpoint_root(run_dir: Path) -> Path:
    """run_dir/checkpoints, refused if it is a link that could lead writes outside the run folder."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink():
        raise ValueError(f"{root} is a symbolic link: checkpoints must be a real folder inside the run "
                         f"folder; move it away and resume again")
    return root


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict,
                    model_state: dict | None = None) -> Path:
    """Write checkpoints/step_<step>/ completely in a hidden folder, rename it into place, then prune.
    A kill or a full disk at any moment leaves every older checkpoint as it was."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step}"
    tmp = temp_folder(root)
    try:
        save_weights(model, tmp / WEIGHTS, model_state)
        with reported_writes(tmp / STATE):
            torch.save(state, tmp / STATE)
            flush_to_disk(tmp / STATE)
        files = {name: {"bytes": (tmp / name).stat().st_size} for name in (WEIGHTS, STATE)}
        files[STATE][CHECKSUM] = f"{file_checksum(tmp / STATE):08x}"  # the weights carry their own
        write_json(tmp / CHECKSUMS, {"step": step, "files": files})
        with reported_writes(final):
            if final.is_symlink() or final.is_file():  # never follow a link out of checkpoints/
                final.unlink()
            elif final.exists():  # a step written again after resuming from an older checkpoint
                shutil.rmtree(final)
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / "latest.json", {"step": step, "dir": final.name})
    _prune(root)
    for pattern in (".*.tmp", ".tmp_*"):  # ours, and those of versions before machinery/fileio.py
        remove_stale_temps(root, pattern)
    return final


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step_<N> entry, newest first."""
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_FOLDER.fullmatch(p.name))]
    return sorted(found, reverse=True)


def _missing(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint (links and missing files), or None. Cheap: no reading."""
    if folder.is_symlink() or not folder.is_dir():
        return "it is not a real folder inside checkpoints/"
    absent = [name for name in (WEIGHTS, STATE) if not (folder / name).is_file()]
    return f"{' and '.join(absent)} missing" if absent else None


def _damage(folder: Path, read_contents: bool) -> str | None:
    """What in a complete-looking checkpoint does not match its checksums.json (sizes always; the CRC-32 of
    state.pt when read_contents; the weights check their own on loading). Checkpoints from before
    checksums.json pass as they are."""
    record = folder / CHECKSUMS
    if not record.is_file():
        return None
    try:
        files = json.loads(record.read_text())["files"]
        for name in (WEIGHTS, STATE):
            expected = files[name]
            if (folder / name).stat().st_size != expected["bytes"]:
                return f"{name} has {(folder / name).stat().st_size} bytes, {expected['bytes']} were written"
            if read_contents and CHECKSUM in expected and f"{file_checksum(folder / name):08x}" != expected[CHECKSUM]:
                return f"{name} does not match the checksum recorded when it was written"
    except (ValueError, KeyError, TypeError) as e:
        return f"{CHECKSUMS} is unreadable ({type(e).__name__}: {e})"
    return None


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every step folder with both files, newest first (sizes and checksums not checked)."""
    root = checkpoint_root(run_dir)
    return [(step, f) for step, f in _step_folders(root) if _missing(f) is None] if root.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (both files there, at the sizes written), or None if there is none.

    Step folders with a missing file are skipped with a warning; a complete one that is damaged stops here
    (sizes) or in load_checkpoint (checksums) with a ValueError naming it and the older one to use."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return None
    _warn_about_pointer(root)
    for _, folder in _step_folders(root):
        if (why := _missing(folder)) is not None:
            warnings.warn(f"skipping checkpoint {folder}: {why}")
            continue
        if (why := _damage(folder, read_contents=False)) is not None:
            raise _corrupt(folder, why)
        return folder
    return None


def _corrupt(folder: Path, why: str) -> ValueError:
    """The one-line error for a damaged checkpoint, naming the older complete one to use instead."""
    match = _STEP_FOLDER.fullmatch(folder.name)
    older = [f.name for step, f in _step_folders(folder.parent)
             if match and step < int(match.group(1)) and _missing(f) is None]
    instead = f"to resume from {older[0]}" if older else "to start from step 0"
    return ValueError(f"checkpoint {folder} is corrupt or not a checkpoint ({why}); nothing was changed: "
                      f"move {folder.name} out of checkpoints/ {instead}, or start over with --overwrite")


def _warn_about_pointer(root: Path) -> None:
    """latest.json is only a hint; say so when it is damaged or points anywhere but a step folder here."""
    pointer = root / "latest.json"
    if not pointer.exists():
        return
    try:
        name = json.loads(pointer.read_text())["dir"]
        ok = isinstance(name, str) and _STEP_FOLDER.fullmatch(name) is not None
    except (ValueError, KeyError, TypeError, OSError):
        ok = False
    if not ok:
        warnings.warn(f"ignoring {pointer}: it is damaged or points outside {root}; "
                      f"resuming from the newest complete step folder instead")


def _prune(root: Path) -> None:
    """Keep the CHECKPOINTS_KEPT newest complete checkpoints; delete only folders older than all of them, so
    nothing goes that a newer complete checkpoint does not supersede."""
    complete = [f for _, f in _step_folders(root) if _missing(f) is None and _damage(f, read_contents=False) is None]
    if len(complete) < CHECKPOINTS_KEPT:
        return
    oldest_kept = int(_STEP_FOLDER.fullmatch(complete[CHECKPOINTS_KEPT - 1].name).group(1))
    for step, folder in _step_folders(root):
        if step < oldest_kept:
            if folder.is_symlink() or not folder.is_dir():
                folder.unlink()
            else:
                shutil.rmtree(folder, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Load a checkpoint's weights into model and return its state dict (optimizer, step, RNG, data)."""
    path = Path(path)
    why = _missing(path) or _damage(path, read_contents=True)
    if why is not None:
        raise _corrupt(path, why)
    try:
        tensors = read_weights(path / WEIGHTS)
    except ValueError as e:
        raise _corrupt(path, str(e)) from None
    fit_state(model, clean_state_dict(tensors), path / WEIGHTS)
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        # torch's own message runs to a page about weights_only; the type says enough
        state = e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        why = type(state).__name__ if isinstance(state, Exception) else "no step recorded"
        raise ValueError(f"checkpoint state {path / STATE} is corrupt or not a checkpoint ({why}); "
                         f"resume from an older checkpoints/step_* or start with --overwrite") from None
    return state


# --- what train.py saves and restores ----------------------------------------------------------------
def restore(saved: dict, model, optimizers: list, batches, machine) -> RunState:
    """Optimizers, data position and RNG from a checkpoint's state (its weights are already in `model`). The
    optimizers keep the hyperparameters they were built with (lr_max, weight_decay, betas, ...: a resumed run may
    change them) and take only their state (moments, step counts) from the checkpoint."""
    settings = [[{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups] for opt in optimizers]
    try:
        distributed.load_optimizer_states(model, optimizers, saved["optimizers"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's optimizer state does not fit this optimizer ({type(e).__name__}: "
                            f"{str(e)[:200]}): resume with the run's own optimizer settings") from None
    for opt, groups in zip(optimizers, settings):
        for group, built in zip(opt.param_groups, groups):
            group.update(built)  # load_state_dict put the checkpoint's hyperparameters there
    state = RunState.from_dict(saved)
    batches.load_state_dict(state.data[machine.dist.rank])
    state.restore_rng(machine.device)
    if len(state.interval_losses) == machine.dist.world_size:  # (older checkpoints kept rank 0's alone)
        state.interval_loss = state.interval_losses[machine.dist.rank]
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
    state.interval_losses = distributed.gather(state.interval_loss.detach().cpu(), machine.dist)  # each its own
    state.capture_rng(machine.device)
    weights, optimizer_states = distributed.full_state_dicts(model, optimizers, machine.dist)
    bad = non_finite(weights) + non_finite(optimizer_states, "optimizer")
    if bad:
        from machinery.run.divergence import recovery_advice
        raise TrainingError(f"at step {state.step} {len(bad)} tensor(s) hold inf/NaN (e.g. {bad[0]}): the checkpoint "
                            f"was not saved. {recovery_advice(run_dir)}")
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
