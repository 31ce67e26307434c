"""Plots of the runs' logs and evaluations. Legends sit outside the axes so they never cover a curve;
large numbers on an axis are written with SI prefixes (1.5 M tokens, 20 T FLOPs) and few ticks."""
from __future__ import annotations

import pandas as pd
from matplotlib.ticker import EngFormatter, LogLocator, MaxNLocator, NullFormatter

from machinery.comparison.runs import as_runs

X_AXES = {"step": "step", "tokens": "training tokens", "elapsed_s": "training time (s, evaluations excluded)",
          "wall_s": "wall-clock time (s)", "flops": "training FLOPs"}
SI_AXES = ("tokens", "flops", "train_flops")  # axes whose values run into millions and more
COST_AXES = {"wall_s": "wall-clock time (s)", "train_flops": "training FLOPs", "peak_memory_mb": "peak memory (MiB)"}


def _new_ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    return ax


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, top-aligned: beside the curves, never on them."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _format_x(ax, x: str, logx: bool) -> None:
    if logx:
        ax.set_xscale("log")
        # majors at 1, 2 and 5 per decade, thinned to at most 6 labels; no labels on minor ticks
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    if x in SI_AXES:
        ax.xaxis.set_major_formatter(EngFormatter(sep="\N{THIN SPACE}"))


def plot_metric(runs, column: str = "val_loss", x: str = "step", logx: bool = False, logy: bool = False,
                smooth: float = 0, ax=None, legend: bool = True):
    """One line per run of a log column against x ('step', 'tokens', 'elapsed_s' = training time, 'wall_s' =
    wall-clock time with evaluations, or 'flops' = tokens * the model's training FLOPs per token). smooth in [0, 1): exponential moving average weight
    of the past (0 = raw). Returns the matplotlib Axes."""
    if x not in X_AXES:
        raise ValueError(f"x={x!r} is not one of {', '.join(X_AXES)}")
    if not 0 <= smooth < 1:
        raise ValueError(f"smooth={smooth} must be in [0, 1)")
    runs = as_runs(runs)
    for name, run in runs.items():  # check every run before drawing anything
        missing = [c for c in (column, "tokens" if x == "flops" else x) if c not in run.log.columns]
        if missing:
            raise ValueError(f"run {name}: log_data.csv has no column {missing[0]!r}; "
                             f"columns: {', '.join(run.log.columns)}")
    ax = _new_ax(ax)
    for name, run in runs.items():
        log = run.log
        xs = log["tokens"] * run.flops_per_token if x == "flops" else log[x]
        ys = log[column].astype(float)
        keep = ys.notna() & xs.notna()
        xs, ys = xs[keep], ys[keep]
        if smooth:
            ys = ys.ewm(alpha=1 - smooth).mean()
        ax.plot(xs, ys, label=name, marker="." if len(ys) < 30 else None)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(column)
    ax.set_title(f"{column} vs {X_AXES[x]}")
    _format_x(ax, x, logx)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if runs and legend:
        _legend_outside(ax)
    return ax


def plot_losses(runs, x: str = "step", logx: bool = False, logy: bool = False, smooth: float = 0):
    """Train and validation loss side by side against x, one legend below both; returns the Figure."""
    import matplotlib.pyplot as plt
    runs = as_runs(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    plot_metric(runs, "train_loss", x, logx, logy, smooth, ax=left, legend=False)
    plot_metric(runs, "val_loss", x, logx, logy, smooth, ax=right, legend=False)
    if runs:
        fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(runs), 4),
                   frameon=False)
    return fig


