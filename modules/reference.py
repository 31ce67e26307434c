"""The slow, obvious math behind each fast module, in float64: read these to see what the kernels compute.

Nothing here runs in training; tests/test_modules.py checks that every fast path (fused norms, SDPA, the
complex-number RoPE, the boolean mask) agrees with the version written out here, and `model` writes out a
whole Model's forward with every option (tests/test_every_option.py). Adding a choice to config.py (a norm,
a nonlinearity) means adding its written-out form here too; a name without one is a ValueError that says so,
never a silent fall-through to another implementation. A new ModelConfig field gets a line in FIELDS below.
"""
from __future__ import annotations

import math

import torch

from modules.choices import pick

# How the reference treats every ModelConfig field (tests/test_every_option.py fails on a field missing here;
# docs/structure.md says how to classify one):
WRITTEN_OUT = "written out"        # `model` below computes what it changes, by hand
IN_THE_WEIGHTS = "in the weights"  # it only shapes (or adds, or shares) weights, which the reference reads as they are
NOT_IN_EVAL = "not in the eval forward"  # it changes no logit of a model in eval mode
FIELDS = {
    "dim": IN_THE_WEIGHTS, "num_layers": IN_THE_WEIGHTS, "num_q_heads": IN_THE_WEIGHTS,
    "num_kv_heads": IN_THE_WEIGHTS, "head_dim": IN_THE_WEIGHTS, "vocab_len": IN_THE_WEIGHTS,
    "max_seq_len": IN_THE_WEIGHTS,  # the learned position table's length; a longer input is refused, not computed
    "tokenizer": NOT_IN_EVAL,       # which text the ids stand for
    "pos_enc_type": WRITTEN_OUT, "theta": WRITTEN_OUT,  # POSITIONS, rope
    "mlp_hidden_mult": IN_THE_WEIGHTS, "mlp_multiple_of": IN_THE_WEIGHTS,
    "mlp_nonlinearity": WRITTEN_OUT, "mlp_gated": WRITTEN_OUT,  # mlp
    "norm_type": WRITTEN_OUT, "norm_eps": WRITTEN_OUT,  # norm (eps as the norm module holds it)
    "norm_affine": IN_THE_WEIGHTS, "norm_bias": IN_THE_WEIGHTS,  # a missing scale or shift is None: skipped
    "post_sublayer_norm": WRITTEN_OUT, "scale_embeddings": WRITTEN_OUT,
    "linear_bias": IN_THE_WEIGHTS,
    "tie_embeddings": IN_THE_WEIGHTS,  # lm_head.weight is then the embedding matrix itself
    "logit_softcap": WRITTEN_OUT, "qk_norm": WRITTEN_OUT, "sliding_window": WRITTEN_OUT,
    "dropout_embed": NOT_IN_EVAL, "dropout_attn": NOT_IN_EVAL, "dropout_resid": NOT_IN_EVAL,
    "init_std": NOT_IN_EVAL,  # only the starting weights
    "parametrization": WRITTEN_OUT, "mup_base_dim": WRITTEN_OUT, "mup_base_head_dim": WRITTEN_OUT,  # μP's multipliers
}


def _where(listed_in: str) -> str:
    return f"modules/reference.py ({listed_in})"


# --- nonlinearities (modules/mlp.py ACTIVATIONS) --------------------------------------------------------
ACTIVATIONS = {
    "GeLU": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),  # x * P(N(0,1) < x), exact (not tanh)
    "SiLU": lambda x: x / (1 + torch.exp(-x)),                       # x * sigmoid(x)
    "ReLU": lambda x: torch.where(x > 0, x, torch.zeros_like(x)),
    "GeLU_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),  # GPT-2
}


def activation(name: str):
    return pick(ACTIVATIONS, "mlp_nonlinearity", name, listed_in="MLP_NONLINEARITIES",
                where=_where("ACTIVATIONS"))


