"""Greedy decoding speed against Hugging Face transformers' `generate`, with the same weights, in one process.

    pip install transformers          # an optional dependency of this benchmark only
    python bench/bench_decode_hf.py [--model=llama3_atto] [--new_tokens=200] [--batches=1,8] [--rounds=5] [--threads=1]

Our Llama-style run is converted to a transformers LlamaForCausalLM (q/k rows permuted from our interleaved
RoPE pairs to its rotate-half layout). Before any timing, every variant must produce exactly our eager
greedy tokens. Variants, timed in alternating blocks (one generation each, every round) so all see the
same machine load:
  ours_eager         generate_ids with compile="off" (growing KV cache)
  ours_compiled      generate_ids with compile="on" (fixed-slot decode step under torch.compile)
  hf_default         model.generate, its default dynamic cache
  hf_static_compiled model.generate with cache_implementation="static" and model.forward under torch.compile
Compile time is paid in the warm-up and not timed (it is reported). Prints JSON lines: the machine, the
token check, one line per timed generation, and one summary per batch (median tokens/s and ratios).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from bench.machine import cpu_busy_s, cpu_features, cpu_name  # noqa: E402


@dataclass
class DecodeBenchOptions:
    # --- benchmark ---
    model: str = "llama3_atto"  # a Llama-style run in trained/ (RoPE, RMSNorm, SwiGLU, no biases)
    prompt: str = "Once upon a time"  # the same prompt in every row
    new_tokens: int = 200  # new tokens per row (eos ignored on both sides)
    batches: str = "1,8"  # comma-separated batch sizes
    rounds: int = 5  # timed generations per variant and batch (alternating)
    threads: int = 1  # torch intra-op threads


def to_transformers(model):
    """Our model as a transformers model with the same weights (float32, eval), through the same mapping as
    export_hf.py (machinery/interop/): a ValueError names any option transformers cannot express."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from machinery.interop.architectures import for_export
    from machinery.interop.export import hf_weights
    cfg = model.cfg
    config = for_export(cfg).hf_config(cfg)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    missing, unexpected = hf.load_state_dict(hf_weights(cfg, model.state_dict()), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # a tied output weight is the embedding's
        raise ValueError(f"weights do not match {type(hf).__name__}: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.float().eval()


def variants(model, new_tokens: int):
    """name -> function(rows) returning the new token ids of each row."""
    from machinery.generation import GenerationConfig, SamplingConfig, generate_ids
    greedy = SamplingConfig(temperature=0)

    def ours(compile_mode):
        options = GenerationConfig(max_new_tokens=new_tokens, compile=compile_mode)
        return lambda rows: generate_ids(model, rows, greedy, options)

    def theirs(hf, **kwargs):
        # eos ignored as ours does (eos_id=None): it may be generated and does not stop the row. min_new_tokens
        # would instead forbid eos and change the tokens of a model that emits it within new_tokens
        hf.generation_config.eos_token_id = None
        @torch.inference_mode()
        def run(rows):
            ids = torch.tensor(rows)
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                              pad_token_id=0, **kwargs)
            return out[:, ids.shape[1]:].tolist()
        return run

    hf_static = to_transformers(model)  # a second copy: only this one's forward is compiled
    hf_static.forward = torch.compile(hf_static.forward)  # transformers' recipe for a static cache
    return {"ours_eager": ours("off"), "ours_compiled": ours("on"), "hf_default": theirs(to_transformers(model)),
            "hf_static_compiled": theirs(hf_static, cache_implementation="static")}


def main(argv: list[str] | None = None) -> int:
    from machinery.cli import build, print_help_if_asked, reject_unknown, split_args
    overrides, _ = split_args(sys.argv[1:] if argv is None else argv)
    if print_help_if_asked(overrides, usage=__doc__, sections=[("Options", DecodeBenchOptions)]):
        return 0
    try:
        import transformers
    except ImportError:
        print("bench_decode_hf.py: error: transformers is not installed: pip install transformers", file=sys.stderr)
        return 2
    import tools
    opts = build(DecodeBenchOptions, overrides)
    reject_unknown(overrides, DecodeBenchOptions)
    torch.set_num_threads(opts.threads)
    model, tok, _, _ = tools.load_model(opts.model, "cpu")
    prompt = [tok.bos_id] + tok.encode(opts.prompt)
    batches = [int(b) for b in opts.batches.split(",")]
    print(json.dumps(dict(bench="decode_hf", cpu=cpu_name(), cpu_flags=cpu_features(), cpus=os.cpu_count(),
                          threads=opts.threads, torch=torch.__version__, transformers=transformers.__version__,
                          model=opts.model, new_tokens=opts.new_tokens, load_avg_1min=round(os.getloadavg()[0], 2))),
          flush=True)
    return run(model, prompt, batches, opts)


def run(model, prompt, batches, opts) -> int:
    runners = variants(model, opts.new_tokens)
    for batch in batches:
        rows = [prompt] * batch
        expected = None
        for name, generate in runners.items():  # warm-up (compiles) and the token check
            start = time.perf_counter()
            tokens = generate(rows)
            warmup_s = time.perf_counter() - start
            expected = tokens if expected is None else expected
            same = tokens == expected
            print(json.dumps(dict(batch=batch, variant=name, warmup_s=round(warmup_s, 2),
                                  tokens_match_ours_eager=same)), flush=True)
            if not same:
                print(f"bench_decode_hf.py: error: {name} tokens differ from ours_eager at batch {batch}",
                      file=sys.stderr)
                return 1
        rates = {name: [] for name in runners}
        cpu_rates = {name: [] for name in runners}  # per CPU-second of this process: less distorted by load
        busy_start, load_start, wall_start = cpu_busy_s(), os.getloadavg()[0], time.perf_counter()
        for r in range(opts.rounds):
            for name, generate in runners.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                generate(rows)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
                rates[name].append(batch * opts.new_tokens / seconds)
                cpu_rates[name].append(batch * opts.new_tokens / cpu_seconds)
                print(json.dumps(dict(batch=batch, variant=name, round=r, seconds=round(seconds, 4),
                                      cpu_seconds=round(cpu_seconds, 4),
                                      tokens_per_s=round(batch * opts.new_tokens / seconds, 1))), flush=True)
        wall = time.perf_counter() - wall_start
        median = {name: statistics.median(v) for name, v in rates.items()}
        best_theirs = max(median["hf_default"], median["hf_static_compiled"])
        print(json.dumps(dict(
            batch=batch, summary=True, median_tokens_per_s={k: round(v, 1) for k, v in median.items()},
            ours_compiled_vs_best_hf=round(median["ours_compiled"] / best_theirs, 2),
            ours_eager_vs_best_hf=round(median["ours_eager"] / best_theirs, 2),
            ours_compiled_vs_ours_eager=round(median["ours_compiled"] / median["ours_eager"], 2),
            median_tokens_per_cpu_s={k: round(statistics.median(v), 1) for k, v in cpu_rates.items()},
            load_avg_1min_start=round(load_start, 2), load_avg_1min_end=round(os.getloadavg()[0], 2),
            machine_busy_cpus=round((cpu_busy_s() - busy_start) / wall, 2))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
