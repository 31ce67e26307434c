"""μP (Maximal Update Parametrization): every width rule in one place.

Under the standard parametrization ('sp') the best learning rate drifts as the model gets wider, so what is tuned on
a laptop-size model does not carry over. μP rescales init, learning rates and two forward multipliers with the width
multiplier m = dim / mup_base_dim so that every activation's coordinates, and how much one step changes them, stay
the same size at any width: tune lr at a small width, reuse it at a large one.

    Yang et al., "Tensor Programs V", https://arxiv.org/abs/2203.03466, Table 3 (μP for Adam) and Table 8 (the same
    rules written with multipliers; the form that allows tied embeddings, used here).
    Dey et al., "The Practitioner's Guide to the Maximal Update Parameterization" (EleutherAI / Cerebras, 2024).

The rules, with m = dim / mup_base_dim (each is applied where the comment "μP:" names this file):

    parameter / quantity            SP (today)                 μP (Adam)                      applied in
    hidden matrices (qkv, attn out, init std σ                    σ * sqrt(1/m)                  Model._init_weights
      mlp up/down)                  AdamW lr η, decay λ        lr η/m, decay λ*m (lr*λ const)  training/optim.py
    token / position embedding      init σ, lr η               unchanged (fan-in is vocab)    -
    output head (lm_head)           init σ, lr η               unchanged, logits * 1/m        Model.forward
    norm gains, biases              lr η                       unchanged (vector-like)        -
    attention logits                q.k / sqrt(d_head)         q.k * sqrt(d_base)/d_head      SelfAttention
    scale_embeddings multiplier     sqrt(dim)                  sqrt(mup_base_dim) (constant)  Model.forward

At dim == mup_base_dim every factor is exactly 1 (and the attention scale is exactly 1/sqrt(d_head)), so μP there is
the SP model bit for bit: tune at that width with either, then scale up with 'mup'.

Choices, and why:
- One m for every hidden matrix: it stands for each matrix's fan-in ratio to the base model, which holds when the
  MLP width (mlp_hidden_mult, after mlp_multiple_of rounding) and num_q_heads * head_dim grow in proportion to dim.
- Weight decay: torch's AdamW decays by lr * λ per step. Hidden matrices get lr η/m, so λ is multiplied by m to keep
  the decay per step (lr * λ) what it is at the base width, as microsoft/mup's MuAdamW does for lr-coupled decay.
- Tied embeddings (tie_embeddings): one matrix is both the input embedding and the output head. In Table 8 both
  roles have a width-independent init and Adam lr, and only the output gets a forward multiplier, so the tied
  matrix keeps σ and η and the logits are multiplied by 1/m, as microsoft/mup's MuSharedReadout does.
- Muon: its update is orthogonalized (all singular values ~1) and torch scales it by sqrt(max(1, fan_out/fan_in)),
  which is constant as width grows at a fixed aspect ratio. A step then moves each output coordinate by O(lr) at any
  width (the spectral condition for feature learning, Yang, Simon & Bernstein, https://arxiv.org/abs/2310.17813),
  so muon_lr needs no width factor. μP + Muon therefore changes init, logits and attention only; the AdamW-trained
  embeddings, head and norms keep their lr as above.
- CosineNorm is refused: it scales each vector to unit length, so its coordinates shrink as 1/sqrt(dim), against
  μP's premise that coordinates stay O(1). RMSNorm and LayerNorm keep them O(1).
- Attention: the base head width is mup_base_head_dim, or head_dim * mup_base_dim / dim when unset (the head count
  stays fixed as width grows). When the head count grows too (e.g. 128 -> llama_125M: 4 -> 12 heads), set
  mup_base_head_dim to the small model's head_dim on both models.
"""
from __future__ import annotations

import math

from config import ModelConfig
from modules.choices import pick


PARAMETRIZATION_IS_MUP = {"sp": False, "mup": True}  # every name in config.PARAMETRIZATIONS, explicitly

