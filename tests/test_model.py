"""The whole Model: every architecture combination trains (gradients reach every parameter), attention is
causal and document-local, dropout follows train()/eval(), weight tying, init, softcap, FLOPs, compile."""
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

import config
from config import MLP_NONLINEARITIES, NORM_TYPES, POS_ENC_TYPES, ModelConfig
from machinery.run.weights import load_weights, save_weights
from modules.model import Model

VOCAB = 64
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, vocab_len=VOCAB, max_seq_len=16)
    return ModelConfig(**{**base, **kw})


def tokens(B=2, T=12, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_every_parameter_learns(model: Model, loss: torch.Tensor) -> None:
    assert torch.isfinite(loss), loss
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


# --- every combination trains -------------------------------------------------------------------------
COMBOS = list(itertools.product(POS_ENC_TYPES, NORM_TYPES, MLP_NONLINEARITIES, [False, True]))
HEADS = {"MHA": 4, "GQA": 2, "MQA": 1}


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("pos_enc_type,norm_type,nonlinearity,gated", COMBOS,
                         ids=["-".join(map(str, c)) for c in COMBOS])
def test_every_combination_trains(pos_enc_type, norm_type, nonlinearity, gated, heads):
    # biases, qk_norm, sandwich norms and an untied head switched on so that every kind of parameter exists
    cfg = tiny_cfg(num_layers=1, num_kv_heads=HEADS[heads], pos_enc_type=pos_enc_type, norm_type=norm_type,
                   mlp_nonlinearity=nonlinearity, mlp_gated=gated, linear_bias=True, norm_bias=True,
                   qk_norm=True, post_sublayer_norm=True, tie_embeddings=False)
    model = Model(cfg).train()
    x = tokens(2, 8)
    logits, loss = model(x, x.roll(-1, dims=1))
    assert logits.shape == (2, 8, VOCAB)
    assert loss.item() == pytest.approx(math.log(VOCAB), rel=0.2)  # near-uniform at init
    assert_every_parameter_learns(model, loss)


@pytest.mark.parametrize("pos_enc_type", POS_ENC_TYPES)
def test_defaults_train_with_two_layers(pos_enc_type):
    model = Model(tiny_cfg(pos_enc_type=pos_enc_type))
    x = tokens()
    assert_every_parameter_learns(model, model(x, x)[1])


# --- causality and document masking -------------------------------------------------------------------
ATTENTION_VARIANTS = {
    "MHA": dict(num_kv_heads=4), "GQA": dict(num_kv_heads=2), "MQA": dict(num_kv_heads=1),
    "sliding_window": dict(sliding_window=3), "window+MQA": dict(sliding_window=2, num_kv_heads=1),
    **{pos: dict(pos_enc_type=pos) for pos in POS_ENC_TYPES},
    "qk_norm+softcap": dict(qk_norm=True, logit_softcap=5.0),
}


@pytest.mark.parametrize("doc_masking", [False, True], ids=["causal", "doc_ids"])
@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_causal(variant, doc_masking):
    model = Model(tiny_cfg(**ATTENTION_VARIANTS[variant])).eval()
    x = tokens(2, 12)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 12]) if doc_masking else None
    with torch.no_grad():
        base, _ = model(x, doc_ids=doc_ids)
        for t in (0, 4, 7, 10):
            changed = x.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % VOCAB
            out, _ = model(changed, doc_ids=doc_ids)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=1e-6, rtol=0)
            assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-4  # the change is seen downstream


@pytest.mark.parametrize("variant", ["MHA", "GQA", "MQA", "sliding_window", "learnable", "Sinusoidal", "RoPE"])
def test_doc_masking_isolates_documents(variant):
    model = Model(tiny_cfg(**ATTENTION_VARIANTS[variant])).eval()
    x = tokens(2, 12)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 3 + [2] * 6])
    starts = [5, 6]  # where each row's last document begins
    with torch.no_grad():
        base, _ = model(x, doc_ids=doc_ids)
        changed = x.clone()
        for row, start in enumerate(starts):
            changed[row, :start] = torch.randint(0, VOCAB, (start,))
        out, _ = model(changed, doc_ids=doc_ids)
        plain, _ = model(changed)  # without doc_ids the earlier documents do leak in
    for row, start in enumerate(starts):
        torch.testing.assert_close(out[row, start:], base[row, start:], atol=1e-6, rtol=0)
        assert (plain[row, start:] - base[row, start:]).abs().max() > 1e-4


# --- dropout ------------------------------------------------------------------------------------------
DROPOUTS = {"all": dict(dropout_embed=0.5, dropout_attn=0.5, dropout_resid=0.5), "embed": dict(dropout_embed=0.5),
            "attn": dict(dropout_attn=0.5), "resid": dict(dropout_resid=0.5)}


