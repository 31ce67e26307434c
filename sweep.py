"""Run many variants x seeds of one training setup, and report whether the gaps are larger than seed noise.

    python sweep.py --name=qk --grid="qk_norm=false,true" --seeds=3 --preset=llama3_atto --max_iters=300
    python sweep.py --name=act --variant="swiglu:" --variant="gelu:mlp_nonlinearity=GeLU,mlp_gated=false"
    python sweep.py --name=qk                # continue a recorded sweep (after a crash, Ctrl-C or kill -9)
    python sweep.py --name=qk --report       # rebuild its report only

What varies:
  --grid=FIELD=V1,V2,...     one swept field; several --grid give their cross product. The first value of each
                             is the baseline's.
  --variant=NAME:F=V,F=V     a named variant that may change several fields ('NAME:' alone changes nothing);
                             repeat it; the first is the baseline. With --grid: every variant at every grid point.
  --seeds=3 | --seeds=0,4,7  a count (seeds 0, 1, 2) or the seeds themselves (default 3)
What every run shares: --preset=NAME and any --key=value of config.py (as for train.py).
How:
  --parallel=N               N trainings at once (default 1). CPU: the cores are split between them (or
                             --threads=K each); several GPUs: one run per GPU.
  --overwrite                retrain every run from scratch (needed when the shared settings changed)
  --dry_run                  list the runs and what would happen to each, then stop
  --bpb_texts=40             validation texts for bits per byte in the report (0 skips it); --val_data=PATH
                             another source of texts (default: data/samples/tinystories/validation.jsonl)

Runs are ordinary run folders, trained/<name>__<variant>__s<seed>: inference.py and model_comparison.py load
them by name. The sweep's definition, logs and report go to sweeps/<name>/. Re-running the same command
skips finished runs, resumes interrupted ones exactly, and adds only the runs a changed grid or --seeds asks for.
Exit code: 0 all runs finished, 1 some failed (each is reported; the others ran), 2 bad command line.
"""
from __future__ import annotations

import sys

from experiments.definition import Sweep, saved_mismatches
from experiments.report import DEFAULT_BPB_TEXTS, write_report
from experiments.runner import run_all, run_state, slots, trained_dir

OPTIONS = {"name", "seeds", "parallel", "threads", "overwrite", "report", "dry_run", "bpb_texts", "val_data"}
FLAGS = {"overwrite", "report", "dry_run"}


class UsageError(ValueError):
    """A problem with the command line: one line on stderr, exit code 2."""


def parse_args(argv: list[str]) -> tuple[dict, Sweep | None]:
    """(sweep.py's own options, the sweep); the sweep is None when only --name (+ options) is given."""
    options, grids, named, fixed, preset, seeds = {}, [], [], {}, None, None
    from experiments.grid import parse_grid, parse_variant
    for arg in argv:
        if arg in ("-h", "--help"):
            return {"help": True}, None
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: settings are given as --key=value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key in FLAGS and not eq:
            value = "true"
        if key == "grid":
            grids.append(parse_grid(value))
        elif key == "variant":
            named.append(parse_variant(value))
        elif key == "seeds":
            seeds = _seeds(value)
        elif key == "preset":
            preset = value
        elif key in OPTIONS:
            options[key] = value
        else:
            fixed[key] = value if eq else "true"  # a bare flag such as --compile
    for key in FLAGS:
        options[key] = options.get(key, "false").lower() in ("1", "true", "yes", "on")
    for key, default in (("parallel", "1"), ("threads", "0"), ("bpb_texts", str(DEFAULT_BPB_TEXTS))):
        options[key] = _count(key, options.get(key, default), minimum=0 if key != "parallel" else 1)
    if not options.get("name"):
        raise UsageError("--name=NAME is required: the sweep's runs are trained/NAME__<variant>__s<seed>")
    if not (grids or named or fixed or preset or seeds):
        return options, None
    return options, Sweep(options["name"], preset, fixed, grids, named, seeds or [0, 1, 2])


def _count(key: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < minimum:
        raise UsageError(f"--{key}={text!r} is invalid: must be an integer >= {minimum}")
    return value


def _seeds(text: str) -> list[int]:
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return list(range(int(text))) if int(text) >= 1 else []
    except ValueError:
        raise UsageError(f"--seeds={text!r} is invalid: a count (3 -> seeds 0, 1, 2) or seeds like 0,4,7") from None


def check_against_saved(sweep: Sweep, overwrite: bool) -> None:
    """Refuse to mix runs of different settings under one sweep name, unless --overwrite."""
    if overwrite:
        return
    path = sweep.folder / "sweep.json"
    if path.is_file():
        changed = sweep.differences(Sweep.load(sweep.name))
        if changed:
            raise UsageError(f"sweep {sweep.name!r} was run with other shared settings ({'; '.join(changed)}): "
                             f"its runs would not be comparable. Give --overwrite to retrain every run, or a new --name")
    for plan in sweep.runs:
        wrong = saved_mismatches(trained_dir() / plan.name, plan.expected)
        if wrong:
            raise UsageError(f"{trained_dir() / plan.name} exists but is not this sweep's run: it has "
                             f"{', '.join(wrong[:3])}. Give --overwrite to retrain it, or a new --name")


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import write_json
    argv = sys.argv[1:] if argv is None else argv
    try:
        options, sweep = parse_args(argv)
        if options.get("help"):
            print(__doc__)
            return 0
        if sweep is None:  # --name alone: the recorded sweep
            sweep = Sweep.load(options["name"])
        plans = sweep.runs  # builds every run's configs: a bad field or value fails here, before any run
        if options["report"] and not options["dry_run"]:
            write_report(sweep, options["bpb_texts"], options.get("val_data"))
            print((sweep.folder / "summary.md").read_text())
            return 0
        check_against_saved(sweep, options["overwrite"])
        states = {p.name: run_state(p) for p in plans}
        if options["overwrite"]:
            states = {n: "new" if s == "new" else "restart" for n, s in states.items()}
        todo = [(p, states[p.name]) for p in plans if states[p.name] != "done"]
        counts = {s: sum(1 for v in states.values() if v == s) for s in ("done", "resume", "restart", "new")}
        print(f"sweep {sweep.name}: {len(sweep.variants)} variant(s) x {len(sweep.seeds)} seed(s) = {len(plans)} runs; "
              f"{counts['done']} finished, {counts['resume']} to resume, {counts['restart'] + counts['new']} to start")
        if options["dry_run"]:
            for p in plans:
                print(f"  {states[p.name]:8s} {p.name}  ({p.variant.describe()}, seed {p.seed})")
            return 0
        sweep.folder.mkdir(parents=True, exist_ok=True)
        write_json(sweep.folder / "sweep.json", sweep.to_json())
        outcomes = []
        if todo:
            parallel = min(options["parallel"], len(todo))
            envs = slots(parallel, plans[0].device, options["threads"] or None)
            outcomes = run_all(todo, sweep.preset, envs, sweep.folder / "logs")
        write_report(sweep, options["bpb_texts"], options.get("val_data"))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: run `python sweep.py --name={options['name']}` to resume", file=sys.stderr)
        return 130
    print((sweep.folder / "summary.md").read_text())
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"failed: {o.plan.name}: {o.note} (log: {o.log_path})", file=sys.stderr)
    print(f"report: {sweep.folder / 'summary.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
