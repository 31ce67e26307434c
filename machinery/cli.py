"""One command line for every script: `--key=value` parsed by a dataclass field's type hint, and `--help`
written from the dataclass itself (type, default and the comment after each field).

    overrides, positional = split_args(sys.argv[1:])
    if print_help_if_asked(overrides, usage=__doc__, sections=[("Sampling", SamplingConfig)]):
        return 0
    options = build(SamplingConfig, overrides)   # takes the fields it knows out of `overrides`
    reject_unknown(overrides, SamplingConfig)     # whatever is left is a typo: say so, with close matches

Errors are ValueErrors that name the option; scripts print them as one line and exit with code 2.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import sys
import types
import typing

from config import MODEL_FIELDS, PRESETS, RENAMED_FIELDS, TRAIN_FIELDS, ModelConfig, TrainConfig, renamed

HELP_KEY = "help"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class UsageError(ValueError):
    """A command-line problem the user can fix: printed as `error: ...` without a traceback, exit code 2."""


def run_script(script: str, action, usage_hint: str = "") -> int:
    """The exit code of a script's work, action(): 0 when it is done; 2 with one line `SCRIPT: error: ...` on
    stderr for a problem the user can fix (a bad option, an unknown run, missing or damaged weights, an
    unreachable hub), never a traceback; 130 on Ctrl-C. usage_hint follows the message of a UsageError."""
    try:
        action()
    except UsageError as e:
        print(f"{script}: error: {e}{usage_hint}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def parse_bool(text: str, name: str = "value") -> bool:
    """The one bool parser: true/false, 1/0, yes/no, on/off (any case)."""
    low = str(text).strip().lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise UsageError(f"--{name}={text!r} is not a valid bool: use true or false")


def split_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--key=value` -> {key: value} ('-' in keys becomes '_'), a bare `--flag` -> 'true', `-h` -> help;
    everything else is positional."""
    overrides, positional = {}, []
    for arg in argv:
        if arg in ("-h", "--help"):
            overrides[HELP_KEY] = "true"
        elif arg.startswith("--") and len(arg) > 2:
            key, eq, value = arg[2:].partition("=")
            overrides[key.replace("-", "_")] = value if eq else "true"
        elif arg.startswith("-") and len(arg) > 1 and not _is_number(arg):
            raise UsageError(f"unknown option {arg!r}: options are written --key=value (see --help)")
        else:
            positional.append(arg)
    return overrides, positional


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --- types ------------------------------------------------------------------------------------------------
def field_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(typ) -> tuple[type, bool]:
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args:
        return next(t for t in args if t is not type(None)), True
    return typ, False


def parse_typed(typ, name: str, text: str):
    """A command-line string as `typ`: 'None' for Optional fields, bools, exact ints ('1e3' too), floats, str."""
    typ, optional = _unwrap_optional(typ)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    try:
        if typ is bool:
            return parse_bool(text, name)
        if typ is int:
            try:
                return int(text)  # exact however long (a float would round a 20-digit seed)
            except ValueError:
                number = float(text)
                if not number.is_integer():
                    raise
                return int(number)
        if typ is float:
            return float(text)
    except (ValueError, OverflowError):
        raise UsageError(f"--{name}={text!r} is not a valid {getattr(typ, '__name__', typ)}") from None
    return text


def build(cls, overrides: dict, base: dict | None = None):
    """An instance of dataclass `cls` from `base` values plus the `overrides` it has fields for (removed from
    `overrides`; strings are parsed by the field's type). The dataclass validates the values itself."""
    types = field_types(cls)
    values = dict(base or {})
    for name in list(overrides):
        if name in types:
            value = overrides.pop(name)
            values[name] = parse_typed(types[name], name, value) if isinstance(value, str) else value
    return cls(**values)


def reject_unknown(overrides: dict, *classes, extra: tuple[str, ...] = ()) -> None:
    """Raise a UsageError for any option left in `overrides`, suggesting the closest known names."""
    known = sorted({f.name for cls in classes for f in dataclasses.fields(cls)} | set(extra) | {HELP_KEY})
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join('--' + c for c in close)}?" if close else " See --help."
            raise UsageError(f"unknown option --{key}.{hint}")


