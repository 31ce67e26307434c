"""modules/: each fast path against the slow, obvious float64 version in modules/reference.py (norms, MLP,
attention, mask, RoPE), the KV cache, loud failure for config names without an implementation, and the
logging switch."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

import config
from config import MLP_NONLINEARITIES, NORM_TYPES, POS_ENC_TYPES, ModelConfig
from modules import reference
from modules import attention as attention_module
from modules.attention import AttentionInputs, SelfAttention, attention_mask, choose_kernel
from modules.logging import LoggingModule, log_io
from modules.mlp import ACTIVATIONS, MLP
from modules.model import Model
from modules.norm import NORMS, Norm, build_norm
from modules.positional import (POSITION_ENCODINGS, RotaryEmbedding, SinusoidalEmbedding, apply_rope,
                                rope_tables)

VOCAB = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, vocab_len=VOCAB, max_seq_len=16)
    return ModelConfig(**{**base, **kw})


def randomize_(module: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Random values everywhere (norm weights and biases too), so nothing is trivially 1 or 0."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std).add_(1.0 if p.dim() == 1 else 0.0)
    return module


# --- Norm ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("affine,bias", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_norm_matches_reference(norm_type, affine, bias, eps):
    norm = build_norm(norm_type, 24, eps, affine=affine, bias=bias)
    randomize_(norm)
    x = torch.randn(3, 5, 24) * 3 + 0.5
    y = norm(x)
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), reference.norm(x, norm_type, norm),
                               atol=1e-5, rtol=1e-5)


def test_cosine_norm_gives_unit_norms():
    norm = build_norm("CosineNorm", 16, 1e-6, affine=False)
    x = torch.randn(4, 7, 16) * torch.rand(4, 7, 1) * 100
    torch.testing.assert_close(norm(x).norm(dim=-1), torch.ones(4, 7))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_norm_weights_are_registered_parameters(norm_type):
    norm = build_norm(norm_type, 8, 1e-6, affine=True, bias=True)
    names = dict(norm.named_parameters())
    assert {"weight", "bias"} <= set(names) and all(isinstance(p, torch.nn.Parameter) for p in names.values())
    assert set(norm.state_dict()) == set(names)
    norm.to(torch.float64)
    assert norm.weight.dtype == torch.float64 and norm.bias.dtype == torch.float64
    norm.to("meta")  # a device move (no GPU here): the weights must follow
    assert norm.weight.device.type == "meta" and norm.bias.device.type == "meta"


def test_every_norm_weight_is_in_model_parameters():
    cfg = tiny_cfg(norm_bias=True, qk_norm=True, post_sublayer_norm=True)
    model = Model(cfg)
    params = {id(p) for p in model.parameters()}
    norms = [m for m in model.modules() if isinstance(m, Norm)]
    assert len(norms) == cfg.num_layers * 6 + 1  # 4 residual norms + q/k norms per layer, final norm
    for m in norms:
        assert id(m.weight) in params
        assert m.bias is None or id(m.bias) in params
    # and an optimizer step changes them
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.randint(0, VOCAB, (2, 8))
    model(x, x)[1].backward()
    before = [m.weight.detach().clone() for m in norms]
    opt.step()
    assert all(not torch.equal(b, m.weight) for b, m in zip(before, norms))


# --- MLP ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("nonlinearity", MLP_NONLINEARITIES)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_matches_reference(nonlinearity, gated, bias):
    cfg = tiny_cfg(mlp_nonlinearity=nonlinearity, mlp_gated=gated, linear_bias=bias)
    mlp = randomize_(MLP(cfg))
    assert mlp.up.out_features == cfg.mlp_hidden_dim * (2 if gated else 1)
    x = torch.randn(2, 5, cfg.dim)
    torch.testing.assert_close(mlp(x).double(), reference.mlp(x, mlp, nonlinearity, gated), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("nonlinearity", MLP_NONLINEARITIES)
@pytest.mark.parametrize("gated", [False, True])
def test_mlp_is_nonlinear(nonlinearity, gated):
    mlp = randomize_(MLP(tiny_cfg(mlp_nonlinearity=nonlinearity, mlp_gated=gated)))
    a, b = torch.randn(4, 32), torch.randn(4, 32)
    zero = torch.zeros(4, 32)
    additive = mlp(a) + mlp(b) - mlp(zero)
    assert (mlp(a + b) - additive).abs().max() > 1e-2
    assert (mlp(-a) + mlp(a) - 2 * mlp(zero)).abs().max() > 1e-2  # not odd either


# --- attention ----------------------------------------------------------------------------------
HEADS = {"MHA": (4, 4), "GQA": (4, 2), "MQA": (4, 1)}


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("variant", ["plain", "window", "qk_norm", "rope", "rope+window+qk_norm+bias", "docs"])
def test_sdpa_matches_reference(heads, variant):
    q_heads, kv_heads = HEADS[heads]
    cfg = tiny_cfg(num_q_heads=q_heads, num_kv_heads=kv_heads, qk_norm="qk_norm" in variant,
                   sliding_window=3 if "window" in variant else None, linear_bias="bias" in variant)
    attn = randomize_(SelfAttention(cfg, layer_idx=0).double(), std=0.2)
    B, T = 2, 10
    x = torch.randn(B, T, cfg.dim, dtype=torch.float64)
    slots = torch.arange(T)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]]) \
        if variant == "docs" else None
    rope, positions = None, None
    if "rope" in variant:
        positions = slots
        rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.theta)(positions).to(torch.complex128)
    # the module picks its own mask from what it is given (window from the config, document ids)
    y = attn(x, AttentionInputs(slots, rope, doc_ids))
    allowed = reference.mask(T, cfg.sliding_window, doc_ids)
    expected = reference.self_attention(x, attn, positions, cfg.theta, allowed)
    tol = 1e-6 if rope is not None else 1e-10  # the RoPE tables are float32 by design
    torch.testing.assert_close(y, expected, atol=tol, rtol=tol)


# --- FlexAttention: the masked path on GPUs, held to the same reference (forward only: no CPU backward) --------
FLEX_UNFUSED = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # true on CPUs
FLEX_MASKS = {"window": dict(sliding_window=3), "docs": dict(docs=True),
              "window+docs": dict(sliding_window=4, docs=True),
              "rope+window+qk_norm+bias": dict(sliding_window=3, rope=True, qk_norm=True, linear_bias=True)}


@FLEX_UNFUSED
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("variant", list(FLEX_MASKS))
@torch.no_grad()
def test_flex_attention_matches_reference(heads, variant, monkeypatch):
    spec = dict(FLEX_MASKS[variant])
    docs, use_rope = spec.pop("docs", False), spec.pop("rope", False)
    q_heads, kv_heads = HEADS[heads]
    cfg = tiny_cfg(num_q_heads=q_heads, num_kv_heads=kv_heads, **spec)
    attn = randomize_(SelfAttention(cfg, layer_idx=0).double(), std=0.2)
    B, T = 2, 10
    x = torch.randn(B, T, cfg.dim, dtype=torch.float64)
    slots = torch.arange(T)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2, 2], [0, 1, 1, 1, 1, 1, 2, 2, 2, 2]]) if docs else None
    rope = RotaryEmbedding(cfg.head_dim, cfg.max_seq_len, cfg.theta)(slots).to(torch.complex128) if use_rope else None
    calls = []
    real_flex = attention_module.flex_attention
    monkeypatch.setattr(attention_module, "flex_attention", lambda *a, **k: calls.append(1) or real_flex(*a, **k))
    flex = attn(x, AttentionInputs(slots, rope, doc_ids, kernel="flex"))
    sdpa = attn(x, AttentionInputs(slots, rope, doc_ids, kernel="sdpa"))
    assert calls == [1], "the flex path did not run"
    expected = reference.self_attention(x, attn, slots if use_rope else None, cfg.theta,
                                        reference.mask(T, cfg.sliding_window, doc_ids))
    tol = 1e-6 if use_rope else 1e-10  # the RoPE tables are float32 by design
    torch.testing.assert_close(flex, expected, atol=tol, rtol=tol)
    torch.testing.assert_close(flex, sdpa, atol=1e-10, rtol=1e-10)


@FLEX_UNFUSED
@torch.no_grad()
def test_model_with_flex_attention_gives_the_sdpa_logits_and_generates_with_a_cache():
    model = randomize_(Model(tiny_cfg(sliding_window=5)), std=0.1).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 11 + [1] * 5])
    sdpa, _ = model(ids, doc_ids=doc_ids)
    model.attention_kernel = "flex"
    flex, _ = model(ids, doc_ids=doc_ids)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)
    cache = model.new_cache(2)  # with a KV cache attention keeps SDPA's mask, whatever the kernel asked
    model(ids[:, :8], cache=cache)
    step, _ = model(ids[:, 8:9], cache=cache)
    torch.testing.assert_close(step[:, 0], model(ids[:, :9])[0][:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("requested, device, masked, dropout, head_dim, chosen", [
    ("auto", "cpu", True, 0.0, 64, "sdpa"),     # no FlexAttention backward on CPUs
    ("auto", "cuda", True, 0.0, 64, "flex"),    # documents / windows on a GPU: the block-sparse kernel
    ("auto", "cuda", False, 0.0, 64, "sdpa"),   # plain causal: SDPA's flash kernel already
    ("auto", "cuda", True, 0.1, 64, "sdpa"),    # FlexAttention has no dropout
    ("auto", "cuda", True, 0.0, 8, "sdpa"),     # its Triton kernels need head_dim >= 16
    ("sdpa", "cuda", True, 0.0, 64, "sdpa"),
    ("flex", "cpu", True, 0.0, 8, "flex"),
    ("flex", "cuda", False, 0.0, 64, "sdpa"),   # nothing to mask
])
def test_kernel_choice(requested, device, masked, dropout, head_dim, chosen):
    assert choose_kernel(requested, torch.device(device), masked, dropout, head_dim) == chosen


@pytest.mark.parametrize("requested, dropout, head_dim, message", [
    ("flex", 0.1, 64, "no attention dropout"), ("flex", 0.0, 8, "head_dim >= 16"), ("fast", 0.0, 64, "unknown")])
def test_kernel_choice_refusals(requested, dropout, head_dim, message):
    with pytest.raises(ValueError, match=message):
        choose_kernel(requested, torch.device("cuda"), True, dropout, head_dim)


def test_gqa_equals_mha_with_repeated_kv_heads():
    for window in (None, 4):
        gqa = randomize_(SelfAttention(tiny_cfg(num_q_heads=4, num_kv_heads=2, sliding_window=window), 0), std=0.2)
        mha = SelfAttention(tiny_cfg(num_q_heads=4, num_kv_heads=4, sliding_window=window), 0)
        D, dim = gqa.head_dim, 32
        wq, wk, wv = gqa.qkv.weight.split(gqa.split_sizes)
        repeat = lambda w: w.view(2, D, dim).repeat_interleave(2, dim=0).reshape(4 * D, dim)  # noqa: E731
        with torch.no_grad():
            mha.qkv.weight.copy_(torch.cat([wq, repeat(wk), repeat(wv)]))
            mha.out.weight.copy_(gqa.out.weight)
        x = torch.randn(2, 9, dim)
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_enable_gqa_equals_repeat_interleave(kv_heads):
    q = torch.randn(2, 4, 7, 8)
    k, v = torch.randn(2, kv_heads, 7, 8), torch.randn(2, kv_heads, 7, 8)
    group = 4 // kv_heads
    mask = attention_mask(torch.arange(7), torch.arange(7), 3)
    for kw in (dict(is_causal=True), dict(attn_mask=mask)):
        fast = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        slow = F.scaled_dot_product_attention(q, k.repeat_interleave(group, dim=1),
                                              v.repeat_interleave(group, dim=1), **kw)
        torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-5)


# --- attention_mask truth tables ----------------------------------------------------------------------
def grid(rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in row] for row in rows.split()])


def test_mask_causal():
    m = attention_mask(torch.arange(4), torch.arange(4))
    assert m.shape == (1, 1, 4, 4)
    assert torch.equal(m[0, 0], grid("1000 1100 1110 1111"))


def test_mask_sliding_window():
    m = attention_mask(torch.arange(5), torch.arange(5), sliding_window=2)
    assert torch.equal(m[0, 0], grid("10000 11000 01100 00110 00011"))
    m = attention_mask(torch.arange(5), torch.arange(5), sliding_window=1)
    assert torch.equal(m[0, 0], torch.eye(5, dtype=torch.bool))


def test_mask_doc_ids():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    m = attention_mask(torch.arange(5), torch.arange(5), doc_ids=doc_ids)
    assert m.shape == (2, 1, 5, 5)
    assert torch.equal(m[0, 0], grid("10000 11000 00100 00110 00111"))
    assert torch.equal(m[1, 0], grid("10000 01000 01100 00010 00011"))
    m = attention_mask(torch.arange(5), torch.arange(5), sliding_window=2, doc_ids=doc_ids)
    assert torch.equal(m[0, 0], grid("10000 11000 00100 00110 00011"))


def test_mask_key_valid_with_self_attend_fallback():
    key_valid = torch.tensor([[False, False, True, True], [True, True, True, True]])  # row 0 left-padded
    m = attention_mask(torch.arange(4), torch.arange(4), key_valid=key_valid)
    # padding queries 0 and 1 see no valid key: they fall back to themselves (no NaN softmax)
    assert torch.equal(m[0, 0], grid("1000 0100 0010 0011"))
    assert torch.equal(m[1, 0], grid("1000 1100 1110 1111"))
    assert m.any(-1).all()


def test_mask_decode_step_against_cache():
    # one new query at slot 4 over 5 cached keys
    m = attention_mask(torch.tensor([4]), torch.arange(5))
    assert torch.equal(m[0, 0], grid("11111"))
    m = attention_mask(torch.tensor([4]), torch.arange(5), sliding_window=2)
    assert torch.equal(m[0, 0], grid("00011"))
    m = attention_mask(torch.tensor([4]), torch.arange(5), key_valid=torch.tensor([[False, True, True, True, True]]))
    assert torch.equal(m[0, 0], grid("01111"))


@pytest.mark.parametrize("seed", range(3))
def test_mask_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    T = 9
    doc_ids = torch.randint(0, 3, (2, T), generator=g).sort(dim=1).values
    key_valid = torch.rand(2, T, generator=g) > 0.3
    for window in (None, 1, 3):
        for docs in (None, doc_ids):
            for valid in (None, key_valid):
                m = attention_mask(torch.arange(T), torch.arange(T), window, docs, valid)
                expected = reference.mask(T, window, docs, valid)
                assert torch.equal(m[:, 0].expand_as(expected), expected)


# --- RoPE ---------------------------------------------------------------------------------------------
def rotate(x: torch.Tensor, pos: int, table) -> torch.Tensor:
    cos, sin = table
    return apply_rope(x, torch.complex(cos[pos:pos + 1], sin[pos:pos + 1]))


def test_rope_matches_reference():
    cos, sin = rope_tables(16, 32, 10_000.0)
    x = torch.randn(2, 3, 32, 16, dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, torch.complex(cos.double(), sin.double())),
                               reference.rope(x, torch.arange(32), 10_000.0), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("theta", [10_000.0, 500_000.0, 100.0])
def test_rope_scores_depend_only_on_distance(theta):
    table = tuple(t.double() for t in rope_tables(16, 64, theta))
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m, n):
        return (rotate(q, m, table) * rotate(k, n, table)).sum().item()

    for m, n in [(5, 2), (2, 5), (7, 7), (10, 0)]:
        reference = score(m, n)
        for shift in (1, 3, 17, 40):
            assert score(m + shift, n + shift) == pytest.approx(reference, abs=1e-5)  # float32 tables
    # ...and it does depend on the distance
    assert abs(score(5, 2) - score(5, 4)) > 1e-2


def test_rope_preserves_norms():
    cos, sin = rope_tables(32, 50, 10_000.0)
    x = torch.randn(3, 4, 50, 32)
    torch.testing.assert_close(apply_rope(x, torch.complex(cos, sin)).norm(dim=-1), x.norm(dim=-1))


def test_rope_batched_tables():
    rope = RotaryEmbedding(16, 32, 10_000.0)
    x = torch.randn(3, 2, 6, 16)
    shared = torch.arange(4, 10)
    rotation = rope(shared)  # (T, D/2)
    rotation_b = rope(shared.expand(3, 6))  # (B, T, D/2), every row the same positions
    assert rotation.shape == (6, 8) and rotation_b.shape == (3, 6, 8) and rotation.is_complex()
    torch.testing.assert_close(apply_rope(x, rotation_b), apply_rope(x, rotation), atol=0, rtol=0)
    # rows with different positions: row b rotated exactly as it would be alone
    rows = torch.stack([torch.arange(0, 6), torch.arange(3, 9), torch.tensor([0, 0, 0, 1, 2, 3])])
    out = apply_rope(x, rope(rows))
    for b in range(3):
        torch.testing.assert_close(out[b:b + 1], apply_rope(x[b:b + 1], rope(rows[b])))


def test_sinusoidal_table():
    table = SinusoidalEmbedding(8, 10).table
    pos, i = 3, 2  # dims (2i, 2i+1) = sin, cos of pos / 10000^(2i/d)
    angle = pos / 10_000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


# --- KV cache -----------------------------------------------------------------------------------------
CACHE_VARIANTS = {
    **{pos: dict(pos_enc_type=pos) for pos in POS_ENC_TYPES},
    "GQA": dict(num_kv_heads=2), "MQA": dict(num_kv_heads=1), "MHA": dict(num_kv_heads=4),
    "sliding_window": dict(sliding_window=3),
    "window+qk_norm+learnable": dict(sliding_window=4, qk_norm=True, pos_enc_type="learnable"),
}


@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
def test_kv_cache_decode_matches_full_forward(variant):
    model = Model(tiny_cfg(**CACHE_VARIANTS[variant])).eval()
    ids = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        full, _ = model(ids)
        cache = model.new_cache(batch_size=2)
        prefill, _ = model(ids[:, :5], cache=cache)
        steps = [prefill]
        for t in range(5, 12):
            step, _ = model(ids[:, t:t + 1], cache=cache)
            steps.append(step)
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_last_only_prefill():
    model = Model(tiny_cfg()).eval()
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        full, _ = model(ids)
        last, _ = model(ids, cache=model.new_cache(1), last_only=True)
    assert last.shape == (1, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("pos_enc_type", ["RoPE", "learnable"])
def test_kv_cache_left_padded_batch(pos_enc_type):
    """A short prompt left-padded in a batch decodes exactly as it does alone."""
    model = Model(tiny_cfg(pos_enc_type=pos_enc_type)).eval()
    long, short = torch.randint(0, VOCAB, (1, 6)), torch.randint(0, VOCAB, (1, 4))
    nxt = torch.randint(0, VOCAB, (2, 1))
    ids = torch.cat([long, torch.cat([torch.zeros(1, 2, dtype=torch.long), short], dim=1)])
    positions = torch.stack([torch.arange(6), torch.tensor([0, 0, 0, 1, 2, 3])])
    with torch.no_grad():
        cache = model.new_cache(2)
        cache.key_valid[1, :2] = False
        batch_prefill, _ = model(ids, positions=positions, cache=cache)
        batch_step, _ = model(nxt, positions=torch.tensor([[6], [4]]), cache=cache)
        for row, prompt, pad in ((0, long, 0), (1, short, 2)):
            alone, _ = model(torch.cat([prompt, nxt[row:row + 1]], dim=1))
            assert torch.isfinite(batch_prefill).all()
            torch.testing.assert_close(batch_prefill[row, pad:], alone[0, :-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch_step[row, 0], alone[0, -1], atol=1e-5, rtol=0)


def test_kv_cache_overflow_raises():
    model = Model(tiny_cfg()).eval()
    with torch.no_grad():
        cache = model.new_cache(1, max_positions=6)
        model(torch.randint(0, VOCAB, (1, 5)), cache=cache)
        with pytest.raises(ValueError, match="KV cache holds 6"):
            model(torch.randint(0, VOCAB, (1, 2)), cache=cache)
        cache = model.new_cache(1)  # as long as max_seq_len: the model refuses the 17th token
        model(torch.randint(0, VOCAB, (1, 16)), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len=16"):
            model(torch.randint(0, VOCAB, (1, 1)), cache=cache)


# --- a layer's own variant: layers know their index -------------------------------------------------
def test_per_layer_sliding_window_decodes_like_full_forward():
    """A window on layer 0 only (a one-line edit in SelfAttention.__init__, done here by hand): the KV-cached
    decode still equals the full forward, and each layer gets the mask of its own window."""
    model = Model(tiny_cfg(num_layers=2)).eval()
    assert [layer.attn.layer_idx for layer in model.layers] == [0, 1]
    model.layers[0].attn.sliding_window = 2
    ids = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        full, _ = model(ids)
        cache = model.new_cache(2)
        steps = [model(ids[:, :4], cache=cache)[0]] + [model(ids[:, t:t + 1], cache=cache)[0] for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    assert model.flops_per_token(16) < Model(tiny_cfg(num_layers=2)).flops_per_token(16)  # counted per layer
    # the masks each layer asks for: plain causal (no mask) for no window, a boolean mask for a window of 2
    inputs = AttentionInputs(torch.arange(6))
    assert inputs.mask(None) == (None, True)
    windowed, is_causal = inputs.mask(2)
    assert not is_causal and torch.equal(windowed[0, 0], reference.mask(6, 2)[0])
    assert inputs.mask(2)[0] is windowed  # built once per forward and window


# --- a name in config.py without code behind it fails loudly -------------------------------------------
def model_choice_lists() -> dict[str, str]:
    """ModelConfig field -> the config.py tuple its value must come from (found by the field's default)."""
    tuples = {name: value for name, value in vars(config).items()
              if name.isupper() and isinstance(value, tuple) and all(isinstance(v, str) for v in value)}
    found = {}
    for field in config.fields(ModelConfig):
        for name, options in tuples.items():
            if isinstance(field.default, str) and field.default in options:
                found[field.name] = name
    return found


CHOICES = model_choice_lists()
IMPLEMENTATIONS = {"norm_type": (NORMS, reference.NORMS), "mlp_nonlinearity": (ACTIVATIONS, reference.ACTIVATIONS),
                   "pos_enc_type": (POSITION_ENCODINGS, reference.POSITIONS)}


def test_every_model_choice_list_is_found():
    assert {"norm_type": "NORM_TYPES", "pos_enc_type": "POS_ENC_TYPES",
            "mlp_nonlinearity": "MLP_NONLINEARITIES"}.items() <= CHOICES.items()


@pytest.mark.parametrize("field", list(CHOICES))
def test_name_without_implementation_raises(field, monkeypatch):
    listed_in = CHOICES[field]
    monkeypatch.setattr(config, listed_in, getattr(config, listed_in) + ("Brand_new",))
    cfg = tiny_cfg(**{field: "Brand_new"})  # config.py accepts it now...
    with pytest.raises(ValueError, match=rf"{field}='Brand_new' is listed in config\.{listed_in} but modules/"):
        Model(cfg)  # ...but building the model names it


@pytest.mark.parametrize("field", list(IMPLEMENTATIONS))
def test_implementations_and_references_cover_exactly_the_config_lists(field):
    allowed = set(getattr(config, CHOICES[field]))
    for table in IMPLEMENTATIONS[field]:
        if table is not None:
            assert set(table) == allowed


def test_references_and_builders_raise_on_unknown_names():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="norm_type='Brand_new' is unknown: modules/norm.py implements 'RMSNorm'"):
        build_norm("Brand_new", 8, 1e-6)
    with pytest.raises(ValueError, match=r"norm_type='Brand_new' is unknown: modules/reference.py \(NORMS\)"):
        reference.norm(x, "Brand_new", build_norm("RMSNorm", 8, 1e-6))
    with pytest.raises(ValueError, match="mlp_nonlinearity='Brand_new' is unknown"):
        reference.activation("Brand_new")


