"""Write a run as a Hugging Face model folder that transformers loads with no custom code:

    config.json              LlamaForCausalLM or GPT2LMHeadModel, plus our own configs under "templategpt"
    model.safetensors        the weights in transformers' names and layout (float32, as trained)
    generation_config.json   bos/eos/pad ids
    tokenizer.json           our tokenizer for the `tokenizers` library (machinery/interop/tokenizer.py)
    tokenizer_config.json
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from config import ModelConfig
from machinery.data.tokenizer import get_tokenizer
from machinery.fileio import usual_permissions
from machinery.interop import tokenizer as hf_tokenizer
from machinery.interop.architectures import for_export
from machinery.run import runs
from machinery.run.weights import load_weights

CONFIG_KEY = "templategpt"  # config.json key holding our ModelConfig, so an import gives it back unchanged


class ReadTracker(dict):
    """A state dict that remembers which weights were read."""

    def __init__(self, state: dict):
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)


def hf_weights(model_cfg: ModelConfig, state: dict, what: str = "this model") -> dict:
    """Our state dict in transformers' names and layout. Every weight must be taken by the mapping: one it does
    not read (say, of an option added to the model but not to llama.py / gpt2.py) is a ValueError naming it,
    never a weight dropped without a word."""
    arch = for_export(model_cfg, what)
    tracked = ReadTracker(state)
    out = arch.to_hf(model_cfg, tracked)
    if model_cfg.tie_embeddings:  # the output head is the embedding matrix, saved once by transformers
        tracked.read.add("lm_head.weight")
    unread = [name for name in state if name not in tracked.read]
    if unread:
        raise ValueError(f"{what} cannot be exported: machinery/interop/{arch.__name__.rsplit('.', 1)[-1]}.py maps "
                         f"no {arch.ARCHITECTURE} weight from {', '.join(unread[:5])}"
                         f"{f' (and {len(unread) - 5} more)' if len(unread) > 5 else ''}: map it there, or refuse "
                         f"the option that adds it (docs/structure.md)")
    return out


def hf_files(model_cfg: ModelConfig, state: dict, tokenizer, what: str = "this model") -> tuple[dict, dict, dict]:
    """(config.json, generation_config.json, HF state dict) for a model of ours."""
    arch = for_export(model_cfg, what)
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    config = {**arch.hf_config(model_cfg), **ids, CONFIG_KEY: model_cfg.to_dict()}
    generation = dict(ids)
    return config, generation, hf_weights(model_cfg, state, what)


def export_run(run: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Export trained run `run` (a name in trained/ or a path) to out_dir; returns out_dir.
    Everything is written to a temporary folder first and renamed into place at the end."""
    from safetensors.torch import save_file

    from modules.model import Model

    run_dir = runs.resolve_run(run)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ValueError(f"{out_dir} exists and is not empty: choose another folder or add --overwrite")
    model_cfg, _ = runs.load_configs(run_dir)
    for_export(model_cfg, str(run_dir))  # refuse before loading anything
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    model = Model(model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    config, generation, state = hf_files(model_cfg, model.state_dict(), tokenizer, str(run_dir))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp_"))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        hf_tokenizer.write(tokenizer, tmp, model_cfg.max_seq_len)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp's folder and safetensors' file are owner-only (0700, 0600)
            usual_permissions(path)
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
