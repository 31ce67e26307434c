"""Experiment trackers: the rows of log_data.csv and the run's configs, also sent to TensorBoard or Weights & Biases.

    tracker = make_tracker(cfg.tracker)          # 'none', 'tensorboard' or 'wandb' (config.TRACKERS)
    tracker.start(run_dir, {"model": model_cfg.to_dict(), "train": cfg.to_dict()})
    tracker.log(row)                              # wherever log_data.csv gets a row
    tracker.finish()

Both are optional packages (pip install -r requirements-optional.txt). TensorBoard writes to
<run_dir>/tensorboard (view with `tensorboard --logdir trained`); W&B writes to <run_dir>/wandb, offline unless
WANDB_MODE says otherwise (`wandb sync <run_dir>/wandb/offline-run-*` uploads a run later).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path


class Tracker:
    """Tracks nothing: the interface, and what --tracker=none uses."""

    def start(self, run_dir: Path, configs: dict[str, dict], resume_step: int | None = None) -> None:
        """Open the tracker for run_dir; resume_step: the checkpoint a resumed run continues from (rows after it
        are logged again)."""

    def log(self, row: dict) -> None:
        """One row of log_data.csv (its 'step' is the x axis)."""

    def finish(self) -> None:
        """Flush and close."""


class TensorBoardTracker(Tracker):
    def start(self, run_dir, configs, resume_step=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tracker=tensorboard needs the tensorboard package: pip install tensorboard") from None
        log_dir = Path(run_dir) / "tensorboard"
        try:  # purge_step: a resumed run first hides the rows logged after its checkpoint, which it logs again
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=None if resume_step is None else resume_step + 1)
            for name, values in configs.items():  # markdown: indented lines are a code block
                text = "\n".join("    " + line for line in json.dumps(values, indent=2).splitlines())
                self.writer.add_text(f"config/{name}", text, global_step=0)
            self.writer.flush()  # writes the event file now: a folder it cannot write fails here, before training
        except OSError as e:
            raise ValueError(f"--tracker=tensorboard cannot write to {log_dir} ({e.strerror or e}): make it a "
                             f"writable folder, or train with --tracker=none") from None

    def log(self, row):
        step = int(row["step"])
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()  # rows are minutes apart: keep the board current

    def finish(self):
        self.writer.close()


class WandbTracker(Tracker):
    def start(self, run_dir, configs, resume_step=None):
        try:
            import wandb
        except ImportError:
            raise ValueError("--tracker=wandb needs the wandb package: pip install wandb") from None
        run_dir, mode = Path(run_dir), os.environ.get("WANDB_MODE", "offline")  # offline: no network, no account
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "templateGPT"), name=run_dir.name,
                                  dir=str(run_dir), config=configs, mode=mode,
                                  settings=wandb.Settings(console="off"))  # leave stdout alone (tqdm, our lines)
        except Exception as e:  # wandb's own errors (no API key, no network) have no common base but Exception
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"--tracker=wandb could not start with WANDB_MODE={mode} ({first_line}): log in "
                             f"(wandb login, or WANDB_API_KEY), or unset WANDB_MODE to log offline") from None

    def log(self, row):
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def finish(self):
        import wandb
        self.run.finish()
        wandb.teardown()  # wait for W&B's background process to write everything to disk


TRACKER_CLASSES = {"none": Tracker, "tensorboard": TensorBoardTracker, "wandb": WandbTracker}


def make_tracker(name: str) -> Tracker:
    """The tracker `name`; a missing package is a ValueError now, before any data is read."""
    if name not in TRACKER_CLASSES:
        raise ValueError(f"tracker={name!r} is unknown: allowed values are {', '.join(map(repr, TRACKER_CLASSES))}")
    if name != "none" and importlib.util.find_spec(name) is None:
        raise ValueError(f"--tracker={name} needs the {name} package: pip install {name}")
    return TRACKER_CLASSES[name]()
