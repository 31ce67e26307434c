"""Weights as safetensors files that carry a CRC-32 of their tensors (checked on every load), and loading
them into a model with one clear error for anything missing, unexpected, misshapen or corrupt. Loading
never executes pickled code. Checkpoints (machinery/run/checkpoint.py) and exports build on this."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from machinery.fileio import CHECKSUM, atomic_write, checksum


def clean_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (torch.compile's '_orig_mod.', DDP's 'module.') so any run loads anywhere."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key.replace("._orig_mod.", ".")] = value
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain Model inside torch.compile (._orig_mod) and DDP (.module) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        else:
            return model


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """Second names of tied parameters (e.g. lm_head.weight when it is the embedding), not stored twice."""
    seen, aliases = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.add(name)
        seen.add(id(param))
    return aliases


def tensors_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """CRC-32 over the raw bytes of every tensor, in name order: what model.safetensors records."""
    raw = (tensors[k].detach().contiguous().reshape(-1).view(torch.uint8).numpy() for k in sorted(tensors))
    return f"{checksum(raw):08x}"


def save_weights(model: torch.nn.Module, path: Path, state: dict | None = None) -> None:
    """Save model.state_dict() (or a full `state` gathered from sharded ranks) as safetensors, with the
    CRC-32 of the tensors in the file's metadata."""
    model = unwrap_model(model)
    state = clean_state_dict(state if state is not None else model.state_dict())
    aliases = tied_aliases(model)  # tied weights: one tensor under two names, stored once
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items() if k not in aliases}
    metadata = {CHECKSUM: tensors_checksum(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, refused with a message naming the file if it is missing, not
    safetensors, or does not match its recorded checksum (files without one, e.g. older runs, load as is)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}: the run has not saved a model yet")
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get(CHECKSUM)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"weights file {path} is corrupt or not safetensors ({e}); "
                         f"retrain, or restore it from a checkpoint in checkpoints/") from None
    if recorded is not None and recorded != tensors_checksum(tensors):
        raise ValueError(f"weights file {path} is corrupt: its tensors do not match the checksum recorded when "
                         f"it was written; retrain, or restore it from a checkpoint in checkpoints/")
    return tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into model, with clear errors for missing, corrupt or mismatched files."""
    fit_state(model, clean_state_dict(read_weights(path)), path)


def fit_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Copy `state` into model, refusing missing, unexpected or wrongly shaped tensors."""
    model = unwrap_model(model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - tied_aliases(model))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in sorted(state.keys() & expected.keys()) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"weights in {path} don't fit the model config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}")
    model.load_state_dict(state, strict=False)
