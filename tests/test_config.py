"""config.py: every invalid field fails loudly and by name, presets build, and parameter counts match a
formula written here from the config fields alone."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config import MLP_NONLINEARITIES, PRESETS, ModelConfig, TrainConfig
from machinery.cli import build_configs
from modules import reference
from modules.mlp import activation
from modules.model import Model

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_names(err: pytest.ExceptionInfo, name: str, value) -> None:
    msg = str(err.value)
    assert f"{name}=" in msg, msg
    assert repr(value) in msg, msg


# --- single-field validation ------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
MODEL_BAD = [
    ("dim", 0), ("dim", -8), ("dim", 64.0), ("dim", "64"), ("dim", True), ("dim", None),
    ("num_layers", 0), ("num_layers", 1.5),
    ("num_q_heads", 0), ("num_kv_heads", 0), ("num_kv_heads", "2"),
    ("head_dim", 0), ("head_dim", 16.0),
    ("max_seq_len", 0), ("max_seq_len", -1),
    ("mlp_multiple_of", 0),
    ("vocab_len", 1), ("vocab_len", 0), ("vocab_len", 1024.0),
    ("sliding_window", 0), ("sliding_window", False),
    ("tokenizer", ""), ("tokenizer", 5), ("tokenizer", None),
    ("pos_enc_type", "rope"), ("pos_enc_type", "ALiBi"), ("pos_enc_type", None),
    ("mlp_nonlinearity", "gelu"), ("mlp_nonlinearity", "Tanh"),
    ("norm_type", "BatchNorm"), ("norm_type", "rmsnorm"),
    ("theta", 0), ("theta", -1.0), ("theta", INF), ("theta", NAN), ("theta", "1e4"),
    ("mlp_hidden_mult", 0), ("mlp_hidden_mult", -4.0), ("mlp_hidden_mult", 1e-9), ("mlp_hidden_mult", 1e9),
    ("mlp_multiple_of", 10**8),
    ("norm_eps", 0), ("norm_eps", 2.0), ("norm_eps", -1e-6),
    ("init_std", 0), ("init_std", -0.02), ("init_std", True),
    ("logit_softcap", 0), ("logit_softcap", -30.0), ("logit_softcap", INF),
    ("dropout_embed", -0.1), ("dropout_embed", 1.0),
    ("dropout_attn", 1.5), ("dropout_resid", "0.1"),
    ("mlp_gated", 1), ("mlp_gated", "True"), ("norm_affine", None), ("norm_bias", 0),
    ("post_sublayer_norm", "no"), ("scale_embeddings", 1.0), ("linear_bias", None),
    ("tie_embeddings", "yes"), ("qk_norm", 0),
]


@pytest.mark.parametrize("name,value", MODEL_BAD, ids=[f"{n}={v!r}" for n, v in MODEL_BAD])
def test_model_config_rejects_bad_field(name, value):
    with pytest.raises(ValueError) as err:
        ModelConfig(**{name: value})
    assert "ModelConfig" in str(err.value)
    assert_names(err, name, value)


TRAIN_BAD = [
    ("model_name", ""), ("model_name", "a/b"), ("model_name", ".hidden"), ("model_name", 5),
    ("model_name", "~root"), ("model_name", "a\\b"), ("model_name", "x" * 101), ("model_name", "-x"),
    ("model_name", "a b"), ("seed", 2**64), ("cache_dir", ""), ("cache_dir", " "), ("text_field", ""),
    ("data_subset", ""), ("doc_separator", ""), ("num_restarts", 2000),
    ("dataset", ""), ("dataset", None),
    ("device", "gpu"), ("dtype", "float16"), ("sampling", "shuffle"), ("anneal_type", "exp"),
    ("optimizer", "sgd"), ("parallel", "tp"),
    ("micro_batch_size", 0), ("micro_batch_size", 8.0), ("grad_accum_steps", 0), ("max_iters", -5),
    ("log_interval", 0), ("eval_interval", 0), ("eval_batches", 0), ("checkpoint_interval", "500"),
    ("seed", -1), ("seed", 1.5),
    ("warmup_iters", -1), ("final_flat_iters", -1), ("num_restarts", -1), ("num_restarts", True),
    ("compile", "yes"), ("streaming", 1), ("doc_masking", None), ("activation_checkpointing", 0),
    ("val_fraction", 0), ("val_fraction", 0.6),
    ("beta1", 1.0), ("beta1", -0.1), ("beta2", 1.0), ("beta2", NAN),
    ("adamw_eps", 0), ("weight_decay", -0.1), ("grad_clip", -1.0), ("grad_clip", INF),
    ("muon_lr", 0), ("lr_init", -1e-5), ("lr_max", 0), ("lr_max", "3e-4"), ("lr_min", -1.0),
    ("wsd_decay_frac", 0), ("wsd_decay_frac", 1.5), ("T_mult", 0.5),
]


@pytest.mark.parametrize("name,value", TRAIN_BAD, ids=[f"{n}={v!r}" for n, v in TRAIN_BAD])
def test_train_config_rejects_bad_field(name, value):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{name: value})
    assert "TrainConfig" in str(err.value)
    assert_names(err, name, value)


def test_defaults_and_boundaries_are_valid():
    ModelConfig()
    TrainConfig()
    ModelConfig(dropout_embed=0.0, dropout_attn=0.999, norm_eps=1.0, sliding_window=1, logit_softcap=None)
    TrainConfig(val_fraction=0.5, beta1=0.0, warmup_iters=0, lr_init=0.0, lr_min=0.0, wsd_decay_frac=1.0,
                T_mult=1.0, grad_clip=0.0, weight_decay=0.0)


def test_extremes_that_still_work_are_accepted():
    TrainConfig(seed=2**64 - 1, model_name="x" * 100)
    torch.manual_seed(2**64 - 1)  # the bound is torch's
    ModelConfig(dim=64, mlp_multiple_of=256)  # 4 * 64 = 256: rounding to the width itself is fine


def test_restart_cycles_must_last_a_step_and_never_overflow():
    from training.schedule import lr_at
    with pytest.raises(ValueError) as err:
        TrainConfig(max_iters=1000, warmup_iters=0, num_restarts=2, T_mult=1e300)
    assert_names(err, "T_mult", 1e300)
    with pytest.raises(ValueError) as err:
        TrainConfig(max_iters=1000, warmup_iters=0, num_restarts=10, T_mult=2.0)  # first cycle: 1000/2047 steps
    assert_names(err, "T_mult", 2.0)
    for cfg in (TrainConfig(max_iters=1000, warmup_iters=0, num_restarts=8, T_mult=2.0),
                TrainConfig(max_iters=100, warmup_iters=0, num_restarts=99, T_mult=1.0)):
        assert all(math.isfinite(lr_at(step, cfg)) for step in range(cfg.max_iters))


# --- cross-field rules ------------------------------------------------------------------------------
def test_dim_not_divisible_by_heads():
    with pytest.raises(ValueError) as err:
        ModelConfig(dim=100, num_q_heads=3, num_kv_heads=1)
    assert_names(err, "num_q_heads", 3)
    assert "dim=100" in str(err.value)
    # an explicit head_dim lifts the rule
    assert ModelConfig(dim=100, num_q_heads=3, num_kv_heads=1, head_dim=32).head_dim == 32


def test_head_dim_is_derived():
    assert ModelConfig(dim=96, num_q_heads=6, num_kv_heads=2).head_dim == 16


@pytest.mark.parametrize("q,kv", [(4, 3), (6, 4), (8, 3), (2, 4)])
def test_q_heads_not_divisible_by_kv_heads(q, kv):
    with pytest.raises(ValueError) as err:
        ModelConfig(dim=q * 8, num_q_heads=q, num_kv_heads=kv)
    assert_names(err, "num_kv_heads", kv)
    assert f"num_q_heads={q}" in str(err.value)


@pytest.mark.parametrize("q,kv", [(4, 4), (4, 2), (4, 1), (6, 3)])
def test_valid_head_layouts(q, kv):
    ModelConfig(dim=q * 8, num_q_heads=q, num_kv_heads=kv)


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError) as err:
        ModelConfig(dim=12, num_q_heads=4, num_kv_heads=4, pos_enc_type="RoPE")
    assert_names(err, "head_dim", 3)
    with pytest.raises(ValueError) as err:
        ModelConfig(dim=64, num_q_heads=4, num_kv_heads=4, head_dim=15)
    assert_names(err, "head_dim", 15)
    ModelConfig(dim=12, num_q_heads=4, num_kv_heads=4, pos_enc_type="learnable")  # fine without RoPE


def test_sinusoidal_needs_even_dim():
    with pytest.raises(ValueError) as err:
        ModelConfig(dim=15, num_q_heads=3, num_kv_heads=3, pos_enc_type="Sinusoidal")
    assert_names(err, "dim", 15)


def test_norm_bias_needs_affine():
    with pytest.raises(ValueError) as err:
        ModelConfig(norm_bias=True, norm_affine=False)
    assert_names(err, "norm_bias", True)
    ModelConfig(norm_bias=True, norm_affine=True)
    ModelConfig(norm_bias=False, norm_affine=False)


def test_lr_min_above_lr_max():
    with pytest.raises(ValueError) as err:
        TrainConfig(lr_max=1e-3, lr_min=2e-3)
    assert_names(err, "lr_min", 2e-3)
    assert "lr_max=0.001" in str(err.value)
    TrainConfig(lr_max=1e-3, lr_min=1e-3)


def test_warmup_plus_flat_exceeds_max_iters():
    with pytest.raises(ValueError) as err:
        TrainConfig(max_iters=100, warmup_iters=60, final_flat_iters=41)
    assert_names(err, "warmup_iters", 60)
    assert "max_iters=100" in str(err.value)
    TrainConfig(max_iters=100, warmup_iters=60, final_flat_iters=40)


def test_validation_survives_python_O():
    """Validation must not be `assert`s, which `python -O` strips."""
    code = ("import sys\n"
            "assert sys.flags.optimize == 1\n"  # (itself stripped; the print below shows the mode)
            "print('optimize', sys.flags.optimize)\n"
            "from config import ModelConfig, TrainConfig\n"
            "for make in (lambda: ModelConfig(dim=0), lambda: ModelConfig(num_q_heads=4, num_kv_heads=3),\n"
            "             lambda: TrainConfig(lr_min=1.0, lr_max=0.1)):\n"
            "    try:\n"
            "        make()\n"
            "    except ValueError as e:\n"
            "        print('ValueError', e)\n"
            "    else:\n"
            "        print('accepted')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "optimize 1"
    assert len(lines) == 4 and all(line.startswith("ValueError") for line in lines[1:]), out.stdout
    assert "dim=0" in lines[1] and "num_kv_heads=3" in lines[2] and "lr_min=1.0" in lines[3]


# --- build_configs / parse_value / parse_cli ---------------------------------------------------------
def test_preset_then_overrides():
    m, t = build_configs({"dim": "64", "num_q_heads": "2", "num_kv_heads": "1", "max_iters": "200"},
                         preset="llama3_atto")
    assert (m.dim, m.num_q_heads, m.num_kv_heads, m.head_dim) == (64, 2, 1, 32)
    assert m.mlp_gated is True and m.mlp_nonlinearity == "SiLU" and m.theta == 500_000.0  # from the preset
    assert m.num_layers == PRESETS["llama3_atto"]["num_layers"]
    assert t.max_iters == 200 and isinstance(t.max_iters, int)
    # overrides beat the preset; non-string values pass through untouched
    m, _ = build_configs({"mlp_gated": False, "theta": 1e4}, preset="llama3_atto")
    assert m.mlp_gated is False and m.theta == 1e4


@pytest.mark.parametrize("key,text,expected", [
    ("mlp_gated", "true", True), ("mlp_gated", "False", False), ("qk_norm", "1", True), ("qk_norm", "off", False),
    ("compile", "yes", True), ("streaming", "0", False),
    ("dim", "64", 64), ("max_iters", "1e3", 1000), ("max_iters", " 250 ", 250),
    ("seed", "12345678901234567891", 12345678901234567891),  # exact, not rounded through a float
    ("lr_max", "3e-4", 3e-4), ("theta", "500000", 500000.0), ("norm_eps", "1e-5", 1e-5),
    ("logit_softcap", "None", None), ("logit_softcap", "30", 30.0), ("sliding_window", "none", None),
    ("sliding_window", "4", 4), ("vocab_len", "null", None), ("data_subset", "None", None),
    ("model_name", "None", None), ("model_name", "my_run", "my_run"), ("tokenizer", "byte", "byte"),
])
def test_string_values_are_parsed_by_field_type(key, text, expected):
    m, t = build_configs({key: text, "vocab_len": "64"} if key != "vocab_len" else {key: text})
    value = getattr(m, key) if hasattr(m, key) else getattr(t, key)
    assert value == expected and type(value) is type(expected), (value, expected)


@pytest.mark.parametrize("key,text", [("dim", "abc"), ("dim", "2.5"), ("mlp_gated", "maybe"),
                                      ("lr_max", "fast"), ("dim", "None"), ("compile", "")])
def test_unparsable_strings_name_the_field(key, text):
    with pytest.raises(ValueError) as err:
        build_configs({key: text})
    assert f"--{key}={text!r}" in str(err.value)


def test_parsed_value_still_validated():
    with pytest.raises(ValueError) as err:
        build_configs({"dim": "-4"})
    assert_names(err, "dim", -4)
    with pytest.raises(ValueError) as err:
        build_configs({"theta": "inf"})
    assert_names(err, "theta", INF)


@pytest.mark.parametrize("typo,suggestion", [("num_head", "num_q_heads"), ("lr_mx", "lr_max"),
                                             ("dropout", "dropout_attn"), ("warmup_iter", "warmup_iters")])
def test_unknown_key_suggests_close_names(typo, suggestion):
    with pytest.raises(ValueError) as err:
        build_configs({typo: "1"})
    assert repr(typo) in str(err.value) and suggestion in str(err.value)


def test_unknown_key_without_close_match():
    with pytest.raises(ValueError, match="unknown config field 'zzzqqq'"):
        build_configs({"zzzqqq": 1})


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError) as err:
        build_configs(preset="gpt5")
    msg = str(err.value)
    assert "'gpt5'" in msg
    assert all(name in msg for name in PRESETS)


def test_base_configs_rederive_head_dim():
    base = (ModelConfig(dim=128, num_q_heads=4, num_kv_heads=4, vocab_len=64).to_dict(),
            TrainConfig(max_iters=50, warmup_iters=5).to_dict())
    m, t = build_configs(base=base)
    assert (m.head_dim, m.vocab_len, t.max_iters) == (32, 64, 50)
    m, _ = build_configs({"dim": "64"}, base=base)
    assert m.head_dim == 16  # re-derived from the new dim, not the saved 32
    m, _ = build_configs({"dim": "64", "head_dim": "32"}, base=base)
    assert m.head_dim == 32


# --- nonlinearities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MLP_NONLINEARITIES)
def test_every_nonlinearity_resolves(name):
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    torch.testing.assert_close(activation(name)(x), reference.activation(name)(x))


# --- parameter counts -------------------------------------------------------------------------------
def expected_params(c: ModelConfig) -> int:
    """Parameter count from the config fields alone (tied weights counted once)."""
    D, V, hd, b = c.dim, c.vocab_len, c.head_dim, int(c.linear_bias)
    hidden = c.mlp_hidden_mult * D * (2 / 3 if c.mlp_gated else 1)
    hidden = c.mlp_multiple_of * math.ceil(round(hidden) / c.mlp_multiple_of)
    norm = D * (int(c.norm_affine) + int(c.norm_bias))
    q, kv = c.num_q_heads * hd, c.num_kv_heads * hd
    attention = D * (q + 2 * kv) + b * (q + 2 * kv) + q * D + b * D
    if c.qk_norm:
        attention += 2 * hd * int(c.norm_affine)
    up = hidden * (2 if c.mlp_gated else 1)
    mlp = D * up + b * up + hidden * D + b * D
    layer = attention + mlp + norm * (4 if c.post_sublayer_norm else 2)
    total = V * D + c.num_layers * layer + norm
    if c.pos_enc_type == "learnable":
        total += c.max_seq_len * D
    if not c.tie_embeddings:
        total += V * D
    return total


def build_meta(cfg: ModelConfig) -> Model:
    with torch.device("meta"):  # shapes only: no memory, no init time
        return Model(cfg)


# nominal sizes in millions; these presets use a 32768-token vocabulary, so the GPT-2 / Llama names
# overstate them a little (GPT-2's 50257-token embedding alone is 38.6M)
NOMINAL = {"gpt2_atto": 1, "llama3_atto": 1, "gpt2_124M": 124, "llama_125M": 125, "llama_350M": 350,
           "llama_1B": 1000}


@pytest.mark.parametrize("preset", list(NOMINAL))
def test_preset_parameter_counts(preset):
    m, _ = build_configs(preset=preset)
    model = build_meta(m)
    n = sum(p.numel() for p in model.parameters())
    assert n == expected_params(m)
    assert model.get_num_params() == n
    assert 0.75 * NOMINAL[preset] * 1e6 < n < 1.1 * NOMINAL[preset] * 1e6, n


@pytest.mark.parametrize("overrides", [
    dict(tie_embeddings=False),
    dict(linear_bias=True, norm_type="LayerNorm", norm_bias=True),
    dict(qk_norm=True, post_sublayer_norm=True),
    dict(pos_enc_type="learnable", norm_affine=False),
    dict(mlp_gated=True, mlp_multiple_of=64, num_kv_heads=1),
    dict(pos_enc_type="Sinusoidal", head_dim=24, mlp_hidden_mult=2.5),
])
def test_parameter_count_formula_on_variants(overrides):
    cfg = ModelConfig(**{"dim": 64, "num_layers": 2, "num_q_heads": 4, "num_kv_heads": 2, "vocab_len": 100,
                         **overrides})
    model = Model(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected_params(cfg)


@pytest.mark.parametrize("dim", [64, 128, 384, 768, 1024, 2048])
@pytest.mark.parametrize("mult", [4.0, 6.0])
def test_gated_mlp_keeps_parameter_count(dim, mult):
    def mlp_params(gated):
        cfg = ModelConfig(dim=dim, num_q_heads=4, num_kv_heads=4, mlp_hidden_mult=mult, mlp_gated=gated)
        return (3 if gated else 2) * dim * cfg.mlp_hidden_dim

    assert abs(mlp_params(True) / mlp_params(False) - 1) < 0.01


def test_each_choice_list_has_one_copy():
    """config.py's choice tuples (DEVICES, DTYPES, ...) and generation's COMPILE_MODES are written out once;
    everything else uses the name, so a new choice cannot reach one check and miss another."""
    import ast

    import config
    from machinery.generation.decode_step import COMPILE_MODES
    lists = {name: value for name, value in vars(config).items()
             if name.isupper() and isinstance(value, tuple) and value and all(isinstance(v, str) for v in value)}
    lists["COMPILE_MODES"] = COMPILE_MODES
    by_value = {tuple(sorted(v)): name for name, v in lists.items()}
    root = Path(__file__).resolve().parents[1]
    found: dict[str, list[str]] = {name: [] for name in lists}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("tests/", ".")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                name = by_value.get(tuple(sorted(e.value for e in node.elts)))
                if name:
                    found[name].append(f"{rel}:{node.lineno}")
    copies = {name: places for name, places in found.items() if len(places) > 1}
    assert not copies, f"choice lists written out more than once: {copies}"
    assert all(len(places) == 1 for places in found.values()), found
