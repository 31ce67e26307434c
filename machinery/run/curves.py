"""training_curves.png in every run folder, drawn at the end of training (matplotlib's Agg canvas: no display,
no global backend change): the training loss at every log_interval line (train_loss.csv) and the validation
loss at every evaluation (log_data.csv), against the step."""
from __future__ import annotations

import io
from pathlib import Path

from machinery.fileio import atomic_write


def plot_training_curves(rows: list[dict], path: Path, title: str, train_rows: list[dict] | None = None) -> None:
    buf = io.BytesIO()
    training_curves_figure(rows, title, train_rows).savefig(buf, format="png")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def training_curves_figure(rows: list[dict], title: str, train_rows: list[dict] | None = None):
    """`rows`: log_data.csv's; `train_rows`: train_loss.csv's. Without train_rows (runs from before
    train_loss.csv) the training curve is log_data.csv's mean since the previous evaluation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train, label = (train_rows, "training loss") if train_rows else (rows, "training loss (mean between evaluations)")
    ax.plot([int(r["step"]) for r in train], [float(r["train_loss"]) for r in train], "-", label=label,
            linewidth=1)
    ax.plot([int(r["step"]) for r in rows], [float(r["val_loss"]) for r in rows], "-o", label="validation loss",
            markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)  # matplotlib picks the corner the curves leave free
    fig.tight_layout()
    return fig
