"""The GPU check: one command that measures what the project claims about GPUs, written to run unattended in a
short GPU window (docs/gpu.md).

    python bench/gpu_check.py --out=$OUT          # on a CUDA machine: about 6 minutes on an H100/H200
    python bench/gpu_check.py --only=run,attention # rerun some sections or steps
    python bench/gpu_check.py --smoke              # the same code on the CPU with tiny shapes (about a minute)

Sections, in the order their figures matter (bench/gpucheck/plan.py):
  env        the GPU, driver, torch/CUDA versions, and its own bf16 matmul rate (8192^3) and copy bandwidth
  tests      pytest tests/test_cuda.py, time-boxed: pass/fail counts and the failures
  train      tokens/s, MFU, peak memory, first-step (compile) time of train.py's own step (bf16, compiled,
             random tokens): gpt2_124M at context 1024 paired with the nanoGPT-style reference; llama_1B at
             context 2048 with the largest micro-batch that fits, without and with activation checkpointing;
             gpt2_124M under FSDP2 on one GPU
  decode     generated tokens/s at batch 1 and 64 of a 100M-class model: eager KV cache, the compiled decode
             step, CUDA graphs; the tokens must be the same
  run        train.py on the bundled TinyStories sample: the loss falls; killed with SIGKILL after a
             checkpoint and --resume'd, its log equals the uninterrupted twin's (exact in float32)
  attention  document masking and sliding windows: SDPA with a mask against FlexAttention's block mask

Each step runs in its own process; every measurement is one JSON line, appended the moment it exists, to
<out>/<date>_<gpu>.jsonl and (not under --smoke) bench/results/<date>_<gpu>.jsonl. The processes' output goes
to <out>/gpu_check.log, the summary (every line, then the goals with pass/MISS) to the screen and
<out>/summary.txt. A failing item is a line with its error and the rest still runs; once --budget_s is spent
nothing new starts and what is left is recorded as skipped (the summary says how to run it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpucheck import plan  # noqa: E402
from bench.gpucheck.goals import summary  # noqa: E402
from bench.gpucheck.record import Recorder, read_rows, results_name, slug  # noqa: E402
from bench.options import parse_options  # noqa: E402

COMPILE_BACKENDS = ("auto", "inductor", "eager")
GRACE_S = 20  # a step still running this long after its deadline is killed (its item had started in time)


@dataclass
class GpuCheckOptions:
    smoke: bool = False          # the same sections on the CPU with tiny shapes: a rehearsal that needs no GPU
    only: Optional[str] = None   # comma-separated sections (env,tests,train,decode,run,attention) or steps
                                 # (train_more, decode_more): run just these
    budget_s: float = 330.0      # nothing new starts after this many seconds; what is left is recorded as skipped
    out: Optional[str] = None    # folder for the results, the log and the summary (default: bench/results/logs/...)
    compile_backend: str = "auto"  # torch.compile backend: auto = inductor, or under --smoke dynamo's 'eager'
                                   # (graph capture and guards without code generation: seconds, not minutes)


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_step(step: plan.Step, settings: dict, deadline: float, log_path: Path) -> str:
    """One step in its own process group, killed (with anything it started) GRACE_S after its deadline.
    -> 'ok', 'timeout' or 'error'."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "a") as log:
        log.write(f"\n===== {step.name} ({step.section}: {', '.join(step.items)}) =====\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "bench.gpucheck.section", json.dumps(settings)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.time() + GRACE_S))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
    return "ok" if code == 0 else "error"


def fill_missing(recorder: Recorder, step: plan.Step, status: str, why: str, run_id: str) -> None:
    """A line for every item of the step that wrote none (skipped, or lost with a killed or crashed process)."""
    written = {(r["section"], r["item"]) for r in read_rows(recorder.paths[0], run_id)}
    for item in step.items:
        if (step.section, item) not in written:
            recorder.write(step.section, item, status, error=why)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(GpuCheckOptions, argv, __doc__)
    if isinstance(options, int):
        return options
    try:
        steps = plan.select_steps(options.only)
    except ValueError as e:
        return usage_error(str(e))
    if options.compile_backend not in COMPILE_BACKENDS:
        return usage_error(f"--compile_backend={options.compile_backend!r} is not one of {', '.join(COMPILE_BACKENDS)}")
    if options.budget_s <= 0:
        return usage_error(f"--budget_s={options.budget_s} must be positive")
    import torch
    if not options.smoke and not torch.cuda.is_available():
        return usage_error("no CUDA GPU is visible: bench/gpu_check.py measures a GPU. Run it on a CUDA machine, "
                           "or rehearse it here with --smoke (the same code on the CPU, tiny shapes)")
    machine = "smoke-cpu" if options.smoke else torch.cuda.get_device_name(0)
    date, run_id = time.strftime("%Y-%m-%d"), time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    out = Path(options.out) if options.out else ROOT / "bench" / "results" / "logs" / f"{run_id}_{slug(machine)}"
    out.mkdir(parents=True, exist_ok=True)
    files = [out / results_name(date, machine)]
    if not options.smoke:
        files.append(ROOT / "bench" / "results" / results_name(date, machine))
    command = " ".join(["python bench/gpu_check.py", *argv])
    base = dict(run_id=run_id, gpu=machine, device="cpu" if options.smoke else "cuda", torch=torch.__version__,
                smoke=options.smoke, command=command)
    recorder = Recorder(files, base)
    backend = options.compile_backend if options.compile_backend != "auto" else ("eager" if options.smoke else
                                                                                 "inductor")
    log_path = out / "gpu_check.log"
    start = time.time()
    deadline = start + options.budget_s
    print(f"gpu_check: {machine}, {len(steps)} step(s), budget {options.budget_s:.0f} s, results in {files[0]}",
          flush=True)
    left_out = []
    for step in steps:
        left = deadline - time.time()
        if left < step.min_s:
            fill_missing(recorder, step, "skipped", f"budget: {max(left, 0):.0f} s left, the step needs "
                                                    f"{step.min_s:.0f} s", run_id)
            left_out.append(step.name)
            continue
        step_deadline = min(deadline, time.time() + step.cap_s)
        rows = read_rows(files[0], run_id)
        peak = next((r["matmul_tflops"] * 1e12 for r in rows if r["section"] == "env" and r.get("matmul_tflops")),
                    None)
        settings = dict(section=step.section, items=list(step.items), smoke=options.smoke, deadline=step_deadline,
                        results=[str(f) for f in files], base=base, compile_backend=backend,
                        measured_peak_flops=peak)
        t0 = time.time()
        outcome = run_step(step, settings, step_deadline, log_path)
        if outcome != "ok":
            why = ("killed: still running past its deadline" if outcome == "timeout"
                   else f"the step's process failed: see {log_path}")
            fill_missing(recorder, step, "timeout" if outcome == "timeout" else "error", why, run_id)
        if any(r["status"] == "skipped" and (r.get("error") or "").startswith("budget")
               for r in read_rows(files[0], run_id) if r["section"] == step.section and r["item"] in step.items):
            left_out.append(step.name)
        print(f"[{time.time() - start:5.0f} s] {step.name}: {outcome} in {time.time() - t0:.0f} s", flush=True)
    rows = read_rows(files[0], run_id)
    text = summary(rows, options.smoke)
    if left_out:
        text += (f"\n\nleft out for the budget: rerun them with\n    python bench/gpu_check.py "
                 f"--only={','.join(dict.fromkeys(left_out))}{' --smoke' if options.smoke else ''} --out={out}")
    text += f"\n\n{len(rows)} lines in {files[0]}; log {log_path}; {time.time() - start:.0f} s in all"
    print("\n" + text, flush=True)
    (out / "summary.txt").write_text(text + "\n")
    return 1 if any(r["status"] in ("error", "timeout") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
