"""export_hf.py: both shipped runs load in transformers with our logits and our token ids; refusals are one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import export_hf
import tools
from config import ModelConfig, TrainConfig
from machinery.interop import tokenizer as hf_tokenizer
from machinery.interop.architectures import for_export
from machinery.run import runs

transformers = pytest.importorskip("transformers", reason="export tests need transformers (requirements-optional.txt)")
pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = ("llama3_atto", "gpt2_atto")
VALIDATION = Path(__file__).resolve().parents[1] / "data" / "samples" / "tinystories" / "validation.jsonl"
EDGE_TEXTS = ["", " ", "a  b   c\n\n  x\t\r\n", "\u2581 literal \u2581\u2581 block chars",
              "<s> </s> <pad> <unk> <0x41> look like special tokens", "日本語, émoji 😀 and ☃"]


def validation_texts() -> list[str]:
    return [json.loads(line)["text"] for line in VALIDATION.read_text().splitlines()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    assert all(export_hf.main([run, str(out / run)]) == 0 for run in SHIPPED)
    return {run: out / run for run in SHIPPED}


@pytest.mark.parametrize("run", SHIPPED)
def test_shipped_model_gives_our_logits_in_transformers(run, exported):
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported[run]).eval()
    assert type(hf).__name__ == {"llama3_atto": "LlamaForCausalLM", "gpt2_atto": "GPT2LMHeadModel"}[run]
    model, tokenizer, cfg, _ = tools.load_model(run)
    rows = [[tokenizer.bos_id] + tokenizer.encode(t)[:cfg.max_seq_len - 1] for t in validation_texts()[:4]]
    width = min(map(len, rows))
    ids = torch.tensor([r[:width] for r in rows])
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    # greedy decoding picks the same tokens
    prompt = torch.tensor([[tokenizer.bos_id] + tokenizer.encode("Once upon a time")])
    with torch.no_grad():
        hf_out = hf.generate(prompt, max_new_tokens=12, do_sample=False)[0, prompt.size(1):].tolist()
        ours_out, seq = [], prompt
        for _ in range(12):
            seq = torch.cat((seq, model(seq)[0][:, -1:].argmax(-1)), dim=1)
            ours_out.append(seq[0, -1].item())
    assert hf_out == ours_out


@pytest.mark.parametrize("run", SHIPPED)
def test_shipped_tokenizer_gives_our_ids(run, exported):
    hf = transformers.AutoTokenizer.from_pretrained(exported[run])
    tokenizer = tools.load_model(run)[1]
    for text in validation_texts() + EDGE_TEXTS:
        ids = tokenizer.encode(text)
        assert hf(text).input_ids == [tokenizer.bos_id] + ids  # bos in front, as in training
        assert hf(text, add_special_tokens=False).input_ids == ids
        assert hf.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id], skip_special_tokens=True) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


@pytest.mark.parametrize("name,vocab_len", [("byte", None), ("bpe_tinyStories", 512), ("bpe_tinyStories", 2048)])
def test_other_tokenizers_give_our_ids(name, vocab_len, tmp_path):
    tokenizer = tools.get_tokenizer(name, vocab_len)
    hf_tokenizer.write(tokenizer, tmp_path, max_len=256)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in validation_texts()[:20] + EDGE_TEXTS:
        ids = tokenizer.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids
        assert hf.decode(ids) == tokenizer.decode(ids) == text


@pytest.mark.parametrize("option,value", [("norm_type", "CosineNorm"), ("pos_enc_type", "Sinusoidal"),
                                          ("qk_norm", True), ("logit_softcap", 30.0), ("sliding_window", 8),
                                          ("post_sublayer_norm", True), ("scale_embeddings", True),
                                          ("mlp_gated", False), ("norm_type", "LayerNorm"),
                                          ("parametrization", "mup")])
def test_options_without_an_equivalent_are_refused_by_name(option, value):
    cfg = ModelConfig(**{"norm_type": "RMSNorm", "mlp_gated": True, "mlp_nonlinearity": "SiLU", "mup_base_dim": 64,
                         option: value})
    with pytest.raises(ValueError, match=rf"{option}={value!r}") as info:
        for_export(cfg)
    assert "\n" not in str(info.value)


def test_gpt2_style_options_without_an_equivalent(tmp_path):
    gpt2 = dict(pos_enc_type="learnable", norm_type="LayerNorm", mlp_gated=False)
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        for_export(ModelConfig(**gpt2, num_kv_heads=2))
    with pytest.raises(ValueError, match="mlp_gated=True"):
        for_export(ModelConfig(**gpt2 | {"mlp_gated": True}))
    # μP at its base width is the standard model, so it exports
    assert for_export(ModelConfig(parametrization="mup", mup_base_dim=128, dim=128, mlp_gated=True)).MODEL_TYPE == "llama"
    # no biases and no norm scale: exported as zeros and ones, the same function
    assert for_export(ModelConfig(**gpt2, linear_bias=False, norm_bias=False, norm_affine=False)).MODEL_TYPE == "gpt2"


def test_cli_errors_are_one_line(tmp_path, exported, capsys):
    cases = [["no_such_run", str(tmp_path / "a")],                    # missing run
             ["llama3_atto", str(exported["llama3_atto"])],           # output folder not empty
             ["llama3_atto"]]                                          # missing OUT_DIR
    for args in cases:
        assert export_hf.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("export_hf.py: error: ") and err.count("\n") == 1, err
    # a run with an option transformers lacks is refused before anything is written
    run = tmp_path / "qk_run"
    runs.write_description(run, ModelConfig(qk_norm=True, vocab_len=259, tokenizer="byte"), TrainConfig())
    assert export_hf.main([str(run), str(tmp_path / "out")]) == 2
    assert "qk_norm=True" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # --overwrite replaces the folder
    assert export_hf.main(["gpt2_atto", str(exported["llama3_atto"]), "--overwrite"]) == 0
    assert json.loads((exported["llama3_atto"] / "config.json").read_text())["model_type"] == "gpt2"
    assert export_hf.main(["llama3_atto", str(exported["llama3_atto"]), "--overwrite"]) == 0


def test_a_weight_the_mapping_does_not_take_stops_the_export():
    """A research option that adds a weight (here a gate on layer 1's attention output) without a line in the
    mapping: the export names the weight instead of writing a plain Llama without it."""
    from machinery.interop.export import hf_weights
    from modules.model import Model
    cfg = ModelConfig(dim=32, num_layers=2, num_q_heads=4, mlp_gated=True, tokenizer="byte", vocab_len=259)
    model = Model(cfg)
    assert hf_weights(cfg, model.state_dict())  # every weight of the plain model is mapped
    model.layers[1].attn.out_gate = torch.nn.Linear(32, 32)
    with pytest.raises(ValueError, match=r"llama\.py maps no LlamaForCausalLM weight from layers\.1\.attn\.out_gate"
                                         r"\.weight, layers\.1\.attn\.out_gate\.bias: map it there"):
        hf_weights(cfg, model.state_dict())
