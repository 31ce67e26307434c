"""A sweep's definition: what every run shares (--preset and the fixed --key=value settings), the variants,
the seeds, and the code its runs were made from. It is kept in sweeps/<name>/sweep.json, so a re-run can tell
whether it is the same sweep, and a re-run command may leave out what it does not change (from_command).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from config import MODEL_FIELDS, PRESETS, RENAMED_FIELDS, ModelConfig, TrainConfig
from machinery import PROJECT_ROOT as ROOT
from machinery.cli import build_configs, parse_value
from machinery.run.provenance import describe_changes
from machinery.sweeps.grid import NAME_RE, Variant, check_field, expand


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


@lru_cache(maxsize=1)
def _config_defaults() -> dict:
    return {**ModelConfig().to_dict(), **TrainConfig().to_dict()}


SWEPT = "(swept)"


def _effective(key: str, sweep: "Sweep") -> tuple[object, str]:
    """(value, how it is shown) of a shared setting in a sweep: given, swept, from its preset, or the default."""
    given = {_canonical(k): v for k, v in sweep.fixed.items()}
    if key in given:
        return _typed(key, given[key]), str(given[key])
    if key in sweep.swept_fields():
        return SWEPT, SWEPT
    preset = {_canonical(k): v for k, v in PRESETS.get(sweep.preset, {}).items()} if sweep.preset else {}
    if key in preset:
        return preset[key], f"{preset[key]} (preset {sweep.preset})"
    default = _config_defaults().get(key)
    return default, f"{default} (default)"


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
    code: dict | None = field(default=None, compare=False)  # the code recorded when the sweep first ran

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

    def swept_fields(self) -> set[str]:
        return {_canonical(k) for k, _ in self.grids} | {_canonical(k) for _, s in self.named for k in s}

    def differences(self, recorded: "Sweep") -> list[str]:
        """The shared settings whose value differs from a recorded definition, as 'key: old -> new'. Fields are
        matched under their current names; a setting given on one side only is compared with what the other
        side gets (its preset's value or the config default), so only real differences are listed."""
        out = [] if self.preset == recorded.preset else \
            [f"preset: {recorded.preset or '(none)'} -> {self.preset or '(none)'}"]
        keys = {_canonical(k) for k in [*self.fixed, *recorded.fixed]}
        for key in sorted(keys):
            (old, old_text), (new, new_text) = _effective(key, recorded), _effective(key, self)
            if old != new:
                out.append(f"{key}: {old_text} -> {new_text}")
        return out

    def code_changes(self, current: dict) -> list[str]:
        """Source files whose SHA-256 differs between the sweep's recorded code and `current` (a fingerprint)."""
        if not self.code:
            return []
        return describe_changes(self.code.get("files", {}), current.get("files", {}))

    @classmethod
    def from_command(cls, name: str, preset: str | None, fixed: dict, grids: list, named: list, seeds: list,
                     seeds_given: bool, inherit: bool = True) -> "Sweep":
        """The sweep a command asks for. When the sweep is recorded (and inherit), what the command leaves out
        is the recorded one's (with --overwrite too: to drop a setting, give its default or use a new name): the preset, each shared setting neither given again nor now swept, the variants
        when no --grid/--variant is given, the seeds when no --seeds; and the recorded code. So
        `python sweep.py --name=X --seeds=5` adds seeds and `--name=X --max_iters=600` changes one setting."""
        if not inherit or not (sweeps_dir() / name / "sweep.json").is_file():
            return cls(name, preset, fixed, grids, named, seeds)
        recorded = cls.load(name)
        if not (grids or named):
            grids, named = recorded.grids, recorded.named
        swept = {_canonical(k) for k, _ in grids} | {_canonical(k) for _, s in named for k in s}
        given = {_canonical(k) for k in fixed}
        kept = {k: v for k, v in recorded.fixed.items() if _canonical(k) not in given | swept}
        return cls(name, recorded.preset if preset is None else preset, {**kept, **fixed}, grids, named,
                   seeds if seeds_given else recorded.seeds, code=recorded.code)

    def to_json(self) -> dict:
        return {"name": self.name, "preset": self.preset, "fixed": self.fixed,
                "grids": [[k, v] for k, v in self.grids], "variants": [[n, s] for n, s in self.named],
                "seeds": self.seeds, "baseline": self.baseline.name,
                "runs": {p.name: {"variant": p.variant.name, "seed": p.seed} for p in self.runs},
                "code": self.code}

    @classmethod
    def from_json(cls, data: dict) -> "Sweep":
        return cls(data["name"], data.get("preset"), dict(data.get("fixed", {})),
                   [(k, list(v)) for k, v in data.get("grids", [])],
                   [(n, dict(s)) for n, s in data.get("variants", [])], list(data["seeds"]), data.get("code"))

    @classmethod
    def load(cls, name: str) -> "Sweep":
        path = sweeps_dir() / name / "sweep.json"
        if not path.is_file():
            known = sorted(p.parent.name for p in sweeps_dir().glob("*/sweep.json"))
            raise FileNotFoundError(f"no sweep named {name!r} in {sweeps_dir()}; sweeps there: "
                                    f"{', '.join(known) or '(none yet)'}")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is corrupt ({e}): run the sweep command again with --overwrite") from None


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
