"""Export a trained run as a Hugging Face transformers model folder: no custom code is needed to load it.

    python export_hf.py llama3_atto exported/llama3_atto          # a run in trained/, or a path to a run folder
    python export_hf.py gpt2_atto exported/gpt2_atto --overwrite  # replace a folder that is not empty

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("exported/llama3_atto")
    tokenizer = AutoTokenizer.from_pretrained("exported/llama3_atto")

RoPE + RMSNorm + gated-MLP runs become LlamaForCausalLM, learned positions + LayerNorm + plain MLP become
GPT2LMHeadModel (weights as safetensors, float32). The tokenizer gives our ids, with bos in front as our models
saw in training; options with no transformers equivalent (qk_norm, soft-capped logits, ...) are refused by name.
Needs `pip install -r requirements-optional.txt` (transformers and its tokenizers library).

Options:
  --overwrite   replace OUT_DIR when it exists and is not empty
"""
from __future__ import annotations

import sys

from machinery.cli import UsageError, parse_bool, print_help_if_asked, reject_unknown, run_script, split_args


def main(argv: list[str] | None = None) -> int:
    return run_script("export_hf.py", lambda: export(sys.argv[1:] if argv is None else argv))


def export(argv: list[str]) -> None:
    overrides, positional = split_args(argv)
    if print_help_if_asked(overrides, usage=__doc__, sections=[]):
        return
    overwrite = parse_bool(overrides.pop("overwrite", "false"), "overwrite")
    reject_unknown(overrides, extra=("overwrite",))
    if len(positional) != 2:
        raise UsageError(f"give a run and an output folder: python export_hf.py RUN OUT_DIR (got {positional})")
    from machinery.interop.export import export_run
    out = export_run(positional[0], positional[1], overwrite=overwrite)
    print(f"wrote {out}: AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it")


if __name__ == "__main__":
    sys.exit(main())
