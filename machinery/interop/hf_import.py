"""Read a Hugging Face model folder (Llama or GPT-2, safetensors weights) as our ModelConfig and state dict.

Needs only json and safetensors, not transformers. Only safetensors files are read: a pickled
pytorch_model.bin could run code when loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from config import ModelConfig
from machinery.interop.architectures import for_import
from machinery.interop.export import CONFIG_KEY, ReadTracker

SAFETENSORS_INDEX = "model.safetensors.index.json"
# weights a model of ours may lack and the export then writes as ones / zeros: such a model imports with them
_WEIGHT_FLAGS = ("norm_affine", "norm_bias", "linear_bias")
# buffers some checkpoints hold that are no weights: GPT-2's causal mask, Llama's RoPE frequencies
_NOT_WEIGHTS = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def read_config(folder: Path) -> tuple[ModelConfig, dict]:
    """(our ModelConfig, config.json as a dict) of a transformers folder; one-line errors for what we can't run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    arch = for_import(hf, str(folder))
    try:
        fields = arch.model_fields(hf)
        cfg = ModelConfig(**fields)
    except (KeyError, TypeError, ValueError) as e:
        what = f"field {e} is missing" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{path}: {what}") from None
    expected_hidden = hf.get("intermediate_size", hf.get("n_inner")) or 4 * cfg.dim
    if cfg.mlp_hidden_dim != expected_hidden:  # float rounding in mlp_hidden_mult; never seen, checked anyway
        raise ValueError(f"{path}: MLP width {expected_hidden} cannot be expressed as mlp_hidden_mult")
    saved = hf.get(CONFIG_KEY)
    if isinstance(saved, dict):  # exported by us: our own config back, if config.json still describes it
        try:
            ours = ModelConfig.from_dict(saved)
        except (TypeError, ValueError):
            ours = None
        same_weights = ours is not None and all(getattr(ours, f) == getattr(cfg, f) for f in _WEIGHT_FLAGS)
        if same_weights and all(hf.get(k) == v for k, v in arch.hf_config(ours).items()):
            cfg = ours
        elif ours is not None:  # edited since, or exported ones/zeros for missing weights: config.json's
            # architecture (the same function), our tokenizer name
            cfg = ModelConfig(**{**cfg.to_dict(), "tokenizer": ours.tokenizer})
    return cfg, hf


def read_folder(folder: str | Path) -> tuple[ModelConfig, dict, bool]:
    """(config, state dict in our names, whether config.json named our tokenizer) of a transformers folder."""
    from modules.model import Model

    folder = Path(folder)
    cfg, hf = read_config(folder)
    arch = for_import(hf, str(folder))
    tensors = _read_safetensors(folder)
    if arch.MODEL_TYPE == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        tensors = {f"transformer.{k}": v for k, v in tensors.items()}  # the original GPT-2 files have no prefix
    tracked = ReadTracker(tensors)
    try:
        state = arch.from_hf(cfg, tracked)
    except KeyError as e:
        raise ValueError(f"{folder}: the weights lack {e.args[0]}, which config.json implies") from None
    unread = [name for name in tensors if name not in tracked.read and not name.endswith(_NOT_WEIGHTS)
              and not (name == "lm_head.weight" and cfg.tie_embeddings)]  # tied: the embedding, saved twice
    if unread:
        raise ValueError(f"{folder}: weights {', '.join(unread[:5])} have no place in our {arch.ARCHITECTURE} "
                         f"mapping (machinery/interop/{arch.__name__.rsplit('.', 1)[-1]}.py): the model holds "
                         f"something config.json does not say")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Model(cfg).state_dict().items()}
    for name, tensor in state.items():
        if tensor.shape != expected[name]:
            raise ValueError(f"{folder}: weight for {name} has shape {tuple(tensor.shape)}, config.json implies "
                             f"{tuple(expected[name])}")
    return cfg, {k: v.float().contiguous() for k, v in state.items()}, isinstance(hf.get(CONFIG_KEY), dict)


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of a transformers folder; FileNotFoundError when there are none."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    if (folder / SAFETENSORS_INDEX).is_file():  # sharded: the index maps each weight to its file
        try:
            weight_map = json.loads((folder / SAFETENSORS_INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{folder / SAFETENSORS_INDEX} is corrupt ({e})") from None
        return [folder / name for name in sorted(set(weight_map.values()))]
    hint = (" (it has pytorch_model.bin, a pickle we do not load; re-save it with "
            "save_pretrained(folder, safe_serialization=True))") if (folder / "pytorch_model.bin").exists() else ""
    raise FileNotFoundError(f"{folder} has no model.safetensors{hint}")


def _read_safetensors(folder: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors = {}
    for path in weight_files(folder):
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is missing, corrupt or not safetensors ({e})") from None
    return tensors
