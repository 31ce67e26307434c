"""Run folders and checkpoints. Every file is written atomically (temp file, then rename), model weights
are safetensors, and the resumable state loads with torch.load(weights_only=True): no pickled code runs.

trained/<model_name>/
    model_config.json, train_config.json   the configs of the run
    model.safetensors                      weights (best validation loss so far)
    log_data.csv                           one row per evaluation
    checkpoints/step_<N>/                  model.safetensors + state.pt (optimizer, schedule, RNG, data position)
    checkpoints/latest.json                which step_<N> is complete and newest
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINTS_KEPT = 2
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (the only way is to set it and restore it)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over path, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (torch.compile's '_orig_mod.', DDP's 'module.') so any run loads anywhere."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def save_weights(model: torch.nn.Module, path: Path, state: dict | None = None) -> None:
    """Save model.state_dict() (or a full `state` gathered from sharded ranks) as safetensors."""
    model = unwrap_model(model)
    state = clean_state_dict(state if state is not None else model.state_dict())
    aliases = _tied_aliases(model)  # tied weights: one tensor under two names, stored once
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in aliases}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Model inside torch.compile (._orig_mod) and DDP (.module) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def _tied_aliases(model: torch.nn.Module) -> set[str]:
    """Second names of tied parameters (e.g. lm_head.weight when it is the embedding), not stored twice."""
    seen, aliases = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into model, with clear errors for missing, corrupt or mismatched files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}: the run has not saved a model yet")
    try:
        state = clean_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"weights file {path} is corrupt or not safetensors ({e}); "
                         f"retrain, or restore it from a checkpoint in checkpoints/") from None
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - _tied_aliases(model))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in sorted(state.keys() & expected.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"weights in {path} don't fit the model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}")
    model.load_state_dict(state, strict=False)


# --- resumable checkpoints ---------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict,
                    model_state: dict | None = None) -> Path:
    """Write checkpoints/step_<step>/ completely, then point latest.json at it, then prune old ones.
    A kill at any moment leaves latest.json naming a complete checkpoint."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step_{step}"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=".tmp_"))
    try:
        save_weights(model, tmp / "model.safetensors", model_state)
        torch.save(state, tmp / "state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(ckpt_root / "latest.json", {"step": step, "dir": final.name})
    for old in sorted(ckpt_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-CHECKPOINTS_KEPT]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp_*"):  # left by a run killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    try:
        path = pointer.parent / json.loads(pointer.read_text())["dir"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{pointer} is corrupt ({e}); delete it to resume from scratch") from None
    return path if (path / "state.pt").is_file() else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Load a checkpoint's weights into model and return its state dict (optimizer, step, RNG, data)."""
    load_weights(model, Path(path) / "model.safetensors")
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means a corrupt or foreign file
        # torch's own message runs to a page about weights_only; the type says enough
        raise ValueError(f"checkpoint state {Path(path) / 'state.pt'} is corrupt or not a checkpoint "
                         f"({type(e).__name__}); "
                         f"resume from an older checkpoints/step_* or start with --overwrite") from None
