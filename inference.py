"""Generate text from a trained model: the command line over machinery/generation/.

usage: python inference.py MODEL "prompt" ["prompt" ...] [--key=value ...]
  MODEL   a folder name in trained/, or a path to a run folder
  Put -- before prompts that start with --. --help=NAME explains one option.

    python inference.py llama3_atto "Once upon a time" "The dog" --temperature=0.7 --max_new_tokens=100

From Python:

    from machinery.generation import GenerationConfig, SamplingConfig, generate
    texts = generate(model, tokenizer, ["Once upon a time", "The dog"], SamplingConfig(temperature=0),
                     GenerationConfig(max_new_tokens=50))
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from config import DEVICES, DTYPES
from machinery.cli import UsageError, build, print_help_if_asked, reject_unknown, run_script, split_args
from machinery.generation import GenerationConfig, SamplingConfig, generate
from machinery.validation import Validated


@dataclass
class RunOptions(Validated):
    """Where to run, and what to print."""
    # --- run ---
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (bfloat16 on GPUs that have it; float32 on CPUs) | float32 | bfloat16
    show_tokens: bool = False  # also print each continuation split into tokens

    def __post_init__(self):
        self._choice("device", DEVICES)
        self._choice("dtype", DTYPES)
        self._bool("show_tokens")


def split_prompts(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(options, positional arguments); everything after a bare -- is positional (a prompt)."""
    rest: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, rest = argv[:at], argv[at + 1:]
    overrides, positional = split_args(argv)
    return overrides, positional + rest


def check_model(name: str, prompts: list[str]) -> None:
    """A name that is no run in trained/ is one line listing the runs there; with no prompt after it, it was most
    likely the prompt, typed without the model name. (A path, or a folder in trained/, is checked on loading.)"""
    from config import RUN_NAME
    from machinery.run import runs
    if runs.is_path(name) or (RUN_NAME.fullmatch(name) and (runs.trained_dir() / name).exists()):
        return
    models = ", ".join(runs.list_runs()) or "none yet (train one with python train.py)"
    forgot = "" if prompts else f" (the model comes first: python inference.py MODEL {shlex.quote(name)})"
    raise UsageError(f"no model named {name!r} in {runs.trained_dir()}{forgot}; models there: {models}")


def check_prompt_text(prompts: list[str]) -> None:
    """Empty prompts, and text that is not valid UTF-8 (a terminal with a non-UTF-8 locale hands Python
    undecodable bytes as lone surrogates, which no tokenizer can encode)."""
    for i, p in enumerate(prompts, 1):
        if not p.strip():
            raise UsageError("empty prompt: every prompt needs some text")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raw = p[e.start:e.end].encode("utf-8", "surrogateescape")
            raise UsageError(f"prompt {i} is not valid UTF-8 text (byte {raw[:1].hex()} at character {e.start}): "
                             f"set a UTF-8 locale, e.g. LANG=C.UTF-8") from None


def parse_args(argv: list[str]):
    """(model, prompts, SamplingConfig, GenerationConfig, RunOptions), or None when help was printed."""
    overrides, positional = split_prompts(argv)
    sections = [("Sampling", SamplingConfig), ("Generation", GenerationConfig), ("Run", RunOptions)]
    if print_help_if_asked(overrides, usage=__doc__, sections=sections):
        return None
    sampling, options, run = (build(cls, overrides) for _, cls in sections)
    reject_unknown(overrides, *(cls for _, cls in sections))
    if not positional:
        raise UsageError("give a model name or path, and at least one prompt")
    model, prompts = positional[0], positional[1:]
    check_model(model, prompts)
    if not prompts:
        raise UsageError(f'no prompt given: add one or more, e.g. python inference.py {model} "Once upon a time"')
    check_prompt_text(prompts)
    return model, prompts, sampling, options, run


def run(model_name: str, prompts: list[str], sampling: SamplingConfig, options: GenerationConfig,
        run_options: RunOptions) -> None:
    import torch

    import tools
    from machinery.run.device import autocast, pick_device, pick_dtype

    device = pick_device(run_options.device)
    # On a CPU, decoding multiplies one token's vector by each matrix: autocast's casts cost more than bf16
    # saves (llama3_atto, batch 1 and 8: 0.53x float32's tokens/s, bench/README.md), unlike training's large
    # matmuls, for which machinery/run/device.py's probe may pick bf16.
    auto_cpu = run_options.dtype == "auto" and device.type == "cpu"
    dtype = torch.float32 if auto_cpu else pick_dtype(run_options.dtype, device)
    model, tokenizer, model_cfg, _ = tools.load_model(model_name, device)
    ctx = model_cfg.max_seq_len
    for i, p in enumerate(prompts, 1):
        n = len(tokenizer.encode(p)) + 1  # + bos
        if n >= ctx:
            raise ValueError(f"prompt {i} is {n} tokens with bos, but {model_name}'s context is {ctx}: "
                             f"shorten it to at most {ctx - 2} tokens")
    with autocast(device, dtype):
        texts = generate(model, tokenizer, prompts, sampling, options)
    k = options.num_samples
    for i, prompt in enumerate(prompts):
        print(f"=== prompt {i + 1}/{len(prompts)}: {prompt!r}")
        for s in range(k):
            text = texts[i * k + s]
            print(f"--- continuation{f' (sample {s + 1}/{k})' if k > 1 else ''}:")
            print(prompt + text)
            if run_options.show_tokens:
                print(f"--- tokens of the continuation:\n{tokenizer.display(text)}")
        print()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 with a one-line message on stderr for bad input (never a traceback)."""
    argv = sys.argv[1:] if argv is None else argv

    def sample():
        parsed = parse_args(argv)
        if parsed is not None:  # None: --help was printed
            run(*parsed)
    return run_script("inference.py", sample, usage_hint=" (python inference.py --help shows the options)")


if __name__ == "__main__":
    sys.exit(main())
