"""Small helpers shared by the training tests."""
from __future__ import annotations

import csv
from pathlib import Path

from machinery.run.run_log import TIMING_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def read_log(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "log_data.csv", newline="") as f:
        return list(csv.DictReader(f))


def deterministic(rows: list[dict]) -> list[dict]:
    """Log rows without wall-clock columns, which differ between otherwise identical runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def run_notebook(name: str, folder: Path = ROOT, timeout: int = 300):
    """Execute a notebook headless as Jupyter does when it is opened from `folder` (the kernel starts there)."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(folder / name, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb
