"""Where a training step's time goes: torch.profiler over a few of train.py's steps (bench_train.TrainStep),
the top ops by self CPU time, and a grouped summary; optionally py-spy for a Python-level view.

    python bench/profile_train.py --preset=nanogpt_shakespeare
    python bench/profile_train.py --preset=llama3_shakespeare --steps=20 --top=30
    python bench/profile_train.py --preset=nanogpt_shakespeare --py_spy     # needs `pip install py-spy`

Flags: --steps=N profiled steps (default 10), --warmup=N (default 5), --top=N rows (default 25),
--threads=N, --trace=FILE (a Chrome trace), --json (the summary as one JSON line only), --py_spy,
and bench_train's experiment switches (--adamw=..., --no_log_io).
Any other --key=value is a config override, as for train.py.

Groups (by op name, self CPU time): matmul (mm/addmm/bmm/linear), attention (SDPA kernels), norm
(layer/rms norm), optimizer (AdamW's kernels and the ops inside Optimizer.step and the gradient clip),
embedding, loss (cross-entropy), views/alloc/copy (view, transpose, empty, copy_, .item() ...), autograd
engine (self time of the backward nodes), elementwise (every other aten op: gelu, add, mul ...), data
(the batch gather), and
python overhead = step wall time minus the profiled ops' self time (interpreter, dispatch, modules).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_train import TrainStep  # noqa: E402

from machinery.cli import parse_bool  # noqa: E402

GROUP_PATTERNS = [  # first match wins; op names lower-cased
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
                "mkldnn_", "aten::_mm")),
    ("norm", ("layer_norm", "rms_norm", "native_layer_norm", "aten::norm", "linalg_vector_norm")),
    ("embedding", ("embedding",)),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax", "_softmax")),
]
OPTIMIZER_OPS = ("adam", "_foreach", "addcdiv", "addcmul", "lerp", "_fused")
VIEW_OPS = {"aten::view", "aten::t", "aten::transpose", "aten::reshape", "aten::_reshape_alias", "aten::as_strided",
            "aten::expand", "aten::split", "aten::split_with_sizes", "aten::slice", "aten::select",
            "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::alias", "aten::_unsafe_view",
            "aten::narrow", "aten::detach", "aten::detach_", "aten::contiguous", "aten::empty",
            "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::zeros", "aten::zeros_like",
            "aten::ones_like", "aten::clone", "aten::copy_", "aten::to", "aten::_to_copy", "aten::lift_fresh",
            "aten::result_type", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero",
            "aten::isfinite", "aten::arange", "aten::scalar_tensor", "aten::fill_", "aten::zero_"}


def group_of(name: str, in_optimizer: bool) -> str:
    low = name.lower()
    if in_optimizer or any(k in low for k in OPTIMIZER_OPS):
        return "optimizer"
    for group, keys in GROUP_PATTERNS:
        if any(k in low for k in keys):
            return group
    if name in VIEW_OPS:
        return "views/alloc/copy"
    if name.startswith("autograd::") or "Backward" in name:
        return "autograd engine"
    if name.startswith("aten::"):
        return "elementwise"
    return "other ops"


def profile(runner: TrainStep, steps: int, trace: str | None = None) -> tuple[list, dict, float]:
    """Profile `steps` steps; return (top ops, grouped self time in ms per step, step ms)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    optimizers = runner.optimizers
    original_steps = [opt.step for opt in optimizers]
    clip = torch.nn.utils.clip_grad_norm_
    original_next = type(runner.data.batches).__next__

    # label the optimizer and data phases so their ops can be grouped, whatever they are called
    def labelled(fn, label):
        def wrapper(*args, **kwargs):
            with record_function(label):
                return fn(*args, **kwargs)
        return wrapper

    for opt, fn in zip(optimizers, original_steps):
        opt.step = labelled(fn, "##optimizer")
    torch.nn.utils.clip_grad_norm_ = labelled(clip, "##optimizer")
    type(runner.data.batches).__next__ = labelled(original_next, "##data")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.cuda else [])
    try:
        with torch_profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                runner.step()
            wall = time.perf_counter() - start
    finally:
        for opt, fn in zip(optimizers, original_steps):
            opt.step = fn
        torch.nn.utils.clip_grad_norm_ = clip
        type(runner.data.batches).__next__ = original_next
    if trace:
        prof.export_chrome_trace(trace)

    # self CPU time of each op event, attributed to its enclosing ##label if any
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    labels = [(e.time_range.start, e.time_range.end, e.name) for e in events if e.name.startswith("##")]

    def label_at(t0: float) -> str | None:
        for start, end, name in labels:
            if start <= t0 <= end:
                return name
        return None

    grouped, op_total = defaultdict(float), 0.0
    for e in events:
        if e.name.startswith("##") or e.name.startswith("ProfilerStep"):
            continue
        self_us = e.self_cpu_time_total
        label = label_at(e.time_range.start)
        if label == "##data":
            group = "data"
        else:
            group = group_of(e.name, label == "##optimizer")
        grouped[group] += self_us
        op_total += self_us
    step_ms = 1e3 * wall / steps
    summary = {g: round(us / 1e3 / steps, 3) for g, us in sorted(grouped.items(), key=lambda kv: -kv[1])}
    # what the ops don't account for: Python, module calls, autograd bookkeeping, profiler itself
    summary["python overhead"] = round(max(0.0, step_ms - op_total / 1e3 / steps), 3)
    top = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)
    top = [a for a in top if not a.key.startswith("##")]
    return top, summary, step_ms


