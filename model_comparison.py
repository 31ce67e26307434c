"""Compare trained runs: loss curves from their logs, and an evaluation of their weights on the same texts.

    python model_comparison.py gpt2_atto llama3_atto --out comparison/

From Python (and model_comparison.ipynb):

    import model_comparison as mc
    runs = mc.load_runs(["gpt2_atto", "llama3_atto"])
    mc.plot_losses(runs, x="flops", logx=True)
    table = mc.summary_table(runs, mc.load_texts(max_texts=80))   # no texts: the table from the logs alone
    mc.plot_topk(table)
    mc.plot_cost(table)                    # best loss against wall time, FLOPs and peak memory
    print(mc.code_diff(resolve_run("a"), resolve_run("b")))   # what changed in the code (machinery.run.runs)

The curves need only each run's log_data.csv. Bits per byte and top-k accuracy need validation text: the
TinyStories stories bundled in data/samples by default, any file or dataset with --val_data; when none can
be read they are left out with a note. Results that evaluate.py saved in a run folder (lm-evaluation-harness
tasks) become task/metric columns. With --judge_url and --judge_model, a large model behind any
OpenAI-compatible API grades each run's story continuations as in the TinyStories paper (grammar,
creativity, consistency, age group: machinery/evaluation/judge.py). The pieces live in machinery/comparison/.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from machinery.cli import UsageError, build, print_help_if_asked, reject_unknown, split_args
from machinery.comparison.code import code_diff, code_differences
from machinery.comparison.metrics import bits_per_byte, topk_accuracy
from machinery.comparison.plots import X_AXES, plot_cost, plot_judge, plot_losses, plot_metric, plot_topk
from machinery.comparison.report import evaluate_run, log_summary, summary_table, to_markdown
from machinery.comparison.runs import Run, config_differences, load_run, load_runs
from machinery.comparison.texts import DEFAULT_VAL_DATA, load_texts
from machinery.run.runs import resolve_run

__all__ = ["Run", "load_run", "load_runs", "config_differences", "code_differences", "code_diff", "plot_metric",
           "plot_losses", "plot_topk", "plot_cost", "plot_judge", "X_AXES", "load_texts", "DEFAULT_VAL_DATA",
           "bits_per_byte", "topk_accuracy", "evaluate_run", "log_summary", "summary_table", "to_markdown", "main"]

USAGE = """usage: python model_comparison.py RUN [RUN ...] --out=DIR [--key=value ...]

