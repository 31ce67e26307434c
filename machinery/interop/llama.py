"""Our RoPE + RMSNorm + gated-MLP model <-> transformers' LlamaForCausalLM: config fields and weight names.

The one real difference is RoPE's layout. We rotate interleaved pairs (x[2i], x[2i+1]) as one complex
multiply (modules/positional.py); Llama rotates the halves (x[i], x[i + D/2]) ("rotate_half"). Both use
frequency i for pair i, so permuting each head's q and k rows -- evens first, then odds -- makes the two
compute the same attention scores. v, o and everything else are copied as they are.
"""
from __future__ import annotations

import torch

from config import ModelConfig

ARCHITECTURE = "LlamaForCausalLM"
MODEL_TYPE = "llama"
# our mlp_nonlinearity -> Llama's hidden_act (transformers' ACT2FN names); import reads it backwards
ACTIVATIONS = {"SiLU": "silu", "GeLU": "gelu", "ReLU": "relu", "GeLU_tanh": "gelu_pytorch_tanh"}
IMPORT_ACTIVATIONS = {**{v: k for k, v in ACTIVATIONS.items()}, "gelu_new": "GeLU_tanh"}


def problems(cfg: ModelConfig) -> list[str]:
    """Options of a RoPE model that LlamaForCausalLM cannot express (empty: it exports exactly)."""
    out = []
    if cfg.norm_type != "RMSNorm":
        out.append(f"norm_type={cfg.norm_type!r} (Llama uses RMSNorm)")
    if cfg.norm_bias:
        out.append("norm_bias=True (Llama's RMSNorm has no bias)")
    if not cfg.mlp_gated:
        out.append("mlp_gated=False (Llama's MLP is gated)")
    if cfg.mlp_nonlinearity not in ACTIVATIONS:
        out.append(f"mlp_nonlinearity={cfg.mlp_nonlinearity!r} (exportable: {', '.join(ACTIVATIONS)})")
    return out


def rope_permutation(head_dim: int, num_heads: int) -> torch.Tensor:
    """Row order that turns our interleaved RoPE pairs into Llama's halves, for all heads of q or k."""
    one_head = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    return torch.cat([one_head + h * head_dim for h in range(num_heads)])


def hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, "dtype": "float32",
        "vocab_size": cfg.vocab_len, "hidden_size": cfg.dim, "intermediate_size": cfg.mlp_hidden_dim,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_q_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len, "hidden_act": ACTIVATIONS[cfg.mlp_nonlinearity],
        "rms_norm_eps": cfg.eps, "attention_bias": cfg.linear_bias, "mlp_bias": cfg.linear_bias,
        "attention_dropout": cfg.dropout_attn, "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        # transformers 5 reads rope_parameters, 4.x rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.theta}, "rope_theta": cfg.theta,
    }


def plain_rope_theta(hf: dict) -> float:
    """RoPE's theta, refusing RoPE scaling in any of its spellings: rope_scaling (transformers 4: 'type' or
    'rope_type'), rope_parameters (transformers 5, also one dict per attention type), a 'factor' without a type,
    and both keys at once (reading only one of them would import a scaled model as plain RoPE)."""
    thetas = {float(hf["rope_theta"])} if hf.get("rope_theta") is not None else set()
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r} is not understood; only plain RoPE is supported")
        for params in [v for v in value.values() if isinstance(v, dict)] or [value]:
            kind = params.get("rope_type", params.get("type", "default"))
            factor = params.get("factor", 1.0)
            if kind != "default" or factor not in (1, None):
                raise ValueError(f"{key} asks for RoPE scaling (rope_type={kind!r}, factor={factor!r}), which is "
                                 f"not supported; only plain RoPE is")
            if params.get("rope_theta") is not None:
                thetas.add(float(params["rope_theta"]))
    if len(thetas) > 1:
        raise ValueError(f"config.json gives several RoPE thetas {sorted(thetas)}; one model has one theta")
    return thetas.pop() if thetas else 10_000.0


