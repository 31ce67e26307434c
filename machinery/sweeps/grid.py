"""A sweep's variants: the cross product of --grid fields, optionally times a list of named --variant sets.

    --grid="qk_norm=false,true" --grid="lr_max=1e-3,3e-3"
        -> 4 variants; the first value of each grid field is the baseline's
    --variant="swiglu:" --variant="gelu:mlp_nonlinearity=GeLU,mlp_gated=false"
        -> 2 variants that may each change several fields; the first is the baseline
    both -> every --variant at every grid point

A variant is named by what differs from the baseline ('qk_norm-true_lr_max-3e-3'; a grid's all-first-values
point is 'baseline'; a --variant keeps its own name), so adding a grid field whose first value is what the
runs already used keeps their names, and those runs are not trained again.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from config import MODEL_FIELDS, RENAMED_FIELDS, TRAIN_FIELDS
from machinery.cli import unknown_key_error

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # loads back by name: no '/', no leading '.'
# set by the sweep for every run, so they cannot be swept or fixed
RESERVED = {"model_name": "each run is named <sweep>__<variant>__s<seed>",
            "seed": "seeds are given with --seeds",
            "resume": "re-run the same sweep command to resume it",
            "overwrite": "give --overwrite to sweep.py itself",
            "config": "start from --preset and --key=value settings"}


@dataclass(frozen=True)
class Variant:
    name: str                                     # folder-safe; runs are trained/<sweep>__<name>__s<seed>
    settings: dict = field(default_factory=dict)  # field -> value text, as on the command line

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.settings.items()) or "the shared settings only"


def check_field(key: str, where: str) -> None:
    """A config field name, or one ValueError naming where it was given and the closest fields."""
    if key in RESERVED:
        raise ValueError(f"{where}: {key!r} is set by the sweep ({RESERVED[key]})")
    if key not in MODEL_FIELDS | TRAIN_FIELDS | set(RENAMED_FIELDS):
        raise ValueError(f"{where}: {unknown_key_error(key)}")


def parse_grid(text: str) -> tuple[str, list[str]]:
    """'lr_max=1e-3,3e-3' -> ('lr_max', ['1e-3', '3e-3'])."""
    key, eq, values = text.partition("=")
    key = key.strip().replace("-", "_")
    where = f"--grid={text!r}"
    if not eq or not key:
        raise ValueError(f"{where} must look like --grid=FIELD=VALUE1,VALUE2 (e.g. --grid=qk_norm=false,true)")
    check_field(key, where)
    items = [v.strip() for v in values.split(",")]
    if not values.strip() or any(not v for v in items):
        raise ValueError(f"{where}: give one or more comma-separated values, none of them empty")
    if len(set(items)) != len(items):
        raise ValueError(f"{where}: a value is repeated")
    return key, items


def parse_variant(text: str) -> tuple[str, dict]:
    """'swiglu:mlp_nonlinearity=SiLU,mlp_gated=true' -> ('swiglu', {...}); 'base:' changes nothing."""
    name, colon, body = text.partition(":")
    name = name.strip()
    where = f"--variant={text!r}"
    if not colon or not NAME_RE.match(name) or "__" in name:
        raise ValueError(f"{where} must look like --variant=NAME:FIELD=VALUE,FIELD=VALUE (NAME: letters, digits, "
                         f"'_', '.', '-', no '__'; 'NAME:' alone changes nothing)")
    settings = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"{where}: {item!r} must look like FIELD=VALUE")
        check_field(key, where)
        if key in settings:
            raise ValueError(f"{where}: {key!r} is given twice")
        settings[key] = value.strip()
    return name, settings


def _slug(key: str, value: str) -> str:
    return f"{key}-{re.sub(r'[^A-Za-z0-9.-]+', '-', value).strip('-.') or 'empty'}"


def expand(grids: list[tuple[str, list[str]]], named: list[tuple[str, dict]]) -> list[Variant]:
    """Every named variant at every grid point, the baseline (all first choices) first."""
    keys = [k for k, _ in grids]
    for key in set(keys):
        if keys.count(key) > 1:
            raise ValueError(f"--grid: {key!r} has more than one --grid; give its values in one")
    names = [n for n, _ in named]
    for name in set(names):
        if names.count(name) > 1:
            raise ValueError(f"--variant: the name {name!r} is used twice")
    for name, settings in named:
        clash = set(settings) & set(keys)
        if clash:
            raise ValueError(f"--variant {name!r} sets {sorted(clash)[0]!r}, which a --grid sweeps too")
    variants = []
    for choice, *values in itertools.product(named or [(None, {})], *(v for _, v in grids)):
        list_name, settings = choice
        parts = [list_name] if list_name else []
        parts += [_slug(k, v) for (k, choices), v in zip(grids, values) if v != choices[0]]
        variants.append(Variant("_".join(parts) or "baseline", {**settings, **dict(zip(keys, values))}))
    seen = {}
    for v in variants:
        if v.name in seen:
            raise ValueError(f"variants {seen[v.name].describe()!r} and {v.describe()!r} get the same folder "
                             f"name {v.name!r}: use --variant with names of your own")
        seen[v.name] = v
    return variants