Compare trained runs (names in trained/ or run folder paths): writes loss curves against step, training
tokens, training time, wall-clock time and FLOPs (loss_vs_*.png), the best loss against wall time, FLOPs and
peak memory (cost.png), top-k accuracy (topk_accuracy.png) and a table (summary.csv, summary.md) with bits
per byte, top-k accuracy, losses, whether each run was still improving, speed, time, FLOPs, peak memory,
evaluate.py's saved task results, the config fields that differ and the source files that differ from the
first run's code (code_diff). `--key value` works as well as `--key=value`.

       python model_comparison.py RUN [RUN ...] --out=DIR --judge_url=URL --judge_model=NAME
                                                    adds the TinyStories judge's grades (judge_grades.png,
                                                    judge.jsonl); the key comes from $OPENAI_API_KEY

       python model_comparison.py --sweep=NAME          a sweep's report (see sweep.py): means over seeds, p-values
       python model_comparison.py --code_diff RUN_A RUN_B   the diff between the code two runs started with"""


@dataclass
class ComparisonOptions:
    # --- output ---
    out: Optional[str] = None           # folder for the plots and the table (required)
    x: Optional[str] = None             # x axis of the loss curves: step, tokens, elapsed_s, wall_s or flops; None: all
    # --- evaluation (bits per byte, top-k accuracy) ---
    val_data: Optional[str] = DEFAULT_VAL_DATA  # validation texts: a .jsonl/.json file or any --dataset; None: skip
    max_texts: int = 200                # evaluate on the first N texts
    val_fraction: float = 0.05          # held-out fraction when val_data has no validation split (as in training)
    device: str = "cpu"                 # torch device for the evaluation
    # --- judge: a large model grades story continuations (the TinyStories paper; docs/evaluation.md) ---
    judge_url: Optional[str] = None     # OpenAI-compatible base URL, e.g. https://api.openai.com/v1 (None: no judge)
    judge_model: Optional[str] = None   # the judge's model name at that URL (required with judge_url)
    judge_api: str = "chat"             # chat (/chat/completions) or completions (/completions, a raw prompt)
    judge_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (unset: none is sent)
    judge_stories: int = 50             # story beginnings each run continues (the first N validation stories, cut)
    judge_max_new_tokens: int = 200     # tokens per continuation (fewer at eos or the end of the context)
    judge_temperature: float = 0.7      # sampling temperature of the continuations (seeded: reproducible)
    judge_seed: int = 0                 # seed of that sampling
    judge_answer_tokens: int = 200      # longest answer the judge may give, in tokens
    judge_timeout: float = 60.0         # seconds the judge may take per answer
    judge_retries: int = 3              # retries after a rate limit, a server error or a timeout (with backoff)

    def __post_init__(self):
        if self.x is not None and self.x not in X_AXES:
            raise UsageError(f"--x={self.x!r} is invalid: use one of {', '.join(X_AXES)} (or None for all)")
        if self.max_texts < 1:
            raise UsageError(f"--max_texts={self.max_texts} is invalid: must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val_fraction={self.val_fraction} is invalid: must be between 0 and 1")
        if (self.judge_url is None) != (self.judge_model is None):
            raise UsageError("--judge_url and --judge_model go together: the endpoint and the model it serves")
        if self.judge_stories < 1 or self.judge_max_new_tokens < 1:
            raise UsageError(f"--judge_stories={self.judge_stories} and --judge_max_new_tokens="
                             f"{self.judge_max_new_tokens} must be >= 1")
        if self.judge_url is not None:
            self.endpoint()  # checks the URL, the API, the answer length, the timeout and the retries

    def endpoint(self):
        from machinery.evaluation.openai_api import ApiError, Endpoint
        try:
            return Endpoint(self.judge_url, self.judge_model, api=self.judge_api, key_env=self.judge_key_env,
                            max_tokens=self.judge_answer_tokens, timeout=self.judge_timeout,
                            retries=self.judge_retries)
        except ApiError as e:
            raise UsageError(f"--judge_*: {e}") from None


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


def print_code_diff(argv: list[str]) -> int:
    """`--code_diff RUN_A RUN_B` (or --code_diff=RUN_A RUN_B): the diff between the code two runs started with."""
    names = [a.partition("=")[2] if a.startswith("--code_diff=") else a for a in argv if a != "--code_diff"]
    if len(names) != 2 or any(n.startswith("--") or not n for n in names):
        print("error: --code_diff takes two runs and nothing else: --code_diff RUN_A RUN_B", file=sys.stderr)
        return 2
    try:
        a, b = (resolve_run(n) for n in names)
        print(code_diff(a, b), end="")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _missing_axis(runs: dict, x: str) -> str | None:
    """A note when some run's log lacks the column of axis x (logged before it existed)."""
    lacking = [name for name, run in runs.items() if x != "flops" and x not in run.log.columns]
    if lacking:
        return f"note: loss_vs_{x}.png left out: {', '.join(lacking)} logged no {x} (made before it was recorded)"
    return None


def _judge(options: ComparisonOptions, runs: dict, out: Path) -> dict:
    """Sample each run's continuations, have them graded, save every answer to out/judge.jsonl as it comes
    (an API failure later loses nothing) and the plot; returns judge.summarize()'s result."""
    import json

    from machinery.evaluation import judge
    from machinery.fileio import write_text

    def save(records):
        write_text(out / "judge.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    endpoint = options.endpoint()
    endpoint.check_reachable()
    beginnings = judge.story_beginnings(options.judge_stories)
    print(f"judge: {endpoint.model} at {endpoint.endpoint_url} grades {len(beginnings)} continuations of "
          f"{len(runs)} run(s)", file=sys.stderr)
    records = judge.judge_runs(runs, endpoint, beginnings, options.judge_max_new_tokens,
                               options.judge_temperature, options.judge_seed, options.device, on_record=save)
    summary = judge.summarize(records)
    _save(plot_judge(summary), out / "judge_grades.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a.startswith("--sweep=") for a in argv):  # a sweep's report (see sweep.py)
        from machinery.sweeps.report import main as sweep_report
        return sweep_report(argv)
    if any(a == "--code_diff" or a.startswith("--code_diff=") for a in argv):
        return print_code_diff(argv)
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
            skipped = _missing_axis(runs, x)
            if skipped:
                print(skipped, file=sys.stderr)
                continue
            _save(plot_losses(runs, x=x, logx=x == "flops"), out / f"loss_vs_{x}.png")
        judged = None
        if options.judge_url is not None:
            from machinery.evaluation.judge import judge_columns
            judged = judge_columns(_judge(options, runs, out))
        table = summary_table(runs, texts, judge=judged, device=options.device)
        for line in table.attrs["notes"]:
            print(line, file=sys.stderr)
        if texts:
            _save(plot_topk(table).figure, out / "topk_accuracy.png")
        _save(plot_cost(table), out / "cost.png")
        markdown = to_markdown(table)
        write_text(out / "summary.csv", table.to_csv())
        write_text(out / "summary.md", markdown)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    judged_files = ", judge.jsonl" if options.judge_url is not None else ""
    print(f"wrote {len(list(out.glob('*.png')))} plots, summary.csv, summary.md{judged_files} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
