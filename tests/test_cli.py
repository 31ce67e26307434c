"""machinery/cli.py: one typed command line for every script, and the help it writes from the dataclasses."""
import dataclasses
from typing import Optional

import pytest

import config
from config import ModelConfig, TrainConfig
from machinery import cli
from machinery.cli import (
    UsageError,
    build,
    build_configs,
    describe_fields,
    parse_bool,
    parse_value,
    print_help_if_asked,
    reject_unknown,
    split_args,
)


@dataclasses.dataclass
class Options:
    # --- sampling ---
    temperature: float = 1.0     # divide logits by this
    top_k: Optional[int] = None  # keep the k most likely tokens
    # --- output ---
    greedy: bool = False         # always take the argmax
    name: str = "x"              # a plain string; this comment
                                 # goes on over two lines


def test_split_args():
    overrides, rest = split_args(["--dim=64", "--compile", "--lr-max=1e-3", "prompt text", "--model_name=x=y",
                                  "-h", "-0.5"])
    assert overrides == {"dim": "64", "compile": "true", "lr_max": "1e-3", "model_name": "x=y", "help": "true"}
    assert rest == ["prompt text", "-0.5"]
    with pytest.raises(UsageError, match="-x"):
        split_args(["-x"])


def test_build_parses_by_type_and_leaves_unknown_keys():
    overrides = {"temperature": "0.5", "top_k": "None", "greedy": "yes", "other": "1"}
    opts = build(Options, overrides)
    assert opts == Options(temperature=0.5, top_k=None, greedy=True)
    assert overrides == {"other": "1"}
    with pytest.raises(UsageError, match="--top_kk.*--top_k"):
        reject_unknown({"top_kk": "3"}, Options)
    with pytest.raises(ValueError, match="top_k='three' is not a valid int"):
        build(Options, {"top_k": "three"})


@pytest.mark.parametrize("text,value", [("true", True), ("On", True), ("1", True), ("no", False), ("0", False)])
def test_parse_bool(text, value):
    assert parse_bool(text) is value


def test_parse_bool_rejects_other_words():
    with pytest.raises(ValueError, match="--flag='maybe' is not a valid bool"):
        parse_bool("maybe", "flag")


def test_parse_value_direct():
    assert parse_value(ModelConfig, "head_dim", "None") is None
    assert parse_value(TrainConfig, "dataset", "None") == "None"  # a plain str field keeps the text
    assert parse_value(TrainConfig, "seed", "123456789012345678901") == 123456789012345678901  # exact
    assert parse_value(TrainConfig, "max_iters", "1e3") == 1000


def test_build_configs_from_cli_strings():
    overrides, _ = split_args(["--dim=64", "--compile", "--lr-max=1e-3", "--model_name=x=y"])
    m, t = build_configs(overrides)
    assert m.dim == 64 and t.compile is True and t.lr_max == 1e-3 and t.model_name == "x=y"
    with pytest.raises(ValueError, match="Did you mean: dim"):
        build_configs({"dimm": "3"})


def test_help_lists_every_field_with_type_default_and_comment(capsys):
    assert print_help_if_asked({"help": "true"}, usage="usage: x", sections=[("Options", Options)])
    out = capsys.readouterr().out
    assert out.startswith("usage: x")
    assert "sampling:" in out and "output:" in out
    assert "--top_k (int or None, default None)" in out and "keep the k most likely tokens" in out
    assert "this comment goes on over two lines" in out
    assert not print_help_if_asked({}, usage="", sections=[("Options", Options)])


def test_help_for_one_field(capsys):
    assert print_help_if_asked({"help": "greedy"}, usage="", sections=[("Options", Options)])
    out = capsys.readouterr().out
    assert "--greedy (bool, default False)" in out and "--top_k" not in out
    with pytest.raises(UsageError, match="Did you mean: greedy"):
        print_help_if_asked({"help": "gredy"}, usage="", sections=[("Options", Options)])


def test_help_for_a_choice_lists_the_tuple_itself(monkeypatch, capsys):
    """A name added to a choice tuple in config.py (README: "Trying your own idea") shows in --help=FIELD and
    is allowed at once; the help lists the values the comment does not."""
    monkeypatch.setattr(config, "NORM_TYPES", config.NORM_TYPES + ("MyNorm",))
    sections = [("Model", ModelConfig), ("Training", TrainConfig)]
    assert print_help_if_asked({"help": "norm_type"}, usage="", sections=sections)
    assert "allowed: 'RMSNorm', 'LayerNorm', 'CosineNorm', 'MyNorm'" in capsys.readouterr().out
    assert ModelConfig(norm_type="MyNorm").norm_type == "MyNorm"
    assert print_help_if_asked({"help": "device"}, usage="", sections=sections)
    assert "allowed: 'auto', 'cpu', 'cuda', 'mps'" in capsys.readouterr().out
    assert print_help_if_asked({"help": "resume_schedule"}, usage="", sections=sections)
    assert "allowed:" not in capsys.readouterr().out  # its comment names all three


def test_every_config_field_has_a_comment():
    for cls in (ModelConfig, TrainConfig):
        documented = {name: comment for _, name, comment in cli.field_docs(cls)}
        assert set(documented) == {f.name for f in dataclasses.fields(cls)}
        missing = [name for name, comment in documented.items() if not comment]
        assert not missing, f"{cls.__name__} fields without a comment: {missing}"
    text = describe_fields([("Model", ModelConfig), ("Training", TrainConfig)])
    assert "--dim (int, default 128)" in text


def test_presets_are_described_one_line_each():
    lines = cli.describe_presets().splitlines()[1:]
    assert [line.split()[0] for line in lines] == list(config.PRESETS)


def test_renamed_fields_load_saved_runs_and_old_flags(monkeypatch):
    monkeypatch.setitem(config.RENAMED_FIELDS, "width", "dim")
    assert ModelConfig.from_dict({"width": 64}).dim == 64
    m, _ = build_configs({"width": "32"})
    assert m.dim == 32
    m, _ = build_configs({}, base=({"width": 48}, {}))
    assert m.dim == 48
    with pytest.raises(ValueError, match="same field"):
        ModelConfig.from_dict({"width": 64, "dim": 64})
    with pytest.raises(ValueError, match="no field 'nonsense'"):
        ModelConfig.from_dict({"nonsense": 1})
