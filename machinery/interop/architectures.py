"""Which transformers architecture a model of ours is, and which of our options have no equivalent there."""
from __future__ import annotations

from types import ModuleType

from config import ModelConfig
from machinery.interop import gpt2, llama

BY_MODEL_TYPE = {"llama": llama, "gpt2": gpt2}  # config.json's model_type -> its mapping

# Options that change the function and that neither LlamaForCausalLM nor GPT2LMHeadModel has: (field, is it on?, why)
_NO_EQUIVALENT = [
    ("norm_type", lambda c: c.norm_type == "CosineNorm", "CosineNorm"),
    ("pos_enc_type", lambda c: c.pos_enc_type == "Sinusoidal", "fixed sinusoidal positions"),
    ("qk_norm", lambda c: c.qk_norm, "normalized queries and keys"),
    ("logit_softcap", lambda c: c.logit_softcap is not None, "soft-capped logits"),
    ("sliding_window", lambda c: c.sliding_window is not None, "sliding-window attention"),
    ("post_sublayer_norm", lambda c: c.post_sublayer_norm, "sandwich norms"),
    ("scale_embeddings", lambda c: c.scale_embeddings, "embeddings scaled by sqrt(dim)"),
    # μP away from its base width multiplies logits and attention scores (modules/mup.py); at it, it is 'sp'
    ("parametrization", lambda c: c.parametrization == "mup" and (
        c.dim != c.mup_base_dim or c.mup_base_head_dim not in (None, c.head_dim)), "μP's logit and attention "
     "multipliers, at a width other than mup_base_dim"),
]


def for_export(cfg: ModelConfig, what: str = "this model") -> ModuleType:
    """The mapping (llama or gpt2) that expresses cfg exactly; otherwise one ValueError naming every option
    that stands in the way."""
    arch = llama if cfg.pos_enc_type == "RoPE" else gpt2
    problems = [f"{field}={getattr(cfg, field)!r} ({why})" for field, on, why in _NO_EQUIVALENT if on(cfg)]
    if not problems:
        problems = arch.problems(cfg)
    if problems:
        raise ValueError(f"{what} cannot be exported to transformers: {'; '.join(problems)} has no equivalent in "
                         f"{arch.ARCHITECTURE} (RoPE models export as LlamaForCausalLM, learned positions as "
                         f"GPT2LMHeadModel)")
    return arch


def for_import(hf_config: dict, where: str) -> ModuleType:
    """The mapping for a transformers config.json; ValueError naming the architecture if we have none."""
    model_type = hf_config.get("model_type")
    if model_type not in BY_MODEL_TYPE:
        archs = hf_config.get("architectures") or [model_type]
        raise ValueError(f"{where} holds a {archs[0]!r} model (model_type={model_type!r}): only Llama "
                         f"(LlamaForCausalLM) and GPT-2 (GPT2LMHeadModel) models can be imported")
    return BY_MODEL_TYPE[model_type]
