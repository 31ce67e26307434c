"""Which local data file is broken, and where: what machinery/data/sources.py says when `datasets` fails to read one.

`datasets` reports a bad JSON line as "row 1" of some internal batch and a fake parquet file without its name;
re-reading the files ourselves (only after a failure, so it costs nothing otherwise) names both.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Optional


def first_broken_file(files: list[Path], fmt: str) -> Optional[str]:
    """What is wrong with the first unreadable file (json: the first bad line), or None if all read."""
    for path in files:
        if fmt == "parquet":
            import pyarrow.parquet as pq
            try:
                pq.read_metadata(path)
            except Exception as e:
                return f"{path} is not a readable parquet file ({e})"
            continue
        with contextlib.suppress(ValueError):  # a .json file may be one JSON document rather than lines
            json.loads(path.read_bytes())
            continue
        with open(path, encoding="utf-8", errors="strict") as f:
            try:
                for number, line in enumerate(f, 1):
                    if line.strip():
                        json.loads(line.strip())
            except UnicodeDecodeError as e:
                return f"{path} is not UTF-8 text ({e})"
            except json.JSONDecodeError as e:
                return (f"{path}, line {number}: not a valid JSON record ({e.msg} at column {e.colno}); "
                        f"fix or remove that line")
    return None
