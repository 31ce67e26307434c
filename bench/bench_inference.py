"""Generation speed on CPU: new tokens per second at batch 1 and 8, with and without the KV cache.

    python bench/bench_inference.py                  # every run in trained/ (a random llama3_atto if none)
    python bench/bench_inference.py llama3_atto other_run --max_len=256 --threads=2 --repeats=3

Prints JSON lines: one describing the machine, one per (model, batch, cache) measurement, and one per
(model, batch) with the cache's speedup. Sampling uses the CLI defaults (temp 0.7, min_p 0.05) with eos
ignored, so every row generates exactly max_len tokens (or up to the context).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from bench.machine import cpu_name  # noqa: E402

import tools  # noqa: E402
from cli import build_configs  # noqa: E402
from inference import generate_ids  # noqa: E402
from modules.model import Model  # noqa: E402

BATCHES = (1, 8)
OPTIONS = dict(max_len=256, threads=None, repeats=1)




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


def measure(model, prompt: list[int], batch: int, use_cache: bool, max_len: int, repeats: int) -> dict:
    rows = [prompt] * batch
    generate_ids(model, rows, max_len=4, use_cache=use_cache)  # warm-up: first-call allocations
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = generate_ids(model, rows, max_len=max_len, temp=0.7, min_p=0.05, use_cache=use_cache, seed=0)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    tokens = sum(len(o) for o in out)
    # CPU seconds of this process: on a shared machine less noisy than wall time (clean with --threads=1)
    return dict(batch=batch, cache=use_cache, new_tokens_per_row=tokens // batch, seconds=round(best, 3),
                tokens_per_s=round(tokens / best, 1), cpu_seconds=round(best_cpu, 3))


def parse(argv: list[str]) -> tuple[list[str], dict]:
    opts, names = dict(OPTIONS), []
    for arg in argv:
        if not arg.startswith("--"):
            names.append(arg)
            continue
        key, _, value = arg[2:].partition("=")
        if key not in OPTIONS:
            raise ValueError(f"unknown flag --{key}; flags: " + ", ".join(f"--{k}" for k in OPTIONS))
        try:
            opts[key] = int(value)
        except ValueError:
            raise ValueError(f"--{key}={value!r} must be an integer") from None
        if opts[key] < 1:
            raise ValueError(f"--{key}={value} must be >= 1")
    return names, opts


def main(argv: list[str]) -> int:
    try:
        names, opts = parse(argv)
        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        print(json.dumps(dict(machine=cpu_name(), cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                              load_avg_1min=round(os.getloadavg()[0], 2), torch=torch.__version__,
                              python=platform.python_version(), device="cpu")), flush=True)
        for label, model, prompt, note in models_to_run(names):
            if note:
                print(json.dumps(dict(model=label, note=note)), flush=True)
            new = min(opts["max_len"], model.cfg.max_seq_len - len(prompt))
            for batch in BATCHES:
                rates = {}
                for use_cache in (True, False):
                    row = measure(model, prompt, batch, use_cache, new, opts["repeats"])
                    rates[use_cache] = row["tokens_per_s"]
                    print(json.dumps(dict(model=label, **row)), flush=True)
                print(json.dumps(dict(model=label, batch=batch, cache_speedup=round(rates[True] / rates[False], 2))),
                      flush=True)
    except (ValueError, OSError) as e:  # unknown model, bad weights, bad flag
        print(f"bench_inference.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
