"""log_data.csv: one row per evaluation, rewritten atomically so a crash never leaves half a row."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from machinery.fileio import write_text

COLUMNS = ["step", "tokens", "elapsed_s", "tokens_per_sec", "train_loss", "val_loss", "perplexity", "lr",
           "grad_norm", "mfu", "wall_s", "peak_memory_mb"]  # new columns go last: older logs are a prefix
FIRST_COLUMNS = COLUMNS[:10]  # the oldest logs' header
TIMING_COLUMNS = {"elapsed_s", "tokens_per_sec", "mfu", "wall_s", "peak_memory_mb"}  # differ between identical runs


class RunLog:
    def __init__(self, path: Path, rows: list[dict] | None = None):
        self.path = Path(path)
        self.rows = rows or []

    @classmethod
    def resume(cls, path: Path, up_to_step: int) -> "RunLog":
        """Keep rows up to the checkpoint's step; later ones will be produced again."""
        rows = []
        if Path(path).is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                if len(header) < len(FIRST_COLUMNS) or header != COLUMNS[:len(header)]:
                    raise ValueError(f"{path} is not this run's log: its header is {reader.fieldnames}, "
                                     f"expected {','.join(COLUMNS)}; restore it or move it away to resume")
                rows = [r for r in reader if int(r["step"]) <= up_to_step]  # older rows: the new columns blank
        return cls(path, rows)

    def append(self, row: dict) -> None:
        self.rows.append({k: _fmt(row[k]) for k in COLUMNS})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip: identical runs give identical text
    return str(value)