# --- logging ------------------------------------------------------------------------------------------
def test_logging_prints_modules_and_shapes(capsys):
    model = Model(tiny_cfg(num_layers=1)).enable_logging()
    model(torch.randint(0, VOCAB, (2, 8)))
    out = capsys.readouterr().out
    for name in ("Model.forward", "Layer.forward", "SelfAttention.forward", "SelfAttention.split_heads",
                 "SelfAttention.attend", "MLP.forward", "RMSNorm.forward", "RotaryEmbedding.forward"):
        assert f"> {name}" in out and f"< {name} out:" in out, name
    assert "in  input_ids: Tensor(2, 8) int64" in out                   # arguments by name
    assert "in  x: Tensor(2, 8, 32) float32" in out                     # the residual stream
    assert f"< Model.forward out: (Tensor(2, 8, {VOCAB}) float32" in out  # logits
    # inside attention: q, k, v per head (4 query heads, 2 kv heads of 8), the mask choice
    for line in ("in  q: Tensor(2, 4, 8, 8)", "in  k: Tensor(2, 2, 8, 8)", "in  v: Tensor(2, 2, 8, 8)",
                 "in  mask: None", "in  is_causal: True", "in  inputs: AttentionInputs(query_slots=Tensor(8,)"):
        assert line in out, line
    assert "\n  > Layer.forward" in out  # nested calls are indented
    model.enable_logging(False)
    model(torch.randint(0, VOCAB, (2, 8)))
    assert capsys.readouterr().out == ""