# --- help ---------------------------------------------------------------------------------------------------
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=[^#]*)?(?:#\s?(?P<comment>.*))?$")
_GROUP_LINE = re.compile(r"^\s+#\s*---\s*(?P<group>.+?)\s*-*\s*$")


def field_docs(cls) -> list[tuple[str, str, str]]:
    """(group, field name, comment) for each field, read from the class source: the comment after the field
    (continued on following comment-only lines) and the `# --- group ---` line above it."""
    docs, group, last = [], "", None
    names = {f.name for f in dataclasses.fields(cls)}
    for line in inspect.getsource(cls).splitlines():
        if m := _GROUP_LINE.match(line):
            group, last = m["group"], None
        elif (m := _FIELD_LINE.match(line)) and m.group(1) in names:
            last = [group, m.group(1), (m["comment"] or "").strip()]
            docs.append(last)
        elif last is not None and line.strip().startswith("#") and len(line) - len(line.lstrip()) > 8:
            last[2] += " " + line.strip().lstrip("#").strip()  # a comment continued under the first
        else:
            last = None
    return [tuple(d) for d in docs]


def _type_name(typ) -> str:
    inner, optional = _unwrap_optional(typ)
    name = getattr(inner, "__name__", str(inner))
    return f"{name} or None" if optional else name


def _default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "(required)"


def _choices(cls, name: str) -> tuple | None:
    """The allowed values of a choice field, when its class says (config.py's CHOICES)."""
    return cls.choices(name) if hasattr(cls, "choices") else None


def describe_fields(sections: list[tuple[str, type]], only: str | None = None) -> str:
    """Help text for the fields of each (title, dataclass) section, or for the one field named `only`."""
    out = []
    for title, cls in sections:
        types, fields = field_types(cls), {f.name: f for f in dataclasses.fields(cls)}
        lines, group = [], None
        for grp, name, comment in field_docs(cls):
            if only is not None and name != only:
                continue
            if grp != group and only is None:
                lines.append(f"  {grp}:" if grp else "")
                group = grp
            lines.append(f"    --{name} ({_type_name(types[name])}, default {_default_of(fields[name])!r})")
            if comment:
                lines.append(f"        {comment}")
            options = _choices(cls, name)  # from the tuple itself, so a name added there shows
            if options is not None and not all(repr(o) in comment for o in options):  # (unless the comment has all)
                lines.append(f"        allowed: {', '.join(map(repr, options))}")
        if lines:
            out.append(f"{title} ({cls.__name__}):" if only is None else f"{title} ({cls.__name__}):")
            out.extend(lines)
    return "\n".join(out)


def print_help_if_asked(overrides: dict, usage: str, sections: list[tuple[str, type]],
                        extra: str = "") -> bool:
    """Print the help and return True when `--help`/`-h` (all fields) or `--help=FIELD` (one) was given."""
    if HELP_KEY not in overrides:
        return False
    wanted = overrides[HELP_KEY]
    if wanted.lower() in TRUE_WORDS:
        _print("\n\n".join(part.strip("\n") for part in (usage, describe_fields(sections), extra) if part))
        return True
    text = describe_fields(sections, only=wanted)
    if not text:
        known = sorted({f.name for _, cls in sections for f in dataclasses.fields(cls)})
        close = difflib.get_close_matches(wanted, known, n=3, cutoff=0.5)
        raise UsageError(f"--help={wanted}: no such option." +
                         (f" Did you mean: {', '.join(close)}?" if close else " Try --help for all of them."))
    _print(text)
    return True


def _print(text: str) -> None:
    """print, quietly stopping when the reader has gone (`--help | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit


# --- configs from presets, saved runs and --key=value strings ---------------------------------------------
def parse_value(cls, name: str, text: str):
    """Parse a command-line string for field `name` of config class `cls`."""
    return parse_typed(field_types(cls)[name], name, text)


def unknown_key_error(key: str) -> ValueError:
    close = difflib.get_close_matches(key, sorted(MODEL_FIELDS | TRAIN_FIELDS | set(RENAMED_FIELDS)), n=3,
                                      cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See config.py for the fields."
    return ValueError(f"unknown config field {key!r}.{hint}")


def build_configs(overrides: dict | None = None, preset: str | None = None,
                  base: tuple[dict, dict] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Defaults <- saved run configs (`base`) <- preset <- overrides. Values may be strings (from a CLI)."""
    model_kw = renamed(base[0], MODEL_FIELDS, "ModelConfig") if base else {}
    train_kw = renamed(base[1], TRAIN_FIELDS, "TrainConfig") if base else {}
    layers = []
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is unknown; presets are: {', '.join(PRESETS)}")
        layers.append(PRESETS[preset])
    layers.append(overrides or {})
    for layer in layers:
        for key, value in layer.items():
            key = RENAMED_FIELDS.get(key, key)
            if key in MODEL_FIELDS:
                model_kw[key] = parse_value(ModelConfig, key, value) if isinstance(value, str) else value
            elif key in TRAIN_FIELDS:
                train_kw[key] = parse_value(TrainConfig, key, value) if isinstance(value, str) else value
            else:
                raise unknown_key_error(key)
    if "head_dim" in model_kw and any(k in (overrides or {}) for k in ("dim", "num_q_heads")) \
            and "head_dim" not in (overrides or {}):
        model_kw["head_dim"] = None  # derived from a saved config: re-derive when dim/heads change
    return ModelConfig(**model_kw), TrainConfig(**train_kw)


def describe_presets() -> str:
    """One line per preset, written from its values (so it cannot go stale)."""
    lines = ["Presets (--preset=NAME, then any --key=value on top):"]
    for name, values in PRESETS.items():
        cfg = ModelConfig(**{k: v for k, v in values.items() if k in MODEL_FIELDS})
        style = "GPT-2 style" if cfg.pos_enc_type == "learnable" else "Llama style"
        data = values.get("dataset", TrainConfig.dataset)
        lines.append(f"  {name:<20} {style}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_q_heads} q / "
                     f"{cfg.num_kv_heads} kv heads, context {cfg.max_seq_len}, {cfg.tokenizer}"
                     f"{'' if cfg.vocab_len is None else f' {cfg.vocab_len}'}; data {data}")
    return "\n".join(lines)
