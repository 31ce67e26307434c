"""A new ModelConfig field is loud wherever it matters: each place that must understand the architecture
classifies every field in its FIELDS table (a field missing from one fails here, naming the field and the
file), and one model with every option on at once matches the float64 reference (docs/structure.md).
Generation with that model: tests/test_inference.py; the export's weight check: tests/test_hf_export.py."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import machinery.generation.decode_step as decode_step
from config import MODEL_FIELDS, ModelConfig
from machinery.interop import architectures
from modules import mup, reference
from modules.model import Model
from tests.helpers import EVERY_OPTION_VARIANTS

pytestmark = pytest.mark.usefixtures("one_thread")

# file -> (its table, the kinds it may give a field)
PLACES = {
    "machinery/interop/architectures.py": (
        architectures.FIELDS, {architectures.MAPPED, architectures.REFUSED, architectures.TOKENIZER,
                               architectures.TRAINING_ONLY}),
    "modules/mup.py": (mup.FIELDS, {mup.SETTING, mup.RULE, mup.WIDTH_FREE}),
    "machinery/generation/decode_step.py": (
        decode_step.FIELDS, {decode_step.FORWARD, decode_step.CACHE, decode_step.LIMIT, decode_step.OFF}),
    "modules/reference.py": (reference.FIELDS, {reference.WRITTEN_OUT, reference.IN_THE_WEIGHTS,
                                                reference.NOT_IN_EVAL}),
}


def unclassified(config_class, table: dict) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class) if f.name not in table]


@pytest.mark.parametrize("place", list(PLACES))
def test_every_model_field_is_classified(place):
    table, kinds = PLACES[place]
    missing = unclassified(ModelConfig, table)
    assert not missing, (f"{place}: FIELDS does not classify ModelConfig field(s) {', '.join(missing)}: decide "
                         f"what this file must do with each (docs/structure.md, 'What must understand a new "
                         f"config field') and add it to FIELDS")
    assert not set(table) - MODEL_FIELDS, f"{place}: FIELDS names fields ModelConfig lacks (renamed or removed?)"
    wrong = {name: kind for name, kind in table.items() if kind not in kinds}
    assert not wrong, f"{place}: unknown kinds {wrong}; allowed: {sorted(kinds)}"


def test_a_new_field_is_unclassified_in_every_place():
    """What a researcher adding a field meets: every table misses it, so the test above fails for each file."""
    @dataclasses.dataclass
    class WithANewField(ModelConfig):
        brand_new_option: bool = False

    for place, (table, _) in PLACES.items():
        assert unclassified(WithANewField, table) == ["brand_new_option"], place


def test_every_refused_export_field_has_a_rule_that_names_it():
    refused = {name for name, kind in architectures.FIELDS.items() if kind == architectures.REFUSED}
    in_rules = {name for names, _, _ in architectures.NO_EQUIVALENT for name in names}
    assert refused <= in_rules
    assert all(architectures.FIELDS[name] in (architectures.REFUSED, architectures.MAPPED) for name in in_rules)


@pytest.mark.parametrize("kind,fields", [
    ("llama", dict(dim=48, num_layers=3, num_q_heads=4, num_kv_heads=2, head_dim=16, max_seq_len=40, vocab_len=300,
                   theta=5e5, mlp_hidden_mult=3.0, mlp_nonlinearity="ReLU", mlp_gated=True, mlp_multiple_of=64,
                   norm_eps=1e-5, linear_bias=True, tie_embeddings=False)),
    ("gpt2", dict(dim=48, num_layers=3, num_q_heads=6, num_kv_heads=6, max_seq_len=40, vocab_len=300,
                  pos_enc_type="learnable", mlp_hidden_mult=3.0, mlp_nonlinearity="GeLU_tanh", mlp_multiple_of=64,
                  norm_type="LayerNorm", norm_bias=True, norm_eps=1e-3, linear_bias=True, tie_embeddings=False)),
])
def test_mapped_export_fields_come_back_on_import(kind, fields):
    """'mapped' is true: config.json carries each such field (set away from its default here where the
    architecture allows) and import reads the same value back."""
    cfg = ModelConfig(**fields)
    arch = architectures.for_export(cfg)
    assert arch.MODEL_TYPE == kind
    back = ModelConfig(**arch.model_fields(arch.hf_config(cfg)))
    assert back.mlp_hidden_dim == cfg.mlp_hidden_dim  # mlp_hidden_mult and mlp_multiple_of are folded into it
    for name, how in architectures.FIELDS.items():
        if how == architectures.MAPPED and name not in ("mlp_hidden_mult", "mlp_multiple_of"):
            assert getattr(back, name) == getattr(cfg, name), name


def test_every_field_is_switched_on_in_the_every_option_model():
    """A new option (say a gated attention output) fails here until tests/helpers.py EVERY_OPTION switches it on,
    so the reference and generation tests below and in test_inference.py run it together with all the others."""
    defaults = ModelConfig()
    defaults.head_dim = None  # the field's default, not the value derived from dim
    untouched = [name for name in MODEL_FIELDS
                 if all(variant.get(name, getattr(defaults, name)) == getattr(defaults, name)
                        for variant in EVERY_OPTION_VARIANTS.values())]
    assert not untouched, f"tests/helpers.py EVERY_OPTION leaves {untouched} at their defaults: switch them on"


@pytest.mark.parametrize("variant", list(EVERY_OPTION_VARIANTS))
def test_every_option_model_matches_the_reference(variant):
    torch.manual_seed(0)
    model = Model(ModelConfig(**EVERY_OPTION_VARIANTS[variant])).eval()
    with torch.no_grad():  # start the norm scales and biases away from 1 and 0, so that they matter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, model.cfg.vocab_len, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0].double(), reference.model(ids, model), rtol=1e-4, atol=1e-5)
