"""A sweep's definition: what every run shares (--preset and the fixed --key=value settings), the variants
and the seeds. It is kept in sweeps/<name>/sweep.json, so a re-run can tell whether it is the same sweep.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from config import MODEL_FIELDS, PRESETS, RENAMED_FIELDS, ModelConfig, TrainConfig
from machinery import PROJECT_ROOT as ROOT
from machinery.cli import build_configs, parse_value
from machinery.sweeps.grid import NAME_RE, Variant, check_field, expand


MAX_RUNS = 1000  # runs in one sweep (variants x seeds)


def sweeps_dir() -> Path:
    """Where sweeps keep their definition and report; TEMPLATEGPT_SWEEPS_DIR moves it (tests do)."""
    return Path(os.environ.get("TEMPLATEGPT_SWEEPS_DIR", ROOT / "sweeps"))


def _canonical(key: str) -> str:
    return RENAMED_FIELDS.get(key, key)  # a field's current name (old names are still accepted)


def _typed(key: str, value):
    """A setting as the config holds it ('1e-3' and '0.001' are the same lr_max)."""
    key = _canonical(key)
    if not isinstance(value, str):
        return value
    return parse_value(ModelConfig if key in MODEL_FIELDS else TrainConfig, key, value)


@dataclass
class RunPlan:
    name: str          # the run folder in trained/: <sweep>__<variant>__s<seed>
    variant: Variant
    seed: int
    settings: dict     # every --key=value handed to train.py (the preset apart)
    expected: dict     # field -> value that the run folder's saved configs must hold to count as this run
    max_iters: int
    device: str        # TrainConfig.device: 'cpu' keeps the runs off the GPUs


@dataclass
class Sweep:
    name: str
    preset: str | None
    fixed: dict                    # --key=value given for every run (strings, as typed)
    grids: list                    # [(field, [value, ...]), ...]
    named: list                    # [(variant name, {field: value}), ...] from --variant
    seeds: list

    def __post_init__(self):
        if not isinstance(self.name, str) or not NAME_RE.match(self.name) or "__" in self.name:
            raise ValueError(f"--name={self.name!r} is invalid: use letters, digits, '_', '.', '-' (no '__'), "
                             f"not starting with '.'")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"--seeds={self.seeds!r} is invalid: give a count (3 -> seeds 0, 1, 2) or distinct "
                             f"seeds >= 0 separated by commas")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"--preset={self.preset!r} is unknown; presets are: {', '.join(PRESETS)}")
        for key in self.fixed:
            check_field(key, f"--{key}")
        runs = max(len(self.named), 1) * math.prod(len(values) for _, values in self.grids) * len(self.seeds)
        if runs > MAX_RUNS:  # counted before anything is expanded: a typo'd grid must not plan for minutes
            raise ValueError(f"this sweep would train {runs:,} runs (variants x seeds), more than {MAX_RUNS:,}: "
                             f"narrow the grid or split it into several sweeps")
        swept = {k for k, _ in self.grids} | {k for _, s in self.named for k in s}
        both = sorted(swept & set(self.fixed))
        if both:
            raise ValueError(f"--{both[0]}={self.fixed[both[0]]} is fixed and also swept: drop one of them")

    @property
    def folder(self) -> Path:
        return sweeps_dir() / self.name

    @cached_property
    def variants(self) -> list[Variant]:
        return expand(self.grids, self.named)

    @property
    def baseline(self) -> Variant:
        return self.variants[0]

    @cached_property
    def runs(self) -> list[RunPlan]:
        """Every variant x seed, each built with config.build_configs: a bad value fails here, before any
        run starts, naming the variant and the field."""
        preset_keys = set(PRESETS[self.preset]) if self.preset else set()
        plans = []
        for variant in self.variants:
            for seed in self.seeds:
                name = f"{self.name}__{variant.name}__s{seed}"
                settings = {**self.fixed, **variant.settings, "seed": str(seed), "model_name": name}
                try:
                    model_cfg, train_cfg = build_configs(dict(settings), self.preset)
                except ValueError as e:
                    raise ValueError(f"variant {variant.name!r} ({variant.describe()}): {e}") from None
                values = {**model_cfg.to_dict(), **train_cfg.to_dict()}
                keys = {_canonical(k) for k in preset_keys | set(settings)}
                # None and 'auto' are left for train.py to decide (vocab_len, device, dtype), so may be saved resolved
                expected = {k: values[k] for k in sorted(keys) if values.get(k) not in (None, "auto")}
                plans.append(RunPlan(name, variant, seed, settings, expected, train_cfg.max_iters, train_cfg.device))
        return plans

    def shared_settings(self) -> dict:
        return {"preset": self.preset, **self.fixed}

    def differences(self, recorded: "Sweep") -> list[str]:
        """Shared settings that differ from a recorded definition, as 'key: old -> new'."""
        mine, theirs = self.shared_settings(), recorded.shared_settings()
        out = []
        for key in sorted(set(mine) | set(theirs), key=str):
            a, b = theirs.get(key), mine.get(key)
            same = a == b or (a is not None and b is not None and key != "preset" and _typed(key, a) == _typed(key, b))
            if not same:
                out.append(f"{key}: {a if a is not None else '(not set)'} -> {b if b is not None else '(not set)'}")
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "preset": self.preset, "fixed": self.fixed,
                "grids": [[k, v] for k, v in self.grids], "variants": [[n, s] for n, s in self.named],
                "seeds": self.seeds, "baseline": self.baseline.name,
                "runs": {p.name: {"variant": p.variant.name, "seed": p.seed} for p in self.runs}}

    @classmethod
    def from_json(cls, data: dict) -> "Sweep":
        return cls(data["name"], data.get("preset"), dict(data.get("fixed", {})),
                   [(k, list(v)) for k, v in data.get("grids", [])],
                   [(n, dict(s)) for n, s in data.get("variants", [])], list(data["seeds"]))

    @classmethod
    def load(cls, name: str) -> "Sweep":
        """The sweep recorded in sweeps/<name>/sweep.json: a plain name, a real folder and file inside sweeps/,
        and a record that names this folder (a copied or renamed folder would report into the original's)."""
        if not isinstance(name, str) or not NAME_RE.match(name) or "__" in name:
            raise ValueError(f"--name={name!r} is not a sweep name: a recorded sweep is loaded by the plain name of "
                             f"its folder in {sweeps_dir()} (letters, digits, '_', '.', '-'; no '/' or '__')")
        folder = sweeps_dir() / name
        path = folder / "sweep.json"
        for entry in (folder, path):
            if entry.is_symlink():
                raise ValueError(f"{entry} is a symbolic link: a sweep's record must be a real folder and file in "
                                 f"{sweeps_dir()}, so nothing is read or written through a link")
        if not path.is_file():
            known = sorted(p.parent.name for p in sweeps_dir().glob("*/sweep.json"))
            raise FileNotFoundError(f"no sweep named {name!r} in {sweeps_dir()}; sweeps there: "
                                    f"{', '.join(known) or '(none yet)'}")
        try:
            sweep = cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is corrupt ({e}): run the sweep command again with --overwrite") from None
        if sweep.name != name:
            raise ValueError(f"{path} records the sweep {sweep.name!r}: this folder is a copy of it (or was "
                             f"renamed), and its runs are trained/{sweep.name}__*. Use --name={sweep.name}, or give "
                             f"the sweep's settings again with --overwrite to make {name!r} a sweep of its own")
        return sweep


def saved_mismatches(run_dir: Path, expected: dict) -> list[str]:
    """Fields whose value in a run folder's saved configs differs from what the sweep wants for that run."""
    saved = {}
    for file in ("model_config.json", "train_config.json"):
        try:
            saved.update(json.loads((run_dir / file).read_text()))
        except (OSError, json.JSONDecodeError):
            pass  # an incomplete folder: train.py restarts it
    return [f"{k}={saved[k]!r} (the sweep wants {v!r})" for k, v in expected.items()
            if k in saved and saved[k] != v]
