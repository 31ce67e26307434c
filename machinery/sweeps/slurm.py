"""A sweep on Slurm (`sweep.py --launcher=slurm`): the runs still to train become one job array, one task per
run, at most --parallel at once. Each task runs `train.py ... --resume=auto` through launch/slurm/resumable.sh,
so a task stopped by its time limit, preempted or requeued continues its run, and a submission repeated by hand
skips finished runs and resumes the others, as the local launcher does.

sweeps/<name>/
    slurm/array-<k>.sbatch      the k-th submission's script (the runs are written into it, task by task)
    slurm/<job>_<task>.out      Slurm's own messages for a task (time limit, cancellation, node failure)
    slurm_jobs.json             every submission: job id, sbatch command line, task -> run
    logs/<run>.log              each run's output, every attempt appended, as with the local launcher
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machinery import PROJECT_ROOT as ROOT
from machinery.cli import UsageError
from machinery.fileio import write_json, write_text
from machinery.sweeps.definition import RunPlan, Sweep
from machinery.sweeps.runner import TRAIN_SCRIPT, log_error, run_state, trained_dir

JOBS_FILE = "slurm_jobs.json"
RESUMABLE = ROOT / "launch" / "slurm" / "resumable.sh"


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise UsageError("--launcher=slurm needs Slurm's sbatch, which is not on the PATH: run sweep.py on the "
                         "cluster's login node (after `module load slurm` where that is needed), or leave out "
                         "--launcher=slurm to train here")


def _slurm(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


# --- what was submitted, and what is still queued -------------------------------------------------------------
def submissions(sweep: Sweep) -> list[dict]:
    try:
        return json.loads((sweep.folder / JOBS_FILE).read_text())["submissions"]
    except FileNotFoundError:
        return []
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{sweep.folder / JOBS_FILE} is corrupt ({e}): move it away; the runs themselves are "
                         f"in {trained_dir()}") from None


def active_runs(sweep: Sweep) -> dict[str, str]:
    """Run name -> Slurm state (PENDING, RUNNING, ...) for this sweep's tasks still in the queue."""
    recorded = submissions(sweep)
    if not recorded:
        return {}
    jobs = ",".join(s["job_id"] for s in recorded)
    result = _slurm(["squeue", "-h", "-r", "-j", jobs, "-o", "%F %K %T"])
    if result.returncode != 0 and "Invalid job id" not in result.stderr:
        raise UsageError(f"squeue cannot say which of this sweep's jobs ({jobs}) are still queued: "
                         f"{result.stderr.strip() or result.returncode}")
    tasks = {(s["job_id"], task): run for s in recorded for task, run in s["tasks"].items()}
    active = {}
    for line in result.stdout.splitlines():
        job, task, state = (line.split() + ["", "", ""])[:3]
        if (job, task) in tasks:
            active[tasks[(job, task)]] = state
    return active


