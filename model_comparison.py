"""Compare trained runs: loss curves from their logs, and an evaluation of their weights on the same texts.

    python model_comparison.py gpt2_atto llama3_atto --out machinery/comparison/

From Python (and model_comparison.ipynb):

    import model_comparison as mc
    runs = mc.load_runs(["gpt2_atto", "llama3_atto"])
    mc.plot_losses(runs, x="flops", logx=True)
    table = mc.summary_table(runs, mc.load_texts(max_texts=80))   # no texts: the table from the logs alone
    mc.plot_topk(table)

The curves need only each run's log_data.csv. Bits per byte and top-k accuracy need validation text: the
TinyStories stories bundled in data/samples by default, any file or dataset with --val_data; when none can
be read they are left out with a note. The pieces live in machinery/comparison/.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from machinery.cli import UsageError, build, print_help_if_asked, reject_unknown, split_args
from machinery.comparison.metrics import bits_per_byte, topk_accuracy
from machinery.comparison.plots import X_AXES, plot_losses, plot_metric, plot_topk
from machinery.comparison.report import evaluate_run, log_summary, summary_table, to_markdown
from machinery.comparison.runs import Run, config_differences, load_run, load_runs
from machinery.comparison.texts import DEFAULT_VAL_DATA, load_texts

__all__ = ["Run", "load_run", "load_runs", "config_differences", "plot_metric", "plot_losses", "plot_topk",
           "X_AXES", "load_texts", "DEFAULT_VAL_DATA", "bits_per_byte", "topk_accuracy", "evaluate_run",
           "log_summary", "summary_table", "to_markdown", "main"]

USAGE = """usage: python model_comparison.py RUN [RUN ...] --out=DIR [--key=value ...]

Compare trained runs (names in trained/ or run folder paths): writes loss curves against step, training
tokens, wall time and FLOPs (loss_vs_*.png), top-k accuracy (topk_accuracy.png) and a table (summary.csv,
summary.md) with bits per byte, top-k accuracy, losses, speed and the config fields that differ.
`--key value` works as well as `--key=value`.

       python model_comparison.py --sweep=NAME     a sweep's report (see sweep.py): means over seeds, p-values"""


@dataclass
class ComparisonOptions:
    # --- output ---
    out: Optional[str] = None           # folder for the plots and the table (required)
    x: Optional[str] = None             # x axis of the loss curves: step, tokens, elapsed_s or flops; None: all four
    # --- evaluation (bits per byte, top-k accuracy) ---
    val_data: Optional[str] = DEFAULT_VAL_DATA  # validation texts: a .jsonl/.json file or any --dataset; None: skip
    max_texts: int = 200                # evaluate on the first N texts
    val_fraction: float = 0.05          # held-out fraction when val_data has no validation split (as in training)
    device: str = "cpu"                 # torch device for the evaluation

    def __post_init__(self):
        if self.x is not None and self.x not in X_AXES:
            raise UsageError(f"--x={self.x!r} is invalid: use one of {', '.join(X_AXES)} (or None for all)")
        if self.max_texts < 1:
            raise UsageError(f"--max_texts={self.max_texts} is invalid: must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val_fraction={self.val_fraction} is invalid: must be between 0 and 1")


def _join_spaced_values(argv: list[str]) -> list[str]:
    """`--out DIR` -> `--out=DIR` for the options that take a value (all of ComparisonOptions')."""
    takes_value = {f.name for f in fields(ComparisonOptions)}
    joined, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].replace("-", "_")
        if arg.startswith("--") and "=" not in arg and name in takes_value and i + 1 < len(argv):
            joined.append(f"{arg}={argv[i + 1]}")
            i += 2
        else:
            joined.append(arg)
            i += 1
    return joined


def parse_args(argv: list[str]) -> tuple[ComparisonOptions, list[str]] | None:
    """(options, run names), or None when help was printed."""
    overrides, runs = split_args(_join_spaced_values(argv))
    if print_help_if_asked(overrides, usage=USAGE, sections=[("Options", ComparisonOptions)]):
        return None
    options = build(ComparisonOptions, overrides)
    reject_unknown(overrides, ComparisonOptions)
    if not runs:
        raise UsageError("name at least one run to compare (a folder in trained/ or a run folder path); "
                         "see --help")
    if options.out is None:
        raise UsageError("--out=DIR is required: the folder the plots and the table are written to")
    out = Path(options.out)
    if out.is_symlink():
        raise UsageError(f"--out={out} is a symbolic link: give the folder itself (nothing is written through a link)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out={out} is a file, not a folder: give a folder for the plots and the table (it is "
                         f"created if it does not exist)")
    return options, runs


def _texts_or_note(options: ComparisonOptions) -> tuple[list[str] | None, str | None]:
    if options.val_data is None:
        return None, "note: --val_data=None: bits per byte and top-k accuracy are left out"
    try:
        return load_texts(options.val_data, options.max_texts, val_fraction=options.val_fraction), None
    except ValueError as e:
        return None, f"note: bits per byte and top-k accuracy are left out: {e}"


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    from machinery.fileio import atomic_write
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--sweep=") for a in argv):  # a sweep's report (see sweep.py)
        from machinery.sweeps.report import main as sweep_report
        return sweep_report(argv)
    import matplotlib
    matplotlib.use("Agg")  # files only: works without a display
    from machinery.fileio import write_text

    try:
        parsed = parse_args(argv)
        if parsed is None:
            return 0
        options, names = parsed
        runs = load_runs(names)
        texts, note = _texts_or_note(options)
        if note:
            print(note, file=sys.stderr)
        out = Path(options.out)
        out.mkdir(parents=True, exist_ok=True)
        for x in [options.x] if options.x else list(X_AXES):
            _save(plot_losses(runs, x=x, logx=x == "flops"), out / f"loss_vs_{x}.png")
        table = summary_table(runs, texts, device=options.device)
        if texts:
            _save(plot_topk(table).figure, out / "topk_accuracy.png")
        markdown = to_markdown(table)
        write_text(out / "summary.csv", table.to_csv())
        write_text(out / "summary.md", markdown)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    print(f"wrote {len(list(out.glob('*.png')))} plots, summary.csv and summary.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
