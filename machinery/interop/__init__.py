"""Moving models between templateGPT and Hugging Face transformers.

    export_hf.py RUN OUT_DIR          -> machinery/interop/export.py: a folder transformers loads with no custom code
    train.py --init_from=SOURCE       -> machinery/interop/init_from.py: a new run starting from a run's or an HF folder's weights

Two architectures map one to one: ours with RoPE + RMSNorm + gated MLP is `LlamaForCausalLM` (llama.py), ours
with learned positions + LayerNorm + plain MLP is `GPT2LMHeadModel` (gpt2.py). architectures.py picks one and
names any option neither can express. tokenizer.py writes our tokenizers as a `tokenizers` tokenizer.json.
transformers is optional: only export, import and their tests need it (and `tokenizers`, which it brings).
"""
