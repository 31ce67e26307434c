"""Picking an implementation by its config name, loudly.

A name listed in config.py (say NORM_TYPES) without code behind it must stop the run with one line naming
it, not silently fall through to some other implementation.
"""
from __future__ import annotations

import config


def pick(table: dict, field: str, name: str, listed_in: str, where: str):
    """table[name], or a ValueError naming the field, the name and the file that lacks it.

    listed_in: the config.py tuple of allowed names (e.g. "NORM_TYPES"); where: the file holding `table`.
    """
    if name in table:
        return table[name]
    if name in getattr(config, listed_in):
        raise ValueError(f"{field}={name!r} is listed in config.{listed_in} but {where} has no implementation "
                         f"for it: add one there (see README 'Trying your own idea')")
    raise ValueError(f"{field}={name!r} is unknown: {where} implements {', '.join(map(repr, table))}")
