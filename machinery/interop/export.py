"""Write a run as a Hugging Face model folder that transformers loads with no custom code:

    config.json              LlamaForCausalLM or GPT2LMHeadModel, plus our own configs under "templategpt"
    model.safetensors        the weights in transformers' names and layout (float32, as trained)
    generation_config.json   bos/eos/pad ids
    tokenizer.json           our tokenizer for the `tokenizers` library (machinery/interop/tokenizer.py)
    tokenizer_config.json
    .templategpt-export      marks the folder as an export, so --overwrite may replace it (and nothing else)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from config import ModelConfig
from machinery.data.tokenizer import get_tokenizer
from machinery.interop import tokenizer as hf_tokenizer
from machinery.fileio import flush_to_disk, reported_writes, temp_folder
from machinery.interop.architectures import for_export
from machinery.own_folders import check_replaceable, replace_own_folder
from machinery.run import runs
from machinery.run.weights import load_weights

CONFIG_KEY = "templategpt"  # config.json key holding our ModelConfig, so an import gives it back unchanged


def hf_files(model_cfg: ModelConfig, state: dict, tokenizer, what: str = "this model") -> tuple[dict, dict, dict]:
    """(config.json, generation_config.json, HF state dict) for a model of ours."""
    arch = for_export(model_cfg, what)
    ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    config = {**arch.hf_config(model_cfg), **ids, CONFIG_KEY: model_cfg.to_dict()}
    generation = dict(ids)
    return config, generation, arch.to_hf(model_cfg, state)


def export_run(run: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Export trained run `run` (a name in trained/ or a path) to out_dir; returns out_dir.
    Everything is written to a temporary folder first and renamed into place at the end."""
    from safetensors.torch import save_file

    from modules.model import Model

    run_dir = runs.resolve_run(run)
    out_dir = Path(os.path.abspath(out_dir))  # 'trained/..' is the project folder, and is named so
    check_replaceable(out_dir, "export")  # only an earlier export: never a link, a file, a run, the source, ...
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir} holds an earlier export: add --overwrite to replace it, or choose another "
                         f"folder")
    model_cfg, _ = runs.load_configs(run_dir)
    for_export(model_cfg, str(run_dir))  # refuse before loading anything
    tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
    model = Model(model_cfg)
    load_weights(model, run_dir / "model.safetensors")
    config, generation, state = hf_files(model_cfg, model.state_dict(), tokenizer, str(run_dir))

    tmp = temp_folder(out_dir.parent)
    try:
        with reported_writes(out_dir):  # a full disk or no permission: one line, the old export untouched
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            hf_tokenizer.write(tokenizer, tmp, model_cfg.max_seq_len)
            for file in tmp.iterdir():
                flush_to_disk(file)
        replace_own_folder(tmp, out_dir, "export")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