def plot_topk(table_or_results, ax=None):
    """Top-k accuracy against k per run, from summary_table()'s result or {run: [top-1, top-2, ...]}."""
    if isinstance(table_or_results, pd.DataFrame):
        results = table_or_results.attrs.get("topk_acc", {})
    else:
        results = dict(table_or_results)
    ax = _new_ax(ax)
    for name, accs in results.items():
        ax.plot(range(1, len(accs) + 1), accs, marker="o", label=name)
    ax.set_xlabel("k")
    ax.set_ylabel("next-token accuracy (true token in top k)")
    ax.set_title("top-k accuracy on the validation texts")
    ax.grid(alpha=0.3)
    if results:
        _legend_outside(ax)
        ax.set_xticks(range(1, max(len(a) for a in results.values()) + 1))
    return ax


def plot_cost(table: pd.DataFrame, group: str | None = None, title: str = ""):
    """What each run's result cost: its best validation loss against wall-clock time, training FLOPs and peak
    memory, one panel each (lower-left is better per second / per FLOP / per MiB). table: one row per run with
    best_val_loss, wall_s, train_flops, peak_memory_mb and still_improving (summary_table's, or a sweep's
    runs.csv); group: the column that colours and labels the points (default: the run). A hollow marker is a
    run still improving at its last evaluation. Runs logged before a cost was recorded have no point there."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(13, 4.2), layout="constrained", sharey=True)
    labels = table[group] if group else pd.Series(table.index, index=table.index)
    colors = {label: f"C{i % 10}" for i, label in enumerate(dict.fromkeys(labels))}
    improving = table.get("still_improving", pd.Series(False, index=table.index)).fillna(False).astype(bool)
    for ax, (column, axis_label) in zip(axes, COST_AXES.items()):
        xs = table[column].astype(float) if column in table else pd.Series(float("nan"), index=table.index)
        for idx, x in xs.items():
            y = float(table.loc[idx, "best_val_loss"])
            if pd.notna(x) and pd.notna(y):
                color = colors[labels[idx]]
                ax.scatter([x], [y], s=46, edgecolors=color, linewidths=1.5,
                           facecolors="none" if improving[idx] else color)
        if xs.isna().all():
            ax.text(0.5, 0.5, "not recorded for these runs", transform=ax.transAxes, ha="center", color="0.4")
        ax.set_xlabel(axis_label)
        if column in SI_AXES:
            ax.xaxis.set_major_formatter(EngFormatter(sep="\N{THIN SPACE}"))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("best validation loss")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=str(label)) for label, c in colors.items()]
    if improving.any():
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="0.3",
                              label="hollow: still improving"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    fig.suptitle(title or "best validation loss against what it cost")
    return fig


def plot_judge(summary: dict):
    """The judge's grades per run with 95% confidence intervals: mean grade per criterion (1-10) on the left,
    the mean guessed age in years on the right. `summary`: machinery/evaluation/judge.summarize()'s result.
    Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    from machinery.evaluation.judge import CRITERIA
    fig, (grades, age) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=(3, 1), layout="constrained")
    width = 0.8 / max(len(summary), 1)
    for i, (name, s) in enumerate(summary.items()):
        xs = np.arange(len(CRITERIA)) + (i - (len(summary) - 1) / 2) * width
        label = f"{name} ({s['graded']} graded, {s['malformed']} malformed)"
        bars = grades.bar(xs, [s[c].mean for c in CRITERIA], width, yerr=[s[c].ci95 for c in CRITERIA],
                          capsize=3, label=label)
        age.bar([i], [s["age"].mean], 0.8, yerr=[s["age"].ci95], capsize=3, color=bars.patches[0].get_facecolor())
    grades.set_xticks(range(len(CRITERIA)), CRITERIA)
    grades.set_ylim(0, 10)
    grades.set_ylabel("mean grade (1-10), 95% CI")
    grades.set_title("judge's grades of the story continuations")
    age.set_xticks(range(len(summary)), list(summary), rotation=30, ha="right")
    age.set_ylabel("guessed age of the writer (years)")
    age.set_title("age group")
    for ax in (grades, age):
        ax.grid(alpha=0.3, axis="y")
    if summary:
        fig.legend(*grades.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(summary), 2),
                   frameon=False)
    return fig