def model_fields(hf: dict) -> dict:
    """ModelConfig fields from a Llama config.json; ValueError naming anything we cannot run exactly."""
    theta = plain_rope_theta(hf)
    act = hf.get("hidden_act", "silu")
    if act not in IMPORT_ACTIVATIONS:
        raise ValueError(f"hidden_act={act!r} is not supported (supported: {', '.join(IMPORT_ACTIVATIONS)})")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ValueError(f"attention_bias={attention_bias} with mlp_bias={mlp_bias}: our linear_bias sets both")
    heads = hf["num_attention_heads"]
    dim, hidden = hf["hidden_size"], hf["intermediate_size"]
    return dict(
        dim=dim, num_layers=hf["num_hidden_layers"], num_q_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or dim // heads,
        max_seq_len=hf.get("max_position_embeddings", 2048), vocab_len=hf["vocab_size"], pos_enc_type="RoPE",
        theta=float(theta), mlp_hidden_mult=hidden * 3 / (2 * dim), mlp_nonlinearity=IMPORT_ACTIVATIONS[act],
        mlp_gated=True, mlp_multiple_of=1, norm_type="RMSNorm", norm_affine=True, norm_bias=False,
        eps=hf.get("rms_norm_eps", 1e-6), linear_bias=attention_bias,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout_attn=hf.get("attention_dropout", 0.0), init_std=hf.get("initializer_range", 0.02))


def to_hf(cfg: ModelConfig, ours: dict) -> dict:
    """Our state dict -> Llama's (tied output weight left out, as transformers saves it)."""
    q_size, kv_size = cfg.num_q_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    q_perm, k_perm = rope_permutation(cfg.head_dim, cfg.num_q_heads), rope_permutation(cfg.head_dim, cfg.num_kv_heads)
    hidden = cfg.mlp_hidden_dim
    out = {"model.embed_tokens.weight": ours["token_embedding.weight"],
           "model.norm.weight": _norm_weight(ours, "final_norm", cfg.dim)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(cfg.num_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = _norm_weight(ours, o + "attn_norm", cfg.dim)
        out[h + "post_attention_layernorm.weight"] = _norm_weight(ours, o + "mlp_norm", cfg.dim)
        for kind in ("weight", "bias") if cfg.linear_bias else ("weight",):
            q, k, v = ours[f"{o}attn.qkv.{kind}"].split((q_size, kv_size, kv_size))
            out[f"{h}self_attn.q_proj.{kind}"] = q[q_perm]
            out[f"{h}self_attn.k_proj.{kind}"] = k[k_perm]
            out[f"{h}self_attn.v_proj.{kind}"] = v
            out[f"{h}self_attn.o_proj.{kind}"] = ours[f"{o}attn.out.{kind}"]
            gate, up = ours[f"{o}mlp.up.{kind}"].split((hidden, hidden))  # our MLP: act(first half) * second
            out[f"{h}mlp.gate_proj.{kind}"] = gate
            out[f"{h}mlp.up_proj.{kind}"] = up
            out[f"{h}mlp.down_proj.{kind}"] = ours[f"{o}mlp.down.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf(cfg: ModelConfig, hf: dict) -> dict:
    """Llama's state dict -> ours (the inverse of to_hf)."""
    q_back = torch.argsort(rope_permutation(cfg.head_dim, cfg.num_q_heads))
    k_back = torch.argsort(rope_permutation(cfg.head_dim, cfg.num_kv_heads))
    out = {"token_embedding.weight": hf["model.embed_tokens.weight"], "final_norm.weight": hf["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    for i in range(cfg.num_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        out[o + "attn_norm.weight"] = hf[h + "input_layernorm.weight"]
        out[o + "mlp_norm.weight"] = hf[h + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias") if cfg.linear_bias else ("weight",):
            a = f"{h}self_attn."
            out[f"{o}attn.qkv.{kind}"] = torch.cat((hf[f"{a}q_proj.{kind}"][q_back], hf[f"{a}k_proj.{kind}"][k_back],
                                                    hf[f"{a}v_proj.{kind}"]))
            out[f"{o}attn.out.{kind}"] = hf[f"{a}o_proj.{kind}"]
            out[f"{o}mlp.up.{kind}"] = torch.cat((hf[f"{h}mlp.gate_proj.{kind}"], hf[f"{h}mlp.up_proj.{kind}"]))
            out[f"{o}mlp.down.{kind}"] = hf[f"{h}mlp.down_proj.{kind}"]
    return out


def _norm_weight(ours: dict, name: str, dim: int) -> torch.Tensor:
    """A norm's scale; norm_affine=False is a scale of ones."""
    return ours.get(f"{name}.weight", torch.ones(dim))
