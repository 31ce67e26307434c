"""μP (modules/mup.py): SP unchanged, μP at the base width is SP bit for bit, the width rules at other widths,
coordinates that stay put across widths, refusals, and the two bench scripts' plumbing."""
from __future__ import annotations

import math

import pytest
import torch

from bench import coord_check, mup_lr_transfer  # bench/ is a namespace package: its scripts import as modules
from config import ModelConfig, TrainConfig
from modules import mup
from modules.model import Model
from training.optim import build_optimizers

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=16, vocab_len=64)
GPT2_LIKE = dict(pos_enc_type="learnable", norm_type="LayerNorm", norm_bias=True, linear_bias=True,
                 tie_embeddings=False, scale_embeddings=True, qk_norm=True, logit_softcap=30.0, mlp_gated=True)


def train_steps(model_cfg: ModelConfig, optimizer: str = "adamw", steps: int = 3, seed: int = 3):
    """(model, losses) after a few steps on one fixed random batch, from torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    model = Model(model_cfg)
    opts = build_optimizers(model, TrainConfig(optimizer=optimizer, lr_max=1e-2), torch.device("cpu"))
    x = torch.randint(0, model_cfg.vocab_len, (2, model_cfg.max_seq_len + 1))
    losses = []
    for _ in range(steps):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
        for opt in opts:
            opt.step()
            opt.zero_grad()
    return model, losses


def test_sp_is_the_code_before_mup():
    """The default ('sp') reproduces the numbers the code gave before μP existed (same seed, same machine
    type): parameter sums at init and losses over three AdamW steps. Regenerate only for a deliberate change."""
    torch.manual_seed(3)
    init = [p.double().sum().item() for p in Model(ModelConfig(**TINY)).parameters()][:4]
    assert init == pytest.approx([0.462390691642554, 32.0, -0.060710240503340174, 0.34097645549991284], rel=1e-9)
    _, losses = train_steps(ModelConfig(**TINY))
    assert losses == pytest.approx([4.157592296600342, 3.736259937286377, 3.645110607147217], rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("arch", [{}, GPT2_LIKE, dict(sliding_window=4, num_kv_heads=1, mlp_gated=True)],
                         ids=["llama", "gpt2_like", "window_mqa"])
def test_mup_at_the_base_width_is_sp_bit_for_bit(arch, optimizer):
    sp_model, sp_losses = train_steps(ModelConfig(**{**TINY, **arch}), optimizer)
    mup_model, mup_losses = train_steps(ModelConfig(**{**TINY, **arch}, parametrization="mup", mup_base_dim=32),
                                        optimizer)
    assert mup_losses == sp_losses
    for (name, a), b in zip(sp_model.named_parameters(), mup_model.parameters()):
        assert torch.equal(a, b), name


def test_mup_rules_at_four_times_the_base_width():
    cfg = ModelConfig(dim=128, num_layers=2, num_q_heads=4, num_kv_heads=4, max_seq_len=16, vocab_len=64,
                      parametrization="mup", mup_base_dim=32, init_std=0.02)
    model = Model(cfg)  # m = 4
    assert mup.width_mult(cfg) == 4 and model.logit_multiplier == 0.25
    assert model.lm_head.weight is model.token_embedding.weight  # tied: one matrix, multiplier on the logits
    qkv = model.layers[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02 / 2, rel=0.05)  # hidden: σ / sqrt(m)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)  # embedding: σ
    # attention: sqrt(base head_dim) / head_dim, base head_dim = 32 * 32 / 128 = 8
    assert model.layers[0].attn.scale == pytest.approx(math.sqrt(8) / 32)
    (adamw,) = build_optimizers(model, TrainConfig(lr_max=1e-2, weight_decay=0.1), torch.device("cpu"))
    hidden, rest = adamw.param_groups
    assert hidden["params"][0] is qkv and hidden["base_lr"] == pytest.approx(1e-2 / 4)
    assert hidden["weight_decay"] == pytest.approx(0.4)  # lr * decay per step as at the base width
    assert rest["base_lr"] == 1e-2 and rest["weight_decay"] == 0.0  # embeddings, norms: unchanged
    muon, _ = build_optimizers(model, TrainConfig(optimizer="muon", muon_lr=0.02), torch.device("cpu"))
    assert muon.param_groups[0]["base_lr"] == 0.02  # orthogonalized updates need no width factor
    # an explicit base head width, e.g. when the head count grows with width too
    wide = ModelConfig(dim=768, num_q_heads=12, num_kv_heads=4, parametrization="mup", mup_base_dim=128,
                       mup_base_head_dim=32)
    assert mup.attention_scale(wide) == pytest.approx(math.sqrt(32) / 64)
    assert mup.embedding_multiplier(wide) == math.sqrt(128)


def test_coordinates_stay_put_across_widths_under_mup_and_grow_under_sp():
    last = {}
    for param in ("sp", "mup"):
        rows = coord_check.coord_check(param, [64, 256], steps=3, lr=1e-2, mup_base_dim=64, layers=1, seq_len=16,
                                       batch=4)
        last[param] = {r["width"]: r for r in rows if r["step"] == 3}
    for key in ("hidden_rms", "logits_rms"):
        ratio = last["mup"][256][key] / last["mup"][64][key]
        assert 0.5 < ratio < 2, (key, ratio)
    assert last["sp"][256]["hidden_rms"] / last["sp"][64]["hidden_rms"] > 4  # SP: grows with width


@pytest.mark.parametrize("kwargs, message", [
    (dict(parametrization="mp"), "allowed values are 'sp', 'mup'"),
    (dict(parametrization="mup", norm_type="CosineNorm"), "needs 'RMSNorm' or 'LayerNorm'"),
    (dict(mup_base_dim=0), "mup_base_dim=0"),
    (dict(mup_base_head_dim=-1), "mup_base_head_dim=-1"),
])
def test_bad_mup_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("'", "'")):
        ModelConfig(**kwargs)


def test_coord_check_cli_prints_json_and_a_plot(tmp_path, capsys):
    png = tmp_path / "cc.png"
    assert coord_check.main(["--parametrization=sp,mup", "--widths=32,64", "--steps=1", "--data=random", "--layers=1",
                       "--seq_len=8", "--batch=2", f"--png={png}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * 2 * 2 and png.stat().st_size > 0
    assert '"parametrization": "sp", "width": 32, "step": 0' in lines[0] and '"logits_rms"' in lines[0]
    assert coord_check.main(["--parametrization=ntk"]) == 2


def test_lr_transfer_table_averages_seeds_and_counts_a_diverged_seed_as_a_loss():
    rows = [dict(parametrization="mup", width=64, lr=0.01, seed=s, val_loss=v, status="ok") for s, v in ((1, 3.0),
                                                                                                           (2, 3.2))]
    rows += [dict(parametrization="mup", width=64, lr=0.02, seed=1, val_loss=None, status="diverged"),
             dict(parametrization="mup", width=64, lr=0.02, seed=2, val_loss=2.0, status="ok")]
    table = mup_lr_transfer.summarize(rows)
    assert [(r["lr"], r["seeds"]) for r in table] == [(0.01, 2), (0.02, 2)]
    assert table[0]["val_loss"] == pytest.approx(3.1) and table[1]["val_loss"] == math.inf
    assert mup_lr_transfer.best_lrs(table)[("mup", 64)]["lr"] == 0.01
