"""--init_from: transformers models (random, small) and our runs start a new run with the same logits; export ->
import is exact; bad sources are one clear line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tools
import train
from machinery.interop import hf_import, init_from
from machinery.interop.export import export_run
from modules.model import Model

transformers = pytest.importorskip("transformers", reason="import tests need transformers (requirements-optional.txt)")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_LLAMA = dict(vocab_size=259, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rope_theta=500_000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
TINY_GPT2 = dict(vocab_size=259, n_embd=32, n_layer=2, n_head=4, n_positions=64, activation_function="gelu_new",
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def save_hf(kind: str, folder: Path, **changes) -> torch.nn.Module:
    """A random transformers model saved to folder (safetensors), in eval mode."""
    torch.manual_seed(0)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY_LLAMA, **changes}))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**TINY_GPT2, **changes}))
    with torch.no_grad():  # transformers starts norms at 1 and biases at 0: make them matter
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def ours_from(source: str) -> Model:
    model = Model(init_from.model_config(source, {"tokenizer": "byte"}))
    init_from.load_weights(model, source)
    return model.eval()


@pytest.mark.parametrize("kind,changes", [("llama", {}), ("llama", dict(tie_word_embeddings=True, attention_bias=False,
                                                                           mlp_bias=False, num_key_value_heads=1)),
                                          ("gpt2", {}), ("gpt2", dict(activation_function="gelu"))])
def test_transformers_model_gives_its_logits_here(kind, changes, tmp_path):
    hf = save_hf(kind, tmp_path, **changes)
    ours = ours_from(str(tmp_path))
    ids = torch.randint(0, 259, (2, 40))
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("run", ["llama3_atto", "gpt2_atto"])
def test_export_then_import_is_exact(run, tmp_path):
    cfg, state, _ = hf_import.read_folder(export_run(run, tmp_path / run))
    model, _, saved_cfg, _ = tools.load_model(run)
    assert cfg == saved_cfg
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def run_args(sample_data: Path, tmp_path: Path, name: str, source: str, **extra) -> list[str]:
    """One step at learning rate 0: the saved weights are the source's, unchanged."""
    settings = dict(init_from=source, tokenizer="byte", max_seq_len=32, dataset=str(sample_data / "tinystories"),
                    cache_dir=str(tmp_path / "cache"), micro_batch_size=2, max_iters=1, eval_interval=1,
                    eval_batches=1, warmup_iters=1, lr_init=0.0, lr_max=1e-3, lr_min=0.0, dtype="float32",
                    device="cpu", model_name=name)
    return [f"--{k}={v}" for k, v in {**settings, **extra}.items()]


def test_train_init_from_transformers_folder_then_from_that_run(sample_data, tmp_path, trained_dir):
    hf = save_hf("llama", tmp_path / "hf")
    assert train.main(run_args(sample_data, tmp_path, "from_hf", str(tmp_path / "hf"), dropout_attn=0.1)) == 0
    model, _, cfg, train_cfg = tools.load_model("from_hf")
    assert train_cfg.init_from == str(tmp_path / "hf") and cfg.num_kv_heads == 2 and cfg.max_seq_len == 32
    ids = torch.randint(0, 259, (1, 32))
    with torch.no_grad():
        assert (model(ids)[0] - hf(ids).logits).abs().max().item() <= 1e-5
    # a run in trained/ as the source, by name
    assert train.main(run_args(sample_data, tmp_path, "from_run", "from_hf")) == 0
    again = tools.load_model("from_run")[0]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def one_error_line(capsys, args) -> str:
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_sources_are_one_line(sample_data, tmp_path, trained_dir, capsys):
    def err(source, **extra):
        capsys.readouterr()  # what saving the models printed
        return one_error_line(capsys, run_args(sample_data, tmp_path, "bad", source, **extra))

    assert "no such folder" in err(str(tmp_path / "missing"))
    assert "no model named 'missing_run'" in err("missing_run")
    (tmp_path / "empty").mkdir()
    assert "neither a run folder" in err(str(tmp_path / "empty"))
    foreign = tmp_path / "gemma"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}))
    assert "'Gemma2ForCausalLM'" in err(str(foreign))
    save_hf("gpt2", tmp_path / "wide", vocab_size=300)
    assert "vocabulary of 300 tokens" in err(str(tmp_path / "wide"), max_seq_len=64)
    assert "max_seq_len=64 but this run asks for max_seq_len=32" in err(str(tmp_path / "wide"))  # learned table
    save_hf("llama", tmp_path / "hf")
    assert "num_layers=2 but this run asks for num_layers=3" in err(str(tmp_path / "hf"), num_layers=3)
    save_hf("llama", tmp_path / "scaled", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})
    assert "rope_type='linear'" in err(str(tmp_path / "scaled"))
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    assert "no model.safetensors" in err(str(tmp_path / "hf"))


