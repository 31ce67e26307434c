"""Running a sweep's trainings: each is `python train.py ...` in its own process, N at a time.

A run folder tells what to do with it: a log that reached max_iters is finished (skipped); a folder with a
complete checkpoint is continued with `train.py --resume` (exact: weights, optimizer, data position and RNG come back);
a folder without one is started again with --overwrite. So re-running a killed sweep (kill -9 included)
completes it, and a finished one re-runs without training anything.

Slots: on CPU the cores are split between the N parallel runs through OMP_NUM_THREADS (torch's intra-op
threads); on CUDA machines with several GPUs each slot gets one GPU through CUDA_VISIBLE_DEVICES.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from machinery.run.runs import has_checkpoint, trained_dir
from machinery.sweeps.definition import ROOT, RunPlan

TRAIN_SCRIPT = ROOT / "train.py"


def logged_steps(run_dir: Path) -> int:
    """The last step in a run's log_data.csv (0 when there is none or it is unreadable)."""
    try:
        with open(run_dir / "log_data.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return int(float(rows[-1]["step"])) if rows else 0
    except (OSError, KeyError, ValueError, csv.Error):
        return 0


def run_state(plan: RunPlan) -> str:
    """'done', 'resume' (has a checkpoint), 'restart' (a folder without one) or 'new'."""
    run_dir = trained_dir() / plan.name
    if not run_dir.exists():
        return "new"
    if logged_steps(run_dir) >= plan.max_iters and (run_dir / "model.safetensors").is_file():
        return "done"
    return "resume" if has_checkpoint(run_dir) else "restart"


def train_command(plan: RunPlan, state: str, preset: str | None) -> list[str]:
    if state == "resume":  # the run's saved configs hold everything; give train.py nothing else to compare
        return [sys.executable, str(TRAIN_SCRIPT), f"--model_name={plan.name}", "--resume"]
    args = [f"--preset={preset}"] if preset else []
    args += [f"--{k}={v}" for k, v in plan.settings.items()]
    return [sys.executable, str(TRAIN_SCRIPT), *args, *(["--overwrite"] if state == "restart" else [])]


def slots(parallel: int, device: str, threads: int | None) -> list[dict]:
    """One environment overlay per parallel slot: a GPU each where there are GPUs, else a share of the cores."""
    if device != "cpu":
        gpus = _visible_gpus()
        if gpus:
            return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(parallel)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_run = str(threads or max(1, cores // parallel))
    return [{"OMP_NUM_THREADS": per_run, "MKL_NUM_THREADS": per_run} for _ in range(parallel)]


def _visible_gpus() -> list[str]:
    import torch
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [g.strip() for g in listed.split(",") if g.strip()] if listed else []
    return ids[:torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


def _die_with_parent() -> None:
    """Linux: the kernel kills this run when the sweep process dies, even by kill -9, so no orphan keeps
    training (and holding its run folder) after the sweep is gone. Runs in the child before exec."""
    parent = os.getppid()
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os._exit(1)


@dataclass
class Outcome:
    plan: RunPlan
    ok: bool
    note: str        # 'finished in 41 s', or why it failed
    log_path: Path


def log_error(log_path: Path, first: bool = False) -> str:
    """The (last, or first) error line of the latest attempt in a run's log (train.py prints one 'error: ...'
    line; the Slurm task script adds its own after it)."""
    try:
        text = log_path.read_text(errors="replace").rsplit("\n=== sweep:", 1)[-1]
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")] or [ln for ln in lines if "Error" in ln]
    return (errors or lines[-1:] or [""])[0 if first else -1][:300]


def run_all(todo: list[tuple[RunPlan, str]], preset: str | None, slot_envs: list[dict], logs_dir: Path,
            say=print) -> list[Outcome]:
    """Run every (plan, state) through train.py, len(slot_envs) at a time, from this (main) thread.
    A run that fails is reported and the others go on. Ctrl-C or SIGTERM stops every run."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    pending, running, outcomes = list(todo), {}, []
    free = list(range(len(slot_envs)))
    total, started = len(todo), 0
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while pending or running:
            while pending and free:
                plan, state = pending.pop(0)
                slot = free.pop(0)
                log_path = logs_dir / f"{plan.name}.log"
                with open(log_path, "a") as log:
                    log.write(f"\n=== sweep: {state} {plan.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                    log.flush()
                    proc = subprocess.Popen(train_command(plan, state, preset), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env={**os.environ, **slot_envs[slot]},
                                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
                started += 1
                running[proc] = (plan, slot, time.perf_counter(), log_path)
                how = {"resume": "resuming from its checkpoint", "restart": "restarting (no checkpoint)"}
                say(f"[{started}/{total}] {plan.name}: {how.get(state, 'starting')} ({_slot_text(slot_envs[slot])})")
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                plan, slot, start, log_path = running.pop(proc)
                free.append(slot)
                seconds = time.perf_counter() - start
                done = run_state(plan) == "done"
                if proc.returncode == 0 and done:
                    outcome = Outcome(plan, True, f"finished in {seconds:.0f} s", log_path)
                else:
                    code = proc.returncode
                    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                    outcome = Outcome(plan, False, f"FAILED ({how}): {log_error(log_path) or 'no output'}", log_path)
                outcomes.append(outcome)
                say(f"{plan.name}: {outcome.note}" + ("" if outcome.ok else f"; full log: {log_path}"))
    except KeyboardInterrupt:  # each run saves a checkpoint of its current step and stops (train.py on SIGTERM)
        for proc in running:
            proc.terminate()
        if running:
            say(f"waiting for {len(running)} run(s) to save a checkpoint and stop (Ctrl-C again stops them at once: "
                f"their previous checkpoints stay)")
        for proc in running:
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcomes


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the runs as Ctrl-C does


def _slot_text(env: dict) -> str:
    if "CUDA_VISIBLE_DEVICES" in env:
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"{env['OMP_NUM_THREADS']} thread(s)"
