"""Which transformers architecture a model of ours is, and which of our options have no equivalent there."""
from __future__ import annotations

from types import ModuleType

from config import ModelConfig
from machinery.interop import gpt2, llama

BY_MODEL_TYPE = {"llama": llama, "gpt2": gpt2}  # config.json's model_type -> its mapping

# How export and import treat every ModelConfig field (tests/test_every_option.py fails on a field missing here;
# docs/structure.md says how to classify one):
MAPPED = "mapped"  # transformers' config.json holds it: llama.py / gpt2.py hf_config write it, model_fields read it
#                    back, and the architecture's problems() names a value it cannot express
REFUSED = "refused"  # neither architecture has it: a rule in NO_EQUIVALENT names it when it changes the function
TOKENIZER = "tokenizer"  # not the network: the tokenizer is exported as tokenizer.json (tokenizer.py)
TRAINING_ONLY = "training only"  # no effect on the exported function; written where the architecture has a field
FIELDS = {
    "dim": MAPPED, "num_layers": MAPPED, "num_q_heads": MAPPED, "num_kv_heads": MAPPED, "head_dim": MAPPED,
    "max_seq_len": MAPPED, "tokenizer": TOKENIZER, "vocab_len": MAPPED,
    "pos_enc_type": MAPPED,  # RoPE -> Llama, learnable -> GPT-2; Sinusoidal is refused
    "theta": MAPPED,  # Llama's rope_theta; learned positions have none
    "mlp_hidden_mult": MAPPED, "mlp_nonlinearity": MAPPED, "mlp_gated": MAPPED,
    "mlp_multiple_of": MAPPED,  # its rounding is in the mapped MLP width (intermediate_size / n_inner)
    "norm_type": MAPPED, "norm_affine": MAPPED, "norm_bias": MAPPED, "norm_eps": MAPPED,
    "post_sublayer_norm": REFUSED, "scale_embeddings": REFUSED, "linear_bias": MAPPED, "tie_embeddings": MAPPED,
    "logit_softcap": REFUSED, "qk_norm": REFUSED, "sliding_window": REFUSED,
    "dropout_embed": TRAINING_ONLY, "dropout_attn": TRAINING_ONLY, "dropout_resid": TRAINING_ONLY,
    "init_std": TRAINING_ONLY,
    "parametrization": REFUSED, "mup_base_dim": REFUSED, "mup_base_head_dim": REFUSED,
}

# Options that change the function and that neither LlamaForCausalLM nor GPT2LMHeadModel has:
# (the fields the rule reads, is it on?, why)
NO_EQUIVALENT = [
    (("norm_type",), lambda c: c.norm_type == "CosineNorm", "CosineNorm"),
    (("pos_enc_type",), lambda c: c.pos_enc_type == "Sinusoidal", "fixed sinusoidal positions"),
    (("qk_norm",), lambda c: c.qk_norm, "normalized queries and keys"),
    (("logit_softcap",), lambda c: c.logit_softcap is not None, "soft-capped logits"),
    (("sliding_window",), lambda c: c.sliding_window is not None, "sliding-window attention"),
    (("post_sublayer_norm",), lambda c: c.post_sublayer_norm, "sandwich norms"),
    (("scale_embeddings",), lambda c: c.scale_embeddings, "embeddings scaled by sqrt(dim)"),
    # μP away from its base width multiplies logits and attention scores (modules/mup.py); at it, it is 'sp'
    (("parametrization", "mup_base_dim", "mup_base_head_dim"), lambda c: c.parametrization == "mup" and (
        c.dim != c.mup_base_dim or c.mup_base_head_dim not in (None, c.head_dim)), "μP's logit and attention "
     "multipliers, at a width other than mup_base_dim"),
]


def for_export(cfg: ModelConfig, what: str = "this model") -> ModuleType:
    """The mapping (llama or gpt2) that expresses cfg exactly; otherwise one ValueError naming every option
    that stands in the way."""
    arch = llama if cfg.pos_enc_type == "RoPE" else gpt2
    problems = [", ".join(f"{field}={getattr(cfg, field)!r}" for field in fields) + f" ({why})"
                for fields, on, why in NO_EQUIVALENT if on(cfg)]
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
