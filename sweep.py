"""Run many variants x seeds of one training setup, and report whether the gaps are larger than seed noise.

    python sweep.py --name=qk --grid="qk_norm=false,true" --seeds=3 --preset=llama3_atto --max_iters=300
    python sweep.py --name=act --variant="swiglu:" --variant="gelu:mlp_nonlinearity=GeLU,mlp_gated=false"
    python sweep.py --name=qk                # continue a recorded sweep (after a crash, Ctrl-C or kill -9)
    python sweep.py --name=qk --report       # rebuild its report only
    python sweep.py --name=qk --grid="qk_norm=false,true" ... --launcher=slurm --parallel=8   # a Slurm job array
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Optional

from machinery.cli import UsageError, build, print_help_if_asked, split_args
from machinery.run.runs import RunLock
from machinery.sweeps.definition import Sweep, saved_mismatches, sweeps_dir
from machinery.sweeps.grid import parse_grid, parse_variant
from machinery.sweeps.report import DEFAULT_BPB_TEXTS, write_report
from machinery.sweeps.runner import run_all, run_state, slots, trained_dir

USAGE = __doc__.strip() + """

What varies (both may be repeated):
  --grid=FIELD=V1,V2,...     one swept field; several --grid give their cross product. The first value of each
                             is the baseline's.
  --variant=NAME:F=V,F=V     a named variant that may change several fields ('NAME:' alone changes nothing);
                             the first is the baseline. With --grid: every variant at every grid point.
What every run shares: --preset=NAME and any --key=value of config.py, as for train.py.

Runs are ordinary run folders, trained/<name>__<variant>__s<seed>: inference.py and model_comparison.py load
them by name. The sweep's definition, the code it was made from, logs and report go to sweeps/<name>/.
Re-running the same command skips finished runs, resumes interrupted ones exactly, and adds only the runs a
changed grid or --seeds asks for. A re-run may leave out what it keeps: the recorded preset, shared settings,
variants and seeds fill in (`--name=NAME --seeds=5` adds two seeds). Changed shared settings are refused
(naming only those that differ) unless --overwrite (every run retrained with the settings as updated);
runs from changed code are refused, naming the files, unless --allow_code_change. Exit code: 0 all runs
finished, 1 some failed (each is reported; the others ran), 2 bad command line or a refusal.

