"""A benchmark's command line: its options dataclass parsed by machinery/cli.py, with --help written from it."""
from __future__ import annotations

import sys

from machinery.cli import UsageError, build, print_help_if_asked, reject_unknown, split_args


def parse_options(cls, argv: list[str] | None, usage: str):
    """An instance of dataclass `cls` from `--key=value` arguments (default sys.argv[1:]), or an exit code:
    0 when --help/-h was printed, 2 after printing one `error: ...` line for a bad option."""
    try:
        overrides, positional = split_args(sys.argv[1:] if argv is None else argv)
        if print_help_if_asked(overrides, usage=usage, sections=[("Options", cls)]):
            return 0
        options = build(cls, overrides)
        reject_unknown(overrides, cls)
        if positional:
            raise UsageError(f"unexpected argument {positional[0]!r}; options are written --key=value")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return options