@pytest.mark.parametrize("which", list(DROPOUTS))
def test_dropout_only_in_train_mode(which):
    model = Model(tiny_cfg(**DROPOUTS[which]))
    reference = Model(tiny_cfg())
    reference.load_state_dict(model.state_dict())
    reference.eval()
    x = tokens()
    with torch.no_grad():
        model.eval()
        a, b = model(x)[0], model(x)[0]
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        torch.testing.assert_close(a, reference(x)[0], atol=0, rtol=0)  # eval == no dropout at all
        model.train()
        c, d = model(x)[0], model(x)[0]
    assert (c - d).abs().max() > 1e-3
    assert (c - a).abs().max() > 1e-3


# --- weight tying -------------------------------------------------------------------------------------
def test_tied_weights_are_one_tensor():
    model = Model(tiny_cfg(tie_embeddings=True))
    assert model.lm_head.weight is model.token_embedding.weight
    assert model.lm_head.weight.data_ptr() == model.token_embedding.weight.data_ptr()
    assert sum(p is model.token_embedding.weight for p in model.parameters()) == 1  # counted once
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = tokens()
    model(x, x)[1].backward()
    before = model.token_embedding.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.token_embedding.weight)
    assert torch.equal(model.lm_head.weight, model.token_embedding.weight)
    assert model.lm_head.weight.data_ptr() == model.token_embedding.weight.data_ptr()


def test_untied_weights():
    model = Model(tiny_cfg(tie_embeddings=False))
    assert model.lm_head.weight.data_ptr() != model.token_embedding.weight.data_ptr()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = tokens()
    model(x, x)[1].backward()
    opt.step()
    assert not torch.equal(model.lm_head.weight, model.token_embedding.weight)
    tied = Model(tiny_cfg(tie_embeddings=True))
    assert model.get_num_params() - tied.get_num_params() == VOCAB * 32


# --- init, softcap, residual options ------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 4])
def test_init_scales_residual_projections(num_layers):
    cfg = tiny_cfg(dim=128, num_layers=num_layers, num_kv_heads=4, init_std=0.05)
    model = Model(cfg)
    residual_std = cfg.init_std / math.sqrt(2 * num_layers)
    for layer in model.layers:
        for w in (layer.attn.out.weight, layer.mlp.down.weight):
            assert w.std().item() == pytest.approx(residual_std, rel=0.05)
            assert w.mean().abs().item() < residual_std * 0.05
        for w in (layer.attn.qkv.weight, layer.mlp.up.weight):  # everything else: plain init_std
            assert w.std().item() == pytest.approx(cfg.init_std, rel=0.05)
        assert torch.equal(layer.attn_norm.weight, torch.ones(128))
    assert model.token_embedding.weight.std().item() == pytest.approx(cfg.init_std, rel=0.05)


def test_linear_biases_start_at_zero():
    model = Model(tiny_cfg(linear_bias=True))
    biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert len(biases) == 2 * 2 * 2  # qkv, out, up, down in each of 2 layers
    assert all(torch.equal(b, torch.zeros_like(b)) for b in biases)


def test_logit_softcap_bounds_logits():
    cap = 3.0
    capped = Model(tiny_cfg(logit_softcap=cap, init_std=1.0))
    free = Model(tiny_cfg(init_std=1.0))
    free.load_state_dict(capped.state_dict())
    x = tokens()
    with torch.no_grad():
        raw, out = free(x)[0], capped(x)[0]
    assert raw.abs().max() > 3 * cap  # without the cap, logits do go far past it
    assert out.abs().max() <= cap
    assert out.abs().max() > 0.9 * cap
    torch.testing.assert_close(out, cap * torch.tanh(raw / cap))


@pytest.mark.parametrize("option", ["scale_embeddings", "post_sublayer_norm"])
def test_residual_options_change_the_forward(option):
    off = Model(tiny_cfg())
    on = Model(tiny_cfg(**{option: True}))
    missing, unexpected = on.load_state_dict(off.state_dict(), strict=False)
    assert not unexpected and all("out_norm" in k for k in missing)  # only the sandwich norms are new
    x = tokens()
    with torch.no_grad():
        assert (on(x)[0] - off(x)[0]).abs().max() > 1e-3


def test_scale_embeddings_multiplies_embeddings():
    """With sqrt(dim) scaling, the model sees the embeddings of a model whose table is sqrt(dim) larger."""
    cfg = tiny_cfg(pos_enc_type="RoPE")
    scaled = Model(tiny_cfg(scale_embeddings=True))
    plain = Model(tiny_cfg(tie_embeddings=False))
    state = scaled.state_dict()
    state["lm_head.weight"] = state["token_embedding.weight"].clone()
    state["token_embedding.weight"] = state["token_embedding.weight"] * math.sqrt(cfg.dim)
    plain.load_state_dict(state)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(scaled(x)[0], plain(x)[0], atol=1e-5, rtol=1e-5)


