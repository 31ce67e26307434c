"""The sweep report's PNGs: validation loss vs step per variant (mean over seeds, band = min..max), a final
metric per variant (mean ± std over seeds, each seed a dot, hollow when still improving), and what each run's
result cost (best loss against wall time, FLOPs and peak memory, coloured by variant)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt
    return plt


def plot_val_loss(sweep, runs: pd.DataFrame, logs: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in sweep.variants:
        names = runs.loc[runs["variant"] == variant.name, "run"].tolist()
        if not names:
            continue
        # one column per seed, aligned on step (every seed evaluates at the same steps)
        curves = pd.concat([logs[n].set_index("step")["val_loss"].rename(n) for n in names], axis=1).dropna()
        mean = curves.mean(axis=1)
        line, = ax.plot(mean.index, mean.values, label=f"{variant.name} ({len(names)} seeds)")
        ax.fill_between(curves.index, curves.min(axis=1), curves.max(axis=1), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"sweep {sweep.name}: validation loss (line: mean, band: min..max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_final_metric(sweep, runs: pd.DataFrame, metric: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(sweep.variants) + 2), 4))
    names = [v.name for v in sweep.variants if (runs["variant"] == v.name).any()]
    for i, name in enumerate(names):
        values = runs.loc[runs["variant"] == name, metric]
        std = values.std() if len(values) > 1 else 0.0  # pandas' std is the sample (n - 1) one
        ax.errorbar([i], [values.mean()], yerr=[std], fmt="o", capsize=6, markersize=8, color="C0")
        improving = runs.loc[runs["variant"] == name, "still_improving"].astype(bool)
        ax.scatter([i + 0.12] * len(values), values, s=18, edgecolors="C1", zorder=3,
                   facecolors=["none" if still else "C1" for still in improving])
    crowded = len(names) > 3
    ax.set_xticks(range(len(names)), names, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylabel(metric)
    hollow = "; hollow: still improving" if runs["still_improving"].astype(bool).any() else ""
    ax.set_title(f"{metric}: mean ± std over seeds\n(dots: each seed{hollow})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep_cost(sweep, runs: pd.DataFrame, path: Path) -> None:
    from machinery.comparison.plots import plot_cost
    plt = _pyplot()
    fig = plot_cost(runs.set_index("run"), group="variant",
                    title=f"sweep {sweep.name}: best validation loss against what it cost (one point per run)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
