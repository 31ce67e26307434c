"""Generation speed on CPU: new tokens per second at batch 1 and 8 without the KV cache, with it (eager),
and with the compiled decode step; and what compiling costs (the break-even behind compile="auto").

    python bench/bench_inference.py                  # every run in trained/ (a random llama3_atto if none)
    python bench/bench_inference.py llama3_atto other_run --max_new_tokens=256 --threads=1 --repeats=3

Prints JSON lines: one describing the machine, one per (model, batch, path) measurement, and one per
(model, batch) with the speed-ups and the compile break-even: how many decode steps (new tokens per row,
over any number of generations of that batch size) the compiled step needs to win back its compile time.
Sampling uses the CLI defaults (temperature 0.7, min_p 0.05) with eos ignored, so every row makes the same
number of tokens.
Compile time is measured on the first compiled call of each shape in this process (torch's on-disk
compile cache, if warm from an earlier run, makes it shorter).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
import tools  # noqa: E402
from bench.machine import cpu_features, cpu_name  # noqa: E402
from machinery.cli import build, build_configs, print_help_if_asked, reject_unknown, split_args  # noqa: E402
from machinery.generation import GenerationConfig, SamplingConfig, generate_ids  # noqa: E402
from modules.model import Model  # noqa: E402

BATCHES = (1, 8)
PATHS = {"no_cache": dict(use_cache=False, compile="off"), "cache": dict(compile="off"),
         "compiled": dict(compile="on")}


@dataclass
class InferenceBenchOptions:
    # --- benchmark ---
    max_new_tokens: int = 256  # new tokens per row (capped by the context)
    threads: int | None = None  # torch intra-op threads (None = torch's default)
    repeats: int = 1  # timed generations per measurement (the best is kept)


def models_to_run(names: list[str]):
    """(label, model, prompt ids, note) for each model asked for, or each run in trained/, or a stand-in."""
    names = names or tools.list_runs()
    if not names:
        cfg, _ = build_configs(dict(vocab_len=1024), preset="llama3_atto")
        torch.manual_seed(0)
        note = "no runs in trained/: a randomly initialized llama3_atto-sized model (vocab 1024)"
        yield "random_llama3_atto", Model(cfg).eval(), [1, 100, 200, 300, 400], note
        return
    for name in names:
        model, tok, _, _ = tools.load_model(name, "cpu")
        yield name, model, [tok.bos_id] + tok.encode("Once upon a time"), None


def measure(model, prompt: list[int], batch: int, path: str, new_tokens: int, repeats: int) -> dict:
    rows = [prompt] * batch
    sampling = SamplingConfig(temperature=0.7, min_p=0.05, seed=0)
    options = GenerationConfig(max_new_tokens=new_tokens, **PATHS[path])
    start = time.perf_counter()
    generate_ids(model, rows, sampling, options)  # warm-up: first-call allocations, and compiling
    first_call = time.perf_counter() - start
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = generate_ids(model, rows, sampling, options)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    tokens = sum(len(o) for o in out)
    # CPU seconds of this process: on a shared machine less noisy than wall time (clean with --threads=1)
    return dict(batch=batch, path=path, new_tokens_per_row=tokens // batch, seconds=round(best, 3),
                first_call_seconds=round(first_call, 3), tokens_per_s=round(tokens / best, 1),
                cpu_seconds=round(best_cpu, 3))


def main(argv: list[str] | None = None) -> int:
    overrides, names = split_args(sys.argv[1:] if argv is None else argv)
    if print_help_if_asked(overrides, usage=__doc__, sections=[("Options", InferenceBenchOptions)]):
        return 0
    try:
        opts = build(InferenceBenchOptions, overrides)
        reject_unknown(overrides, InferenceBenchOptions)
        if opts.threads:
            torch.set_num_threads(opts.threads)
        print(json.dumps(dict(machine=cpu_name(), cpu_flags=cpu_features(), cpus=os.cpu_count(),
                              torch_threads=torch.get_num_threads(), load_avg_1min=round(os.getloadavg()[0], 2),
                              torch=torch.__version__, python=platform.python_version(), device="cpu")), flush=True)
        for label, model, prompt, note in models_to_run(names):
            if note:
                print(json.dumps(dict(model=label, note=note)), flush=True)
            new = min(opts.max_new_tokens, model.cfg.max_seq_len - len(prompt))
            for batch in BATCHES:
                rows = {path: measure(model, prompt, batch, path, new, opts.repeats) for path in PATHS}
                for row in rows.values():
                    print(json.dumps(dict(model=label, **row)), flush=True)
                eager, compiled = rows["cache"], rows["compiled"]
                compile_s = compiled["first_call_seconds"] - compiled["seconds"]
                saved_per_step = (eager["seconds"] - compiled["seconds"]) / new
                print(json.dumps(dict(
                    model=label, batch=batch,
                    cache_speedup=round(rows["no_cache"]["seconds"] / eager["seconds"], 2),
                    compiled_speedup=round(eager["seconds"] / compiled["seconds"], 2),
                    compile_seconds=round(compile_s, 2),
                    break_even_steps=round(compile_s / saved_per_step) if saved_per_step > 0 else None)),
                      flush=True)
    except (ValueError, OSError) as e:  # unknown model, bad weights, bad flag
        print(f"bench_inference.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