def mlp(x: torch.Tensor, module, nonlinearity: str, gated: bool) -> torch.Tensor:
    """down(act(up(x))), or gated: down(act(gate) * value) with gate and value the two halves of up(x)."""
    act = activation(nonlinearity)
    x = x.double()
    w_up, b_up = module.up.weight.double(), _double(module.up.bias)
    w_down, b_down = module.down.weight.double(), _double(module.down.bias)
    hidden = w_down.shape[1]
    if gated:  # gate = first half of the up projection's rows, value = second half
        gate = x @ w_up[:hidden].T + (0 if b_up is None else b_up[:hidden])
        value = x @ w_up[hidden:].T + (0 if b_up is None else b_up[hidden:])
        h = act(gate) * value
    else:
        h = act(x @ w_up.T + (0 if b_up is None else b_up))
    return h @ w_down.T + (0 if b_down is None else b_down)


# --- norms (modules/norm.py NORMS) ----------------------------------------------------------------------
# Each normalizes the last dimension of x; `norm` holds eps and any parameters of its own.
def _rms(x, norm):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + norm.eps)


def _layer(x, norm):
    centered = x - x.mean(-1, keepdim=True)
    return centered / torch.sqrt((centered * centered).mean(-1, keepdim=True) + norm.eps)


def _cosine(x, norm):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True)).clamp(min=norm.eps)


NORMS = {"RMSNorm": _rms, "LayerNorm": _layer, "CosineNorm": _cosine}


def norm(x: torch.Tensor, norm_type: str, module) -> torch.Tensor:
    """Normalize the last dimension as norm_type does, then scale by module.weight and shift by module.bias
    (each may be None)."""
    normalize = pick(NORMS, "norm_type", norm_type, listed_in="NORM_TYPES", where=_where("NORMS"))
    y = normalize(x.double(), module)
    if module.weight is not None:
        y = y * module.weight.double()
    return y + module.bias.double() if module.bias is not None else y