def run_py_spy(argv: list[str]) -> str:
    """Sample this script (without --py_spy) under py-spy; returns its top-style report or why not."""
    exe = shutil.which("py-spy")
    if exe is None:
        return "py-spy is not installed (pip install py-spy)"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"py_spy_{os.getpid()}.txt"
    args = [a for a in argv if not a.startswith("--py_spy")]
    cmd = [exe, "record", "--format", "raw", "--rate", "200", "-o", str(out), "--", sys.executable,
           str(Path(__file__).resolve()), "--json", "--no_profiler", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0 or not out.exists():
        return f"py-spy failed: {proc.stderr.strip()[-500:]}"
    # raw format: 'frame;frame;... count'. Keep the samples taken inside train_step (the timed
    # steps, not imports or setup); attribute each to the step's line (its phase) and to its leaf frame.
    self_counts, by_line, incl, total = defaultdict(int), defaultdict(int), defaultdict(int), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        inside = [i for i, f in enumerate(frames) if f.startswith("train_step (")]
        if not inside:
            continue
        n = int(count)
        total += n
        self_counts[frames[-1]] += n
        by_line[frames[inside[0]]] += n
        for f in set(frames[inside[0] + 1:]):
            incl[f] += n
    if not total:
        return "py-spy: no samples inside train_step"
    lines = [f"py-spy: {total} samples inside train_step (training/step.py), {args}"]
    lines.append("  by line of the step (training/step.py, train_step):")
    for f, n in sorted(by_line.items(), key=lambda kv: -kv[1])[:10]:
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    lines.append("  top self (leaf) frames:")
    for f, n in sorted(self_counts.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    lines.append("  top inclusive frames below the step:")
    for f, n in sorted(incl.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"    {100 * n / total:5.1f}%  {f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from machinery.cli import split_args as parse_cli
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    os.chdir(ROOT)
    overrides, positional = parse_cli(argv)
    if positional:
        print(f"error: unexpected argument(s) {positional}", file=sys.stderr)
        return 2
    own = {k: overrides.pop(k) for k in list(overrides)
           if k in ("preset", "steps", "warmup", "top", "threads", "trace", "json", "py_spy", "no_profiler",
                    "adamw", "no_log_io", "compile_mode")}
    for k in ("json", "py_spy", "no_profiler", "no_log_io"):
        own[k] = parse_bool(own.get(k, "false"), k)
    if own["py_spy"]:
        print(run_py_spy(argv))
        return 0
    if "threads" in own:
        torch.set_num_threads(int(own["threads"]))
    preset = own.get("preset", "nanogpt_shakespeare")
    steps, warmup = int(own.get("steps", 10)), int(own.get("warmup", 5))
    runner = TrainStep(overrides, preset, adamw=own.get("adamw"), no_log_io=own["no_log_io"],
                       compile_mode=own.get("compile_mode"),
                       max_steps=warmup + steps + 1)
    if runner.cfg.compile:
        warmup = max(warmup, 3)
    for _ in range(warmup):
        runner.step()
    if own["no_profiler"]:  # py-spy's target: plain steps, no torch profiler in the way
        start = time.perf_counter()
        for _ in range(steps):
            runner.step()
        print(json.dumps(dict(step_ms=round(1e3 * (time.perf_counter() - start) / steps, 3))))
        return 0
    top, summary, step_ms = profile(runner, steps, own.get("trace"))
    total = sum(summary.values())
    row = dict(bench="profile", preset=preset, steps=steps, threads=torch.get_num_threads(),
               compile=runner.cfg.compile, step_ms_profiled=round(step_ms, 3), groups_ms=summary,
               groups_frac={k: round(v / total, 4) for k, v in summary.items()},
               load_avg=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None)
    if not own["json"]:
        n = int(own.get("top", 25))
        print(f"top {n} ops by self CPU time over {steps} steps ({step_ms:.2f} ms/step under the profiler):")
        print(f"  {'op':<58} {'self ms/step':>12} {'calls/step':>10} {'% step':>7}")
        for a in top[:n]:
            ms = a.self_cpu_time_total / 1e3 / steps
            print(f"  {a.key[:58]:<58} {ms:12.3f} {a.count / steps:10.1f} {100 * ms / step_ms:6.1f}%")
        print("\nsummary (ms per step, share of the profiled step):")
        for k, v in summary.items():
            print(f"  {k:<16} {v:9.3f}  {100 * v / total:5.1f}%")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