def test_logging_shows_mask_and_cache(capsys):
    model = Model(tiny_cfg(num_layers=1, sliding_window=3)).eval()
    cache = model.new_cache(2)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 5)), cache=cache)
        model.enable_logging()
        model(torch.randint(0, VOCAB, (2, 1)), cache=cache)
    out = capsys.readouterr().out
    assert "in  cache: KVCache(" in out and "length=5" in out
    assert "in  k: Tensor(2, 2, 6, 8)" in out  # the new key after the five cached ones
    assert "in  mask: Tensor(2, 1, 1, 6) bool cpu 6/12 True" in out  # a window of 3 over 6 keys, 2 rows
    assert "in  is_causal: False" in out


def test_logging_off_by_default_prints_nothing(capsys):
    model = Model(tiny_cfg())
    x = torch.randint(0, VOCAB, (2, 8))
    model(x, x)[1].backward()
    assert capsys.readouterr().out == ""


def test_logging_disabled_overhead(capsys):
    """Disabled, @log_io costs one attribute check per call: the logged calls of a small model's forward +
    backward, times the measured cost of one disabled wrapper, must stay under 5% of that step. (Timing the
    step with and without wrappers instead drowns a ~0.3% effect in a shared machine's noise.)"""
    model = Model(tiny_cfg())
    x = torch.randint(0, VOCAB, (2, 16))
    model.enable_logging()
    model(x, x)
    model.enable_logging(False)
    calls = sum(line.lstrip().startswith("> ") for line in capsys.readouterr().out.splitlines())
    assert calls >= 2 * 6  # per layer at least: Layer, two norms, attention (split_heads, attend), MLP

    class Probe(LoggingModule):
        @log_io
        def step(self, value):
            return value

    probe, bare = Probe(), Probe.step.__wrapped__

    def best_time(fn, repeats=7) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            fn()
            best = min(best, time.thread_time() - t0)
        return best

    n = 20_000
    wrapped = best_time(lambda: [probe.step(1) for _ in range(n)])
    unwrapped = best_time(lambda: [bare(probe, 1) for _ in range(n)])
    per_call = max(wrapped - unwrapped, 0.0) / n

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x, x)[1].backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step = best_time(train_step, repeats=20)
    finally:
        torch.set_num_threads(threads)
    overhead = calls * per_call / step
    assert overhead < 0.05, f"disabled logging costs {overhead:.1%} ({calls} calls x {per_call * 1e9:.0f} ns)"