# How μP treats every ModelConfig field (tests/test_every_option.py fails on a field missing here;
# docs/structure.md says how to classify one):
SETTING = "setting"  # defines the width multiplier m or the base model it is measured from
RULE = "rule"  # a function in this file scales what it makes with width (see the table above)
WIDTH_FREE = "width-free"  # needs no width rule: it does not change as the model gets wider (reason below)
FIELDS = {
    "dim": SETTING, "parametrization": SETTING, "mup_base_dim": SETTING, "mup_base_head_dim": SETTING,
    "head_dim": RULE,  # attention_scale
    "scale_embeddings": RULE,  # embedding_multiplier
    "tie_embeddings": RULE,  # output_multiplier applies tied or not (the docstring's "Tied embeddings")
    "init_std": RULE,  # hidden_init_std
    "norm_type": RULE,  # CosineNorm is refused (config.py), its coordinates shrink with width
    "num_layers": WIDTH_FREE,  # depth, not width
    "num_q_heads": WIDTH_FREE, "num_kv_heads": WIDTH_FREE,  # head counts: their width is head_dim's rule
    "max_seq_len": WIDTH_FREE, "tokenizer": WIDTH_FREE, "vocab_len": WIDTH_FREE,  # the embedding's fan-in
    "pos_enc_type": WIDTH_FREE, "theta": WIDTH_FREE,  # rotations and position tables keep coordinates O(1)
    "mlp_hidden_mult": WIDTH_FREE, "mlp_multiple_of": WIDTH_FREE,  # the MLP grows with dim: m holds for it
    "mlp_nonlinearity": WIDTH_FREE, "mlp_gated": WIDTH_FREE,  # elementwise
    "norm_affine": WIDTH_FREE, "norm_bias": WIDTH_FREE, "linear_bias": WIDTH_FREE,  # vectors keep init and lr
    "norm_eps": WIDTH_FREE, "post_sublayer_norm": WIDTH_FREE, "qk_norm": WIDTH_FREE,  # norms keep O(1) coordinates
    "logit_softcap": WIDTH_FREE,  # caps logits after the output multiplier
    "sliding_window": WIDTH_FREE,  # which keys, not how wide
    "dropout_embed": WIDTH_FREE, "dropout_attn": WIDTH_FREE, "dropout_resid": WIDTH_FREE,
}


def is_mup(cfg: ModelConfig) -> bool:
    return pick(PARAMETRIZATION_IS_MUP, "parametrization", cfg.parametrization, "PARAMETRIZATIONS", "modules/mup.py")


def width_mult(cfg: ModelConfig) -> float:
    """m = dim / mup_base_dim under μP; 1 under SP."""
    return cfg.dim / cfg.mup_base_dim if is_mup(cfg) else 1.0


def hidden_init_std(std: float, cfg: ModelConfig) -> float:
    """Init std of a hidden matrix. Table 3/8 'hidden weights': init variance ∝ 1/fan_in, i.e. σ * sqrt(1/m)."""
    return std * math.sqrt(1.0 / width_mult(cfg))


def output_multiplier(cfg: ModelConfig) -> float:
    """Multiplier on the logits. Table 8 'output weights': multiplier 1/fan_in with width-independent init and Adam
    lr; relative to the base width that is 1/m (exactly 1.0 under SP and at the base width)."""
    return 1.0 / width_mult(cfg)


def attention_scale(cfg: ModelConfig) -> float | None:
    """Scale of q.k. μP: 1/d_head instead of 1/sqrt(d_head) (Tensor Programs V: q and k become correlated
    during training, so their dot product grows like d_head, not sqrt(d_head)). Written as
    1/sqrt(d_head) * sqrt(d_base/d_head) = sqrt(d_base)/d_head, so it is exactly SP's scale at the base width.
    None (SP): scaled_dot_product_attention's default 1/sqrt(d_head)."""
    if not is_mup(cfg):
        return None
    base_head_dim = cfg.mup_base_head_dim or cfg.head_dim * cfg.mup_base_dim / cfg.dim
    return 1.0 / math.sqrt(cfg.head_dim) * math.sqrt(base_head_dim / cfg.head_dim)


def embedding_multiplier(cfg: ModelConfig) -> float:
    """scale_embeddings multiplier on the embeddings: sqrt(dim) under SP (Gemma). μP needs an input multiplier
    that does not grow with width (Table 8 'input weights': multiplier 1), so it is frozen at sqrt(mup_base_dim)."""
    return math.sqrt(cfg.mup_base_dim if is_mup(cfg) else cfg.dim)


def adam_hidden_scales(cfg: ModelConfig | None) -> tuple[float, float]:
    """(lr factor, weight-decay factor) for AdamW's hidden-matrix group. Table 3/8 'hidden weights': Adam lr ∝
    1/fan_in, i.e. η/m; decay λ*m keeps AdamW's per-step decay lr*λ at its base-width value (see the module
    docstring). Embeddings, the output head, norms and biases keep η (Table 8: input weights and biases, output
    weights with the multiplier). Muon's matrices keep muon_lr (orthogonalized updates are width-aware already)."""
    if cfg is None or not is_mup(cfg):
        return 1.0, 1.0
    m = width_mult(cfg)
    return 1.0 / m, m
