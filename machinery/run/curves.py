"""training_curves.png in every run folder: training and validation loss against the step, drawn from
log_data.csv's rows at the end of training (matplotlib's Agg canvas: no display, no global backend change)."""
from __future__ import annotations

import io
from pathlib import Path

from machinery.fileio import atomic_write


def plot_training_curves(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = [int(r["step"]) for r in rows]
    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for column, label, style in (("train_loss", "training loss", "-"), ("val_loss", "validation loss", "-o")):
        ax.plot(steps, [float(r[column]) for r in rows], style, label=label, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", frameon=False)  # matplotlib picks the corner the curves leave free
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
