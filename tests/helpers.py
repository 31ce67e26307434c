"""Small helpers shared by the tests."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from machinery.run.run_log import TIMING_COLUMNS


def read_log(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "log_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def deterministic(rows: list[dict]) -> list[dict]:
    """Log rows without wall-clock columns, which differ between otherwise identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def write_table(path: Path, rows: list[dict]) -> Path:
    """rows as a .jsonl (one object a line), .json (one list) or .parquet file, by path's suffix."""
    path = Path(path)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pandas as pd
        pd.DataFrame(rows).to_parquet(path)
    return path
