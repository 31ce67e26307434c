"""Training-step throughput of any preset: training/step.py's train_step, the very step train.py's loop
runs (built by the same set-up functions), timed phase by phase, printed as one JSON line.

    python bench/bench_train.py --preset=nanogpt_shakespeare
    python bench/bench_train.py --preset=llama3_atto --dataset=data/samples/tinystories --steps=30
    python bench/bench_train.py --preset=nanogpt_shakespeare --compare-eager-compile
    python bench/bench_train.py --preset=nanogpt_shakespeare --compare-dtypes
    python bench/bench_train.py --preset=nanogpt_shakespeare --scaling      # ~1M/5M/25M x context 64/256/1024
    python bench/bench_train.py --pair="base;reference;compile;adamw=foreach"  # paired, one process

On a shared machine, separate processes drift by +-15% between runs even when others_cpu_cores is ~0;
compare variants with --pair (blocks alternate in one process) and read the ratios.

Any ModelConfig/TrainConfig field is an override (`--dim=256`, `--compile`, `--dtype=bfloat16`). Bench flags:
  --steps=N (timed steps, default 100)  --warmup=N (default 10; compiled runs at least 3)
  --budget_s=S   cap the timed steps so they take about S seconds (measured on the warm-up steps)
  --threads=N    torch.set_num_threads before anything runs
  --pair="A;B;..."  paired comparison in one process: each variant is comma-separated switches and
                 overrides ('base', 'adamw=foreach', 'threads=1', 'compile', 'no_log_io', or 'reference' for
                 bench/reference_gpt.py's nanoGPT step, optionally 'reference,threads=1'); blocks of
                 --block=25 steps alternate for --rounds=8 rounds so every variant sees the same load
Experiment switches (default: exactly what train.py does; each one mimics a candidate change):
  --adamw=fused|foreach|forloop   AdamW implementation (training/optim.py picks fused on CPU and CUDA)
  --no_log_io                     strip the @log_io wrappers from the model's forward methods
  --compile_mode=MODE             torch.compile mode (default / max-autotune-no-cudagraphs / reduce-overhead)

Output keys: preset, params, device, dtype, compile, threads, batch/seq_len/tokens_per_step, ms_per_iter
(median) with ms_p10/ms_p90, tokens_per_sec (from the median), flops_per_token, mfu against the measured
peak_flops (training.device.peak_flops for the dtype; on a CPU without AMX the bf16 peak is tiny, so bf16
MFU is meaningless), peak_memory_mb (CPU: the whole process's peak resident set during the timed steps,
VmHWM after resetting it, libraries included; peak_memory_delta_mb: above the RSS before the timed steps;
CUDA: max_memory_allocated), first_step_ms (includes compilation), split_ms (mean per
step: data, forward, backward, optimizer = clip + step + zero_grad, other = schedule, .item() check,
loss bookkeeping, loop) with split_frac, and outside_frac = (data + other) / step. others_cpu_cores: CPU
cores other processes kept busy during the timed steps (Linux): above ~0.2 the figures are contended.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.machine import cpu_busy_s, reset_peak_rss, rss_mb  # noqa: E402
from machinery.cli import parse_bool  # noqa: E402

BENCH_FLAGS = {"preset", "steps", "warmup", "budget_s", "threads", "pair", "rounds", "block", "adamw", "no_log_io",
               "compile_mode", "scaling", "compare_eager_compile", "compare_dtypes"}
BOOL_FLAGS = {"no_log_io", "scaling", "compare_eager_compile", "compare_dtypes"}

# the scaling table: (label, dim, layers, heads) x context, at a fixed number of tokens per step
SCALING_SIZES = [("1M", 128, 5, 4), ("5M", 256, 6, 4), ("25M", 512, 8, 8)]
SCALING_CONTEXTS = [64, 256, 1024]
SCALING_TOKENS_PER_STEP = 4096
SCALING_BUDGET_S = {"1M": 8.0, "5M": 15.0, "25M": 35.0}  # timed seconds per cell (the table: < ~10 min)


# --- small helpers -------------------------------------------------------------------------------------
def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = q * (len(values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _strip_log_io(model: torch.nn.Module) -> None:
    """Give every module of `model` whose forward is @log_io-wrapped the undecorated method instead
    (functools.wraps keeps it as __wrapped__); other models in the process are untouched."""
    import types
    for module in model.modules():
        fn = type(module).forward
        if hasattr(fn, "__wrapped__"):
            module.forward = types.MethodType(fn.__wrapped__, module)


def _rebuild_adamw(optimizers: list, impl: str) -> list:
    """Same parameter groups and hyperparameters, another AdamW implementation."""
    out = []
    for opt in optimizers:
        if not isinstance(opt, torch.optim.AdamW):
            out.append(opt)
            continue
        d = opt.defaults
        kind = dict(fused=dict(fused=True), foreach=dict(foreach=True), forloop=dict(foreach=False))[impl]
        groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups]
        out.append(torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"],
                                     weight_decay=d["weight_decay"], **kind))
    return out


# --- train.py's step, timed phase by phase ------------------------------------------------------------
class PhaseClock:
    """train_step's `clock`: seconds per phase, with the device synchronized at each mark."""

    def __init__(self, sync):
        self.sync, self.seconds, self.last = sync, {}, 0.0

    def start(self) -> float:
        self.sync()
        self.seconds, self.last = {}, time.perf_counter()
        return self.last

    def __call__(self, phase: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
        self.last = now


class TrainStep:
    """The data, model and optimizers built by train.py's own set-up functions (machinery/run/setup.py) for one
    process, and `step()`: training/step.py's train_step, the very function train.py's loop calls."""

    def __init__(self, overrides: dict, preset: str | None = None, adamw: str | None = None,
                 no_log_io: bool = False, compile_mode: str | None = None, max_steps: int = 1000):
        import dataclasses

        from machinery.cli import build_configs
        from machinery.data.tokenizer import get_tokenizer
        from machinery.run.setup import build_model, load_data, prepare_training, set_up

        model_cfg, cfg = build_configs(overrides, preset)
        if model_cfg.vocab_len is None:
            model_cfg = dataclasses.replace(model_cfg, vocab_len=get_tokenizer(model_cfg.tokenizer).vocab_len)
        self.model_cfg, self.cfg, self.preset = model_cfg, cfg, preset
        self.adamw, self.compile_mode, self.no_log_io = adamw, compile_mode, no_log_io
        self.machine = machine = set_up(cfg)
        self.device, self.dtype = machine.device, machine.dtype
        self.tokenizer = get_tokenizer(model_cfg.tokenizer, model_cfg.vocab_len)
        self.data = load_data(model_cfg, cfg, machine, self.tokenizer, show_progress=False, max_steps=max_steps)
        self.tokens_per_step = cfg.micro_batch_size * cfg.grad_accum_steps * model_cfg.max_seq_len
        self.model = build_model(model_cfg, cfg, machine)
        if no_log_io:
            _strip_log_io(self.model)
        self.train_model, self.optimizers = prepare_training(self.model, dataclasses.replace(cfg, compile=False),
                                                             machine)
        if adamw is not None:
            self.optimizers = _rebuild_adamw(self.optimizers, adamw)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model, **({"mode": compile_mode} if compile_mode else {}))
        self.cuda = self.device.type == "cuda"
        self.clock = PhaseClock(torch.cuda.synchronize if self.cuda else (lambda: None))
        self.step_index, self.losses = 0, []

    def step(self) -> tuple[float, tuple]:
        """One optimizer step; returns (seconds, (data, forward, backward, clip, optimizer) seconds)."""
        from training.step import train_step
        start = self.clock.start()
        result = train_step(self.step_index, self.train_model, self.optimizers, self.data.batches, self.cfg,
                            self.device, self.dtype, clock=self.clock)
        end = self.clock.last
        self.step_index += 1
        self.losses.append(result.loss)
        self.grad_norm = result.grad_norm
        t = self.clock.seconds
        return end - start, tuple(t.get(k, 0.0) for k in ("data", "forward", "backward", "clip", "optimizer"))

    def evaluate_ms(self) -> float:
        """One evaluation (eval_batches validation batches, as train.py runs it), in ms."""
        from training.evaluate import evaluate
        start = time.perf_counter()
        evaluate(self.train_model, self.data.val_tokens, self.model_cfg.max_seq_len, self.cfg, self.machine,
                 self.tokenizer.bos_id)
        return 1e3 * (time.perf_counter() - start)