On a Slurm cluster, --launcher=slurm submits the runs still to train as one job array (one task per run, at most
--parallel at once, --threads CPUs and, unless --device=cpu, one GPU each; --sbatch_args="--partition=... --time=..."
for the rest) and returns (--wait: waits, then reports). Submitting again skips finished and queued runs and
resumes the others; --report also says which runs are queued and which failed, with their logs. docs/cluster.md"""


MAX_SEEDS = 100  # seeds per variant: a few already tell noise from an effect


@dataclass
class SweepOptions:
    # --- the sweep ---
    name: Optional[str] = None          # the sweep's name (required): runs are trained/NAME__<variant>__s<seed>
    seeds: str = "3"                    # a count (3 -> seeds 0, 1, 2) or the seeds themselves: 0,4,7
    # --- how it runs ---
    parallel: int = 1                   # trainings at once; CPU: the cores are split between them, GPUs: one each
    threads: int = 0                    # CPU threads per run; 0 = cores // parallel (slurm: 1 CPU per task)
    launcher: str = "local"             # local: train here; slurm: submit one job array (docs/cluster.md)
    sbatch_args: str = ""               # slurm: options for sbatch, e.g. "--partition=gpu --time=4:00:00"
    wait: bool = False                  # slurm: wait for the job array, then report (as a local sweep does)
    overwrite: bool = False             # retrain every run from scratch (needed when the shared settings changed)
    allow_code_change: bool = False     # add runs made from code other than the sweep's recorded code (marked)
    dry_run: bool = False               # list the runs and what would happen to each, then stop
    report: bool = False                # only rebuild the report from the run folders
    # --- the report ---
    bpb_texts: int = DEFAULT_BPB_TEXTS  # validation texts for bits per byte (0 skips it)
    val_data: Optional[str] = None      # where those texts come from; None = data/samples/tinystories/validation.jsonl

    def __post_init__(self):
        if not self.name:
            raise UsageError("--name=NAME is required: the sweep's runs are trained/NAME__<variant>__s<seed>")
        for key, minimum in (("parallel", 1), ("threads", 0), ("bpb_texts", 0)):
            if getattr(self, key) < minimum:
                raise UsageError(f"--{key}={getattr(self, key)} is invalid: must be an integer >= {minimum}")
        if self.launcher not in ("local", "slurm"):
            raise UsageError(f"--launcher={self.launcher!r} is unknown: local (the default) or slurm")
        if self.launcher == "slurm" and not (self.report or self.dry_run):
            if self.overwrite:
                raise UsageError("--overwrite cannot be combined with --launcher=slurm (a requeued task would "
                                 "retrain from scratch): give the sweep a new --name")
            from machinery.sweeps.slurm import require_sbatch
            require_sbatch()  # before anything is written

    def seed_list(self) -> list[int]:
        try:
            if "," in self.seeds:
                seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
            else:
                count = int(self.seeds)
                if not 1 <= count <= MAX_SEEDS:
                    raise UsageError(f"--seeds={self.seeds} is invalid: a count of seeds must be 1..{MAX_SEEDS} "
                                     f"(3 -> seeds 0, 1, 2); to give seeds themselves, separate them by commas")
                seeds = list(range(count))
        except ValueError as e:
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"--seeds={self.seeds!r} is invalid: a count (3 -> seeds 0, 1, 2) or seeds like "
                             f"0,4,7") from None
        if len(seeds) > MAX_SEEDS:
            raise UsageError(f"--seeds gives {len(seeds)} seeds: at most {MAX_SEEDS}")
        return seeds


def parse_args(argv: list[str]) -> tuple[SweepOptions, Sweep | None] | None:
    """(options, the sweep to run), the sweep None for `--name` alone (the recorded one); None after --help."""
    repeated = ("--grid=", "--variant=")  # may be given many times, so they bypass split_args' dict
    grids = [parse_grid(a.partition("=")[2]) for a in argv if a.startswith("--grid=")]
    named = [parse_variant(a.partition("=")[2]) for a in argv if a.startswith("--variant=")]
    overrides, positional = split_args([a for a in argv if not a.startswith(repeated)])
    if print_help_if_asked(overrides, usage=USAGE, sections=[("Sweep options", SweepOptions)]):
        return None
    if positional:
        raise UsageError(f"unexpected argument(s) {positional}: settings are given as --key=value")
    seeds_given = "seeds" in overrides
    options = build(SweepOptions, overrides)  # takes sweep.py's own options; the rest is for every run
    preset = overrides.pop("preset", None)
    if not (grids or named or overrides or preset or seeds_given):
        return options, None
    return options, Sweep.from_command(options.name, preset, overrides, grids, named, options.seed_list(),
                                       seeds_given)


def check_against_saved(sweep: Sweep) -> None:
    """Refuse to mix runs of different settings under one sweep name (--overwrite skips this)."""
    if (sweep.folder / "sweep.json").is_file():
        changed = sweep.differences(Sweep.load(sweep.name))
        if changed:
            raise UsageError(f"sweep {sweep.name!r} was run with other shared settings ({'; '.join(changed)}): "
                             f"its runs would not be comparable. Give --overwrite to retrain every run, "
                             f"or a new --name")
    for plan in sweep.runs:
        wrong = saved_mismatches(trained_dir() / plan.name, plan.expected)
        if wrong:
            raise UsageError(f"{trained_dir() / plan.name} exists but is not this sweep's run: it has "
                             f"{', '.join(wrong[:3])}. Give --overwrite to retrain it, or a new --name")


def check_code(sweep: Sweep, options: SweepOptions, adding_runs: bool) -> None:
    """Record the code once (or anew with --overwrite); refuse to add runs made from other code, naming the
    files, unless --allow_code_change (the report then marks those runs)."""
    from machinery.run.provenance import code_state, shorten
    current = code_state()
    if sweep.code is None or options.overwrite:
        sweep.code = {k: current[k] for k in ("commit", "dirty", "files")}
        return
    changes = sweep.code_changes(current)
    if changes and adding_runs and not options.allow_code_change:
        raise UsageError(f"sweep {sweep.name!r} was run with other code ({shorten(changes, 6)}): new runs would "
                         f"not be comparable with its finished ones. Give --allow_code_change to add them anyway "
                         f"(the report marks them), --overwrite to retrain every run with this code, or a new --name")


def run(options: SweepOptions, sweep: Sweep) -> list:
    """Train what is missing (or, with --overwrite, everything) and write the report; returns the failures."""
    from machinery.fileio import write_json
    plans = sweep.runs
    if not options.overwrite:
        check_against_saved(sweep)
    states = {p.name: run_state(p) for p in plans}
    if options.overwrite:
        states = {n: "new" if s == "new" else "restart" for n, s in states.items()}
    todo = [(p, states[p.name]) for p in plans if states[p.name] != "done"]
    check_code(sweep, options, adding_runs=bool(todo))
    count = {s: sum(v == s for v in states.values()) for s in ("done", "resume", "restart", "new")}
    print(f"sweep {sweep.name}: {len(sweep.variants)} variant(s) x {len(sweep.seeds)} seed(s) = {len(plans)} runs; "
          f"{count['done']} finished, {count['resume']} to resume, {count['restart'] + count['new']} to start")
    if options.dry_run:
        for p in plans:
            print(f"  {states[p.name]:8s} {p.name}  [{p.variant.describe()}; seed {p.seed}]")
        return []
    write_json(sweep.folder / "sweep.json", sweep.to_json())
    if options.launcher == "slurm":  # one job array instead of local processes (machinery/sweeps/slurm.py)
        from machinery.sweeps.slurm import launch
        failed = launch(sweep, todo, options)
        if options.wait:
            write_report(sweep, options.bpb_texts, options.val_data)
            print((sweep.folder / "summary.md").read_text())
        return failed
    outcomes = []
    if todo:
        envs = slots(min(options.parallel, len(todo)), plans[0].device, options.threads or None)
        outcomes = run_all(todo, sweep.preset, envs, sweep.folder / "logs")
    write_report(sweep, options.bpb_texts, options.val_data)
    print((sweep.folder / "summary.md").read_text())
    return [o for o in outcomes if not o.ok]


def main(argv: list[str] | None = None) -> int:
    name = None
    try:
        parsed = parse_args(sys.argv[1:] if argv is None else argv)
        if parsed is None:
            return 0
        options, sweep = parsed
        name = options.name
        sweep = sweep or Sweep.load(options.name)
        if sweep.folder.is_symlink() or (sweep.folder.exists() and not sweep.folder.is_dir()):
            raise UsageError(f"{sweep.folder} is a symbolic link or a file: a sweep's folder must be a real folder in "
                             f"{sweeps_dir()}, so nothing is written through it; remove it or choose another --name")
        _ = sweep.runs  # every run's configs: a bad field or value fails here, before anything is written
        with contextlib.nullcontext() if options.dry_run else RunLock(sweep.folder, what="sweep"):  # one at a time
            if options.report and not options.dry_run:
                write_report(sweep, options.bpb_texts, options.val_data)
                print((sweep.folder / "summary.md").read_text())
                from machinery.sweeps.slurm import print_status
                print_status(sweep)  # a sweep submitted to Slurm: what is still queued, what failed and its logs
                return 0
            failed = run(options, sweep)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        recorded = name is not None and (sweeps_dir() / name / "sweep.json").is_file()
        print(f"\ninterrupted: run `python sweep.py --name={name}` to resume" if recorded else
              "\ninterrupted before the sweep was recorded: nothing was started; run the same command again",
              file=sys.stderr)
        return 130
    for o in failed:
        print(f"failed: {o}" if isinstance(o, str) else f"failed: {o.plan.name}: {o.note} (log: {o.log_path})",
              file=sys.stderr)
    if not options.dry_run and (options.launcher == "local" or options.wait):
        print(f"report: {sweep.folder / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
