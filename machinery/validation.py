"""The checks every config field goes through, each a ValueError naming the field, the bad value and what is
allowed, and the mapping of renamed fields when a saved config is read. config.py's dataclasses build on it,
and so do the generation settings (machinery/generation/) and inference.py's run options.

This file imports nothing from the rest of the project.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import fields


def renamed(values: dict, known: set[str], where: str, renames: dict[str, str]) -> dict:
    """`values` with old field names replaced by their new ones (`renames`: old -> new); a name `known` does not
    hold is an error."""
    out = {}
    for key, value in values.items():
        new = renames.get(key, key)
        if new not in known:
            raise ValueError(f"{where} has no field {key!r}")
        if new in out:
            raise ValueError(f"{where}: {key!r} and {new!r} are the same field (renamed): give one of them")
        out[new] = value
    return out


class Validated:
    """Shared checks for a config dataclass's __post_init__, and its (de)serialization."""
    RENAMES: dict[str, str] = {}  # old field name -> new, for configs saved before a rename

    def _fail(self, name: str, allowed: str) -> None:
        raise ValueError(
            f"{type(self).__name__}.{name}={getattr(self, name)!r} is invalid: {allowed}")

    @classmethod
    def choices(cls, name: str) -> tuple | None:
        """The allowed values of field `name` when it is a choice among names (config.py: CHOICES), else None."""
        return None

    def _check_choices(self) -> None:
        for f in fields(self):
            if (options := self.choices(f.name)) is not None:
                self._choice(f.name, options)

    def _choice(self, name: str, options: tuple) -> None:
        if getattr(self, name) not in options:
            self._fail(name, f"allowed values are {', '.join(map(repr, options))}")

    def _int(self, name: str, minimum: int = 1, optional: bool = False, maximum: int | None = None) -> None:
        v = getattr(self, name)
        if optional and v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            allowed = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            self._fail(name, f"must be an integer {allowed}" + (" or None" if optional else ""))

    def _float(self, name: str, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False,
               optional: bool = False) -> None:
        v = getattr(self, name)
        if optional and v is None:
            return
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo) and v <= hi
        if not ok:
            bracket = "(" if lo_open else "["
            self._fail(name, f"must be a number in {bracket}{lo}, {hi}]" + (" or None" if optional else ""))

    def _bool(self, name: str) -> None:
        if not isinstance(getattr(self, name), bool):
            self._fail(name, "must be True or False")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict):
        """Build from saved values (a run's JSON): old field names are mapped through RENAMES (config.RENAMED_FIELDS), so runs
        saved before a rename still load; an unknown name is a ValueError naming it."""
        return cls(**renamed(values, {f.name for f in fields(cls)}, cls.__name__, cls.RENAMES))