# --- positions and masks ----------------------------------------------------------------------------
def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of x (B, heads, T, D) by the angle position * theta^(-2i/D),
    one pair at a time. positions: (T,) or (B, T)."""
    x = x.double()
    D = x.shape[-1]
    out = x.clone()
    for i in range(D // 2):
        angle = positions.double() * theta ** (-2 * i / D)
        if angle.dim() == 2:
            angle = angle[:, None, :]  # broadcast over heads
        c, s = torch.cos(angle), torch.sin(angle)
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i], out[..., 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


def mask(T: int, sliding_window: int | None = None, doc_ids=None, key_valid=None) -> torch.Tensor:
    """(B or 1, T, T) boolean, True where query i may attend to key j, written out by loops."""
    rows = doc_ids if doc_ids is not None else key_valid
    B = 1 if rows is None else rows.shape[0]
    allowed = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                ok = j <= i  # causal: never a later token
                if sliding_window is not None:
                    ok = ok and i - j < sliding_window
                if doc_ids is not None:
                    ok = ok and bool(doc_ids[b, i] == doc_ids[b, j])
                if key_valid is not None:  # padding keys are skipped; every query still sees itself
                    ok = (ok and bool(key_valid[b, j])) or i == j
                allowed[b, i, j] = ok
    return allowed


# --- attention (modules/attention.py) -----------------------------------------------------------------
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
              scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, scale 1/sqrt(D) unless given. q (B, Hq, T, D); k, v (B, Hkv, T, D)
    shared by groups of Hq / Hkv query heads (GQA; MQA when Hkv = 1); allowed (B or 1, T, T)."""
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    group = Hq // Hkv
    k = torch.stack([k[:, h // group] for h in range(Hq)], dim=1)  # query head h uses kv head h // group
    v = torch.stack([v[:, h // group] for h in range(Hq)], dim=1)
    scores = q @ k.transpose(-1, -2) * (1 / math.sqrt(D) if scale is None else scale)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))  # -inf: zero weight after softmax
    return torch.softmax(scores, dim=-1) @ v


def self_attention(x: torch.Tensor, module, positions=None, theta: float = 10_000.0,
                   allowed: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """A SelfAttention module's forward from its weights: project q, k, v; qk-norm; RoPE; attention; out.
    positions None: no RoPE. allowed None: plain causal. scale None: 1/sqrt(head_dim)."""
    x = x.double()
    B, T, _ = x.shape
    Hq, Hkv, D = module.num_q_heads, module.num_kv_heads, module.head_dim
    proj = x @ module.qkv.weight.double().T
    if module.qkv.bias is not None:
        proj = proj + module.qkv.bias.double()
    q = proj[..., :Hq * D].reshape(B, T, Hq, D).transpose(1, 2)
    k = proj[..., Hq * D:(Hq + Hkv) * D].reshape(B, T, Hkv, D).transpose(1, 2)
    v = proj[..., (Hq + Hkv) * D:].reshape(B, T, Hkv, D).transpose(1, 2)
    if module.q_norm is not None:
        q, k = norm(q, "RMSNorm", module.q_norm), norm(k, "RMSNorm", module.k_norm)
    if positions is not None:
        q, k = rope(q, positions, theta), rope(k, positions, theta)
    y = attention(q, k, v, mask(T) if allowed is None else allowed, scale)
    y = y.transpose(1, 2).reshape(B, T, Hq * D)
    return y @ module.out.weight.double().T + _double(module.out.bias, default=0)


# --- positions (modules/positional.py POSITION_ENCODINGS) ---------------------------------------------------
def sinusoidal(positions: torch.Tensor, dim: int, base: float = 10_000.0) -> torch.Tensor:
    """(..., dim): dims (2i, 2i+1) are sin and cos of position / base^(2i/dim), one pair at a time."""
    out = torch.zeros(*positions.shape, dim, dtype=torch.float64)
    for i in range(dim // 2):
        angle = positions.double() / base ** (2 * i / dim)
        out[..., 2 * i], out[..., 2 * i + 1] = torch.sin(angle), torch.cos(angle)
    return out


# Each: (positions, model) -> (what is added to the token embeddings, the positions RoPE rotates by or None)
POSITIONS = {
    "RoPE": lambda positions, model: (0.0, positions),  # nothing added: attention rotates q and k
    "learnable": lambda positions, model: (model.pos_embedding.weight.double()[positions], None),
    "Sinusoidal": lambda positions, model: (sinusoidal(positions, model.cfg.dim), None),
}


# --- the whole model (modules/model.py) -------------------------------------------------------------------
def model(input_ids: torch.Tensor, module) -> torch.Tensor:
    """A Model's logits (B, T, vocab) for input_ids (B, T) from position 0, from its weights and config, with
    every option written out: token embeddings (scaled), positions, then in each layer
    x += out_norm(attention(norm(x))) and x += out_norm(mlp(norm(x))) (out_norm only with post_sublayer_norm),
    the final norm, the output head, μP's output multiplier and the soft cap. As in eval mode: no dropout."""
    cfg = module.cfg
    T = input_ids.shape[1]
    positions = torch.arange(T)
    # μP (modules/mup.py), with the width multiplier m = dim / mup_base_dim; under 'sp' every factor is 1
    mup = cfg.parametrization == "mup"
    m = cfg.dim / cfg.mup_base_dim if mup else 1.0
    attention_scale = math.sqrt(cfg.mup_base_head_dim or cfg.head_dim / m) / cfg.head_dim if mup else None
    x = module.token_embedding.weight.double()[input_ids]
    if cfg.scale_embeddings:
        x = x * math.sqrt(cfg.mup_base_dim if mup else cfg.dim)
    added, rope_positions = pick(POSITIONS, "pos_enc_type", cfg.pos_enc_type, listed_in="POS_ENC_TYPES",
                                 where=_where("POSITIONS"))(positions, module)
    x = x + added
    allowed = mask(T, cfg.sliding_window)

    def residual(x, sublayer, in_norm, out_norm):
        h = sublayer(norm(x, cfg.norm_type, in_norm))
        return x + (norm(h, cfg.norm_type, out_norm) if cfg.post_sublayer_norm else h)

    for layer in module.layers:
        x = residual(x, lambda h: self_attention(h, layer.attn, rope_positions, cfg.theta, allowed, attention_scale),
                     layer.attn_norm, layer.attn_out_norm)
        x = residual(x, lambda h: mlp(h, layer.mlp, cfg.mlp_nonlinearity, cfg.mlp_gated),
                     layer.mlp_norm, layer.mlp_out_norm)
    logits = norm(x, cfg.norm_type, module.final_norm) @ module.lm_head.weight.double().T / m
    if cfg.logit_softcap is not None:
        logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
    return logits


def _double(t, default=None):
    return default if t is None else t.double()
