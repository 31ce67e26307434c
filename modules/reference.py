"""The slow, obvious math behind each fast module, in float64: read these to see what the kernels compute.

Nothing here runs in training; tests/test_modules.py checks that every fast path (fused norms, SDPA, the
complex-number RoPE, the boolean mask) agrees with the version written out here. Adding a choice to
config.py (a norm, a nonlinearity) means adding its written-out form here too; a name without one is a
ValueError that says so, never a silent fall-through to another implementation.
"""
from __future__ import annotations

import math

import torch

from modules.choices import pick


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
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v. q (B, Hq, T, D); k, v (B, Hkv, T, D) shared by groups of
    Hq / Hkv query heads (GQA; MQA when Hkv = 1); allowed (B or 1, T, T)."""
    q, k, v = q.double(), k.double(), v.double()
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    group = Hq // Hkv
    k = torch.stack([k[:, h // group] for h in range(Hq)], dim=1)  # query head h uses kv head h // group
    v = torch.stack([v[:, h // group] for h in range(Hq)], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))  # -inf: zero weight after softmax
    return torch.softmax(scores, dim=-1) @ v


def self_attention(x: torch.Tensor, module, positions=None, theta: float = 10_000.0,
                   allowed: torch.Tensor | None = None) -> torch.Tensor:
    """A SelfAttention module's forward from its weights: project q, k, v; qk-norm; RoPE; attention; out.
    positions None: no RoPE. allowed None: plain causal."""
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
    y = attention(q, k, v, mask(T) if allowed is None else allowed)
    y = y.transpose(1, 2).reshape(B, T, Hq * D)
    return y @ module.out.weight.double().T + _double(module.out.bias, default=0)


def _double(t, default=None):
    return default if t is None else t.double()
