"""Small helpers shared by the training tests."""
from __future__ import annotations

import csv
from pathlib import Path

from machinery.run.run_log import TIMING_COLUMNS


def read_log(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "log_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def deterministic(rows: list[dict]) -> list[dict]:
    """Log rows without wall-clock columns, which differ between otherwise identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]