# --- submitting -------------------------------------------------------------------------------------------------
def launch(sweep: Sweep, todo: list[tuple[RunPlan, str]], options, say=print) -> list[str]:
    """Submit the runs of todo that are not already queued as one job array; with options.wait, wait for it
    and return the failed runs' lines (else [])."""
    active = active_runs(sweep)
    for plan, _ in todo:
        if plan.name in active:
            say(f"  {plan.name}: already {active[plan.name].lower()} in Slurm, not submitted again")
    todo = [(p, s) for p, s in todo if p.name not in active]
    if not todo:
        say("nothing to submit" + (": every run is finished or queued" if active else ": every run is finished"))
        return wait_for(sweep, say) if options.wait and active else []
    index = {p.name: i for i, p in enumerate(sweep.runs)}
    tasks = {str(index[p.name]): p.name for p, _ in todo}
    recorded = submissions(sweep)
    script = sweep.folder / "slurm" / f"array-{len(recorded) + 1}.sbatch"
    (sweep.folder / "logs").mkdir(parents=True, exist_ok=True)
    write_text(script, array_script(sweep, [p for p, _ in todo], [index[p.name] for p, _ in todo],
                                    options.parallel, options.threads or 1))
    argv = ["sbatch", "--parsable", *shlex.split(options.sbatch_args), str(script)]
    result = _slurm(argv)
    if result.returncode != 0:
        raise UsageError(_refusal(result.stderr, script))
    job_id = result.stdout.strip().split(";")[0]
    recorded.append({"job_id": job_id, "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "script": str(script.relative_to(sweep.folder)), "sbatch": argv, "tasks": tasks})
    write_json(sweep.folder / JOBS_FILE, {"submissions": recorded})
    states = {p.name: s for p, s in todo}
    how = {"resume": "resumes from its checkpoint", "restart": "starts again (no checkpoint)", "new": "starts"}
    for task, run in tasks.items():
        say(f"  task {task}: {run} {how[states[run]]}")
    say(f"submitted job {job_id}: {len(tasks)} run(s), at most {options.parallel} at once; logs in "
        f"{sweep.folder / 'logs'}. Watch it with `squeue -j {job_id}`; "
        f"`python sweep.py --name={sweep.name} --report` collects the results")
    return wait_for(sweep, say) if options.wait else []


def _refusal(stderr: str, script: Path) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    why = (lines[-1] if lines else "no message").removeprefix("sbatch: error: ")
    hint = ""
    if "partition" in why.lower():
        listed = _slurm(["sinfo", "-h", "-o", "%P"]).stdout.split()
        hint = f"; partitions here: {', '.join(listed) or '(sinfo lists none)'} (the one with * is the default)"
    return (f"Slurm refused the sweep's job array: {why}{hint}. Nothing was submitted; fix the options "
            f"(--sbatch_args) and run the same command again (the script was {script})")


def array_script(sweep: Sweep, plans: list[RunPlan], indices: list[int], parallel: int, threads: int) -> str:
    """The batch script of one submission: task i trains run i of the sweep through resumable.sh."""
    gpus = any(p.device != "cpu" for p in plans)  # as locally: a GPU per run unless the runs are on the CPU
    cases = "\n".join(f"    {i}) RUN={shlex.quote(p.name)}; ARGS=({' '.join(shlex.quote(a) for a in _args(p, sweep))}) ;;"
                      for i, p in zip(indices, plans))
    folder = sweep.folder.absolute()
    return f"""#!/bin/bash
# Generated by `python sweep.py --name={sweep.name} --launcher=slurm` on {time.strftime('%Y-%m-%d %H:%M:%S')}:
# one array task per run still to train. Submit the sweep again with the same command rather than this file:
# it skips finished runs, resumes interrupted ones and leaves queued ones alone.
#SBATCH --job-name=sweep-{sweep.name}
#SBATCH --array={','.join(map(str, indices))}%{parallel}
#SBATCH --ntasks=1
#SBATCH --cpus-per-task={threads}
{'#SBATCH --gpus-per-task=1' if gpus else '# (no GPU: the runs are on the CPU)'}
#SBATCH --output={folder}/slurm/%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120

export PYTHON={shlex.quote(sys.executable)}
export TEMPLATEGPT_TRAINED_DIR={shlex.quote(str(trained_dir()))}
export OMP_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}} MKL_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-1}}
source {shlex.quote(str(RESUMABLE))} || exit 2
cd "$SLURM_SUBMIT_DIR" || exit 2  # relative paths in the settings mean what they meant to sweep.py
case "$SLURM_ARRAY_TASK_ID" in
{cases}
    *) echo "error: array task $SLURM_ARRAY_TASK_ID is not one of this sweep's runs" >&2; exit 2 ;;
esac
exec >> {shlex.quote(str(folder / 'logs'))}/"$RUN.log" 2>&1
echo "=== sweep: slurm job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} $RUN at $(date '+%F %T')"
run_resumable "$PYTHON" {shlex.quote(str(TRAIN_SCRIPT))} "${{ARGS[@]}}" --resume=auto
"""


def _args(plan: RunPlan, sweep: Sweep) -> list[str]:
    """train.py's settings for a run: the same for its first start and every restart (--resume=auto decides)."""
    return ([f"--preset={sweep.preset}"] if sweep.preset else []) + [f"--{k}={v}" for k, v in plan.settings.items()]


# --- waiting and reporting ----------------------------------------------------------------------------------------
def wait_for(sweep: Sweep, say=print, poll_s: float = 2.0) -> list[str]:
    """Wait until none of the sweep's tasks is queued, saying how each run ended; returns the failures' lines."""
    active = active_runs(sweep)
    say(f"waiting for {len(active)} run(s) in Slurm ...")
    while active:
        time.sleep(poll_s)
        now = active_runs(sweep)
        for run in sorted(set(active) - set(now)):
            say(f"{run}: " + ("finished" if _done(sweep, run) else "FAILED"))
        active = now
    return failures(sweep, {})


def failures(sweep: Sweep, active: dict[str, str]) -> list[str]:
    """One line per submitted run that is neither finished nor in `active` (still queued): the error and where
    the logs are."""
    latest = {}
    for submission in submissions(sweep):
        for task, run in submission["tasks"].items():
            latest[run] = (submission["job_id"], task)
    lines = []
    for run, (job, task) in sorted(latest.items()):
        if run in active or _done(sweep, run):
            continue
        log, out = sweep.folder / "logs" / f"{run}.log", sweep.folder / "slurm" / f"{job}_{task}.out"
        why = log_error(log, first=True) or log_error(out, first=True) or "no message (see the logs)"
        if not log.exists() and not out.exists():
            why = f"job {job} task {task} never started (cancelled while queued?)"
        lines.append(f"{run}: {why} (log: {log}; Slurm's messages: {out})")
    return lines


def _done(sweep: Sweep, run: str) -> bool:
    plan = next((p for p in sweep.runs if p.name == run), None)
    return plan is not None and run_state(plan) == "done"


def print_status(sweep: Sweep) -> int:
    """For --report of a sweep submitted to Slurm: what is still queued and what failed; the count failed."""
    if not (sweep.folder / JOBS_FILE).is_file():
        return 0
    try:
        active = active_runs(sweep) if shutil.which("squeue") else {}
    except UsageError as e:
        print(f"warning: {e}", file=sys.stderr)
        active = {}
    for run, state in sorted(active.items()):
        print(f"{state.lower()} in Slurm: {run}")
    lines = failures(sweep, active)
    for line in lines:
        print(f"failed: {line}", file=sys.stderr)
    return len(lines)