@pytest.mark.parametrize("changes", [dict(pos_enc_type="learnable", norm_type="LayerNorm", mlp_gated=False,
                                          linear_bias=False, norm_bias=False, norm_affine=False),
                                     dict(mlp_gated=True, mlp_nonlinearity="GeLU_tanh", linear_bias=True,
                                          norm_affine=False, tie_embeddings=False, num_kv_heads=1)])
def test_missing_biases_and_norm_scales_export_as_zeros_and_ones(changes, tmp_path):
    from config import ModelConfig, TrainConfig
    from machinery.run import runs
    from machinery.run.weights import save_weights
    cfg = ModelConfig(dim=32, num_layers=2, num_q_heads=4, max_seq_len=32, tokenizer="byte", vocab_len=259, **changes)
    model = Model(cfg).eval()
    runs.write_description(tmp_path / "run", cfg, TrainConfig())
    save_weights(model, tmp_path / "run" / "model.safetensors")
    export_run(tmp_path / "run", tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    again = ours_from(str(tmp_path / "hf"))
    ids = torch.randint(0, 259, (2, 32))
    with torch.no_grad():
        expected = model(ids)[0]
        assert (hf(ids).logits - expected).abs().max().item() <= 1e-5
        assert (again(ids)[0] - expected).abs().max().item() <= 1e-6  # imported with the ones and zeros


ROPE_SCALING_SPELLINGS = {
    "rope_scaling type": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "rope_scaling rope_type": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "rope_parameters": dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
    "both keys, scaling in the second": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4},
                                             rope_scaling={"type": "dynamic", "factor": 2.0}),
    "a factor without a type": dict(rope_scaling={"factor": 2.0}),
    "per attention type": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4},
                                                "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
}


@pytest.mark.parametrize("spelling", list(ROPE_SCALING_SPELLINGS))
def test_rope_scaling_is_refused_by_name_in_every_spelling(spelling, tmp_path):
    """Importing a scaled-RoPE model as plain RoPE would give other logits without a word; today the second key of
    'both keys' was never read."""
    config = {**TINY_LLAMA, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
              **ROPE_SCALING_SPELLINGS[spelling]}
    config.pop("rope_theta")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="RoPE scaling"):
        hf_import.read_config(tmp_path)


def test_plain_rope_in_every_spelling_is_imported_with_its_theta(tmp_path):
    for extra in ({"rope_theta": 5e5}, {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},
                  {"rope_scaling": None, "rope_theta": 5e5},
                  {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 5e5}}}):
        config = {**TINY_LLAMA, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        config.pop("rope_theta")
        (tmp_path / "config.json").write_text(json.dumps({**config, **extra}))
        assert hf_import.read_config(tmp_path)[0].theta == 5e5, extra


def test_resume_with_init_from_is_refused_like_config(tmp_path, monkeypatch, capsys):
    """Today --resume --init_from=X was accepted, ignored, and written into train_config.json."""
    trained = tmp_path / "trained"
    monkeypatch.setenv("TEMPLATEGPT_TRAINED_DIR", str(trained))
    import shutil
    shutil.copytree(tools.ROOT / "trained" / "gpt2_atto", trained / "run")
    before = (trained / "run" / "train_config.json").read_text()
    assert train.main(["--model_name=run", "--resume", "--init_from=llama3_atto"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues a run with its own configs and weights" in err and "--init_from" in err
    assert (trained / "run" / "train_config.json").read_text() == before