# --- FLOPs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_flops_per_token_is_about_6n(tied):
    cfg = tiny_cfg(dim=64, tie_embeddings=tied, pos_enc_type="learnable")
    model = Model(cfg)
    # weights used in a matmul, once each: every Linear (the tied head included), no embedding lookups
    n = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops = model.flops_per_token(seq_len=1)
    assert flops > 0
    assert flops == pytest.approx(6 * n, rel=0.02)
    # attention adds cost with context, but a sliding window caps it
    assert model.flops_per_token(seq_len=16) > flops
    windowed = Model(tiny_cfg(dim=64, tie_embeddings=tied, pos_enc_type="learnable", sliding_window=2))
    assert windowed.flops_per_token(seq_len=16) < model.flops_per_token(seq_len=16)


# --- torch.compile and checkpoints --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch internals
def test_compiled_model_matches_eager():
    """One tiny forward + backward under torch.compile (inductor: needs a C compiler on CPU)."""
    torch._dynamo.reset()
    eager = Model(tiny_cfg(num_layers=1))
    model = Model(tiny_cfg(num_layers=1))
    model.load_state_dict(eager.state_dict())
    compiled = torch.compile(model)
    x = tokens(2, 8)
    logits, loss = compiled(x, x)
    loss.backward()
    ref_logits, ref_loss = eager(x, x)
    ref_loss.backward()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-4)
    for (name, p), (_, ref) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p.grad, ref.grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("variant", [dict(), dict(sliding_window=3), dict(doc_masking=True)])
def test_compiled_training_forward_has_no_graph_break(variant):
    """Graph capture of a training forward + backward (dynamo's eager backend: no code generation, seconds),
    activation checkpointing included: a graph break would hand every step back to Python mid-model (a layer's
    mask built inside a checkpoint once did: a side effect compile cannot replay)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    docs = variant.pop("doc_masking", False)
    model = Model(tiny_cfg(**variant))
    model.activation_checkpointing = True
    compiled = torch.compile(model, backend="eager", dynamic=False)
    x = tokens(2, 8)
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1]]) if docs else None
    _, loss = compiled(x, x, doc_ids=doc_ids)
    loss.backward()
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 1


def test_compiled_state_dict_loads_into_plain_model(tmp_path):
    model = Model(tiny_cfg())
    compiled = torch.compile(model)  # compiles lazily: wrapping alone is enough to prefix the keys
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    save_weights(compiled, tmp_path / "model.safetensors")
    plain = Model(tiny_cfg())
    load_weights(plain, tmp_path / "model.safetensors")
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    assert plain.lm_head.weight is plain.token_embedding.weight  # still tied after loading
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x)[0], model.eval()(x)[0], atol=0, rtol=0)


# --- renamed fields -----------------------------------------------------------------------------------
MODEL_RENAMES = {old: new for old, new in config.RENAMED_FIELDS.items() if new in config.MODEL_FIELDS}


def test_model_renames_are_listed():
    assert {"out_weight_share": "tie_embeddings", "second_resid_norm": "post_sublayer_norm",
            "scale_first_resid": "scale_embeddings", "eps": "norm_eps"}.items() <= MODEL_RENAMES.items()
    assert config.RENAMED_FIELDS["epsilon"] == "adamw_eps"


@pytest.mark.parametrize("run", ["gpt2_atto", "llama3_atto"])
def test_train_configs_with_old_field_names_still_load(run):
    """The shipped runs' train configs as saved before epsilon became adamw_eps load as today's."""
    saved = json.loads((ROOT / "tests" / "baselines" / "old_configs" / f"{run}_train_config.json").read_text())
    assert "epsilon" in saved, "these configs predate the rename"
    loaded = config.TrainConfig.from_dict(saved)
    assert loaded.adamw_eps == saved["epsilon"]
    today = config.TrainConfig.from_dict(json.loads((ROOT / "trained" / run / "train_config.json").read_text()))
    assert loaded.adamw_eps == today.adamw_eps and loaded.lr_max == today.lr_max


@pytest.mark.parametrize("run", ["gpt2_atto", "llama3_atto"])
def test_runs_with_old_field_names_still_load(run):
    """The shipped runs' configs as saved before the renames (tests/baselines/old_configs) load as today's, and
    today's weights go into the model they describe."""
    saved = json.loads((ROOT / "tests" / "baselines" / "old_configs" / f"{run}_model_config.json").read_text())
    assert set(MODEL_RENAMES) & set(saved), "these configs predate the renames"
    cfg = ModelConfig.from_dict(saved)
    assert cfg == ModelConfig.from_dict(json.loads((ROOT / "trained" / run / "model_config.json").read_text()))
    for old, new in MODEL_RENAMES.items():
        if old in saved:
            assert getattr(cfg, new) == saved[old]
    model = Model(cfg)
    load_weights(model, ROOT / "trained" / run / "model.safetensors")
    assert model.lm_head.weight is model.token_embedding.weight  # tie_embeddings came through