# --- one benchmark -------------------------------------------------------------------------------------
def run_bench(overrides: dict, preset: str | None = None, steps: int = 100, warmup: int = 10,
              budget_s: float | None = None, **variants) -> dict:
    """Time `steps` optimizer steps of train.py's loop after `warmup` ones; return the result row."""
    from machinery.run.device import peak_flops

    runner = TrainStep(overrides, preset, max_steps=warmup + max(steps, 3) + 10, **variants)
    cfg, device, dtype = runner.cfg, runner.device, runner.dtype
    if cfg.compile:
        warmup = max(warmup, 3)  # the first steps compile forward, backward and the optimizer's graphs
    warm_times = [runner.step()[0] for _ in range(warmup)]  # the first one includes any compilation
    if budget_s is not None and warm_times:  # scale the timed steps to the budget
        per_step = statistics.median(warm_times[len(warm_times) // 2:])
        steps = max(3, min(steps, int(budget_s / per_step)))
    if runner.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_mb("VmRSS")
    reset_ok = reset_peak_rss()
    times, phases = [], []
    busy0, own0, wall0 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    for _ in range(steps):
        seconds, parts = runner.step()
        times.append(seconds)
        phases.append(parts)
    # CPU used by other processes while we ran, in cores: > ~0.2 means the timings are contended
    busy1, own1, wall1 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    others_cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    peak_mem = torch.cuda.max_memory_allocated(device) / 2 ** 20 if runner.cuda else rss_mb("VmHWM")
    eval_ms = runner.evaluate_ms()

    median, mean = statistics.median(times), statistics.fmean(times)
    data_ms, fwd_ms, bwd_ms, clip_ms, opt_ms = (1e3 * statistics.fmean(p[i] for p in phases) for i in range(5))
    optimizer_ms = clip_ms + opt_ms
    other_ms = 1e3 * mean - (data_ms + fwd_ms + bwd_ms + optimizer_ms)
    split = dict(data=data_ms, forward=fwd_ms, backward=bwd_ms, optimizer=optimizer_ms, other=other_ms)
    peak = peak_flops(device.type, dtype)
    model, T = runner.model, runner.model_cfg.max_seq_len
    flops_per_token = model.flops_per_token(T)
    tokens_per_sec = runner.tokens_per_step / median
    return dict(
        bench="train_step", preset=preset, params=model.get_num_params(),
        non_embedding_params=model.get_num_params(non_embedding=True), device=device.type,
        dtype=str(dtype).removeprefix("torch."), compile=cfg.compile, compile_mode=runner.compile_mode,
        threads=torch.get_num_threads(), batch=cfg.micro_batch_size, grad_accum=cfg.grad_accum_steps,
        seq_len=T, tokens_per_step=runner.tokens_per_step, steps=len(times), warmup=warmup,
        first_step_ms=round(1e3 * warm_times[0], 1) if warm_times else None,
        ms_per_iter=round(1e3 * median, 3), ms_p10=round(1e3 * _quantile(times, 0.1), 3),
        ms_p90=round(1e3 * _quantile(times, 0.9), 3), ms_mean=round(1e3 * mean, 3),
        tokens_per_sec=round(tokens_per_sec, 1), flops_per_token=round(flops_per_token),
        mfu=round(flops_per_token * tokens_per_sec / peak, 5), peak_flops=round(peak),
        peak_memory_mb=round(peak_mem, 1),
        peak_memory_delta_mb=None if runner.cuda or not reset_ok else round(peak_mem - rss_before, 1),
        split_ms={k: round(v, 3) for k, v in split.items()},
        split_frac={k: round(v / (1e3 * mean), 4) for k, v in split.items()},
        clip_ms=round(clip_ms, 3), outside_frac=round((data_ms + other_ms) / (1e3 * mean), 4),
        eval_ms=round(eval_ms, 1), eval_frac_amortized=round(eval_ms / (cfg.eval_interval * 1e3 * mean), 4),
        variants=dict(adamw=runner.adamw, no_log_io=runner.no_log_io),
        others_cpu_cores=round(others_cores, 3), cpus=os.cpu_count(),
        torch=torch.__version__, load_avg=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        date=time.strftime("%Y-%m-%d %H:%M:%S"))


# --- paired comparison: variants alternate in one process ---------------------------------------------
VARIANT_SWITCHES = {"adamw", "no_log_io", "compile_mode"}


def _parse_variant(spec: str) -> tuple[dict, dict, int | None]:
    """'adamw=foreach,threads=1,compile' -> (TrainStep switches, config overrides, threads)."""
    switches, overrides, threads = {}, {}, None
    for token in filter(None, (t.strip() for t in spec.split(","))):
        key, eq, value = token.partition("=")
        key = key.strip().replace("-", "_")
        value = value.strip() if eq else "true"
        if key in ("base", "reference"):
            continue
        if key == "threads":
            threads = int(value)
        elif key in VARIANT_SWITCHES:
            switches[key] = parse_bool(value, key) if key in BOOL_FLAGS else value
        else:
            overrides[key] = value
    return switches, overrides, threads


def run_pairs(specs: list[str], overrides: dict, preset: str | None, rounds: int = 8, block: int = 25,
              warmup: int = 10) -> list[dict]:
    """Build every variant of the preset's step (or 'reference': bench/reference_gpt.py's nanoGPT step),
    then alternate blocks of `block` steps, rotating the order each round, so that all variants see the
    same machine load; the first step of each block is dropped (cache refill). One row per variant."""
    sys.path.insert(0, str(ROOT / "bench"))
    default_threads = torch.get_num_threads()
    runners = []
    for spec in specs:
        switches, extra, threads = _parse_variant(spec)
        torch.set_num_threads(threads or default_threads)
        if spec.split(",")[0].strip() == "reference":
            import reference_gpt
            ref_args = [f"--{k}={v}" for k, v in extra.items()] + ["--quiet"]
            runner = reference_gpt.Reference(reference_gpt.parse_args(ref_args))
            step = runner.step
            tokens = runner.args.batch_size * runner.args.block_size
        else:
            runner = TrainStep({**overrides, **extra}, preset,
                               max_steps=warmup + rounds * block + 10, **switches)
            step = (lambda r=runner: r.step()[0])
            tokens = runner.tokens_per_step
        n_warm = warmup + (3 if getattr(getattr(runner, "cfg", None), "compile", False) else 0)
        for _ in range(n_warm):
            step()
        runners.append(dict(spec=spec, step=step, threads=threads or default_threads, tokens=tokens, times=[]))
    busy0, own0, wall0 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    for r in range(rounds):
        for i in range(len(runners)):
            v = runners[(i + r) % len(runners)]
            torch.set_num_threads(v["threads"])
            block_times = [v["step"]() for _ in range(block)]
            v["times"] += block_times[1:]
    busy1, own1, wall1 = cpu_busy_s(), sum(os.times()[:2]), time.perf_counter()
    torch.set_num_threads(default_threads)
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    rows, first = [], None
    for v in runners:
        median = statistics.median(v["times"])
        first = first or median
        rows.append(dict(bench="pair", preset=preset, variant=v["spec"], threads=v["threads"],
                         steps=len(v["times"]), ms_per_iter=round(1e3 * median, 3),
                         ms_p10=round(1e3 * _quantile(v["times"], 0.1), 3),
                         ms_p90=round(1e3 * _quantile(v["times"], 0.9), 3),
                         tokens_per_sec=round(v["tokens"] / median, 1),
                         speedup_vs_first=round(first / median, 4), others_cpu_cores=round(others, 3),
                         load_avg=round(os.getloadavg()[0], 2), date=time.strftime("%Y-%m-%d %H:%M:%S")))
    return rows


# --- several benchmarks, each in its own process -----------------------------------------------------
def _subprocess_row(args: list[str]) -> dict:
    """Run this script on `args` in a fresh process (clean peak memory, no shared compile caches)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], cwd=ROOT,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return dict(bench="train_step", error=(proc.stderr or proc.stdout).strip().splitlines()[-1:],
                    args=args)
    return json.loads(lines[-1])


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def _compare(base_args: list[str], key: str, values: list[str], extra: dict | None = None) -> list[dict]:
    rows = []
    for value in values:
        args = [a for a in base_args if a.lstrip("-").split("=")[0] != key] + [f"--{key}={value}"]
        args += [f"--{k}={v}" for k, v in (extra or {}).get(value, {}).items()]
        row = _subprocess_row(args)
        _emit(row)
        rows.append(row)
    ok = [r for r in rows if "ms_per_iter" in r]
    if len(ok) == len(rows):
        _emit(dict(bench="compare", key=key, values=values, ms_per_iter=[r["ms_per_iter"] for r in rows],
                   speedup_second_vs_first=round(rows[0]["ms_per_iter"] / rows[1]["ms_per_iter"], 3),
                   first_step_ms=[r.get("first_step_ms") for r in rows], eval_ms=[r.get("eval_ms") for r in rows]))
    return rows


def scaling_table(base_args: list[str], preset: str) -> list[dict]:
    rows = []
    for label, dim, layers, heads in SCALING_SIZES:
        for T in SCALING_CONTEXTS:
            cell = dict(dim=dim, num_layers=layers, num_q_heads=heads, num_kv_heads=heads, head_dim="None",
                        max_seq_len=T, micro_batch_size=SCALING_TOKENS_PER_STEP // T, grad_accum_steps=1,
                        eval_batches=2)  # the eval timing only needs a couple of batches here
            args = [a for a in base_args if a.split("=")[0].lstrip("-") not in cell]
            args += [f"--preset={preset}", *(f"--{k}={v}" for k, v in cell.items()),
                     f"--budget_s={SCALING_BUDGET_S[label]}", "--warmup=2", "--steps=50"]
            row = _subprocess_row(args)
            row["cell"] = f"{label} x {T}"
            _emit(row)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from machinery.cli import split_args as parse_cli
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    os.chdir(ROOT)  # presets give data paths relative to the project root
    overrides, positional = parse_cli(argv)
    if positional:
        print(f"error: unexpected argument(s) {positional}: settings are given as --key=value", file=sys.stderr)
        return 2
    bench = {k: overrides.pop(k) for k in list(overrides) if k in BENCH_FLAGS}
    for k in BOOL_FLAGS & bench.keys():
        bench[k] = parse_bool(bench[k], k)
    preset = bench.get("preset", "nanogpt_shakespeare")
    base_args = [a for a in argv if a.lstrip("-").split("=")[0].replace("-", "_")
                 not in ("scaling", "compare_eager_compile", "compare_dtypes")]
    if "threads" in bench:
        torch.set_num_threads(int(bench["threads"]))
    if "pair" in bench:
        specs = [v.strip() for v in bench["pair"].split(";") if v.strip()]
        for row in run_pairs(specs, overrides, preset, rounds=int(bench.get("rounds", 8)),
                             block=int(bench.get("block", 25)), warmup=int(bench.get("warmup", 10))):
            _emit(row)
        return 0
    if bench.get("scaling"):
        scaling_table(base_args, preset)
        return 0
    if bench.get("compare_eager_compile"):
        _compare(base_args, "compile", ["false", "true"])
        return 0
    if bench.get("compare_dtypes"):  # bf16 without AMX is very slow on CPU: fewer steps for it
        slow = {"bfloat16": {"steps": 5, "warmup": 1, "eval_batches": 2}} if not torch.cuda.is_available() else {}
        _compare(base_args, "dtype", ["float32", "bfloat16"], slow)
        return 0
    try:
        row = run_bench(overrides, preset, steps=int(bench.get("steps", 100)), warmup=int(bench.get("warmup", 10)),
                        budget_s=float(bench["budget_s"]) if "budget_s" in bench else None,
                        adamw=bench.get("adamw"), no_log_io=bench.get("no_log_io", False),
                        compile_mode=bench.get("compile_mode"))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _emit(dict(row, overrides=overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
