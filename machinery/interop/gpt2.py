"""Our learned-position + LayerNorm + plain-MLP model <-> transformers' GPT2LMHeadModel.

GPT-2 stores its linear layers as Conv1D, weight (in, out): the transpose of nn.Linear's (out, in). Its fused
c_attn is q, k, v in that order, as our qkv. GPT-2 always has biases in its linear layers and LayerNorms:
a model of ours without them exports zeros there (the same function), and one without a norm scale exports ones.
"""
from __future__ import annotations

import torch

from config import ModelConfig

ARCHITECTURE = "GPT2LMHeadModel"
MODEL_TYPE = "gpt2"
# our mlp_nonlinearity -> GPT-2's activation_function. GPT-2's own weights use "gelu_new", the tanh approximation.
ACTIVATIONS = {"GeLU": "gelu", "GeLU_tanh": "gelu_new", "ReLU": "relu", "SiLU": "silu"}
IMPORT_ACTIVATIONS = {**{v: k for k, v in ACTIVATIONS.items()}, "gelu_pytorch_tanh": "GeLU_tanh", "swish": "SiLU"}


def problems(cfg: ModelConfig) -> list[str]:
    """Options of a learned-position model that GPT2LMHeadModel cannot express (empty: it exports exactly)."""
    out = []
    if cfg.norm_type != "LayerNorm":
        out.append(f"norm_type={cfg.norm_type!r} (GPT-2 uses LayerNorm)")
    if cfg.mlp_gated:
        out.append("mlp_gated=True (GPT-2's MLP is not gated)")
    if cfg.num_kv_heads != cfg.num_q_heads:
        out.append(f"num_kv_heads={cfg.num_kv_heads} < num_q_heads={cfg.num_q_heads} (GPT-2 has no GQA)")
    if cfg.head_dim * cfg.num_q_heads != cfg.dim:
        out.append(f"head_dim={cfg.head_dim} (GPT-2 needs head_dim * num_q_heads == dim={cfg.dim})")
    if cfg.mlp_nonlinearity not in ACTIVATIONS:
        out.append(f"mlp_nonlinearity={cfg.mlp_nonlinearity!r} (exportable: {', '.join(ACTIVATIONS)})")
    return out


def hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "dtype": "float32",
        "vocab_size": cfg.vocab_len, "n_embd": cfg.dim, "n_layer": cfg.num_layers, "n_head": cfg.num_q_heads,
        "n_positions": cfg.max_seq_len, "n_inner": cfg.mlp_hidden_dim,
        "activation_function": ACTIVATIONS[cfg.mlp_nonlinearity], "layer_norm_epsilon": cfg.norm_eps,
        "embd_pdrop": cfg.dropout_embed, "attn_pdrop": cfg.dropout_attn, "resid_pdrop": cfg.dropout_resid,
        "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": cfg.init_std,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
    }


def model_fields(hf: dict) -> dict:
    """ModelConfig fields from a GPT-2 config.json; ValueError naming anything we cannot run exactly."""
    for key, fine in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if hf.get(key, fine) != fine:
            raise ValueError(f"{key}={hf[key]} is not supported (only {fine})")
    act = hf.get("activation_function", "gelu_new")
    if act not in IMPORT_ACTIVATIONS:
        raise ValueError(f"activation_function={act!r} is not supported "
                         f"(supported: {', '.join(IMPORT_ACTIVATIONS)})")
    dim = hf["n_embd"]
    return dict(
        dim=dim, num_layers=hf["n_layer"], num_q_heads=hf["n_head"], num_kv_heads=hf["n_head"], head_dim=None,
        max_seq_len=hf.get("n_positions", 1024), vocab_len=hf["vocab_size"], pos_enc_type="learnable",
        mlp_hidden_mult=(hf.get("n_inner") or 4 * dim) / dim, mlp_nonlinearity=IMPORT_ACTIVATIONS[act],
        mlp_gated=False, mlp_multiple_of=1, norm_type="LayerNorm", norm_affine=True, norm_bias=True,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), linear_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), dropout_embed=hf.get("embd_pdrop", 0.1),
        dropout_attn=hf.get("attn_pdrop", 0.1), dropout_resid=hf.get("resid_pdrop", 0.1),
        init_std=hf.get("initializer_range", 0.02))


def _linears(cfg: ModelConfig, i: int) -> list[tuple[str, str, int]]:
    """(our name, GPT-2 name, output width) of each linear layer in block i."""
    o, h = f"layers.{i}.", f"transformer.h.{i}."
    return [(o + "attn.qkv", h + "attn.c_attn", 3 * cfg.dim), (o + "attn.out", h + "attn.c_proj", cfg.dim),
            (o + "mlp.up", h + "mlp.c_fc", cfg.mlp_hidden_dim), (o + "mlp.down", h + "mlp.c_proj", cfg.dim)]


def _norms(i: int) -> list[tuple[str, str]]:
    return [(f"layers.{i}.attn_norm", f"transformer.h.{i}.ln_1"), (f"layers.{i}.mlp_norm", f"transformer.h.{i}.ln_2")]


def to_hf(cfg: ModelConfig, ours: dict) -> dict:
    """Our state dict -> GPT-2's (tied output weight left out, as transformers saves it)."""
    out = {"transformer.wte.weight": ours["token_embedding.weight"],
           "transformer.wpe.weight": ours["pos_embedding.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    norms = [("final_norm", "transformer.ln_f")] + [pair for i in range(cfg.num_layers) for pair in _norms(i)]
    for o, h in norms:
        out[h + ".weight"] = ours.get(o + ".weight", torch.ones(cfg.dim))
        out[h + ".bias"] = ours.get(o + ".bias", torch.zeros(cfg.dim))
    for i in range(cfg.num_layers):
        for o, h, width in _linears(cfg, i):
            out[h + ".weight"] = ours[o + ".weight"].t()
            out[h + ".bias"] = ours.get(o + ".bias", torch.zeros(width))
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(cfg: ModelConfig, hf: dict) -> dict:
    """GPT-2's state dict -> ours (the inverse of to_hf; cfg has linear_bias=norm_bias=True as GPT-2 does)."""
    out = {"token_embedding.weight": hf["transformer.wte.weight"],
           "pos_embedding.weight": hf["transformer.wpe.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    for o, h in [("final_norm", "transformer.ln_f")] + [p for i in range(cfg.num_layers) for p in _norms(i)]:
        out[o + ".weight"], out[o + ".bias"] = hf[h + ".weight"], hf[h + ".bias"]
    for i in range(cfg.num_layers):
        for o, h, _ in _linears(cfg, i):
            out[o + ".weight"] = hf[h + ".weight"].t().contiguous()
            out[o + ".bias"] = hf[h + ".bias"]
    return out
