"""The run's CSV logs, rewritten atomically so a crash never leaves half a row:
log_data.csv, one row per evaluation (RunLog), and train_loss.csv, one row per log_interval line (TrainLossLog),
the points of the training-loss curve."""
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
    COLUMNS = COLUMNS
    FIRST_COLUMNS = FIRST_COLUMNS

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
                if len(header) < len(cls.FIRST_COLUMNS) or header != cls.COLUMNS[:len(header)]:
                    raise ValueError(f"{path} is not this run's log: its header is {reader.fieldnames}, "
                                     f"expected {','.join(cls.COLUMNS)}; restore it or move it away to resume")
                rows = [r for r in reader if int(r["step"]) <= up_to_step]  # older rows: the new columns blank
        return cls(path, rows)

    def append(self, row: dict) -> None:
        """Add a row and rewrite the file (one row per evaluation: a few hundred rows in a long run)."""
        self.add(row)
        self.save()

    def add(self, row: dict) -> None:
        self.rows.append({k: _fmt(row[k]) for k in self.COLUMNS})

    def save(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


class TrainLossLog(RunLog):
    """train_loss.csv: the loss, lr and tokens of the step at each log_interval line (process 0's loss; not
    averaged, unlike log_data.csv's train_loss, which is the mean since the previous evaluation). A row every 10
    steps would make rewriting the file at each one quadratic in the run's length, so rows are only added here
    and the file is saved before each checkpoint and when training ends (train.py): a resume, which keeps the
    rows up to its checkpoint, still finds every one of them."""
    COLUMNS = FIRST_COLUMNS = ["step", "tokens", "train_loss", "lr"]

    def append(self, row: dict) -> None:
        self.add(row)


def _fmt(value) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip: identical runs give identical text
    return str(value)
