"""What to do after a run diverged (an inf/NaN loss, gradient or weight): the checkpoint to go back to.

--resume takes the newest complete checkpoint, which may already hold a run on its way up: going back there
diverges again. The advice names the newest checkpoint saved while the loss was still finite and falling (by
log_data.csv: every evaluation up to it finite, the last one no higher than the one before), and the newer
step folders to move out of checkpoints/ so that --resume takes it; or says that there is none.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from machinery.run.checkpoint import checkpoint_root, complete_checkpoints

FIXES = "a lower --lr_max, --grad_clip=1, or --dtype=float32"


def _val_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of each evaluation in log_data.csv; [] when there is none or it is unreadable."""
    try:
        with open(Path(run_dir) / "log_data.csv", newline="") as f:
            return [(int(row["step"]), float(row["val_loss"])) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return []


def _still_falling(step: int, losses: list[tuple[int, float]]) -> bool:
    """Whether training was healthy at `step`: every loss up to it finite, the last one not above the one before."""
    before = [loss for s, loss in losses if s <= step]
    if not all(math.isfinite(loss) for loss in before):
        return False
    return len(before) < 2 or before[-1] <= before[-2]


def recovery_advice(run_dir: Path) -> str:
    """One or two sentences: the checkpoint to resume from (and the step folders to move away first), or none."""
    root, complete = checkpoint_root(run_dir), complete_checkpoints(run_dir)
    losses = _val_losses(run_dir)
    good = next(((step, folder) for step, folder in complete if _still_falling(step, losses)), None)
    if good is None:
        saved = f" ({', '.join(f.name for _, f in complete)} came after the loss stopped falling)" if complete else ""
        return (f"No checkpoint was saved while the loss was still finite and falling{saved}: start again with "
                f"--overwrite and {FIXES}")
    newer = [folder.name for step, folder in complete if step > good[0]]
    if not newer:
        return f"The newest checkpoint, {good[1]}, was saved while the loss was still falling: try {FIXES}, then --resume"
    return (f"The newest checkpoint saved while the loss was still finite and falling is {good[1]}: move "
            f"{', '.join(newer)} out of {root} (the loss was rising there), then --resume with {FIXES}")
