"""`train.py --init_from=SOURCE`: a new run that starts from the weights of a run in trained/, of a Hugging Face
model folder (Llama or GPT-2), or of such a model on the hub by name (owner/name: machinery/interop/hub_models.py).
The architecture is the source's; the run brings its own data and training settings.

    cfg = init_from.model_config(source, given)   # the source's architecture, checked against what the run asks for
    init_from.load_weights(model, source)         # into Model(cfg)
"""
from __future__ import annotations

from pathlib import Path

from config import ModelConfig
from machinery.data.tokenizer import available_tokenizers
from machinery.interop import hf_import, hub_models
from machinery.run import runs, weights

# fields no weight depends on: a new run may set them freely
FREE_FIELDS = {"dropout_embed", "dropout_attn", "dropout_resid", "init_std"}


def _kind(source: str, weights: bool = True) -> tuple[str, Path]:
    """('run', run folder), ('hf', transformers folder) or ('hub', a hub model's folder in the Hugging Face cache,
    fetched with its weights only when `weights`)."""
    text = str(source)
    if not runs.is_path(text):
        return "run", runs.resolve_run(text)  # a bare name: trained/<name>
    path = Path(text).expanduser()
    if not path.exists() and hub_models.is_repo_id(text):
        return "hub", hub_models.snapshot(text, weights)
    if not path.is_dir():
        raise FileNotFoundError(f"--init_from={text}: no such folder")
    if (path / runs.MODEL_CONFIG).is_file():
        return "run", runs.resolve_run(text)
    if (path / "config.json").is_file():
        return "hf", path
    raise FileNotFoundError(f"--init_from={text} is neither a run folder (model_config.json) nor a Hugging Face "
                            f"model folder (config.json)")


def source_config(source: str) -> tuple[ModelConfig, bool]:
    """(the source's architecture, whether it names its tokenizer)."""
    kind, path = _kind(source, weights=False)  # a hub model's weights come once its config passed every check
    if kind == "run":
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"--init_from={source}: the run has no model.safetensors yet")
        return runs.load_configs(path)[0], True
    cfg, hf = hf_import.read_config(path)
    if kind == "hf":
        hf_import.weight_files(path)  # fail now, before any data is read
    return cfg, isinstance(hf.get(hf_import.CONFIG_KEY), dict)


def model_config(source: str, given: dict) -> ModelConfig:
    """The new run's ModelConfig: the source's, with `given` (model fields set by the command line or a preset)
    allowed only where no weight depends on them. A conflict is one ValueError naming the field."""
    src, knows_tokenizer = source_config(source)
    fields = src.to_dict()
    for name, value in given.items():
        free = name in FREE_FIELDS or (name == "max_seq_len" and src.pos_enc_type != "learnable") \
            or (name == "tokenizer" and not knows_tokenizer)
        if free:
            fields[name] = value
        elif value != fields[name]:
            raise ValueError(f"--init_from={source} has {name}={fields[name]!r} but this run asks for {name}={value!r}: "
                             f"the architecture comes from the source (drop --{name}, or the preset that sets it)")
    cfg = ModelConfig(**fields)
    sizes = available_tokenizers().get(cfg.tokenizer, [])
    if cfg.vocab_len not in sizes:
        raise ValueError(f"--init_from={source} has a vocabulary of {cfg.vocab_len} tokens but tokenizer "
                         f"{cfg.tokenizer!r} has sizes {sizes or 'none on disk'}: give a --tokenizer of that size")
    _kind(source, weights=True)  # a hub model's weights: downloaded now, before any data is read
    return cfg


def load_weights(model, source: str) -> None:
    """Copy the source's weights into `model` (built from model_config(source, ...))."""
    kind, path = _kind(source)
    if kind == "run":
        weights.load_weights(model, path / "model.safetensors")
        return
    _, state, _ = hf_import.read_folder(path)
    model = weights.unwrap_model(model)
    if model.lm_head.weight is model.token_embedding.weight:
        state["lm_head.weight"] = state["token_embedding.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k in dict(model.named_parameters())]  # buffers are rebuilt from the config
    if missing or unexpected:
        raise ValueError(f"--init_from={source}: weights do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
