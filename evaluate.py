"""Run lm-evaluation-harness tasks on trained runs, through their Hugging Face export.

usage: python evaluate.py RUN [RUN ...] --tasks=TASK[,TASK...] [--key=value ...]
  RUN   a folder name in trained/, or a path to a run folder

    python evaluate.py llama3_atto --tasks=tinystories_bpb              # bundled, offline: bits per byte
    python evaluate.py gpt2_atto llama3_atto --tasks=hellaswag,arc_easy  # the harness's tasks (need the hub)

Each run is exported once (cached in a temporary folder keyed by its weights' checksum) and evaluated with the
harness's Hugging Face model, adjusted so that every text starts with exactly one bos and rolling
loglikelihood scores texts as model_comparison.py does (machinery/evaluation/lm_eval_model.py). Each task's
result is saved to trained/<run>/eval/<task>.json; model_comparison.py shows them as columns.
tinystories_bpb (bits per byte on the bundled validation stories) equals the comparison's bits_per_byte.
Needs the optional harness: pip install "lm_eval[hf]". See docs/evaluation.md.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from machinery.cli import UsageError, build, print_help_if_asked, reject_unknown, run_script, split_args


@dataclass
class EvaluateOptions:
    # --- tasks ---
    tasks: Optional[str] = None      # comma-separated task names (required): tinystories_bpb, hellaswag, ...
    limit: Optional[int] = None      # only the first N documents of each task (a smoke test; None = all)
    num_fewshot: Optional[int] = None  # few-shot examples per prompt (None = each task's default)
    # --- running ---
    batch_size: int = 16             # sequences per forward pass
    device: str = "cpu"              # torch device: cpu, cuda, cuda:1, mps
    save: bool = True                # write each task's result to trained/<run>/eval/<task>.json
    export_cache: Optional[str] = None  # folder for the cached exports (None = <temp>/templategpt-exports)

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit={self.limit} is invalid: must be >= 1 (or None for all documents)")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UsageError(f"--num_fewshot={self.num_fewshot} is invalid: must be >= 0")
        if self.batch_size < 1:
            raise UsageError(f"--batch_size={self.batch_size} is invalid: must be >= 1")

    @property
    def task_list(self) -> list[str]:
        return [t.strip() for t in (self.tasks or "").split(",") if t.strip()]


def parse_args(argv: list[str]) -> tuple[EvaluateOptions, list[str]] | None:
    """(options, runs), or None when help was printed."""
    overrides, runs = split_args(argv)
    if print_help_if_asked(overrides, usage=__doc__, sections=[("Options", EvaluateOptions)]):
        return None
    options = build(EvaluateOptions, overrides)
    reject_unknown(overrides, EvaluateOptions)
    if not runs:
        raise UsageError("name at least one run (a folder in trained/ or a run folder path); see --help")
    if not options.task_list:
        raise UsageError("--tasks is required: e.g. --tasks=tinystories_bpb (bundled, offline) or "
                         "--tasks=hellaswag,arc_easy")
    return options, runs


def main(argv: list[str] | None = None) -> int:
    return run_script("evaluate.py", lambda: evaluate(sys.argv[1:] if argv is None else argv))


def evaluate(argv: list[str]) -> None:
    """Each task on each run: the harness's table on stdout, one result file per task in trained/<run>/eval/."""
    parsed = parse_args(argv)
    if parsed is None:  # --help was printed
        return
    options, names = parsed
    from machinery.evaluation import harness
    from machinery.run import runs
    run_dirs = [runs.resolve_run(name) for name in names]  # every run found before any work
    manager = harness.task_manager(options.task_list)
    harness.check_tasks(options.task_list, manager)
    from lm_eval.utils import make_table
    for run_dir in run_dirs:
        output, records = harness.evaluate_run(
            run_dir, options.task_list, manager, limit=options.limit, num_fewshot=options.num_fewshot,
            batch_size=options.batch_size, device=options.device, save=options.save,
            cache_root=options.export_cache)
        print(f"== {run_dir.name}")
        print(make_table(output))
        if options.save:
            written = ", ".join(f"eval/{record['task']}.json" for record in records)
            print(f"wrote {written} in {run_dir}")


if __name__ == "__main__":
    sys.exit(main())
